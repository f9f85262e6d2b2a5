/**
 * Rates (messages, recipients, connections per time) behind the `Limiter` interface, counted by
 * rate-limiter-flexible in one of three stores:
 *
 * - `memory`: this process only (RateLimiterMemory). Nothing can fail.
 * - `cluster`: every worker of one instance (RateLimiterCluster; the counters live in the
 *   primary, in a RateLimiterClusterMaster that `startLimitsPrimary()` (./primary.ts) creates
 *   before the workers are forked). Outside a cluster worker (workers: 1) this is `memory`.
 * - `redis`: every instance sharing one Redis (RateLimiterRedis over ioredis, ./redis.ts).
 *
 * The burst model is rate-limiter-flexible's BurstyRateLimiter: two fixed windows.
 *   - The steady window allows `points` per `durationMs` (the counter starts at a key's first
 *     take and resets `durationMs` later).
 *   - A take over the steady limit may draw from the burst allowance instead: `burst.points` per
 *     `burst.durationMs`, a longer window, refilled all at once when it ends. A client may so go
 *     over its steady rate now and then (a mailing-list run), but not for long: over any
 *     burst window it gets at most points × (burst window / window) + burst.points.
 *   - Without `burst`, a plain fixed window: note that across a window boundary a client can
 *     get 2 × points in a short time; size `points` with that in mind.
 *   A refused take still counts in the steady window (as rate-limiter-flexible does): a client
 *   that keeps hammering stays refused until the window ends, it does not earn points back.
 *
 * Verdicts: `allowed` is whether this take is within the rate (steady or burst), `count` the
 * points counted in the steady window, `limit` its `points`, and `retryAfterMs` (when refused)
 * how long until the steady window (or the burst allowance, whichever first) makes room.
 * Note the difference from WindowLimiter, whose `allowed` means "still below the limit after
 * this call" (a failure counter); here it means "this event may happen".
 *
 * Failure behaviour of the shared stores (./guard.ts): each call waits at most `timeoutMs` for
 * the store; when the store fails or is late, the call is answered by an insurance
 * RateLimiterMemory in this process with the same rate (so limits keep being applied, per
 * process, with counts that start afresh), `onDown` is called once, and `onUp` once when the
 * store answers again. (The library's own `insuranceLimiter` option does the same switch, but
 * silently and without a deadline, so the insurance is applied here instead.)
 */
