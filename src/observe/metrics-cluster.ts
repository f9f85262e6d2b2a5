/**
 * Metrics across the cluster's IPC channel (node:cluster): the primary serves `/metrics` and
 * asks every worker for its registry when scraped; it also learns from the cluster which
 * workers have bound their listeners (for `/readyz`).
 *
 *   primary → worker  { type: 'postern:metrics', id }                  a scrape
 *   worker → primary  { type: 'postern:metrics-answer', id, metrics }  its registry as JSON (prom-client's getMetricsAsJSON)
 *
 * A worker that has not answered within the deadline is left out of that scrape (and counted in
 * `missing`), so one stuck worker cannot stop the instance's metrics. The answers are merged by
 * AggregatorRegistry.aggregate, each metric by its own `aggregator` (./metrics.ts).
 */
import cluster, { type Worker } from 'node:cluster';
import type { MetricObjectWithValues, MetricValue, Registry } from 'prom-client';

const ASK = 'postern:metrics';
const ANSWER = 'postern:metrics-answer';

export type MetricsJson = MetricObjectWithValues<MetricValue<string>>[];

interface Answer {
  type: typeof ANSWER;
  id: number;
  metrics?: MetricsJson;
  error?: string;
}

/** Worker: answers the primary's scrapes with `registry`. Returns the function that stops it. */
export function answerMetrics(registry: Registry): () => void {
  const onMessage = (msg: unknown): void => {
    const m = msg as { type?: unknown; id?: unknown } | null;
    if (m?.type !== ASK || typeof m.id !== 'number') return;
    const id = m.id;
    const send = (a: Answer): void => void (process.connected && process.send?.(a, undefined, {}, () => {}));
    registry.getMetricsAsJSON().then(
      (metrics) => send({ type: ANSWER, id, metrics: metrics as MetricsJson }),
      (err: Error) => send({ type: ANSWER, id, error: err.message }),
    );
  };
  process.on('message', onMessage);
  return () => process.removeListener('message', onMessage);
}

interface Pending {
  answers: MetricsJson[];
  waiting: Set<number>;
  done: () => void;
}

/** Primary: asks the workers for their metrics. */
export class WorkerMetrics {
  readonly #pending = new Map<number, Pending>();
  #seq = 0;
  readonly #onMessage = (w: Worker, msg: unknown): void => {
    const a = msg as Partial<Answer> | null;
    if (a?.type !== ANSWER || typeof a.id !== 'number') return;
    const p = this.#pending.get(a.id);
    if (!p || !p.waiting.delete(w.id)) return;
    if (a.metrics) p.answers.push(a.metrics);
    if (p.waiting.size === 0) p.done();
  };

  constructor() {
    cluster.on('message', this.#onMessage);
  }

  /** Every connected worker's metrics, or those that answered within `timeoutMs`. */
  gather(timeoutMs = 2000): Promise<{ answers: MetricsJson[]; asked: number; missing: number }> {
    const id = ++this.#seq;
    const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && w.isConnected());
    return new Promise((resolve) => {
      const p: Pending = { answers: [], waiting: new Set(), done: () => {} };
      const timer = setTimeout(() => p.done(), timeoutMs);
      p.done = () => {
        clearTimeout(timer);
        this.#pending.delete(id);
        resolve({ answers: p.answers, asked: workers.length, missing: p.waiting.size });
      };
      this.#pending.set(id, p);
      for (const w of workers) {
        p.waiting.add(w.id);
        // A worker that is exiting may refuse the message: it is not waited for.
        w.send({ type: ASK, id }, undefined, (err) => {
          if (err && p.waiting.delete(w.id) && p.waiting.size === 0) p.done();
        });
      }
      if (workers.length === 0) p.done();
    });
  }

  stop(): void {
    cluster.removeListener('message', this.#onMessage);
  }
}

/**
 * Primary: which workers listen, from the cluster's `listening` events (one per listener a
 * worker has bound). A worker that exits is forgotten.
 */
export class ClusterListeners {
  readonly #byWorker = new Map<number, string[]>();
  readonly #onListening = (w: Worker, a: { address: string | null; port: number }): void => {
    const list = this.#byWorker.get(w.id) ?? [];
    list.push(`${a.address ?? '*'}:${a.port}`);
    this.#byWorker.set(w.id, list);
  };
  readonly #onExit = (w: Worker): void => void this.#byWorker.delete(w.id);

  constructor() {
    cluster.on('listening', this.#onListening);
    cluster.on('exit', this.#onExit);
  }

  /** Workers that have bound at least `expected` listeners. */
  ready(expected: number): number {
    let n = 0;
    for (const list of this.#byWorker.values()) if (list.length >= expected) n++;
    return n;
  }

  /** The addresses bound, across workers. */
  get addresses(): string[] {
    return [...new Set([...this.#byWorker.values()].flat())];
  }

  get workers(): number {
    return Object.values(cluster.workers ?? {}).filter((w) => w !== undefined && !w.isDead()).length;
  }

  stop(): void {
    cluster.removeListener('listening', this.#onListening);
    cluster.removeListener('exit', this.#onExit);
  }
}
