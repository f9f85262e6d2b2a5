/**
 * Where the log records go: standard output, `log.file`, or both; and SIGUSR1, which closes
 * `log.file` and opens it again at the same path, as nginx's `-s reopen` does for logrotate.
 *
 * Whole lines, none lost, none split, also with several workers writing one file:
 *
 * - pino hands each record, newline included, to one `write()` of its destination, a SonicBoom
 *   (pino.destination). SonicBoom queues whole records: a record joins the last queued chunk
 *   while that chunk stays within 16 KiB (`maxWrite`), else it starts a chunk of its own,
 *   whatever its size. Each chunk is one write(2) (`fs.write`, which libuv does not split).
 *   `minLength: 0` (written as soon as nothing else is in flight) is set explicitly: a larger one
 *   would still write whole chunks, but hold records in memory, where a crash loses them.
 * - The file is opened with O_APPEND (`append: true`, the flag `a`): every write(2) goes to the
 *   end of the file as it is then, and no other write can land inside it (POSIX write(2); Linux
 *   keeps it on local file systems — not on NFS). So the workers' chunks never interleave within
 *   a line. The one exception is a short write (a full disk): SonicBoom then writes the rest in a
 *   second write(2), and another process's chunk may come between the two.
 * - `reopen()` waits for the chunk in flight to be written to the old file, opens the path again
 *   (creating it, mode 0640), queues what is logged meanwhile, writes the queue to the new file and
 *   only then closes the old one. If the new file cannot be opened, the old one stays in use and
 *   the failure is logged.
 *
 * Node starts its inspector on SIGUSR1 unless a listener is installed, so the listener is
 * installed right after the logger, and the primary passes the reopen on to its workers as a
 * cluster message (a signal reaching a worker that has not yet installed its own listener would
 * open a debugger port there; a message that reaches it then is dropped, harmlessly: that worker
 * opens its file only afterwards, at the path's new file).
 */
import cluster from 'node:cluster';
import { closeSync, openSync } from 'node:fs';
import { pino, type DestinationStream } from 'pino';
import type { Logger } from './logger.js';
import type { LogConfig } from './schema.js';

type SonicBoom = ReturnType<typeof pino.destination>;

/** The destination of the records, and the reopen of `log.file` (a no-op without one). */
export interface LogOutput {
  stream: DestinationStream;
  file: string | undefined;
  reopen(): void;
  /** Errors of the file (reopen or write failures) go here once the logger exists. */
  onError(cb: (err: NodeJS.ErrnoException) => void): void;
}

const REOPEN_MESSAGE = 'postern:reopen-logs';

/**
 * Opens `log.file` (if set) and standard output (unless `log.stdout: false`). The file is opened
 * once synchronously first, so that a path that cannot be written stops the start with one line
 * on stderr (and null).
 */
export function openLogOutput(log: Pick<LogConfig, 'file' | 'stdout'>): LogOutput | null {
  const stdout = log.stdout ? pino.destination({ dest: 1, sync: false }) : null;
  if (log.file === undefined) return { stream: stdout!, file: undefined, reopen: () => {}, onError: () => {} };
  try {
    closeSync(openSync(log.file, 'a', 0o640));
  } catch (err) {
    process.stderr.write(`postern: log.file ${log.file}: ${(err as Error).message}\n`);
    return null;
  }
  const file = pino.destination({ dest: log.file, sync: false, append: true, minLength: 0, mode: 0o640 });
  let handler: (err: NodeJS.ErrnoException) => void = (err) => process.stderr.write(`postern: log.file ${log.file}: ${err.message}\n`);
  // pino's own listener re-emits every error but EPIPE; without a listener of ours, it would throw.
  file.on('error', (err: NodeJS.ErrnoException) => handler(err));
  return {
    stream: stdout ? tee([stdout, file]) : file,
    file: log.file,
    reopen: () => file.reopen(),
    onError: (cb) => (handler = cb),
  };
}

/** Every record to each destination, in order. */
function tee(dests: SonicBoom[]): DestinationStream & { flush(cb: (err?: Error) => void): void } {
  return {
    write: (line: string) => {
      for (const d of dests) d.write(line);
    },
    flush: (cb) => {
      let left = dests.length;
      for (const d of dests) d.flush(() => --left === 0 && cb());
    },
  };
}

/**
 * SIGUSR1 reopens `log.file`; in a primary it is passed on to every worker. Write errors of the
 * file go to stderr (the logger would write to the failing file again), at most one per minute
 * and code; a failed reopen is logged (the old file, still open, gets the record too).
 */
export function reopenLogsOnSignal(output: LogOutput, logger: Logger): void {
  let lastWriteError = { code: '', at: 0 };
  output.onError((err) => {
    if (err.syscall === 'open') {
      logger.error({ file: output.file, err: err.message }, 'log.file: cannot open it again; still writing to the old file');
      return;
    }
    const now = Date.now();
    if (err.code === lastWriteError.code && now - lastWriteError.at < 60_000) return;
    lastWriteError = { code: err.code ?? '', at: now };
    process.stderr.write(`postern: log.file ${output.file}: ${err.message}\n`);
  });
  const reopen = (from: string): void => {
    if (output.file === undefined) {
      logger.info({ from }, 'SIGUSR1: no log.file to reopen');
      return;
    }
    output.reopen();
    // Queued behind the reopen: the first record of the new file.
    logger.info({ file: output.file, from }, 'log file reopened');
  };
  process.on('SIGUSR1', () => {
    reopen('SIGUSR1');
    if (!cluster.isPrimary || output.file === undefined) return;
    for (const w of Object.values(cluster.workers ?? {})) if (w?.isConnected()) w.send({ type: REOPEN_MESSAGE }, () => {});
  });
  if (cluster.isWorker) {
    process.on('message', (msg: unknown) => {
      if ((msg as { type?: unknown } | null)?.type === REOPEN_MESSAGE) reopen('primary');
    });
  }
}
