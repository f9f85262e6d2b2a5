/**
 * `workers: N | auto`: N processes share the listeners (node:cluster), like nginx's
 * `worker_processes`. A worker that dies is replaced; its peers are not touched.
 */
import cluster, { type Worker } from 'node:cluster';
import os from 'node:os';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log/logger.js';

/** Resolves `auto` to the number of cores. */
export function workerCount(config: Readonly<Config>): number {
  return config.workers === 'auto' ? os.availableParallelism() : config.workers;
}

/** Workers told to retire (fewer workers after a reload): their exit is not a crash. */
const retired = new Set<number>();

export const RELOAD_MESSAGE = 'postern:reload';
export const RETIRE_MESSAGE = 'postern:retire';

/**
 * A reload in the primary, once the file has been validated: every worker reloads itself (each
 * takes its listeners over in place, ./instance.ts), then workers are started or retired until
 * there are `n`. A retiring worker stops accepting and exits when its sessions have ended.
 */
export function reloadWorkers(n: number, logger: Logger): void {
  const alive = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && !w.isDead() && !retired.has(w.id));
  for (const w of alive.slice(0, n)) w.send({ type: RELOAD_MESSAGE });
  for (let i = alive.length; i < n; i++) cluster.fork();
  for (const w of alive.slice(n)) {
    retired.add(w.id);
    w.send({ type: RETIRE_MESSAGE });
  }
  if (alive.length !== n) logger.info({ workers: n, were: alive.length }, 'reload: number of workers changed');
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
    if (stopping || retired.delete(worker.id)) return;
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
