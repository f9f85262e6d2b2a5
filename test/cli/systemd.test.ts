/**
 * contrib/postern.service: `systemd-analyze verify` accepts it without a warning, and its stop
 * timeout covers the default drain. Readiness (`Type=notify`): Postern run as a process with
 * NOTIFY_SOCKET pointing at a Unix datagram socket this test reads (through a small Python
 * reader: node:dgram has no AF_UNIX) sends READY=1 once, after every listener is bound — with
 * two workers, after both workers' — and nothing without NOTIFY_SOCKET.
 *
 * A missing systemd-analyze or python3 fails under CI=true and skips elsewhere.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { parseConfig } from '../../src/config/load.js';
import { startPosternProcess, type PosternProcess } from '../helpers/postern-process.js';
import { freePort, requireBinary } from '../helpers/postfix.js';
import { greetingLine } from '../helpers/smtp-client.js';

const root = path.resolve(import.meta.dirname, '../..');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'postern-systemd-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** The tool's path; a missing one fails in CI and skips elsewhere. */
async function tool(t: TestContext, name: string, pkg: string): Promise<string | null> {
  try {
    return await requireBinary(name, pkg);
  } catch (err) {
    if (process.env.CI === 'true') throw err;
    t.skip((err as Error).message);
    return null;
  }
}

describe('contrib/postern.service', () => {
  const unit = readFileSync(path.join(root, 'contrib/postern.service'), 'utf8');
  const setting = (key: string): string[] => [...unit.matchAll(new RegExp(`^${key}=(.*)$`, 'gm'))].map((m) => m[1]!);

  it('passes systemd-analyze verify without a warning', async (t) => {
    const analyze = await tool(t, 'systemd-analyze', 'systemd');
    if (!analyze) return;
    // verify wants every Exec*= binary to exist: /usr/bin/postern becomes a link to /usr/bin/env
    // in a temporary directory; every other line is verified as shipped.
    const dir = path.join(tmp, 'verify');
    mkdirSync(path.join(dir, 'bin'), { recursive: true });
    symlinkSync('/usr/bin/env', path.join(dir, 'bin/postern'));
    assert.match(unit, /^ExecStart=\/usr\/bin\/postern /m);
    writeFileSync(path.join(dir, 'postern.service'), unit.replaceAll('/usr/bin/postern', path.join(dir, 'bin/postern')));
    const r = await promisify(execFile)(analyze, ['verify', path.join(dir, 'postern.service')]).catch((err: { code: number; stdout: string; stderr: string }) => err);
    assert.equal('code' in r ? r.code : 0, 0, r.stderr);
    assert.equal(`${r.stdout}${r.stderr}`.trim(), '', 'no warning');
  });

  it('runs the package binary, notifies, and waits longer than the default drain', () => {
    const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { bin: Record<string, string> };
    assert.ok(pkg.bin.postern, 'package.json names its command postern');
    assert.deepEqual(setting('ExecStart'), ['/usr/bin/postern run --config /etc/postern/postern.yaml']);
    assert.deepEqual(setting('Type'), ['notify']);
    assert.deepEqual(setting('NotifyAccess'), ['all']);
    assert.deepEqual(setting('KillMode'), ['mixed']);
    assert.ok(setting('ExecReload').includes('/bin/kill -HUP $MAINPID'));
    const stopSec = Number(/^(\d+)s$/.exec(setting('TimeoutStopSec')[0] ?? '')?.[1]);
    const drainMs = parseConfig('{}').servers[0]!.timeouts.shutdown;
    assert.ok(stopSec * 1000 >= drainMs + 10_000, `TimeoutStopSec=${stopSec}s leaves a margin over timeouts.shutdown (${drainMs} ms)`);
  });
});

interface Notifications {
  messages: { at: number; text: string }[];
  stop(): void;
}

