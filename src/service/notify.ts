/**
 * Readiness for systemd (`Type=notify`, contrib/postern.service): READY=1 once every listener is
 * bound — in a cluster, once every worker has bound all of its listeners — and only when systemd
 * asked for it by setting NOTIFY_SOCKET.
 *
 * Node cannot write to NOTIFY_SOCKET itself (an AF_UNIX datagram socket; node:dgram has only UDP),
 * so the message is sent by `systemd-notify --ready`, a child process: the unit needs
 * `NotifyAccess=all`. systemd-notify (systemd ≥ 246) then waits on a barrier until systemd has
 * read the message, so it is credited to the service although its sender exits at once; it also
 * works outside systemd, with any reader of the socket (the tests use one).
 *
 *   worker → primary  { type: 'postern:ready' }   once its server has bound every listener
 */
import { spawn } from 'node:child_process';
import cluster from 'node:cluster';
import type { Logger } from '../log/logger.js';

const READY_MESSAGE = 'postern:ready';

/** Runs `systemd-notify --ready` if NOTIFY_SOCKET is set; a failure is logged, never fatal. */
export function notifySystemdReady(logger: Logger, env: NodeJS.ProcessEnv = process.env): void {
  if (!env.NOTIFY_SOCKET) return;
  const child = spawn('systemd-notify', ['--ready'], { stdio: ['ignore', 'ignore', 'pipe'], env });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  child.on('error', (err) => logger.warn({ err: err.message }, 'systemd-notify --ready: cannot run it; systemd is not told that Postern is ready'));
  child.on('exit', (code, signal) => {
    if (code === 0) logger.info({ notify_socket: env.NOTIFY_SOCKET }, 'systemd told: ready');
    else logger.warn({ code, signal, stderr: stderr.trim() || undefined }, 'systemd-notify --ready failed; systemd is not told that Postern is ready');
  });
}

/**
 * After the server has bound every listener: a worker tells the primary; a single process tells
 * systemd.
 */
export function announceReady(logger: Logger): void {
  if (cluster.isWorker) process.send?.({ type: READY_MESSAGE });
  else notifySystemdReady(logger);
}

/**
 * Primary: tells systemd once `n` workers are alive and every one of them has announced itself
 * ready (a worker that died after its announcement no longer counts; its replacement must announce
 * itself). Later generations of workers are not awaited again.
 */
export function notifyWhenWorkersReady(n: number, logger: Logger): void {
  const ready = new Set<number>();
  const onMessage = (w: { id: number }, msg: unknown): void => {
    if ((msg as { type?: unknown } | null)?.type !== READY_MESSAGE) return;
    ready.add(w.id);
    const alive = Object.values(cluster.workers ?? {}).filter((x) => x !== undefined && !x.isDead());
    if (alive.length < n || !alive.every((x) => ready.has(x!.id))) return;
    cluster.removeListener('message', onMessage);
    logger.info({ workers: alive.length }, 'every worker listens');
    notifySystemdReady(logger);
  };
  cluster.on('message', onMessage);
}
