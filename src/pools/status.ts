/**
 * The status file: what the health checker knows, for `postern status`.
 *
 * Path. There is no configuration key for it; the path is derived from the configuration file:
 *
 *     ${os.tmpdir()}/postern-status-<first 12 hex digits of sha1(absolute config path)>.json
 *
 * The absolute path is `path.resolve(file)` (relative to the working directory, symlinks not
 * resolved), so `postern run --config X` and `postern status --config X` must name the same file
 * the same way, and see the same temporary directory (TMPDIR; systemd's PrivateTmp= gives the
 * service a /tmp of its own, so `postern status` has to run inside it, e.g. with
 * `systemd-run -p JoinsNamespaceOf=postern.service` or `nsenter`).
 *
 * Writer. The process that runs the checks (the cluster primary with workers > 1, else the one
 * process) writes the file atomically — a new temporary file next to it (O_EXCL, so nothing
 * planted in a shared /tmp is followed), then rename(2) — on every state change and every 30 s,
 * and removes it when the checks stop. `written` lets a reader see a stale file; `pid` lets it
 * see a dead writer.
 *
 * What it shows is the active checks' verdict. Passive detection (max_fails/fail_timeout) is kept
 * by each worker for its own sessions (as nginx's without a shared zone) and is not in the file.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { open, rename, unlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from '../log/logger.js';
import type { HealthSnapshotEntry } from './types.js';

/** How often the file is rewritten without a change (so `written` shows the writer is alive). */
export const STATUS_REFRESH_MS = 30_000;

export interface StatusFile {
  version: 1;
  /** The process that writes it. */
  pid: number;
  /** When it was written (ms since the epoch). */
  written: number;
  /** The absolute configuration path it belongs to. */
  config: string;
  servers: HealthSnapshotEntry[];
}

/** `${os.tmpdir()}/postern-status-<sha1(absolute config path), 12 hex>.json` (see the module comment). */
export function statusFilePath(configFile: string): string {
  const hash = createHash('sha1').update(path.resolve(configFile)).digest('hex').slice(0, 12);
  return path.join(os.tmpdir(), `postern-status-${hash}.json`);
}

/** The writers of this process that have not been removed (for {@link whenStatusWritersIdle}). */
const writers = new Set<StatusWriter>();

/**
 * Calls `then` with the files of this process's status writers at a moment when none is writing
 * (synchronously, if none is now): what is done in `then` comes before any later write. The
 * privilege drop (src/service/privileges.ts) hands the files to the user there, so that a file
 * written by root can still be replaced (a sticky /tmp lets only its owner rename over it).
 */
export function whenStatusWritersIdle(then: (files: string[]) => void): void {
  const busy = [...writers].filter((w) => w.busy);
  if (busy.length === 0) return then([...writers].map((w) => w.file));
  void Promise.all(busy.map((w) => w.idle)).then(() => whenStatusWritersIdle(then));
}

/**
 * Writes the status file atomically; writes never overlap, and a write asked for while one is
 * under way is done after it with the newest snapshot (so a burst of changes costs two writes).
 */
export class StatusWriter {
  readonly #file: string;
  readonly #config: string;
  readonly #logger: Logger | undefined;
  #busy = false;
  #pending: HealthSnapshotEntry[] | null = null;
  #closed = false;
  #idle: Promise<void> = Promise.resolve();
  #warned = false;

  constructor(configFile: string, logger?: Logger, file = statusFilePath(configFile)) {
    this.#config = path.resolve(configFile);
    this.#file = file;
    this.#logger = logger;
    writers.add(this);
  }

  get file(): string {
    return this.#file;
  }

  /** A write is under way (it ends when {@link idle} resolves). */
  get busy(): boolean {
    return this.#busy;
  }

  get idle(): Promise<void> {
    return this.#idle;
  }

