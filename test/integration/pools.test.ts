/**
 * Back-end pools end to end, in-process with scripted back-ends: failover the client never sees
 * (refused connect, a 421 greeting, a stall, a refused XCLIENT, a 4xx to MAIL, a 421 to RCPT),
 * backups only when no primary is usable, every server down → 451 with one line naming each
 * server tried, a 5xx to MAIL passed to the client as the back-end's verdict, passive detection
 * taking a failing server out for fail_timeout, the auth service answering a pool
 * (X-Postern-Pool), and transaction mode keeping a hash pool's recipients on their server.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AuthStub } from '../helpers/auth-stub.js';
import { closedPort, FakeBackend, type FakeBackendOptions } from '../helpers/fake-backend.js';
import { startPostern, type RunningPostern } from '../helpers/postern.js';
import { SmtpClient } from '../helpers/smtp-client.js';

const BODY = 'Subject: pool\r\n\r\nhello\r\n';

async function send(port: number, rcpt = 'r@y.test'): Promise<{ rcpt: string; data: string | null }> {
  const c = await SmtpClient.connect(port);
  await c.reply();
  await c.cmd('EHLO client.test');
  await c.cmd('MAIL FROM:<s@x.test>');
  const r = await c.cmd(`RCPT TO:<${rcpt}>`);
  const data = r.startsWith('250') ? await c.data(BODY) : null;
  c.close();
  return { rcpt: r, data };
}

interface Rig {
  p: RunningPostern;
  backends: FakeBackend[];
  stop(): Promise<void>;
}

async function rig(specs: (FakeBackendOptions | 'closed' | { backup: FakeBackendOptions })[], pool: Record<string, unknown> = {}, extra: Record<string, unknown> = {}): Promise<Rig> {
  const backends: FakeBackend[] = [];
  const servers: unknown[] = [];
  for (const s of specs) {
    if (s === 'closed') {
      servers.push(`127.0.0.1:${await closedPort()}`);
      continue;
    }
    const b = await FakeBackend.start('backup' in s ? s.backup : s);
    backends.push(b);
    servers.push('backup' in s ? { address: `127.0.0.1:${b.port}`, backup: true } : `127.0.0.1:${b.port}`);
  }
  const p = await startPostern({ pools: { mx: { servers, health: { enabled: false }, ...pool } }, route: { static: 'mx' }, timeouts: { backend: '400ms' }, ...extra });
  return {
    p,
    backends,
    async stop() {
      await p.stop();
      for (const b of backends) await b.stop();
    },
  };
}

const delivered = (r: Rig): number[] => r.backends.map((b) => b.accepted.length);

describe('pools: failover before the client sees a back-end byte', () => {
  for (const [name, bad] of [
    ['a refused connect', 'closed'],
    ['a 421 greeting', { greeting: '421 4.3.2 busy' }],
    ['a stalled greeting', { greeting: 'stall' }],
    ['a refused XCLIENT', { onCommand: (l: string) => (l.startsWith('XCLIENT') ? '550 5.7.0 not authorized' : undefined) }],
    ['a 4xx to MAIL', { onCommand: (l: string) => (l.startsWith('MAIL') ? '451 4.3.0 try later' : undefined) }],
    ['a 421 to RCPT', { onCommand: (l: string) => (l.startsWith('RCPT') ? '421 4.3.2 going down' : undefined) }],
    ['a connection dropped at EHLO', { onCommand: (l: string) => (l.startsWith('EHLO') ? 'close' : undefined) }],
  ] as const) {
    it(`${name}: the next server takes the session, the client sees only its 250`, async () => {
      const r = await rig([bad as FakeBackendOptions | 'closed', {}], { max_fails: 0 });
      try {
        for (let i = 0; i < 4; i++) assert.deepEqual(await send(r.p.port), { rcpt: '250 2.1.5 Ok', data: '250 2.0.0 Ok: queued' });
        assert.equal(delivered(r).reduce((a, b) => a + b, 0), 4, 'every message delivered once');
        assert.equal(delivered(r).at(-1), 4, 'all by the good server');
        await r.p.waitForLog((l) => l.code === 'PSW_POOL_FAILOVER');
      } finally {
        await r.stop();
      }
    });
  }

  it('backups are used only when no primary is usable', async () => {
    const r = await rig([{}, { backup: {} }]);
    try {
      for (let i = 0; i < 3; i++) await send(r.p.port);
      assert.deepEqual(delivered(r), [3, 0]);
    } finally {
      await r.stop();
    }
    const down = await rig(['closed', { backup: {} }]);
    try {
      assert.equal((await send(down.p.port)).data, '250 2.0.0 Ok: queued');
      assert.deepEqual(delivered(down), [1]);
    } finally {
      await down.stop();
    }
  });

  it('every server down: 451, and one log line names each server tried and why', async () => {
    const r = await rig(['closed', { greeting: '421 4.3.2 busy' }]);
    try {
      assert.deepEqual(await send(r.p.port), { rcpt: '451 4.3.2 No back-end available, try again later', data: null });
      const line = await r.p.waitForLog((l) => l.code === 'PST_POOL_EXHAUSTED');
      assert.match(String(line.detail), /PST_BACKEND_UNREACHABLE .*; 127\.0\.0\.1:\d+ PST_BACKEND_REJECTED .*421 4\.3\.2 busy/);
    } finally {
      await r.stop();
    }
  });

  it('a 5xx to MAIL is the back-end\'s verdict: passed to the client as it is, no failover, the session goes on', async () => {
    const r = await rig([{ onCommand: (l) => (l.startsWith('MAIL') ? '553 5.7.1 Sender address rejected' : undefined) }, { onCommand: (l) => (l.startsWith('MAIL') ? '553 5.7.1 Sender address rejected' : undefined) }]);
    try {
      const c = await SmtpClient.connect(r.p.port);
      await c.reply();
      await c.cmd('EHLO client.test');
      await c.cmd('MAIL FROM:<spam@x.test>');
      assert.equal(await c.cmd('RCPT TO:<r@y.test>'), '553 5.7.1 Sender address rejected');
      assert.equal(await c.cmd('NOOP'), '250 2.0.0 OK', 'the session goes on');
      c.close();
      assert.equal(r.backends.reduce((n, b) => n + b.sessions.length, 0), 1, 'no failover to the other server');
    } finally {
      await r.stop();
    }
  });

  it('passive detection: a failing server is skipped for fail_timeout, then tried again', async () => {
    let broken = true;
    const r = await rig([{ greeting: undefined, onCommand: (l) => (broken && l.startsWith('EHLO') ? '421 4.3.2 sick' : undefined) }, {}], { max_fails: 1, fail_timeout: '300ms' });
    try {
      for (let i = 0; i < 4; i++) assert.equal((await send(r.p.port)).data, '250 2.0.0 Ok: queued');
      const sick = r.backends[0]!.sessions.length;
      assert.equal(sick, 1, 'after one failure the sick server is not tried again within fail_timeout');
      await r.p.waitForLog((l) => l.code === 'PSW_POOL_SERVER_DOWN');
      broken = false;
      await new Promise((res) => setTimeout(res, 350));
      for (let i = 0; i < 4; i++) await send(r.p.port);
      assert.ok(r.backends[0]!.accepted.length > 0, 'back in rotation after fail_timeout');
    } finally {
      await r.stop();
    }
  });

  it('the auth service may answer a pool (X-Postern-Pool); an nginx answer still works', async () => {
    const a = await FakeBackend.start();
    const b = await FakeBackend.start();
    const stub = await AuthStub.start((req): Record<string, string> => (req.get('Auth-SMTP-To')?.includes('@pool.test')
      ? { 'Auth-Status': 'OK', 'X-Postern-Pool': 'mx' }
      : { 'Auth-Status': 'OK', 'Auth-Server': '127.0.0.1', 'Auth-Port': String(b.port) }));
    const p = await startPostern({ pools: { mx: { servers: [`127.0.0.1:${a.port}`], health: { enabled: false } } }, route: { auth_http: { url: stub.url } } });
    try {
      assert.equal((await send(p.port, 'r@pool.test')).data, '250 2.0.0 Ok: queued');
      assert.equal((await send(p.port, 'r@plain.test')).data, '250 2.0.0 Ok: queued');
      assert.deepEqual([a.accepted.length, b.accepted.length], [1, 1]);
    } finally {
      await p.stop();
      await stub.stop();
      await a.stop();
      await b.stop();
    }
  });

  it('transaction mode with a hash pool: recipients stay with their domain\'s server (452 for another\'s)', async () => {
    const r = await rig([{}, {}, {}], { balance: 'hash', hash: 'rcpt_domain' }, { proxy_mode: 'transaction' });
    try {
      // Find two domains the ring puts on different servers, by asking Postern.
      const owner = async (d: string): Promise<number> => {
        const before = delivered(r);
        await send(r.p.port, `x@${d}`);
        return delivered(r).findIndex((n, i) => n > before[i]!);
      };
      const d1 = 'd1.test';
      const o1 = await owner(d1);
      let d2 = '';
      for (let i = 2; i < 50 && !d2; i++) if ((await owner(`d${i}.test`)) !== o1) d2 = `d${i}.test`;
      assert.ok(d2, 'two domains on different servers');
      assert.equal(await owner(d1), o1, 'a domain always goes to the same server');
      const c = await SmtpClient.connect(r.p.port);
      await c.reply();
      await c.cmd('EHLO client.test');
      await c.cmd('MAIL FROM:<s@x.test>');
      assert.equal(await c.cmd(`RCPT TO:<a@${d1}>`), '250 2.1.5 Ok');
      assert.equal(await c.cmd(`RCPT TO:<b@${d1}>`), '250 2.1.5 Ok');
      assert.match(await c.cmd(`RCPT TO:<c@${d2}>`), /^452 4\.5\.3/);
      assert.equal(await c.data(BODY), '250 2.0.0 Ok: queued');
      c.close();
    } finally {
      await r.stop();
    }
  });

  it('the rule router: by recipient domain to a pool or a server, refusals, the default; per recipient in transaction mode', async () => {
    const a = await FakeBackend.start();
    const b = await FakeBackend.start();
    const p = await startPostern({
      proxy_mode: 'transaction',
      pools: { inbound: { servers: [`127.0.0.1:${a.port}`], health: { enabled: false } } },
      route: {
        rules: {
          rules: [
            { rcpt_domain: ['example.com', '*.example.com'], to: 'inbound' },
            { rcpt_domain: ['other.test'], to: `127.0.0.1:${b.port}` },
            { sender_domain: ['spam.test'], reject: '550 5.7.1 Not from there' },
          ],
          default: { reject: '550 5.7.1 Relaying denied' },
        },
      },
    });
    try {
      const c = await SmtpClient.connect(p.port);
      await c.reply();
      await c.cmd('EHLO client.test');
      await c.cmd('MAIL FROM:<s@x.test>');
      assert.equal(await c.cmd('RCPT TO:<u@example.com>'), '250 2.1.5 Ok');
      assert.equal(await c.cmd('RCPT TO:<v@mx.example.com>'), '250 2.1.5 Ok');
      assert.match(await c.cmd('RCPT TO:<w@other.test>'), /^452 4\.5\.3/, 'another back-end: the next transaction');
      assert.equal(await c.cmd('RCPT TO:<x@nowhere.test>'), '550 5.7.1 Relaying denied');
      assert.equal(await c.data(BODY), '250 2.0.0 Ok: queued');
      await c.cmd('MAIL FROM:<s@x.test>');
      assert.equal(await c.cmd('RCPT TO:<w@other.test>'), '250 2.1.5 Ok');
      assert.equal(await c.data(BODY), '250 2.0.0 Ok: queued');
      await c.cmd('MAIL FROM:<s@spam.test>');
      assert.equal(await c.cmd('RCPT TO:<z@elsewhere.test>'), '550 5.7.1 Not from there');
      c.close();
      assert.deepEqual([a.accepted.length, b.accepted.length], [1, 1]);
    } finally {
      await p.stop();
      await a.stop();
      await b.stop();
    }
  });
});
