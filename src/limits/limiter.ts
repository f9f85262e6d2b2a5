/**
 * The limiter seam: every counter that caps a client (connections per address, AUTH failures
 * per address, and later rates of messages and recipients) sits behind this one interface.
 * An implementation may answer at once (in memory, per worker: the ones here) or with a Promise
 * (shared across workers and instances, e.g. Redis), and callers handle both, as they do for
 * routers. Keys are chosen by the caller (`auth-fail:<addr>`, `conn:<addr>`).
 */

export interface LimitVerdict {
  /** The key is within its limit after this call. */
  allowed: boolean;
  /** The key's count after this call. */
  count: number;
  limit: number;
  /** When refused: milliseconds until a take of the same cost may be allowed (rate limiters; absent if unknown). */
  retryAfterMs?: number;
}

export type MaybePromise<T> = T | Promise<T>;

/** Applies `f` now when `v` is a value, after it when it is a Promise: no Promise per call for in-memory limiters. */
export function thenMaybe<T, U>(v: MaybePromise<T>, f: (x: T) => MaybePromise<U>): MaybePromise<U> {
  return v instanceof Promise ? v.then(f) : f(v);
}

export interface Limiter {
  /** Counts `cost` for `key`. For a concurrency limiter nothing is taken when the limit is reached. */
  take(key: string, cost?: number): MaybePromise<LimitVerdict>;
  /** The key's state without counting. */
  peek(key: string): MaybePromise<LimitVerdict>;
  /** Gives back what `take` counted (a connection closed); a no-op for window limiters. */
  release(key: string, cost?: number): MaybePromise<void>;
}

/** Counts events per key in a fixed window; entries expire with their window (no timers). */
export class WindowLimiter implements Limiter {
  readonly #limit: number;
  readonly #windowMs: number;
  readonly #now: () => number;
  readonly #entries = new Map<string, { n: number; until: number }>();

  constructor(limit: number, windowMs: number, now: () => number = Date.now) {
    this.#limit = limit;
    this.#windowMs = windowMs;
    this.#now = now;
  }

  take(key: string, cost = 1): LimitVerdict {
    const now = this.#now();
    let e = this.#entries.get(key);
    if (!e || e.until <= now) {
      // Expired entries are swept lazily, so the map stays bounded by recent offenders.
      if (this.#entries.size > 10_000) for (const [k, v] of this.#entries) if (v.until <= now) this.#entries.delete(k);
      e = { n: 0, until: now + this.#windowMs };
      this.#entries.set(key, e);
    }
    e.n += cost;
    return { allowed: e.n < this.#limit, count: e.n, limit: this.#limit };
  }

  peek(key: string): LimitVerdict {
    const e = this.#entries.get(key);
    const n = e && e.until > this.#now() ? e.n : 0;
    return { allowed: n < this.#limit, count: n, limit: this.#limit };
  }

  release(): void {}
}

/** Counts what is held at once per key (open connections); 0 as the limit means none. */
export class ConcurrencyLimiter implements Limiter {
  readonly #limit: number;
  readonly #held = new Map<string, number>();

  constructor(limit: number) {
    this.#limit = limit;
  }

  take(key: string, cost = 1): LimitVerdict {
    const n = this.#held.get(key) ?? 0;
    if (this.#limit > 0 && n + cost > this.#limit) return { allowed: false, count: n, limit: this.#limit };
    this.#held.set(key, n + cost);
    return { allowed: true, count: n + cost, limit: this.#limit };
  }

  peek(key: string): LimitVerdict {
    const n = this.#held.get(key) ?? 0;
    return { allowed: this.#limit === 0 || n < this.#limit, count: n, limit: this.#limit };
  }

  release(key: string, cost = 1): void {
    const n = (this.#held.get(key) ?? 0) - cost;
    if (n <= 0) this.#held.delete(key);
    else this.#held.set(key, n);
  }

  /** Keys currently holding something (for tests and status). */
  get size(): number {
    return this.#held.size;
  }
}
