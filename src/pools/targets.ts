/**
 * Where a route's back-end session is tried, for every protocol module: a pool's servers in the
 * balancer's order (each try counted against the server's connections, its failures against its
 * health), the addresses a host name resolves to one by one, or the one address of an IP literal —
 * all through {@link failover}, so a fault moves the session on before the client sees a byte.
 * The protocol says how to attempt (`attempt`) and which failures are the server's (`retryable`);
 * a verdict (refused credentials, a 5xx to MAIL) is never counted against the server.
 */
import dns from 'node:dns';
import net from 'node:net';
import { backendName, type RouteTarget } from '../domain.js';
import { PosternError, WARNINGS } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { failover, type Attempt, type Candidate } from './failover.js';
import type { Pool, PoolRegistry } from './pool.js';

/** Resolves a host name to all its addresses, in the resolver's order. */
export type Lookup = (host: string, cb: (err: Error | null, addrs: { address: string }[]) => void) => void;

export const lookupAll: Lookup = (host, cb) => dns.lookup(host, { all: true }, (err, addrs) => cb(err, addrs ?? []));

/** A pool member's candidate also gives back its connection count (when the module is done with it). */
export type PoolCandidate = Candidate & { release?(): void };

export interface TryOptions {
  target: RouteTarget;
  pools: PoolRegistry | null;
  lookup: Lookup;
  /** One attempt at most, and all tries of a single back-end together (`timeouts.backend`). */
  timeoutMs: number;
  logger: Logger;
  retryable: (err: PosternError) => boolean;
  /** The balancer's key for a hash pool (the rcpt domain, the client…), or null. */
  hashKey: (pool: Pool) => string | null;
}

/** Tries `o.target`; `done` is called once. Returns an abort. */
export function tryTarget<S>(o: TryOptions, attempt: Attempt<S>, done: (err: PosternError | null, r?: S) => void): () => void {
  const { target } = o;
  if (target.pool === undefined) return trySingle(o, attempt, done);
  const pool = o.pools?.get(target.pool);
  if (!pool) {
    queueMicrotask(() => done(new PosternError('PST_ROUTE_UNKNOWN_POOL', `no pool named ${JSON.stringify(target.pool)}`)));
    return () => {};
  }
  const tried = new Set<number>();
  const key = pool.hashKey === null ? null : o.hashKey(pool);
  const next = (): PoolCandidate | null => {
    const i = pool.pick(key, tried);
    if (i < 0) return null;
    tried.add(i);
    const srv = pool.servers[i]!;
    pool.acquire(i);
    return {
      id: srv.id,
      host: srv.host,
      port: srv.port,
      failed: (err) => {
        if (!o.retryable(err)) return;
        pool.failed(i, `${err.code}${err.detail ? ` ${err.detail}` : ''}`);
        o.logger.info({ code: 'PSW_POOL_FAILOVER', pool: pool.name, server: srv.id, detail: err.detail, error: err.code }, WARNINGS.PSW_POOL_FAILOVER.message);
      },
      succeeded: () => pool.succeeded(i),
      // The connection is released when the module says so (its socket closes, or it is kept).
      release: () => pool.release(i),
    };
  };
  return failover(next, { maxTries: pool.maxTries, deadline: Date.now() + pool.tryTimeout, attemptTimeout: o.timeoutMs, exhausted: 'PST_POOL_EXHAUSTED', describe: () => pool.describe() }, attempt, o.retryable, done);
}

/** A single back-end: an IP literal is one try, a host name's addresses are tried one by one. */
function trySingle<S>(o: TryOptions, attempt: Attempt<S>, done: (err: PosternError | null, r?: S) => void): () => void {
  const { target, timeoutMs } = o;
  let aborted = false;
  let abort: () => void = () => (aborted = true);
  const run = (list: Candidate[]): void => {
    let n = 0;
    abort = failover(() => list[n++] ?? null, { maxTries: list.length, deadline: Date.now() + timeoutMs, attemptTimeout: timeoutMs, exhausted: null }, attempt, o.retryable, done);
  };
  if (net.isIP(target.host)) run([{ id: backendName(target), host: target.host, port: target.port }]);
  else {
    o.lookup(target.host, (err, addrs) => {
      if (aborted) return;
      if (err || addrs.length === 0) return done(new PosternError('PST_ROUTE_RESOLVE', `${backendName(target)}: ${(err as NodeJS.ErrnoException | null)?.code ?? 'no address'}`));
      run(addrs.map((a) => ({ id: `${target.host}[${a.address}]:${target.port}`, host: a.address, port: target.port })));
    });
  }
  return () => abort();
}
