/**
 * Postfix's smtp-sink on loopback: accepts and discards mail, optionally dumping each message to its own file.
 * Quirks (as Postfix 3.7's smtp-sink answers; -m is in smtp-sink(1)): answers XCLIENT/XFORWARD/AUTH with a
 * plain `250 2.0.0 Ok` (not 220 or 235), offers neither STARTTLS nor SIZE in its EHLO reply, and handles at
 * most 256 connections at once unless -m is raised.
 *
 * A sink can be stopped and started again on the same port (`port`), keeping its dumps in a directory the
 * caller owns (`dumpDir: '/path'`, not removed by stop()): a pool member that goes away and comes back.
 */
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { cleanupOnExit, freePort, requireBinary, waitForBanner } from './postfix.js';

const SMTP_SINK = '/usr/sbin/smtp-sink';

export interface SmtpSinkInstance {
  port: number;
  host: '127.0.0.1';
  dumpDir?: string;
  stop(): Promise<void>;
  /** Absolute paths of the dump files, sorted; a message still being received may already be listed. */
  files(): Promise<string[]>;
}

export interface SmtpSinkOptions {
  extraArgs?: string[];
  /**
   * true: dump each message to a fresh directory, removed by stop(); a path: dump there (created if missing,
   * left to the caller; as root its parents must be searchable by nobody, who writes the files).
   */
  dumpDir?: boolean | string;
  /** Listen on this port instead of a free one (no retry on another port; a just-closed port is retried for up to 2 s). */
  port?: number;
}

export async function startSmtpSink(opts: SmtpSinkOptions = {}): Promise<SmtpSinkInstance> {
  await requireBinary(SMTP_SINK, 'postfix');
  if (opts.port !== undefined) {
    const deadline = Date.now() + 2_000;
    for (;;) {
      try {
        return await startOnce(opts.port, opts);
      } catch (err) {
        if (Date.now() >= deadline || !/Address already in use/.test((err as Error).message)) throw err;
        await sleep(100);
      }
    }
  }
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(await freePort(), opts);
    } catch (err) {
      if (attempt >= 3 || !/Address already in use/.test((err as Error).message)) throw err;
    }
  }
}

async function startOnce(port: number, opts: SmtpSinkOptions): Promise<SmtpSinkInstance> {
  let dumpDir: string | undefined;
  /** The dump directory is ours to remove (dumpDir: true), not the caller's. */
  const ownDir = opts.dumpDir === true;
  const args: string[] = [];
  // As root smtp-sink refuses to run without -u; as anyone else it cannot switch user.
  if (process.getuid?.() === 0) args.push('-u', 'nobody');
  args.push('-m', '1000');
  if (opts.dumpDir) {
    if (typeof opts.dumpDir === 'string') {
      dumpDir = opts.dumpDir;
      await mkdir(dumpDir, { recursive: true });
    } else {
      dumpDir = await mkdtemp(path.join(os.tmpdir(), 'postern-sink-'));
    }
    await chmod(dumpDir, 0o777); // written after dropping to nobody
    // smtp-sink appends a random hex suffix, so "%M." yields one file per message (e.g. "05.809a62e3").
    args.push('-d', `${dumpDir}/%M.`);
  }
  args.push(...(opts.extraArgs ?? []), `127.0.0.1:${port}`, '1024');

  const child = spawn(SMTP_SINK, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  let exited = false;
  child.on('close', () => (exited = true)); // 'close', not 'exit': stderr has been read in full by then
  const unregister = cleanupOnExit(() => {
    child.kill('SIGKILL');
    if (dumpDir && ownDir) rmSync(dumpDir, { recursive: true, force: true });
  });

  let stopped: Promise<void> | undefined;
  const stop = () =>
    (stopped ??= (async () => {
      if (!exited) child.kill('SIGTERM');
      for (let i = 0; !exited && i < 100; i++) await sleep(50);
      if (!exited) child.kill('SIGKILL');
      for (let i = 0; !exited && i < 40; i++) await sleep(50);
      if (dumpDir && ownDir) await rm(dumpDir, { recursive: true, force: true });
      unregister();
    })());

  try {
    await waitForBanner(port, 10_000, () => exited);
  } catch (err) {
    await stop();
    throw new Error(`smtp-sink did not start: ${(err as Error).message}\n${stderr}`);
  }

  return {
    port,
    host: '127.0.0.1',
    ...(dumpDir ? { dumpDir } : {}),
    stop,
    async files() {
      if (!dumpDir) return [];
      return (await readdir(dumpDir)).sort().map((f) => path.join(dumpDir, f));
    },
  };
}
