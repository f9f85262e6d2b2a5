/**
 * The client's reverse name, forward-confirmed as Postfix does it (smtpd_peer.c), through the DNS
 * servers Postern is configured with (nginx's `resolver`), with a TTL-respecting cache.
 *
 * clientName(addr):
 * 1. PTR of the address (`d.c.b.a.in-addr.arpa` / ip6.arpa), queried with resolvePtr(), not reverse():
 *    Node's reverse() goes through c-ares' gethostbyaddr, which reports SERVFAIL, REFUSED and timeouts all
 *    as ENOTFOUND, so temporary and permanent failures could not be told apart.
 * 2. Every PTR target is checked with normalizeHostName() (names.ts); invalid targets are dropped as if
 *    absent. At most `maxNames` (default 3) valid names are tried.
 * 3. Each is looked up forward (A for an IPv4 client, AAAA for IPv6), in parallel; a name is confirmed
 *    when its addresses contain the client's.
 * 4. The result: the first confirmed name in PTR answer order (lower-case, no trailing dot); otherwise
 *    `[TEMPUNAVAIL]` when the PTR lookup, or the forward lookup of any candidate, failed temporarily, or the
 *    overall deadline passed; otherwise `[UNAVAILABLE]` (no PTR, no valid name, nothing confirmed).
 *
 * Failure classes (Node error codes): NXDOMAIN (ENOTFOUND) and an empty answer (ENODATA) are permanent.
 * Everything else is temporary: ETIMEOUT, ESERVFAIL, ECONNREFUSED, EREFUSED (a configured server that
 * refuses us is our problem, not the client's, unlike glibc's NO_RECOVERY), EBADRESP/EFORMERR (a
 * malformed reply), ECANCELLED (close()), the deadline.
 *
 * Timing: `timeoutMs` and `tries` go to c-ares. c-ares 1.34 (Node 20) backs off between tries, so one query
 * that gets no answer takes longer than timeoutMs × tries (measured: 300 ms × 1 try → 0.6 s, × 2 → 1.2 s).
 * `deadlineMs` bounds a whole clientName() or DNSBL check, whatever c-ares does; a query still pending at the
 * deadline is left to finish in the background (bounded by c-ares' own timeout) and may still fill the cache.
 *
 * Cache: answers and NXDOMAIN/NODATA, never temporary failures. A/AAAA use the smallest record TTL of the
 * answer (resolve4/resolve6 with `{ ttl: true }`); Node does not expose PTR TTLs, so PTR answers live
 * `ptrTtlSec` (default 300 s); negative answers `negativeTtlSec` (default 60 s: the SOA minimum is not
 * exposed either). Every TTL is capped at `maxTtlSec` (default 3600 s); a TTL of 0 is not cached. At most
 * `cacheSize` entries (default 10000), least recently used evicted first. Identical queries in flight share
 * one request.
 *
 * Nothing here throws or rejects: every failure becomes a result.
 */
import { Resolver } from 'node:dns/promises';
import { isIP } from 'node:net';
import { normalizeHostName, parseAddress, ptrName, sameAddress, TEMPUNAVAIL, UNAVAILABLE } from './names.js';

export { TEMPUNAVAIL, UNAVAILABLE };

export type RecordType = 'A' | 'AAAA' | 'PTR';

export type LookupResult =
  | { kind: 'ok'; values: string[] }
  /** NXDOMAIN (`ENOTFOUND`) or no records of the type (`ENODATA`): permanent. */
  | { kind: 'none'; code: string }
  /** Timeout, SERVFAIL, refused, malformed, deadline (`EDEADLINE`), closed: temporary. */
  | { kind: 'temp'; code: string };

