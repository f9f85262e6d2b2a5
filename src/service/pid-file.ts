/**
 * `pid_file`: the primary's (or the single process's) pid, for logrotate's postrotate
 * (`kill -USR1 $(cat FILE)`) and init scripts. Written at start, removed at exit if it still
 * holds this pid (a newer instance's file is left alone). A file that cannot be written stops the
 * start, as nginx stops when it cannot write its pid file.
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { Logger } from '../log/logger.js';

/** Writes `file` (if set); false, logged, when it cannot. */
export function writePidFile(file: string | undefined, logger: Logger): boolean {
  if (file === undefined) return true;
  try {
    writeFileSync(file, `${process.pid}\n`, { mode: 0o644 });
  } catch (err) {
    logger.fatal({ pid_file: file, err: (err as Error).message }, 'cannot write pid_file');
    return false;
  }
  process.once('exit', () => removePidFile(file));
  return true;
}

function removePidFile(file: string): void {
  try {
    if (readFileSync(file, 'utf8').trim() === String(process.pid)) rmSync(file, { force: true });
  } catch {
    // Gone already, or unreadable: nothing to remove.
  }
}
