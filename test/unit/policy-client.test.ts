/**
 * The policy client against scripted servers on loopback: keep-alive reuse (N requests, 1 connection),
 * a bounded pool, and every failure ending in the configured default, in bounded time: server down,
 * slow, garbage, oversized, closing mid-reply, closing an idle connection, answering twice.
 *
 * Timeouts: requests that must succeed get 10 s (never reached on a sound run, so load cannot turn them
 * into fallbacks); the "slow server" cases use 300 ms and only check an upper bound of seconds.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { PolicyClient, parsePolicyServer, type PolicyClientOptions } from '../../src/checks/policy/client.js';
import type { PolicyAttributes } from '../../src/checks/policy/protocol.js';
import { freePort } from '../helpers/postfix.js';
import { scriptedPolicyServer, type ReceivedRequest, type ScriptedServer } from '../helpers/policy-servers.js';

const attrs = (i: number | string = 1): PolicyAttributes => ({
  protocol_state: 'RCPT', protocol_name: 'ESMTP', client_address: '192.0.2.7', client_name: 'unknown',
  helo_name: 'mx.x.test', sender: 'a@x.test', recipient: `r${i}@y.test`, instance: `inst.${i}`,
});

const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function server(onRequest: (req: ReceivedRequest, s: net.Socket) => void, opts?: { unixPath?: string }): Promise<ScriptedServer> {
  const s = await scriptedPolicyServer(onRequest, opts);
  cleanups.push(() => s.close());
  return s;
}

function client(o: Partial<PolicyClientOptions> & { server: string }, logs?: string[]): PolicyClient {
  const c = new PolicyClient({ default: 'defer', timeoutMs: 10_000, log: (level, msg) => logs?.push(`${level} ${msg}`), ...o });
  cleanups.push(() => c.close());
  return c;
}

/** Replies `REJECT <recipient>` so each answer can be matched to its request. */
const echo = (req: ReceivedRequest, s: net.Socket) => s.write(`action=REJECT ${req.attrs.get('recipient')}\n\n`);

async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(10);
  }
}

const DEFER_REPLY = (rcpt: string) => `451 4.3.5 <${rcpt}>: Recipient address rejected: Server configuration problem`;

describe('PolicyClient: keep-alive', () => {
  it('sends N requests over one connection, one at a time', async () => {
    let inFlight = 0;
    let maxInFlight = 0;
    const srv = await server((req, s) => {
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      setImmediate(() => {
        inFlight--;
        echo(req, s);
      });
    });
    const c = client({ server: srv.address });
    for (let i = 1; i <= 25; i++) {
      const v = await c.ask(attrs(i));
      assert.equal(v.kind, 'reject');
      assert.equal(v.kind === 'reject' && v.reply, `554 5.7.1 <r${i}@y.test>: Recipient address rejected: r${i}@y.test`);
      assert.equal(v.fallback, undefined);
    }
    assert.equal(srv.connections, 1);
    assert.equal(c.connectionsOpened, 1);
    assert.deepEqual(srv.requests.map((r) => [r.connection, r.index]), Array.from({ length: 25 }, (_, i) => [1, i + 1]));
    assert.equal(maxInFlight, 1);
    assert.equal(srv.requests[0]!.attrs.get('request'), 'smtpd_access_policy');
  });

  it('concurrent asks share at most maxConnections, one request in flight on each, answers matched', async () => {
    const perConn = new Map<number, number>();
    let violations = 0;
    const srv = await server((req, s) => {
      const n = (perConn.get(req.connection) ?? 0) + 1;
      perConn.set(req.connection, n);
      if (n > 1) violations++;
      setTimeout(() => {
        perConn.set(req.connection, perConn.get(req.connection)! - 1);
        echo(req, s);
      }, 5);
    });
    const c = client({ server: srv.address, maxConnections: 3 });
    const vs = await Promise.all(Array.from({ length: 40 }, (_, i) => c.ask(attrs(i))));
    vs.forEach((v, i) => assert.equal(v.kind === 'reject' && v.text, `r${i}@y.test`));
    assert.ok(srv.connections <= 3 && srv.connections >= 1, `${srv.connections} connections`);
    assert.equal(violations, 0);
    assert.equal(srv.requests.length, 40);
  });

  it('works over a unix socket', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'postern-policy-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const srv = await server((_r, s) => s.write('action=DUNNO\n\n'), { unixPath: path.join(dir, 'p.sock') });
    const c = client({ server: srv.address });
    for (let i = 0; i < 5; i++) assert.equal((await c.ask(attrs(i))).kind, 'dunno');
    assert.equal(srv.connections, 1);
  });

  it('reads a reply that arrives byte by byte', async () => {
    const reply = Buffer.from('action=PREPEND X-Greylist: delayed 3 seconds by postgrey-1.37 at postgrey.test\n\n');
    const srv = await server(async (_r, s) => {
      for (const b of reply) {
        s.write(Buffer.from([b]));
        await sleep(1);
      }
    });
    const c = client({ server: srv.address });
    for (let i = 0; i < 2; i++) {
      const v = await c.ask(attrs(i));
      assert.deepEqual(v, { kind: 'prepend', action: 'PREPEND', header: 'X-Greylist: delayed 3 seconds by postgrey-1.37 at postgrey.test' });
    }
    assert.equal(srv.connections, 1);
  });

  it('retries once on a new connection when the server closed the idle one', async () => {
    const srv = await server((req, s) => {
      echo(req, s);
      if (req.index === 1) setTimeout(() => s.end(), 5); // the server's own idle limit
    });
    const c = client({ server: srv.address });
    assert.equal((await c.ask(attrs(1))).kind, 'reject');
    await until(() => srv.open.size === 0);
    const v = await c.ask(attrs(2));
    assert.equal(v.kind === 'reject' && v.text, 'r2@y.test');
    assert.equal(v.fallback, undefined);
    assert.equal(srv.connections, 2);
  });

  it('closes a connection idle for idleMs, and after requestLimit requests', async () => {
    const srv = await server(echo);
    const c = client({ server: srv.address, idleMs: 100 });
    await c.ask(attrs(1));
    assert.equal(c.openConnections, 1);
    await until(() => c.openConnections === 0 && srv.open.size === 0);
    const d = client({ server: srv.address, requestLimit: 3 });
    for (let i = 0; i < 7; i++) await d.ask(attrs(i));
    assert.equal(d.connectionsOpened, 3);
  });
});