  /** Writes `servers` (now, or after the write under way); never rejects, failures are logged once. */
  write(servers: HealthSnapshotEntry[]): Promise<void> {
    if (this.#closed) return this.#idle;
    this.#pending = servers;
    if (!this.#busy) this.#idle = this.#drain();
    return this.#idle;
  }

  /** Stops writing and removes the file (after a write under way has finished). */
  async remove(): Promise<void> {
    this.#closed = true;
    this.#pending = null;
    writers.delete(this);
    await this.#idle;
    await unlink(this.#file).catch(() => {});
  }

  async #drain(): Promise<void> {
    this.#busy = true;
    try {
      while (this.#pending && !this.#closed) {
        const servers = this.#pending;
        this.#pending = null;
        await this.#writeOnce({ version: 1, pid: process.pid, written: Date.now(), config: this.#config, servers });
      }
    } finally {
      this.#busy = false;
    }
  }

  async #writeOnce(status: StatusFile): Promise<void> {
    const tmp = `${this.#file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
    try {
      const fh = await open(tmp, 'wx', 0o644);
      try {
        await fh.writeFile(`${JSON.stringify(status, null, 1)}\n`);
      } finally {
        await fh.close();
      }
      await rename(tmp, this.#file);
      this.#warned = false;
    } catch (err) {
      await unlink(tmp).catch(() => {});
      if (!this.#warned) {
        this.#warned = true;
        this.#logger?.warn({ file: this.#file, err: (err as NodeJS.ErrnoException).code ?? (err as Error).message }, 'cannot write the status file; `postern status` will not see the current state');
      }
    }
  }
}

/** The status file's contents, or null when there is none (or it is not a status file). */
export function readStatus(file: string): StatusFile | null {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return null;
  }
  try {
    const s = JSON.parse(text) as StatusFile;
    return s && s.version === 1 && Array.isArray(s.servers) ? s : null;
  } catch {
    return null;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function iso(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function ago(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
}

/**
 * What `postern status` prints: one line per server (pool, server, up/down, since, reason, and
 * the last check's result when it says more), and the exit status: 0 when every pool has a
 * usable server, 1 when one has none.
 */
export function formatStatus(status: StatusFile, now = Date.now()): { lines: string[]; code: 0 | 1 } {
  const rows = status.servers.map((e) => {
    const last = e.lastCheck === null ? 'not checked yet' : `last check ${ago(now - e.lastCheck)} ago: ${e.lastResult ?? '?'}`;
    return [e.pool, e.server, e.up ? 'up' : 'DOWN', `since ${iso(e.since)} (${ago(now - e.since)})`, e.checked ? `${e.reason}; ${last}` : e.reason];
  });
  const widths = [0, 1, 2, 3].map((i) => Math.max(0, ...rows.map((r) => r[i]!.length)));
  const lines = rows.map((r) => r.map((c, i) => (i < 4 ? c.padEnd(widths[i]!) : c)).join('  '));
  const pools = new Map<string, boolean>();
  for (const e of status.servers) pools.set(e.pool, (pools.get(e.pool) ?? false) || e.up);
  const dead = [...pools].filter(([, up]) => !up).map(([p]) => p);
  if (dead.length > 0) lines.push(`no usable server in pool${dead.length === 1 ? '' : 's'} ${dead.join(', ')}`);
  return { lines, code: dead.length > 0 ? 1 : 0 };
}

/**
 * `postern status --config FILE`: prints the status file's lines; exit 0 (every pool has a usable
 * server), 1 (one has none), 2 (no status file: Postern is not running, has no pools, or runs with
 * another TMPDIR; or the file's writer is gone).
 */
export function statusCommand(configFile: string, out: (s: string) => void, err: (s: string) => void, now = Date.now()): 0 | 1 | 2 {
  const file = statusFilePath(configFile);
  const status = readStatus(file);
  if (!status) {
    err(`postern: no status file ${file} (Postern is not running with ${path.resolve(configFile)}, or it has no pools)\n`);
    return 2;
  }
  if (status.servers.length === 0) {
    err(`postern: ${file} lists no pool servers\n`);
    return 2;
  }
  if (!alive(status.pid)) {
    err(`postern: stale status file ${file}: its writer (pid ${status.pid}) is not running\n`);
    return 2;
  }
  if (now - status.written > 3 * STATUS_REFRESH_MS) {
    err(`postern: warning: ${file} was last written ${ago(now - status.written)} ago (the writer rewrites it every ${STATUS_REFRESH_MS / 1000}s)\n`);
  }
  const { lines, code } = formatStatus(status, now);
  if (lines.length > 0) out(`${lines.join('\n')}\n`);
  return code;
}
