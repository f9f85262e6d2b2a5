/**
 * Back-end session reuse (backend_reuse, transaction mode) through a real Postern on loopback: a
 * finished session's back-end connection is reset and the next session goes on with it — XCLIENT
 * with the new client's address, then its EHLO, MAIL, RCPT — so many sessions use one back-end
 * connection; a kept connection the back-end closed, or one that refuses the new XCLIENT, is
 * replaced by a new connection without the client noticing; a session with AUTH to the back-end
 * or XCLIENT LOGIN= is never kept; without it (backend_reuse off) every session connects.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { HealthChecker } from '../../src/pools/checker.js';
import { FakeBackend, type FakeBackendOptions } from '../helpers/fake-backend.js';
import { startPostern, type RunningPostern } from '../helpers/postern.js';
import { SmtpClient } from '../helpers/smtp-client.js';

async function rig(reuse: boolean, opts: FakeBackendOptions = {}, extra: Record<string, unknown> = {}): Promise<{ p: RunningPostern; b: FakeBackend; stop(): Promise<void> }> {
  const b = await FakeBackend.start(opts);
  const p = await startPostern({ proxy_mode: 'transaction', route: { static: `127.0.0.1:${b.port}` }, backend_reuse: { enabled: reuse }, ...extra });
  return { p, b, stop: async () => { await p.stop(); await b.stop(); } };
}

/** One whole session from `from` (a loopback source address): EHLO, one message, QUIT. */
async function session(port: number, from: string, n: number): Promise<void> {
  const c = await SmtpClient.connect(port, '127.0.0.1', from);
  try {
    assert.equal((await c.reply()).code, 220);
    assert.match(await c.cmd(`EHLO c${n}.test`), /^250 /);
    assert.equal(await c.cmd(`MAIL FROM:<s${n}@x.test>`), '250 2.1.0 OK');
    assert.equal(await c.cmd(`RCPT TO:<r${n}@y.test>`), '250 2.1.5 Ok');
    assert.equal(await c.data(`Subject: ${n}\r\n\r\nbody ${n}\r\n`), '250 2.0.0 Ok: queued');
    assert.match(await c.cmd('QUIT'), /^221 /);
  } finally {
    c.close();
  }
}

describe('backend_reuse', () => {
  it('sessions one after another share one back-end connection; each says who its client is', async () => {
    const r = await rig(true);
    try {
      for (let i = 1; i <= 5; i++) {
        await session(r.p.port, `127.0.0.${10 + i}`, i);
        await sleep(30); // the QUIT parks the connection
      }
      assert.equal(r.b.sessions.length, 1, 'one back-end connection');
      assert.equal(r.b.accepted.length, 5);
      const cmds = r.b.sessions[0]!.commands;
      assert.deepEqual(cmds.filter((l) => l.startsWith('XCLIENT')).map((l) => /ADDR=(\S+)/.exec(l)![1]), ['127.0.0.11', '127.0.0.12', '127.0.0.13', '127.0.0.14', '127.0.0.15']);
      // Between sessions: the message's end closed its transaction, so no RSET: XCLIENT (a new session for Postfix), then the client's EHLO.
      assert.equal(cmds.includes('RSET'), false, JSON.stringify(cmds));
      const i = cmds.findIndex((l) => l.startsWith('XCLIENT ADDR=127.0.0.12'));
      assert.ok(i > 0 && cmds[i + 1] === 'EHLO c2.test', JSON.stringify(cmds));
      assert.equal(cmds.filter((l) => l.startsWith('EHLO proxy.test')).length, 1, 'Postern\'s own EHLO only once');
      // The access records say which session on the kept connection each was.
      const records = r.p.logs.filter((l) => l.type === 'access' && l.msg === 'session');
      assert.deepEqual(records.map((l) => l.backend_session ?? 1), [1, 2, 3, 4, 5]);
    } finally {
      await r.stop();
    }
  });

  it('a session that leaves a transaction open is reset (RSET and its 250) before its connection is kept', async () => {
    const r = await rig(true);
    try {
      const c = await SmtpClient.connect(r.p.port, '127.0.0.1', '127.0.0.31');
      assert.equal((await c.reply()).code, 220);
      assert.match(await c.cmd('EHLO open.test'), /^250 /);
      assert.equal(await c.cmd('MAIL FROM:<s@x.test>'), '250 2.1.0 OK');
      assert.equal(await c.cmd('RCPT TO:<r@y.test>'), '250 2.1.5 Ok');
      assert.match(await c.cmd('QUIT'), /^221 /);
      c.close();
      await sleep(30);
      await session(r.p.port, '127.0.0.32', 2);
      assert.equal(r.b.sessions.length, 1, 'kept after the reset');
      const cmds = r.b.sessions[0]!.commands;
      const i = cmds.indexOf('RSET');
      assert.ok(i > 0 && cmds[i - 1] === 'RCPT TO:<r@y.test>' && cmds[i + 1]!.startsWith('XCLIENT ADDR=127.0.0.32'), JSON.stringify(cmds));
      assert.equal(r.b.accepted.length, 1, 'only the second session\'s message');
    } finally {
      await r.stop();
    }
  });

  it('off: every session connects', async () => {
    const r = await rig(false);
    try {
      for (let i = 1; i <= 3; i++) await session(r.p.port, '127.0.0.1', i);
      await sleep(30);
      assert.equal(r.b.sessions.length, 3);
    } finally {
      await r.stop();
    }
  });

  it('a kept connection the back-end closed, or that refuses the new XCLIENT, is replaced unseen', async () => {
    let refuseNext = false;
    const r = await rig(true, {
      onCommand: (line) => {
        if (line.startsWith('XCLIENT') && refuseNext) {
          refuseNext = false;
          return '421 4.3.2 Service shutting down';
        }
        return undefined;
      },
    });
    try {
      await session(r.p.port, '127.0.0.21', 1);
      await sleep(30);
      // The back-end ends the parked connection (as Postfix does after its idle timeout).
      r.b.sessions[0]!.socket.end('421 4.4.2 fake.backend Error: timeout exceeded\r\n');
      await sleep(50);
      await session(r.p.port, '127.0.0.22', 2);
      assert.equal(r.b.sessions.length, 2);
      await sleep(30);
      refuseNext = true;
      await session(r.p.port, '127.0.0.23', 3);
      assert.equal(r.b.sessions.length, 3, 'a new connection after the refused XCLIENT');
      assert.equal(r.b.accepted.length, 3);
    } finally {
      await r.stop();
    }
  });

  it('never kept: AUTH to the back-end, or a back-end without XCLIENT while xclient is on', async () => {
    const r = await rig(true, { xclient: null });
    try {
      for (let i = 1; i <= 2; i++) await session(r.p.port, '127.0.0.1', i);
      await sleep(30);
      assert.equal(r.b.sessions.length, 2, 'without XCLIENT the next session would inherit the last client');
    } finally {
      await r.stop();
    }
  });

  it('check-config: backend_reuse needs transaction mode', async () => {
    const { parseConfig, ConfigError } = await import('../../src/config/load.js');
    assert.throws(() => parseConfig('backend_reuse: { enabled: true }\n'), (e: unknown) => e instanceof ConfigError && /backend_reuse\.enabled: needs proxy_mode: transaction/.test(e.message));
  });
});

