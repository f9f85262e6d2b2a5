/**
 * Reload (SIGHUP) as nginx's `-s reload`, on Postern run as a process: under continuous
 * smtp-source load, five reloads in a row — listeners added and removed, server_name changed —
 * refuse no connection, fail no session and lose no message (smtp-source aborts on any error
 * reply or dropped connection; the smtp-sink back-end counts what arrived). A file with errors
 * is refused with its key paths and the running configuration stays. Single process and two
 * workers. Loopback only, bounded in time.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { stringify } from 'yaml';
import { startPosternProcess, type PosternProcess } from '../helpers/postern-process.js';
import { freePort, requireBinary } from '../helpers/postfix.js';
import { startSmtpSink } from '../helpers/smtp-sink.js';
import { greetingLine } from '../helpers/smtp-client.js';

const SMTP_SOURCE = '/usr/sbin/smtp-source';
const tmp = mkdtempSync(path.join(os.tmpdir(), 'postern-reload-'));
chmodSync(tmp, 0o755); // smtp-sink writes its dumps as nobody
after(() => rmSync(tmp, { recursive: true, force: true }));

function smtpSource(port: number, sessions: number, messages: number): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(SMTP_SOURCE, ['-s', String(sessions), '-m', String(messages), '-l', '512', '-f', 'a@x.test', '-t', 'b@y.test', '-M', 'load.test', `127.0.0.1:${port}`], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const t = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('exit', (code) => {
      clearTimeout(t);
      resolve({ code, stderr });
    });
  });
}


const reloaded = (p: PosternProcess, after: number): number => p.logs.slice(after).filter((r) => r.code === 'PSW_RELOADED').length;

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

for (const workers of [1, 2]) {
  describe(`reload (SIGHUP), workers: ${workers}`, () => {
    it('five reloads under continuous load: no connection refused, no session failed, every message delivered once', { timeout: 90_000 }, async () => {
      await requireBinary(SMTP_SOURCE, 'postfix');
      const dump = path.join(tmp, `sink-${workers}`);
      const sink = await startSmtpSink({ dumpDir: dump });
      const [p1, p2] = [await freePort(), await freePort()];
      const base = { workers, log: { level: 'info' }, route: { static: `127.0.0.1:${sink.port}` }, xclient: false };
      const configA = { ...base, server_name: 'a.proxy.test', listen: [`127.0.0.1:${p1}`] };
      const configB = { ...base, server_name: 'b.proxy.test', listen: [`127.0.0.1:${p1}`, `127.0.0.1:${p2}`] };
      const p = await startPosternProcess(configA, 30_000);
      try {
        if (workers > 1) await waitFor(() => p.logs.filter((r) => r.msg === 'worker started').length >= workers, 20_000, 'workers');
        const MESSAGES = 1500;
        let loadEnded = false;
        const load = smtpSource(p1, 8, MESSAGES).finally(() => (loadEnded = true));
        for (let i = 0; i < 5; i++) {
          await sleep(150);
          const mark = p.logs.length;
          const next = i % 2 === 0 ? configB : configA;
          writeFileSync(p.configFile, stringify(next));
          process.kill(p.pid, 'SIGHUP');
          await waitFor(() => reloaded(p, mark) >= workers, 20_000, `reload ${i + 1}`);
          // New connections get the new configuration; the added listener answers, the removed one is gone.
          assert.equal(await greetingLine(p1), `220 ${next.server_name} ESMTP ready`);
          if (next === configB) assert.equal(await greetingLine(p2), '220 b.proxy.test ESMTP ready');
          else await assert.rejects(greetingLine(p2));
        }
        // The reloads happened while the load ran (else this test would prove nothing).
        assert.equal(loadEnded, false, 'smtp-source ended before the fifth reload');
        const r = await load;
        assert.equal(r.code, 0, r.stderr);
        assert.doesNotMatch(r.stderr, /fatal|warning/);
        await waitFor(() => readdirSync(dump).length >= MESSAGES, 20_000, 'the sink to have every message');
        await sleep(300);
        assert.equal(readdirSync(dump).length, MESSAGES);
        assert.equal(p.logs.filter((l) => l.code === 'PSW_RELOAD_REFUSED').length, 0);
      } finally {
        await p.stop();
        await sink.stop();
      }
    });
  });
}

describe('reload with a broken file', () => {
  it('is refused with its key paths; the running configuration keeps serving', { timeout: 30_000 }, async () => {
    const port = await freePort();
    const p = await startPosternProcess({ listen: [`127.0.0.1:${port}`], route: { static: '127.0.0.1:9' } });
    try {
      writeFileSync(p.configFile, stringify({ server_name: 'new.test', listen: [`127.0.0.1:${port}`], timeouts: { idle: 'soon' }, max_errors: -1 }));
      process.kill(p.pid, 'SIGHUP');
      const refused = await p.waitForLog((r) => r.code === 'PSW_RELOAD_REFUSED', 10_000);
      const problems = (refused.problems as string[]).join('\n');
      assert.match(problems, /timeouts\.idle/);
      assert.match(problems, /max_errors/);
      assert.equal(await greetingLine(port), '220 proxy.test ESMTP ready');
      // A listener that cannot be bound (its port is taken) refuses the reload too, and nothing changes.
      const taken = net.createServer().listen(0, '127.0.0.1');
      await new Promise((r) => taken.once('listening', r));
      const busy = (taken.address() as net.AddressInfo).port;
      writeFileSync(p.configFile, stringify({ server_name: 'new.test', listen: [`127.0.0.1:${port}`, `127.0.0.1:${busy}`], route: { static: '127.0.0.1:9' } }));
      const mark = p.logs.length;
      process.kill(p.pid, 'SIGHUP');
      await waitFor(() => p.logs.slice(mark).some((r) => r.code === 'PSW_RELOAD_REFUSED'), 10_000, 'the refusal');
      taken.close();
      assert.equal(await greetingLine(port), '220 proxy.test ESMTP ready');
    } finally {
      await p.stop();
    }
  });
});

describe('postern reload / reopen', () => {
  const cli = (args: string[]): Promise<{ code: number | null; out: string; err: string }> => new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(import.meta.dirname, '../../src/cli.ts'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code) => resolve({ code, out, err }));
  });

  it('validates first (errors printed by key path, nothing sent), then signals the instance in pid_file; restart-only keys are named', { timeout: 60_000 }, async () => {
    const port = await freePort();
    const pidFile = path.join(tmp, 'reload.pid');
    const base = { listen: [`127.0.0.1:${port}`], route: { static: '127.0.0.1:9' }, pid_file: pidFile };
    const p = await startPosternProcess(base);
    try {
      writeFileSync(p.configFile, stringify({ ...base, max_errors: 'many' }));
      const bad = await cli(['reload', '-c', p.configFile]);
      assert.equal(bad.code, 1);
      assert.match(bad.err, /max_errors/);
      await sleep(300);
      assert.equal(p.logs.filter((r) => String(r.code ?? '').startsWith('PSW_RELOAD')).length, 0, 'nothing was sent');
      writeFileSync(p.configFile, stringify({ ...base, server_name: 'again.test', log: { level: 'debug', file: path.join(tmp, 'new.log') } }));
      const good = await cli(['reload', '-c', p.configFile]);
      assert.equal(good.code, 0, good.err);
      await p.waitForLog((r) => r.code === 'PSW_RELOADED', 10_000);
      const partial = await p.waitForLog((r) => r.code === 'PSW_RELOAD_PARTIAL', 5_000);
      assert.deepEqual(partial.keys, ['log']);
      assert.equal(await greetingLine(port), '220 again.test ESMTP ready');
      const reopen = await cli(['reopen', '-c', p.configFile]);
      assert.equal(reopen.code, 0, reopen.err);
      const none = await cli(['reload', '-c', await (async () => {
        const f = path.join(tmp, 'nopid.yaml');
        writeFileSync(f, stringify({ listen: ['127.0.0.1:0'] }));
        return f;
      })()]);
      assert.equal(none.code, 1);
      assert.match(none.err, /no pid_file/);
    } finally {
      await p.stop();
    }
  });
});