export interface ClientResolverOptions {
  /** DNS servers, `ip`, `ip:port` or `[ipv6]:port` (nginx's `resolver`), e.g. `['127.0.0.1:5353']`. Required: the system's are never used. */
  servers: string[];
  /** c-ares' per-try timeout. Default 1000 ms. */
  timeoutMs?: number;
  /** c-ares' tries per server. Default 2. */
  tries?: number;
  /** Bound on a whole clientName() (and, by default, a DNSBL check). Default 5000 ms. */
  deadlineMs?: number;
  /** PTR targets tried at most. Default 3. */
  maxNames?: number;
  cacheSize?: number;
  /** TTL given to PTR answers (Node does not expose theirs). Default 300 s. */
  ptrTtlSec?: number;
  negativeTtlSec?: number;
  maxTtlSec?: number;
  /** Clock for the cache (tests). Default Date.now. */
  now?: () => number;
}

interface CacheEntry {
  expires: number;
  result: LookupResult;
}

const PERMANENT = new Set(['ENOTFOUND', 'ENODATA']);

function errorCode(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : 'EUNKNOWN';
}

/** `ip`, `ip:port`, `[ip]:port`: the forms Node's setServers() accepts; anything else is refused up front. */
function checkServer(s: string): boolean {
  if (typeof s !== 'string') return false;
  if (isIP(s)) return true;
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(s) ?? /^([^:]+):(\d{1,5})$/.exec(s);
  return !!m && isIP(m[1]!) !== 0 && Number(m[2]) > 0 && Number(m[2]) < 65536;
}

export class ClientResolver {
  readonly servers: readonly string[];
  readonly deadlineMs: number;
  readonly #resolver: Resolver;
  readonly #maxNames: number;
  readonly #cacheSize: number;
  readonly #ptrTtl: number;
  readonly #negTtl: number;
  readonly #maxTtl: number;
  readonly #now: () => number;
  readonly #cache = new Map<string, CacheEntry>();
  readonly #inflight = new Map<string, Promise<LookupResult>>();
  #closed = false;

  /** Throws on a bad configuration (no servers, a malformed server): that is a startup error, not a lookup. */
  constructor(o: ClientResolverOptions) {
    if (!Array.isArray(o.servers) || o.servers.length === 0) throw new Error('ClientResolver: no DNS servers configured');
    for (const s of o.servers) if (!checkServer(s)) throw new Error(`ClientResolver: bad DNS server ${JSON.stringify(s)}`);
    this.servers = [...o.servers];
    this.deadlineMs = o.deadlineMs ?? 5000;
    this.#maxNames = o.maxNames ?? 3;
    this.#cacheSize = o.cacheSize ?? 10_000;
    this.#ptrTtl = o.ptrTtlSec ?? 300;
    this.#negTtl = o.negativeTtlSec ?? 60;
    this.#maxTtl = o.maxTtlSec ?? 3600;
    this.#now = o.now ?? Date.now;
    this.#resolver = new Resolver({ timeout: o.timeoutMs ?? 1000, tries: o.tries ?? 2 });
    this.#resolver.setServers(this.servers as string[]);
  }

  /** Entries in the cache now (expired ones included until touched or evicted). */
  get cacheEntries(): number {
    return this.#cache.size;
  }

  /** Cancels the queries in flight (they end as temporary failures) and refuses new ones. */
  close(): void {
    this.#closed = true;
    this.#resolver.cancel();
    this.#cache.clear();
  }

