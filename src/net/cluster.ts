/**
 * `workers: N | auto`: N processes share the listeners (node:cluster), like nginx's
 * `worker_processes`. A worker that dies is replaced; its peers are not touched.
 */
import cluster, { type Worker } from 'node:cluster';
import os from 'node:os';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import type { HealthChange } from '../pools/types.js';

/** Resolves `auto` to the number of cores. */
export function workerCount(config: Readonly<Config>): number {
  return config.workers === 'auto' ? os.availableParallelism() : config.workers;
}

/** Restarts faster than this many per minute mean a worker cannot start: stop trying so hard. */
const RESTART_BACKOFF_MS = 1000;

/**
 * Runs in the primary: forks the workers, replaces crashed ones, and on SIGTERM/SIGINT passes
 * the signal on and resolves when every worker has drained and exited.
 */
export function runPrimary(n: number, logger: Logger): Promise<void> {
  // Each worker accepts on the shared socket itself (the kernel balances, as with nginx's
  // default accept_mutex off): round-robin through the primary would cost an IPC hop per connection.
  cluster.schedulingPolicy = cluster.SCHED_NONE;
  let stopping = false;
  const fork = (): Worker => cluster.fork();
  for (let i = 0; i < n; i++) fork();
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) return;
    logger.error({ worker: worker.process.pid, code, signal }, 'worker died; starting a new one');
    setTimeout(fork, RESTART_BACKOFF_MS).unref();
  });
  return new Promise((resolve) => {
    const stop = (signal: NodeJS.Signals): void => {
      if (stopping) return;
      stopping = true;
      logger.info({ signal, workers: Object.keys(cluster.workers ?? {}).length }, 'stopping workers');
      const alive = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && !w.isDead());
      if (alive.length === 0) return resolve();
      let left = alive.length;
      for (const w of alive) {
        w.once('exit', () => {
          if (--left === 0) resolve();
        });
        w.process.kill(signal);
      }
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
}

/*
 * Health of pool servers across the cluster. The checks run once per instance, in the primary
 * (src/pools/checker.ts); its verdicts reach the workers over the cluster IPC channel:
 *
 *   primary → worker  { type: 'postern:health', change: HealthChange }            each state change
 *   worker → primary  { type: 'postern:health-sync' }                             when a worker subscribes
 *   primary → worker  { type: 'postern:health-snapshot', changes: HealthChange[] } the answer: every server's state
 *
 * A new worker asks for the snapshot once it listens rather than being sent one at fork or
 * 'online': a message that reaches a worker before its 'message' listener exists is lost.
 * Changes broadcast before the answer are in it; those after it follow it, in order.
 */

export interface HealthMessage {
  type: 'postern:health';
  change: HealthChange;
}
export interface HealthSnapshotMessage {
  type: 'postern:health-snapshot';
  changes: HealthChange[];
}
const HEALTH_SYNC = 'postern:health-sync';

function sendTo(w: Worker, msg: HealthMessage | HealthSnapshotMessage): void {
  // A worker that is exiting may refuse the message; its replacement will ask for the snapshot.
  if (w.isConnected()) w.send(msg, () => {});
}

/** Primary: sends one state change to every worker. */
export function broadcastHealth(change: HealthChange): void {
  for (const w of Object.values(cluster.workers ?? {})) if (w) sendTo(w, { type: 'postern:health', change });
}

/** Primary: answers each worker's snapshot request with `snapshot()`. Returns the function that stops it. */
export function serveHealthSnapshots(snapshot: () => HealthChange[]): () => void {
  const onMessage = (w: Worker, msg: unknown): void => {
    if ((msg as { type?: unknown } | null)?.type === HEALTH_SYNC) sendTo(w, { type: 'postern:health-snapshot', changes: snapshot() });
  };
  cluster.on('message', onMessage);
  return () => cluster.removeListener('message', onMessage);
}

/**
 * Worker: calls `cb` for every server in the primary's snapshot (`fromSnapshot` true), then for
 * every change. Returns the function that unsubscribes. (The listener keeps the IPC channel
 * referenced, as the worker's channel already is until its final disconnect().)
 */
export function onHealthMessages(cb: (change: HealthChange, fromSnapshot: boolean) => void): () => void {
  const onMessage = (msg: unknown): void => {
    const m = msg as { type?: unknown; change?: HealthChange; changes?: unknown } | null;
    if (m?.type === 'postern:health' && m.change) cb(m.change, false);
    else if (m?.type === 'postern:health-snapshot' && Array.isArray(m.changes)) for (const c of m.changes as HealthChange[]) cb(c, true);
  };
  process.on('message', onMessage);
  process.send?.({ type: HEALTH_SYNC });
  return () => process.removeListener('message', onMessage);
}