import cluster from 'node:cluster';
import type { Redis } from 'ioredis';
import { RateLimiterCluster, RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from 'rate-limiter-flexible';
import { StoreGuard, type GuardOptions } from './guard.js';
import type { LimitVerdict, Limiter } from './limiter.js';

export interface RateSpec {
  /** Unique per limiter (the counters' key prefix and, in a cluster, the limiter's identity). */
  name: string;
  /** Points allowed per window. */
  points: number;
  /** The window. The Redis store counts whole seconds: a multiple of 1000, at least 1000. */
  durationMs: number;
  /** Extra points a client may draw on when over `points`, refilled every `burst.durationMs`. */
  burst?: { points: number; durationMs: number };
}

export type LimiterStore =
  | { kind: 'memory' }
  | { kind: 'cluster' }
  | { kind: 'redis'; client: Redis; /** Prefix of every Redis key. Default 'postern'. */ prefix?: string };

export type SharedOptions = GuardOptions;

interface Pair {
  steady: RateLimiterAbstract;
  burst: RateLimiterAbstract | null;
}

export class RateLimiter implements Limiter {
  readonly #spec: RateSpec;
  readonly #primary: Pair;
  readonly #insurance: Pair | null;
  readonly #guard: StoreGuard | null;

  constructor(spec: RateSpec, store: LimiterStore = { kind: 'memory' }, opts: SharedOptions = {}) {
    validate(spec, store);
    this.#spec = spec;
    const memory = (): Pair => pair(spec, (o) => new RateLimiterMemory(o));
    const kind = store.kind === 'cluster' && !cluster.isWorker ? 'memory' : store.kind;
    if (kind === 'memory') {
      this.#primary = memory();
      this.#insurance = null;
      this.#guard = null;
      return;
    }
    this.#guard = new StoreGuard(kind, spec.name, opts);
    this.#insurance = memory();
    if (store.kind === 'redis') {
      const prefix = store.prefix ?? 'postern';
      this.#primary = pair(
        spec,
        (o) => new RateLimiterRedis({ ...o, keyPrefix: `${prefix}:${o.keyPrefix}`, storeClient: store.client, rejectIfRedisNotReady: true }),
      );
    } else {
      // The library's own deadline is a backstop (its pending entry is dropped); the guard's answers first.
      const timeoutMs = this.#guard.timeoutMs + 1000;
      this.#primary = pair(spec, (o) => new RateLimiterCluster({ ...o, timeoutMs }));
    }
  }

  get limit(): number {
    return this.#spec.points;
  }

  take(key: string, cost = 1): Promise<LimitVerdict> {
    if (!this.#guard) return this.#take(this.#primary, key, cost);
    return this.#guard.run(
      () => this.#take(this.#primary, key, cost),
      () => this.#take(this.#insurance!, key, cost),
    );
  }

  peek(key: string): Promise<LimitVerdict> {
    if (!this.#guard) return this.#peek(this.#primary, key);
    return this.#guard.run(
      () => this.#peek(this.#primary, key),
      () => this.#peek(this.#insurance!, key),
    );
  }

  /** Rates are not given back. */
  release(): void {}

  async #take(p: Pair, key: string, cost: number): Promise<LimitVerdict> {
    const limit = this.#spec.points;
    const steady = await verdictOf(p.steady.consume(key, cost));
    if (steady.ok) return { allowed: true, count: steady.res.consumedPoints, limit };
    if (p.burst) {
      const burst = await verdictOf(p.burst.consume(key, cost));
      if (burst.ok) return { allowed: true, count: steady.res.consumedPoints, limit };
      return { allowed: false, count: steady.res.consumedPoints, limit, retryAfterMs: Math.max(0, Math.min(steady.res.msBeforeNext, burst.res.msBeforeNext)) };
    }
    return { allowed: false, count: steady.res.consumedPoints, limit, retryAfterMs: Math.max(0, steady.res.msBeforeNext) };
  }

  async #peek(p: Pair, key: string): Promise<LimitVerdict> {
    const limit = this.#spec.points;
    const [s, b] = await Promise.all([p.steady.get(key), p.burst ? p.burst.get(key) : null]);
    const count = s?.consumedPoints ?? 0;
    const burstLeft = p.burst && this.#spec.burst ? this.#spec.burst.points - (b?.consumedPoints ?? 0) : 0;
    const allowed = count < limit || burstLeft > 0;
    if (allowed) return { allowed, count, limit };
    return { allowed, count, limit, retryAfterMs: Math.max(0, Math.min(s?.msBeforeNext ?? 0, b?.msBeforeNext ?? Infinity)) };
  }
}

function pair(spec: RateSpec, make: (o: { keyPrefix: string; points: number; duration: number }) => RateLimiterAbstract): Pair {
  return {
    steady: make({ keyPrefix: spec.name, points: spec.points, duration: spec.durationMs / 1000 }),
    // Not `<name>:burst`: the store's key is `<prefix>:<key>`, so a steady key `burst:x` (a user
    // may log in as anything) would have been the burst counter of `x`.
    burst: spec.burst ? make({ keyPrefix: `${spec.name}~burst`, points: spec.burst.points, duration: spec.burst.durationMs / 1000 }) : null,
  };
}

/** A refusal (RateLimiterRes) is a verdict; anything else (the store failed) is thrown on. */
async function verdictOf(p: Promise<RateLimiterRes>): Promise<{ ok: true; res: RateLimiterRes } | { ok: false; res: RateLimiterRes }> {
  try {
    return { ok: true, res: await p };
  } catch (err) {
    if (err instanceof RateLimiterRes) return { ok: false, res: err };
    throw err;
  }
}

function validate(spec: RateSpec, store: LimiterStore): void {
  const windows = [spec.durationMs, ...(spec.burst ? [spec.burst.durationMs] : [])];
  if (!(spec.points > 0) || !Number.isInteger(spec.points)) throw new Error(`rate limiter ${spec.name}: points must be a positive integer`);
  if (spec.burst && (!(spec.burst.points > 0) || !Number.isInteger(spec.burst.points))) throw new Error(`rate limiter ${spec.name}: burst.points must be a positive integer`);
  for (const ms of windows) {
    if (!(ms > 0)) throw new Error(`rate limiter ${spec.name}: windows must be longer than 0 ms`);
    // RateLimiterRedis sets expiries in whole seconds; under one second its keys would never expire.
    if (store.kind === 'redis' && (ms < 1000 || ms % 1000 !== 0)) throw new Error(`rate limiter ${spec.name}: with Redis, windows are whole seconds (got ${ms} ms)`);
  }
}
