/**
 * What every shared limiter store (the cluster's primary, Redis) is called through: a deadline,
 * a fallback in memory, and one log line per outage.
 *
 * - A call that has not answered within `timeoutMs`, or fails (Redis refused, not connected,
 *   the primary gone), is answered by the fallback instead: the store's answer is not waited for.
 * - The first failure after a good answer calls `onDown` once; the first good answer after that
 *   calls `onUp` once. Nothing in between is reported, however many calls fall back.
 * - After a timeout (the store is slow, not refusing), the store is not asked again for
 *   `retryMs`: every call in between is answered from memory at once rather than waiting out
 *   another deadline each. A store that refuses fast (ioredis with no offline queue while
 *   disconnected) is asked every time, which costs nothing and notices recovery at once.
 */

export interface StoreEvents {
  /** The store stopped answering; limits are now kept in this process's memory. Called once per outage. */
  onDown?(info: { store: string; limiter: string; error: Error }): void;
  /** The store answers again. Called once per outage, after onDown. */
  onUp?(info: { store: string; limiter: string }): void;
}

export interface GuardOptions extends StoreEvents {
  /** Longest wait for the store before answering from memory. Default 250 ms. */
  timeoutMs?: number;
  /** After a timeout, how long the store is left alone before it is tried again. Default 1000 ms. */
  retryMs?: number;
}

export const DEFAULT_TIMEOUT_MS = 250;
export const DEFAULT_RETRY_MS = 1000;

export class StoreTimeout extends Error {
  constructor(store: string, ms: number) {
    super(`${store} did not answer within ${ms} ms`);
    this.name = 'StoreTimeout';
  }
}

export class StoreGuard {
  readonly #store: string;
  readonly #limiter: string;
  readonly #timeoutMs: number;
  readonly #retryMs: number;
  readonly #events: StoreEvents;
  #down = false;
  #skipUntil = 0;

  constructor(store: string, limiter: string, opts: GuardOptions = {}) {
    this.#store = store;
    this.#limiter = limiter;
    this.#timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#retryMs = opts.retryMs ?? DEFAULT_RETRY_MS;
    this.#events = opts;
  }

  get timeoutMs(): number {
    return this.#timeoutMs;
  }

  /** Whether the last call fell back (for tests and status). */
  get down(): boolean {
    return this.#down;
  }

  /** `primary()` within the deadline, else (or on its failure) `fallback()`. */
  async run<T>(primary: () => Promise<T>, fallback: () => T | Promise<T>): Promise<T> {
    if (this.#skipUntil > Date.now()) return fallback();
    let timer: NodeJS.Timeout | undefined;
    let result: T;
    try {
      const p = primary();
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new StoreTimeout(this.#store, this.#timeoutMs)), this.#timeoutMs);
      });
      // A store answer after the deadline is dropped (and its rejection must not go unhandled).
      p.catch(noop);
      result = await Promise.race([p, late]);
    } catch (err) {
      const error = err instanceof Error ? err : new Error(String(err));
      if (error instanceof StoreTimeout) this.#skipUntil = Date.now() + this.#retryMs;
      this.#markDown(error);
      return fallback();
    } finally {
      clearTimeout(timer);
    }
    if (this.#down) {
      this.#down = false;
      this.#events.onUp?.({ store: this.#store, limiter: this.#limiter });
    }
    return result;
  }

  /** Records a failure seen outside run() (a background write); logs only at the start of an outage. */
  failed(err: unknown): void {
    this.#markDown(err instanceof Error ? err : new Error(String(err)));
  }

  #markDown(error: Error): void {
    if (this.#down) return;
    this.#down = true;
    this.#events.onDown?.({ store: this.#store, limiter: this.#limiter, error });
  }
}

function noop(): void {}
