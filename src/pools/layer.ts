/**
 * The pool router layer: a decision that names a pool is checked against the pools that exist,
 * and for a pool balanced by hash it gets the server the session's key maps to now (its
 * affinity), so that transaction mode can tell whether two recipients belong to one back-end.
 */
import type { RouterLayer } from '../auth/router.js';
import type { Envelope, RouteDecision, RouteRequest } from '../domain.js';
import { thenMaybe } from '../limits/limiter.js';
import type { PoolRegistry } from './pool.js';
import type { HashKey } from './types.js';

/** The consistent hash's key for a session: lower-cased domains, the client address, the user; null when it has none. */
export function hashKeyOf(key: HashKey, envelope: Envelope, clientAddr: string): string | null {
  switch (key) {
    case 'rcpt_domain':
      return domainOf(envelope.rcptTo);
    case 'sender_domain':
      return envelope.mailLine === '' ? null : (domainOf(envelope.mailFrom) ?? '');
    case 'client':
      return clientAddr;
    case 'user':
      return envelope.auth?.user ?? null;
  }
}

function domainOf(address: string): string | null {
  const at = address.lastIndexOf('@');
  return at < 0 ? null : address.slice(at + 1).toLowerCase();
}

export function poolLayer(pools: PoolRegistry): RouterLayer {
  const resolve = (req: RouteRequest, d: RouteDecision): RouteDecision => {
    if (d.kind !== 'ok' || d.pool === undefined) return d;
    const pool = pools.get(d.pool);
    if (!pool) return { kind: 'error', code: 'PST_ROUTE_UNKNOWN_POOL', detail: `no pool named ${JSON.stringify(d.pool)}` };
    if (pool.hashKey === null) return d;
    const affinity = pool.affinity(hashKeyOf(pool.hashKey, req.envelope, req.clientAddr));
    return affinity === undefined ? d : { ...d, affinity };
  };
  return (inner) => ({
    route(req) {
      return thenMaybe(inner.route(req), (d) => resolve(req, d));
    },
    close: () => inner.close(),
  });
}