/** A reader of datagrams on the Unix socket `file`: each one with the time it arrived (ms). */
async function notifySocket(python: string, file: string): Promise<Notifications> {
  const script = [
    'import json, socket, sys, time',
    's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
    's.bind(sys.argv[1])',
    'print("bound", flush=True)',
    'while True:',
    '    d = s.recv(65536)',
    '    print(json.dumps({"at": time.time() * 1000, "text": d.decode("utf-8", "replace")}), flush=True)',
  ].join('\n');
  const child: ChildProcess = spawn(python, ['-c', script, file], { stdio: ['ignore', 'pipe', 'inherit'] });
  const messages: Notifications['messages'] = [];
  let partial = '';
  let bound!: () => void;
  const ready = new Promise<void>((r) => (bound = r));
  child.stdout!.on('data', (d: Buffer) => {
    const lines = (partial + d.toString()).split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      if (line === 'bound') bound();
      else if (line) messages.push(JSON.parse(line) as { at: number; text: string });
    }
  });
  await Promise.race([ready, sleep(10_000).then(() => Promise.reject(new Error('the notify socket reader did not start')))]);
  return { messages, stop: () => child.kill() };
}

/** Postern with `overrides`, its environment's NOTIFY_SOCKET set to `socket` (or unset). */
function withNotifySocket(socket: string | undefined, overrides: Record<string, unknown>): Promise<PosternProcess> {
  const saved = process.env.NOTIFY_SOCKET;
  if (socket === undefined) delete process.env.NOTIFY_SOCKET;
  else process.env.NOTIFY_SOCKET = socket;
  try {
    return startPosternProcess(overrides, 30_000); // spawns before its first await
  } finally {
    if (saved === undefined) delete process.env.NOTIFY_SOCKET;
    else process.env.NOTIFY_SOCKET = saved;
  }
}


async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe('readiness: READY=1 on NOTIFY_SOCKET', () => {
  for (const workers of [1, 2]) {
    it(`is sent once, after every listener is bound (workers: ${workers})`, async (t) => {
      const python = await tool(t, 'python3', 'python3');
      if (!(await tool(t, 'systemd-notify', 'systemd')) || !python) return;
      const file = path.join(tmp, `notify-${workers}.sock`);
      const notes = await notifySocket(python, file);
      const ports = [await freePort(), await freePort()];
      let p: PosternProcess | undefined;
      try {
        p = await withNotifySocket(file, { workers, listen: ports.map((port) => `127.0.0.1:${port}`), route: { static: '127.0.0.1:9' } });
        await waitFor(() => notes.messages.some((m) => m.text.split('\n').includes('READY=1')), 15_000, 'READY=1');
        // Every listener of every process was bound before it came: its log record says when.
        const listening = p.logs.filter((r) => r.msg === 'listening');
        assert.equal(listening.length, ports.length * workers, JSON.stringify(listening));
        const readyAt = notes.messages.find((m) => m.text.split('\n').includes('READY=1'))!.at;
        for (const r of listening) assert.ok(Date.parse(String(r.time)) <= readyAt, `${String(r.time)} ≤ READY=1 at ${new Date(readyAt).toISOString()}`);
        for (const port of ports) assert.match(await greetingLine(port), /^220 /);
        await p.waitForLog((r) => r.msg === 'systemd told: ready');
        await sleep(300);
        assert.equal(notes.messages.filter((m) => m.text.split('\n').includes('READY=1')).length, 1, JSON.stringify(notes.messages));
      } finally {
        notes.stop();
        if (p) assert.equal(await p.stop(), 0, p.output());
      }
    });
  }

  it('is not sent without NOTIFY_SOCKET', async () => {
    const p = await withNotifySocket(undefined, { route: { static: '127.0.0.1:9' } });
    try {
      await sleep(500);
      assert.equal(p.logs.some((r) => /systemd/.test(r.msg)), false, JSON.stringify(p.logs));
    } finally {
      assert.equal(await p.stop(), 0, p.output());
    }
  });
});