describe('backend_reuse: a connection carried through many sessions', () => {
  it('gathers no listeners session after session (a detach per session adds nothing)', async () => {
    const b = await FakeBackend.start({});
    const p = await startPostern({ proxy_mode: 'transaction', route: { static: `127.0.0.1:${b.port}` }, backend_reuse: { enabled: true } });
    const warnings: string[] = [];
    const onWarn = (w: Error): void => void warnings.push(w.name);
    process.on('warning', onWarn);
    try {
      for (let i = 1; i <= 15; i++) {
        await session(p.port, '127.0.0.1', i);
        await sleep(10);
      }
      assert.equal(b.sessions.length, 1);
      assert.deepEqual(warnings.filter((w) => w === 'MaxListenersExceededWarning'), []);
    } finally {
      process.removeListener('warning', onWarn);
      await p.stop();
      await b.stop();
    }
  });
});

describe('backend_reuse with a pool', () => {
  it('a kept connection counts once against max_connections: sessions one after another all go through', async () => {
    const b = await FakeBackend.start({});
    const p = await startPostern({
      proxy_mode: 'transaction',
      pools: { mx: { servers: [{ address: `127.0.0.1:${b.port}`, max_connections: 1 }], health: { enabled: false } } },
      route: { static: 'mx' },
      backend_reuse: { enabled: true },
    });
    try {
      for (let i = 1; i <= 4; i++) {
        await session(p.port, '127.0.0.1', i);
        await sleep(20);
      }
      assert.equal(b.sessions.length, 1);
      assert.equal(b.accepted.length, 4);
    } finally {
      await p.stop();
      await b.stop();
    }
  });

  it('a server the health checks take out of rotation has its kept connections closed at once, not at their idle time', async () => {
    let failChecks = false;
    // Health checks say EHLO proxy.test on their own connections; sessions on a kept one say XCLIENT.
    const b = await FakeBackend.start({ onCommand: (line) => (failChecks && line === 'EHLO proxy.test' ? '421 4.3.2 going down' : undefined) });
    const p = await startPostern({
      proxy_mode: 'transaction',
      server_name: 'proxy.test',
      pools: { mx: { servers: [{ address: `127.0.0.1:${b.port}` }], health: { enabled: false } } },
      route: { static: 'mx' },
      backend_reuse: { enabled: true, idle: '60s' },
    });
    // The instance's checker (src/net/instance.ts applies its verdicts to the worker's pools the same way).
    const checker = new HealthChecker({ pools: { mx: { servers: [{ id: `127.0.0.1:${b.port}`, host: '127.0.0.1', port: b.port, weight: 1, backup: false, maxConnections: 0 }], health: { enabled: true, interval: 50, timeout: 500, rise: 1, fall: 1, starttls: false, protocol: 'smtp' } } }, ehloName: 'proxy.test' });
    checker.on('change', (c) => p.server.pools.setUp(c.pool, c.server, c.up));
    checker.start();
    try {
      await session(p.port, '127.0.0.1', 1);
      await sleep(50);
      const kept = b.sessions.find((s) => s.commands.some((l) => l.startsWith('MAIL FROM:')))!;
      assert.ok(kept && !kept.socket.destroyed, 'the session\'s connection is kept');
      failChecks = true;
      for (let i = 0; i < 40 && !kept.socket.destroyed; i++) await sleep(50);
      assert.equal(kept.socket.destroyed, true, 'closed when the server went down, long before idle: 60s');
      assert.equal(kept.commands.at(-1), 'QUIT');
      assert.ok(p.logs.some((l) => l.msg === 'kept back-end connections closed: their server is out of rotation' && l.closed === 1));
    } finally {
      checker.stop();
      await p.stop();
      await b.stop();
    }
  });
});