  /**
   * One lookup, from the cache when fresh. `deadline` is an absolute time (Date.now() scale, not the cache
   * clock); past it the result is `{ kind: 'temp', code: 'EDEADLINE' }`.
   */
  lookup(type: RecordType, name: string, deadline = Date.now() + this.deadlineMs): Promise<LookupResult> {
    const key = `${type} ${name.toLowerCase()}`;
    const hit = this.#cache.get(key);
    if (hit) {
      this.#cache.delete(key);
      if (hit.expires > this.#now()) {
        this.#cache.set(key, hit); // most recently used last
        return Promise.resolve(hit.result);
      }
    }
    if (this.#closed) return Promise.resolve({ kind: 'temp', code: 'ECANCELLED' });
    let p = this.#inflight.get(key);
    if (!p) {
      p = this.#query(type, name).then((r) => {
        this.#inflight.delete(key);
        this.#store(key, r.result, r.ttl);
        return r.result;
      });
      this.#inflight.set(key, p);
    }
    return withDeadline(p, deadline);
  }

  /** Forward-confirmed reverse name of `addr`, `[UNAVAILABLE]` or `[TEMPUNAVAIL]`. Never rejects. */
  async clientName(addr: string): Promise<string> {
    try {
      const deadline = Date.now() + this.deadlineMs;
      const a = parseAddress(addr);
      if (!a) return UNAVAILABLE;
      const ptr = await this.lookup('PTR', ptrName(a), deadline);
      if (ptr.kind === 'temp') return TEMPUNAVAIL;
      if (ptr.kind === 'none') return UNAVAILABLE;
      const names: string[] = [];
      for (const raw of ptr.values) {
        const n = normalizeHostName(raw);
        if (n !== undefined && !names.includes(n)) names.push(n);
        if (names.length >= this.#maxNames) break;
      }
      if (names.length === 0) return UNAVAILABLE;
      const type: RecordType = a.family === 4 ? 'A' : 'AAAA';
      const forward = await Promise.all(names.map((n) => this.lookup(type, n, deadline)));
      let temp = false;
      for (const [i, f] of forward.entries()) {
        if (f.kind === 'ok' && f.values.some((v) => sameAddress(v, a.text))) return names[i]!;
        if (f.kind === 'temp') temp = true;
      }
      return temp ? TEMPUNAVAIL : UNAVAILABLE;
    } catch {
      return TEMPUNAVAIL;
    }
  }

  async #query(type: RecordType, name: string): Promise<{ result: LookupResult; ttl: number }> {
    try {
      if (type === 'PTR') {
        const values = await this.#resolver.resolvePtr(name);
        return values.length ? { result: { kind: 'ok', values }, ttl: this.#ptrTtl } : { result: { kind: 'none', code: 'ENODATA' }, ttl: this.#negTtl };
      }
      const recs = type === 'A' ? await this.#resolver.resolve4(name, { ttl: true }) : await this.#resolver.resolve6(name, { ttl: true });
      if (recs.length === 0) return { result: { kind: 'none', code: 'ENODATA' }, ttl: this.#negTtl };
      return { result: { kind: 'ok', values: recs.map((r) => r.address) }, ttl: Math.min(...recs.map((r) => r.ttl)) };
    } catch (err) {
      const code = errorCode(err);
      if (PERMANENT.has(code)) return { result: { kind: 'none', code }, ttl: this.#negTtl };
      return { result: { kind: 'temp', code }, ttl: 0 };
    }
  }

  #store(key: string, result: LookupResult, ttlSec: number): void {
    if (this.#closed || result.kind === 'temp') return;
    const ttl = Math.min(Number.isFinite(ttlSec) ? ttlSec : 0, this.#maxTtl);
    if (!(ttl > 0) || this.#cacheSize <= 0) return;
    this.#cache.delete(key);
    this.#cache.set(key, { expires: this.#now() + ttl * 1000, result });
    while (this.#cache.size > this.#cacheSize) {
      const oldest = this.#cache.keys().next().value as string;
      this.#cache.delete(oldest);
    }
  }
}

/** `p`, or a temporary EDEADLINE failure at `deadline` (absolute ms), whichever comes first. */
export function withDeadline(p: Promise<LookupResult>, deadline: number): Promise<LookupResult> {
  const ms = deadline - Date.now();
  if (ms <= 0) return Promise.resolve({ kind: 'temp', code: 'EDEADLINE' });
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve({ kind: 'temp', code: 'EDEADLINE' }), ms);
    p.then((r) => { clearTimeout(t); resolve(r); }, () => { clearTimeout(t); resolve({ kind: 'temp', code: 'EUNKNOWN' }); });
  });
}
