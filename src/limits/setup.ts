/**
 * The configured limits, built once per worker: the store the counters live in (memory, the
 * instance's cluster, or Redis shared by every instance) and the limiters on it — connections
 * held at accept, and the rate rules (./rules.ts): connections at accept, messages at MAIL,
 * recipients at RCPT, refused logins at AUTH. A shared store that is down or slow falls back to
 * memory with one log line (./guard.ts).
 */
import type { Config, RateCount } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import { createConcurrencyLimiter } from './concurrency.js';
import { clientKeys } from './keys.js';
import { WindowLimiter, type Limiter } from './limiter.js';
import { RateLimiter, type LimiterStore } from './rate.js';
import { createRedisClient } from './redis.js';
import type { RateRule } from './rules.js';

export interface Limits {
  /** Connections held per client address (limits.max_connections_per_client). */
  perClient: Limiter;
  /**
   * The rate rules by what they count, each list in the order configured: the shorthands
   * (`connection_rate`, `recipient_rate`: per client address) first, then `rates`.
   */
  rates: Readonly<Record<RateCount, readonly RateRule[]>>;
  /**
   * Refused logins per client address for one server block (auth.max_failures_per_client within
   * auth.failure_window): in memory per worker, or in the shared store, so the cap holds across
   * workers and, with Redis, across instances.
   */
  authFailures(server: number, max: number, windowMs: number): Limiter;
  /** Resolves when a Redis store is connected, or after `ms` (then the fallback counts meanwhile). */
  ready(ms?: number): Promise<void>;
  close(): void;
}

/** The counter key of a client: its address (IPv4 /32, IPv6 /64 as keys.ts forms them). */
export const clientKey = (addr: string): string => clientKeys(addr)[0] ?? addr;

export function buildLimits(config: Readonly<Config>, logger: Logger): Limits {
  const l = config.limits;
  let redis: ReturnType<typeof createRedisClient> | null = null;
  let store: LimiterStore = { kind: 'memory' };
  if (l.store === 'cluster') store = { kind: 'cluster' };
  else if (typeof l.store === 'object') {
    redis = createRedisClient({ host: l.store.redis.host, port: l.store.redis.port });
    store = { kind: 'redis', client: redis };
  }
  const events = {
    onDown: (i: { store: string; limiter: string; error: Error }) => logger.warn({ code: 'PSW_LIMITS_STORE_DOWN', store: i.store, limiter: i.limiter, detail: i.error.message }, 'the limits store is down or slow: counting in memory meanwhile'),
    onUp: (i: { store: string; limiter: string }) => logger.info({ code: 'PSW_LIMITS_STORE_UP', store: i.store, limiter: i.limiter }, 'the limits store answers again'),
  };
  const rate = (name: string, r: NonNullable<Config['limits']['connection_rate']>): RateLimiter =>
    new RateLimiter({ name, points: r.max, durationMs: r.per, ...(r.burst > 0 ? { burst: { points: r.burst, durationMs: r.per * 10 } } : {}) }, store, events);
  // No cap: an in-memory limiter that never refuses, so a shared store is not asked per connection.
  const perClient = createConcurrencyLimiter({ name: 'conn', limit: l.max_connections_per_client }, l.max_connections_per_client > 0 ? store : { kind: 'memory' }, events);
  const rates: Record<RateCount, RateRule[]> = { connections: [], messages: [], recipients: [], auth_failures: [] };
  // The shorthands keep their limiter names (and so their counters in a shared store).
  if (l.connection_rate) rates.connections.push({ name: 'limits.connection_rate', count: 'connections', key: 'client', limiter: rate('conn-rate', l.connection_rate) });
  if (l.recipient_rate) rates.recipients.push({ name: 'limits.recipient_rate', count: 'recipients', key: 'client', limiter: rate('rcpt-rate', l.recipient_rate) });
  // One limiter per rule, named by its place in the list: rules never share counters.
  for (const [i, r] of (l.rates ?? []).entries()) rates[r.count].push({ name: `limits.rates.${i}`, count: r.count, key: r.key, limiter: rate(`rates.${i}`, r) });
  return {
    perClient,
    rates,
    authFailures(server, max, windowMs) {
      if (store.kind === 'memory') return new WindowLimiter(max, windowMs);
      // The shared stores count whole seconds.
      return new RateLimiter({ name: `auth-fail-${server}`, points: max, durationMs: Math.max(1000, Math.ceil(windowMs / 1000) * 1000) }, store, events);
    },
    ready(ms = 1000) {
      const r = redis;
      if (!r || r.status === 'ready') return Promise.resolve();
      return new Promise<void>((resolve) => {
        const t = setTimeout(done, ms);
        function done(): void {
          clearTimeout(t);
          r!.removeListener('ready', done);
          resolve();
        }
        r.once('ready', done);
      });
    },
    close() {
      perClient.close();
      redis?.disconnect();
    },
  };
}
