/**
 * `log.file` and its rotation, on Postern run as a process: sessions in parallel through it to a
 * fake back-end, and meanwhile the file is renamed (as logrotate does) and SIGUSR1 sent to the pid
 * in `pid_file`, several times. Afterwards every line of every file is whole JSON and the access
 * records across the files are exactly the sessions made: none split, none lost. Single process
 * and two workers (which all append to the one file). Then the same with logrotate itself running
 * contrib/logrotate/postern (paths pointed at a temporary directory, postrotate by the pid file).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';
import { FakeBackend } from '../helpers/fake-backend.js';
import { startPosternProcess, type PosternProcess } from '../helpers/postern-process.js';
import { requireBinary } from '../helpers/postfix.js';
import { replyText, SmtpClient } from '../helpers/smtp-client.js';

const root = path.resolve(import.meta.dirname, '../..');
const CONCURRENCY = 32;
const ROTATIONS = 4;
/** Sessions that must end between two rotations, so that each file gets some of them. */
const PER_ROTATION = 150;

let backend: FakeBackend;
const dirs: string[] = [];
before(async () => {
  backend = await FakeBackend.start();
});
after(async () => {
  await backend.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(path.join(os.tmpdir(), 'postern-logs-'));
  dirs.push(d);
  return d;
}

/** One whole SMTP session with a message; throws on any unexpected reply. */
async function session(port: number, i: number): Promise<void> {
  const c = await SmtpClient.connect(port);
  try {
    assert.match(replyText(await c.reply()), /^220/);
    assert.match(await c.cmd('EHLO client.test'), /^250/);
    assert.match(await c.cmd('MAIL FROM:<a@x.test>'), /^250/);
    assert.match(await c.cmd(`RCPT TO:<r${i}@y.test>`), /^250/);
    assert.match(await c.data(`Subject: ${i}\r\n\r\n${'x'.repeat(i % 300)}\r\n`), /^250/);
    assert.match(await c.cmd('QUIT'), /^221/);
    await c.waitClosed();
  } finally {
    c.close();
  }
}

/** Sessions `CONCURRENCY` at a time until `stop()`; `done` counts those completed (and throws the first failure). */
function traffic(port: number): { done: () => number; stop: () => Promise<number> } {
  let n = 0;
  let next = 0;
  let stopping = false;
  let failed: unknown;
  const loops = Array.from({ length: CONCURRENCY }, async () => {
    while (!stopping) {
      await session(port, next++);
      n++;
    }
  });
  const all = Promise.all(loops);
  all.catch((err: unknown) => {
    stopping = true;
    failed = err;
  });
  return {
    done: () => {
      if (failed) throw failed;
      return n;
    },
    stop: async () => {
      stopping = true;
      await all;
      return n;
    },
  };
}

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** Every line of `text` parsed; fails on a line that is not whole JSON or a missing final newline. */
function records(text: string, file: string): Record<string, unknown>[] {
  if (text === '') return [];
  assert.ok(text.endsWith('\n'), `${file} ends in the middle of a line: ${JSON.stringify(text.slice(-200))}`);
  return text.slice(0, -1).split('\n').map((line, i) => {
    try {
      return JSON.parse(line) as Record<string, unknown>;
    } catch {
      assert.fail(`${file}:${i + 1} is not a whole JSON record: ${JSON.stringify(line.slice(0, 300))}`);
    }
  });
}

function readLogs(dir: string): Map<string, Record<string, unknown>[]> {
  const files = new Map<string, Record<string, unknown>[]>();
  for (const f of readdirSync(dir).filter((f) => f.startsWith('postern.log')).sort()) {
    const raw = readFileSync(path.join(dir, f));
    files.set(f, records((f.endsWith('.gz') ? gunzipSync(raw) : raw).toString('utf8'), f));
  }
  return files;
}

const accessCount = (recs: readonly Record<string, unknown>[]): number => recs.filter((r) => r.type === 'access').length;
const reopenedCount = (p: PosternProcess): number => p.logs.filter((r) => r.msg === 'log file reopened').length;

async function startWithLogFile(dir: string, workers: number): Promise<PosternProcess> {
  const p = await startPosternProcess({
    workers,
    pid_file: path.join(dir, 'postern.pid'),
    log: { level: 'debug', file: path.join(dir, 'postern.log') },
    route: { static: `127.0.0.1:${backend.port}` },
  }, 30_000);
  if (workers > 1) await p.waitForLog((r) => r.msg === 'every worker listens', 30_000);
  return p;
}

/** Rotations by `rotate()` during traffic; then the files' records, the sessions made and the process. */
async function underTraffic(dir: string, workers: number, rotate: (pid: number) => Promise<void>): Promise<{ files: Map<string, Record<string, unknown>[]>; sessions: number; p: PosternProcess }> {
  const p = await startWithLogFile(dir, workers);
  let sessions = 0;
  let code: number | null;
  try {
    const pid = Number(readFileSync(path.join(dir, 'postern.pid'), 'utf8').trim());
    assert.equal(pid, p.pid, 'pid_file holds the main process');
    const load = traffic(p.port);
    try {
      for (let r = 1; r <= ROTATIONS; r++) {
        const mark = load.done();
        await waitFor(() => load.done() >= mark + PER_ROTATION, 30_000, `${PER_ROTATION} sessions`);
        const reopened = reopenedCount(p);
        await rotate(pid);
        // The primary and each worker reopen, each logging it (to standard output too).
        await waitFor(() => reopenedCount(p) >= reopened + (workers > 1 ? workers + 1 : 1), 10_000, 'every process to reopen');
      }
      const mark = load.done();
      await waitFor(() => load.done() >= mark + PER_ROTATION, 30_000, `${PER_ROTATION} sessions`);
    } finally {
      sessions = await load.stop();
    }
    await waitFor(() => accessCount(p.logs) >= sessions, 10_000, 'the access records on standard output');
  } finally {
    code = await p.stop();
  }
  assert.equal(code, 0, p.output());
  assert.equal(existsSync(path.join(dir, 'postern.pid')), false, 'pid_file removed at stop');
  assert.equal(accessCount(p.logs), sessions, 'standard output: one access record per session');
  return { files: readLogs(dir), sessions, p };
}

for (const workers of [1, 2]) {
  describe(`log.file renamed and reopened under traffic (workers: ${workers})`, () => {
    it('every line is whole JSON, and no access record is lost', async () => {
      const dir = tempDir();
      const { files, sessions } = await underTraffic(dir, workers, async (pid) => {
        const n = readdirSync(dir).filter((f) => f.startsWith('postern.log.')).length + 1;
        renameSync(path.join(dir, 'postern.log'), path.join(dir, `postern.log.${n}`));
        process.kill(pid, 'SIGUSR1');
      });
      assert.equal(files.size, ROTATIONS + 1, [...files.keys()].join(' '));
      let total = 0;
      for (const [f, recs] of files) {
        total += accessCount(recs);
        assert.ok(accessCount(recs) > 0, `${f} has access records (the rotation came during traffic)`);
        if (f === 'postern.log.1') continue;
        // Each later file was opened by every process, which said so in it.
        const pids = new Set(recs.filter((r) => r.msg === 'log file reopened').map((r) => r.pid));
        assert.equal(pids.size, workers > 1 ? workers + 1 : 1, `${f}: reopened by every process`);
      }
      assert.ok(sessions >= (ROTATIONS + 1) * PER_ROTATION);
      assert.equal(total, sessions, 'one access record per session across the files');
    });
  });
}

describe('contrib/logrotate/postern, run by logrotate under traffic', () => {
  it('rotates, compresses the older file, and Postern goes on in the new one, losing nothing', async () => {
    const logrotate = await requireBinary('logrotate', 'logrotate');
    const dir = tempDir();
    const snippet = readFileSync(path.join(root, 'contrib/logrotate/postern'), 'utf8');
    const conf = snippet
      .replace('/var/log/postern/*.log', `${dir}/*.log`)
      .replace('create 0640 postern adm', 'create 0640') // the user running the test
      .replace('[ -d /run/systemd/system ]', 'false') // never the host's own postern.service
      .replaceAll('/run/postern/postern.pid', path.join(dir, 'postern.pid'));
    assert.notEqual(conf, snippet);
    writeFileSync(path.join(dir, 'logrotate.conf'), conf, { mode: 0o644 });
    const run = promisify(execFile);
    const { files, sessions } = await underTraffic(dir, 1, async () => {
      await run(logrotate, ['-f', '-s', path.join(dir, 'state'), path.join(dir, 'logrotate.conf')]);
    });
    // delaycompress: the newest rotated file stays plain, the older ones are gzip'd.
    assert.deepEqual([...files.keys()], ['postern.log', 'postern.log.1', ...Array.from({ length: ROTATIONS - 1 }, (_, i) => `postern.log.${i + 2}.gz`)]);
    let total = 0;
    for (const recs of files.values()) total += accessCount(recs);
    assert.equal(total, sessions, 'one access record per session across the files');
  });
});