describe('PolicyClient: failures end in the default', () => {
  it('server down (tcp and unix): defer = 451 4.3.5 Server configuration problem', async () => {
    const logs: string[] = [];
    const port = await freePort();
    const c = client({ server: `tcp:127.0.0.1:${port}` }, logs);
    const t0 = Date.now();
    const v = await c.ask(attrs('x'));
    assert.ok(Date.now() - t0 < 5000);
    assert.equal(v.kind, 'defer');
    assert.equal(v.kind === 'defer' && v.reply, DEFER_REPLY('rx@y.test'));
    assert.equal(v.fallback?.reason, 'unavailable');
    assert.match(v.fallback?.detail ?? '', /ECONNREFUSED/);
    assert.ok(logs.some((l) => /^warn policy server tcp:127\.0\.0\.1:\d+: ECONNREFUSED; answering defer/.test(l)), logs.join('\n'));
    const u = client({ server: `unix:${path.join(os.tmpdir(), `postern-no-such-${process.pid}.sock`)}`, default: 'dunno' });
    const w = await u.ask(attrs());
    assert.equal(w.kind, 'dunno');
    assert.equal(w.fallback?.reason, 'unavailable');
    assert.equal(u.openConnections, 0);
  });

  it('a slow server: the ask resolves at timeoutMs, the connection is dropped, the next ask gets a new one', async () => {
    let answer = false;
    const srv = await server((req, s) => {
      if (answer) echo(req, s);
    });
    const c = client({ server: srv.address, timeoutMs: 300 });
    const t0 = Date.now();
    const v = await c.ask(attrs(1));
    const took = Date.now() - t0;
    assert.ok(took >= 250 && took < 5000, `${took} ms`);
    assert.equal(v.fallback?.reason, 'timeout');
    assert.equal(v.kind === 'defer' && v.reply, DEFER_REPLY('r1@y.test'));
    await until(() => srv.open.size === 0);
    answer = true;
    const w = await c.ask(attrs(2));
    assert.equal(w.kind === 'reject' && w.text, 'r2@y.test');
    assert.equal(srv.connections, 2);
  });

  it('the deadline covers waiting for a busy pool too', async () => {
    const srv = await server(() => {});
    const c = client({ server: srv.address, timeoutMs: 300, maxConnections: 1 });
    const t0 = Date.now();
    const vs = await Promise.all([c.ask(attrs(1)), c.ask(attrs(2)), c.ask(attrs(3))]);
    assert.ok(Date.now() - t0 < 5000);
    for (const v of vs) assert.equal(v.fallback?.reason, 'timeout');
  });

  const garbage: [string, string | Buffer, RegExp][] = [
    ['an HTTP answer', 'HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n', /malformed reply line/],
    ['no action', 'result=ok\n\n', /no action/],
    ['an unknown action', 'action=FROBNICATE\n\n', /unknown action/],
    ['an empty block', '\n', /no action/],
    ['invalid UTF-8', Buffer.from([0x61, 0x63, 0x74, 0x69, 0x6f, 0x6e, 0x3d, 0xc3, 0x28, 0x0a, 0x0a]), /not UTF-8/],
    ['an oversized reply', `action=REJECT ${'x'.repeat(5000)}\n\n`, /exceeds 1024 bytes/],
    ['endless bytes', 'A'.repeat(3000), /exceeds 1024 bytes/],
  ];
  for (const [what, bytes, detail] of garbage) {
    it(`${what}: default, and the connection is not reused`, async () => {
      let n = 0;
      const srv = await server((req, s) => (++n === 1 ? s.write(bytes) : echo(req, s)));
      const c = client({ server: srv.address, maxReplyBytes: 1024 });
      const v = await c.ask(attrs(1));
      assert.equal(v.kind, 'defer');
      assert.equal(v.fallback?.reason, 'invalid');
      assert.match(v.fallback?.detail ?? '', detail);
      const w = await c.ask(attrs(2));
      assert.equal(w.kind === 'reject' && w.text, 'r2@y.test');
      assert.equal(srv.connections, 2);
    });
  }

  it('a server that closes mid-reply: default at once (no retry: it had started answering)', async () => {
    const srv = await server((_r, s) => s.end('action=REJ'));
    const c = client({ server: srv.address, default: 'dunno' });
    const t0 = Date.now();
    const v = await c.ask(attrs());
    assert.ok(Date.now() - t0 < 5000);
    assert.equal(v.kind, 'dunno');
    assert.equal(v.fallback?.reason, 'unavailable');
    assert.match(v.fallback?.detail ?? '', /middle of a reply/);
    assert.equal(srv.requests.length, 1);
  });

  it('a server that closes without a reply on a fresh connection: default, not retried', async () => {
    const srv = await server((_r, s) => s.destroy());
    const c = client({ server: srv.address });
    const v = await c.ask(attrs());
    assert.equal(v.fallback?.reason, 'unavailable');
    assert.equal(srv.requests.length, 1);
  });

  it('a server that keeps closing reused connections: one retry only', async () => {
    const srv = await server((req, s) => (req.index === 1 && req.connection === 1 ? echo(req, s) : s.destroy()));
    const c = client({ server: srv.address });
    assert.equal((await c.ask(attrs(1))).kind, 'reject');
    const v = await c.ask(attrs(2));
    assert.equal(v.fallback?.reason, 'unavailable');
    assert.equal(srv.requests.length, 3, 'first, then the reused connection, then one retry');
  });

  it('bytes after the reply: the verdict stands, the connection is dropped', async () => {
    const srv = await server((req, s) => s.write(`action=REJECT ${req.attrs.get('recipient')}\n\naction=OK\n\n`));
    const logs: string[] = [];
    const c = client({ server: srv.address }, logs);
    const v = await c.ask(attrs(1));
    assert.equal(v.kind === 'reject' && v.text, 'r1@y.test');
    await c.ask(attrs(2));
    assert.equal(srv.connections, 2);
    assert.ok(logs.some((l) => /bytes after the reply/.test(l)));
  });

  it('close(): waiting and in-flight asks get the default at once', async () => {
    const srv = await server(() => {});
    const c = client({ server: srv.address, maxConnections: 1 });
    const p = [c.ask(attrs(1)), c.ask(attrs(2))];
    await until(() => srv.requests.length === 1);
    await c.close();
    for (const v of await Promise.all(p)) assert.equal(v.fallback?.reason, 'closed');
    assert.equal((await c.ask(attrs(3))).fallback?.reason, 'closed');
  });

  it('parses server addresses and refuses malformed ones', () => {
    assert.deepEqual(parsePolicyServer('tcp:127.0.0.1:10023'), { host: '127.0.0.1', port: 10023 });
    assert.deepEqual(parsePolicyServer('inet:localhost:10023'), { host: 'localhost', port: 10023 });
    assert.deepEqual(parsePolicyServer('[::1]:10023'), { host: '::1', port: 10023 });
    assert.deepEqual(parsePolicyServer('unix:/run/p.sock'), { path: '/run/p.sock' });
    for (const bad of ['', 'tcp:host', 'tcp:host:0', 'tcp:host:70000', 'unix:', 'tcp:::1:25']) assert.throws(() => parsePolicyServer(bad), bad);
  });
});
