/**
 * The primary's half of the `cluster` limiter store. Call `startLimitsPrimary()` in the primary
 * before forking the workers (a worker's first message must find the listener).
 *
 * - Rates: rate-limiter-flexible's RateLimiterClusterMaster (its channel 'rate_limiter_flexible'
 *   on the cluster IPC). It holds a RateLimiterMemory per limiter name, created from the first
 *   worker's options; it cannot be stopped (a process-wide singleton of the library).
 * - Connections held (./concurrency.ts), over the same IPC channel:
 *     worker → primary  { type: 'postern:limit-conc', id, name, op: 'take'|'set'|'peek', key, held, cost, limit }
 *     primary → worker  { type: 'postern:limit-conc-reply', id, allowed, count }   (take and peek only)
 *   The primary keeps each worker's count per key and adds them up; a worker's counts are
 *   dropped when it exits (cluster 'exit'), so a crashed worker frees what it held.
 */
import cluster, { type Worker } from 'node:cluster';
import { RateLimiterClusterMaster } from 'rate-limiter-flexible';

export const CONC_REQUEST = 'postern:limit-conc';
export const CONC_REPLY = 'postern:limit-conc-reply';

export interface ConcRequest {
  type: typeof CONC_REQUEST;
  id: number;
  name: string;
  op: 'take' | 'set' | 'peek';
  key: string;
  held: number;
  cost: number;
  limit: number;
}

export interface ConcReply {
  type: typeof CONC_REPLY;
  id: number;
  allowed: boolean;
  count: number;
}

/** name + '\0' + key → worker id → count. */
export class HoldTable {
  readonly #keys = new Map<string, Map<number, number>>();

  /** The key's total over all workers but `except`. */
  #others(k: string, except: number): number {
    let n = 0;
    for (const [w, c] of this.#keys.get(k) ?? []) if (w !== except) n += c;
    return n;
  }

  #set(k: string, worker: number, held: number): void {
    let m = this.#keys.get(k);
    if (held > 0) {
      if (!m) this.#keys.set(k, (m = new Map()));
      m.set(worker, held);
    } else if (m) {
      m.delete(worker);
      if (m.size === 0) this.#keys.delete(k);
    }
  }

  handle(worker: number, r: ConcRequest): { allowed: boolean; count: number } | null {
    const k = `${r.name}\0${r.key}`;
    const others = this.#others(k, worker);
    switch (r.op) {
      case 'take': {
        if (r.limit <= 0 || others + r.held <= r.limit) {
          this.#set(k, worker, r.held);
          return { allowed: true, count: others + r.held };
        }
        this.#set(k, worker, r.held - r.cost);
        return { allowed: false, count: others + Math.max(0, r.held - r.cost) };
      }
      case 'set':
        this.#set(k, worker, r.held);
        return null;
      case 'peek':
        return { allowed: true, count: others + (this.#keys.get(k)?.get(worker) ?? 0) };
    }
  }

  /** Forgets everything a worker held. */
  drop(worker: number): void {
    for (const [k, m] of this.#keys) {
      m.delete(worker);
      if (m.size === 0) this.#keys.delete(k);
    }
  }

  /** Keys held by anyone (for tests and status). */
  get size(): number {
    return this.#keys.size;
  }
}

let started: { table: HoldTable; stop: () => void } | null = null;

/** Primary: serves the workers' shared limiters. Idempotent; returns the function that stops the concurrency half. */
export function startLimitsPrimary(): { table: HoldTable; stop: () => void } {
  if (started) return started;
  new RateLimiterClusterMaster();
  const table = new HoldTable();
  const onMessage = (w: Worker, msg: unknown): void => {
    const r = msg as Partial<ConcRequest> | null;
    if (!r || r.type !== CONC_REQUEST || typeof r.key !== 'string' || typeof r.name !== 'string') return;
    const answer = table.handle(w.id, r as ConcRequest);
    if (!answer || r.op === 'set') return;
    const reply: ConcReply = { type: CONC_REPLY, id: r.id ?? 0, ...answer };
    // A worker that is exiting may refuse the message: its counts go with it.
    try {
      w.send(reply, undefined, noop);
    } catch {
      /* gone */
    }
  };
  const onExit = (w: Worker): void => table.drop(w.id);
  cluster.on('message', onMessage);
  cluster.on('exit', onExit);
  started = {
    table,
    stop: () => {
      cluster.removeListener('message', onMessage);
      cluster.removeListener('exit', onExit);
      started = null;
    },
  };
  return started;
}

function noop(): void {}
