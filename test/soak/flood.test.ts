/**
 * 10,000 concurrent connections against Postern running as its own process (so both sides fit
 * the descriptor limit): every one greeted, none dropped, a real session still served while they
 * are held, and everything released when they go.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { it } from 'node:test';
import { FakeBackend, closedPort } from '../helpers/fake-backend.js';
import { toRcpt } from '../helpers/preamble.js';

const root = path.resolve(import.meta.dirname, '../..');
const N = 10_000;

it(`${N} concurrent connections: all greeted, none dropped, service goes on, all released`, { timeout: 120_000 }, async () => {
  const backend = await FakeBackend.start();
  const port = await closedPort();
  const file = path.join(mkdtempSync(path.join(os.tmpdir(), 'postern-flood-')), 'flood.yaml');
  writeFileSync(file, `listen: ["127.0.0.1:${port}"]\nroute: { static: "127.0.0.1:${backend.port}" }\nlog: { level: warn, access: false }\n`);
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(root, 'src/cli.ts'), '--config', file], { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const sockets: net.Socket[] = [];
  const fds = (): number => readdirSync(`/proc/${child.pid}/fd`).length;
  try {
    for (let i = 0; ; i++) {
      const up = await new Promise<boolean>((r) => net.connect(port, '127.0.0.1').on('connect', function (this: net.Socket) { this.destroy(); r(true); }).on('error', () => r(false)));
      if (up) break;
      if (i > 200) throw new Error(`postern did not start: ${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const fdsBefore = fds();
    let greeted = 0;
    let dropped = 0;
    for (let i = 0; i < N; i += 500) {
      await Promise.all(Array.from({ length: 500 }, () => new Promise<void>((resolve) => {
        const s = net.connect(port, '127.0.0.1');
        sockets.push(s);
        s.once('data', (d) => {
          if (d.toString().startsWith('220 ')) greeted++;
          resolve();
        });
        s.once('error', () => {
          dropped++;
          resolve();
        });
      })));
    }
    assert.equal(dropped, 0);
    assert.equal(greeted, N);
    const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))![1]) * 1024;
    // A real session while all of them are held.
    const { c, rcpt } = await toRcpt(port, { hello: 'HELO busy.test' });
    assert.equal(rcpt, '250 2.1.5 Ok');
    assert.equal(await c.data('Subject: during the flood\r\n\r\nhi\r\n'), '250 2.0.0 Ok: queued');
    c.close();
    for (const s of sockets) s.destroy();
    const deadline = Date.now() + 20_000;
    while (fds() > fdsBefore + 5 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.ok(fds() <= fdsBefore + 5, `descriptors not released: ${fds()} vs ${fdsBefore}`);
    assert.ok(rss < 400 * 2 ** 20, `resident memory with ${N} connections: ${rss}`);
    assert.equal(stderr, '');
  } finally {
    for (const s of sockets) s.destroy();
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
    await backend.stop();
  }
});
