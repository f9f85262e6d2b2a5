/**
 * Metrics, health and status end to end: Postern as a process (one process, and `workers: 2`)
 * with `metrics.listen` on loopback, mail through it to a scripted back-end, then `/metrics`
 * scraped (values, the two workers' sessions adding up, promtool), `/livez`, `/readyz` (ready;
 * not ready while every pool server is down, ready again when it is back) and `/status.json`.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, it } from 'node:test';
import { AuthStub, okAnswer } from '../helpers/auth-stub.js';
import { closedPort, FakeBackend } from '../helpers/fake-backend.js';
import { get, hasMetric, metric, needPromtool, promtoolCheck, until } from '../helpers/metrics.js';
import { startPosternProcess, type PosternProcess } from '../helpers/postern-process.js';
import { SmtpClient } from '../helpers/smtp-client.js';
import { FakeImap } from './imap-backend.js';
import { ImapClient } from './imap-client.js';

const BODY = 'Subject: metrics\r\n\r\nhello\r\n';

/** One whole session: EHLO, MAIL, one RCPT per recipient, DATA, QUIT. */
async function deliver(port: number, rcpts = ['r@y.test']): Promise<void> {
  const c = await SmtpClient.connect(port);
  try {
    assert.match(replyCode(await c.reply()), /^220/);
    await c.cmd('EHLO client.test');
    assert.match(await c.cmd('MAIL FROM:<s@x.test>'), /^250/);
    for (const r of rcpts) assert.match(await c.cmd(`RCPT TO:<${r}>`), /^250/);
    assert.match(await c.data(BODY), /^250/);
    assert.match(await c.cmd('QUIT'), /^221/);
    await c.waitClosed();
  } finally {
    c.close();
  }
}

const replyCode = (r: { code: number }): string => String(r.code);

/** The metrics listener's port, from its log line. */
async function metricsPort(p: PosternProcess): Promise<number> {
  const r = await p.waitForLog((x) => x.msg === 'metrics listening', 10_000);
  return Number(String(r.metrics).split(':').pop());
}

const accessRecords = (p: PosternProcess) => p.logs.filter((r) => r.type === 'access');

describe('metrics: one process', () => {
  it('counts sessions, messages, recipients, refusals and latencies; /livez, /readyz, /status.json; promtool', async (t) => {
    const backend = await FakeBackend.start();
    const auth = await AuthStub.start(okAnswer(backend.port));
    const p = await startPosternProcess({
      proxy_mode: 'transaction',
      route: { auth_http: { url: auth.url } },
      metrics: { listen: '127.0.0.1:0' },
      limits: { connection_rate: { max: 3, per: '60s' } },
    });
    try {
      const mport = await metricsPort(p);
      await deliver(p.port, ['a@y.test', 'b@y.test']);
      await deliver(p.port);
      await deliver(p.port);
      // The fourth connection within the minute is over limits.connection_rate: refused at accept.
      const refused = await SmtpClient.connect(p.port);
      assert.match(replyCode(await refused.reply()), /^421/);
      refused.close();
      await until(() => accessRecords(p).length === 3, 'three access records');

      const m = await get(mport, '/metrics');
      assert.equal(m.status, 200);
      assert.match(m.type ?? '', /^text\/plain; version=0\.0\.4/);
      const L = { listener: '127.0.0.1:0' };
      assert.equal(metric(m.body, 'postern_sessions_total', { ...L, outcome: 'relayed' }), 3, 'a session that reached a back-end is relayed');
      assert.equal(metric(m.body, 'postern_current_sessions', L), 0);
      assert.equal(metric(m.body, 'postern_messages_total', { ...L, result: 'accepted' }), 3);
      assert.equal(metric(m.body, 'postern_recipients_total', { ...L, result: 'accepted' }), 4);
      assert.equal(metric(m.body, 'postern_check_refusals_total', { ...L, code: 'PST_RATE_CONNECTIONS' }), 1);
      assert.equal(metric(m.body, 'postern_auth_http_duration_seconds_count', { result: 'ok' }), auth.requests.length);
      assert.equal(auth.requests.length, 4, 'one request per RCPT in transaction mode');
      assert.ok(metric(m.body, 'postern_backend_connect_duration_seconds_count', { pool: '', result: 'ok' }) >= 3);
      const bytesIn = accessRecords(p).reduce((n, r) => n + Number(r.bytes_in), 0);
      assert.equal(metric(m.body, 'postern_bytes_in_total', L), bytesIn, 'the access records\' bytes');
      assert.equal(metric(m.body, 'postern_workers'), 1);
      assert.ok(hasMetric(m.body, 'postern_build_info'));

      assert.deepEqual(await get(mport, '/livez').then((r) => [r.status, r.body]), [200, 'ok\n']);
      assert.deepEqual(await get(mport, '/readyz').then((r) => [r.status, r.body]), [200, 'ok\n']);
      assert.equal((await get(mport, '/nothing-here')).status, 404);
      const s = JSON.parse((await get(mport, '/status.json')).body) as { mode: string; totals: Record<string, number>; servers: { listener: string; route: string }[]; listeners: { bound: string[] } };
      assert.equal(s.mode, 'single');
      assert.equal(s.totals.sessions, 3);
      assert.equal(s.totals.refusals, 1);
      assert.equal(s.servers[0]!.route, `auth_http ${auth.url}`);
      assert.deepEqual(s.listeners.bound, [`127.0.0.1:${p.port}`]);

      if (needPromtool(t)) {
        const r = await promtoolCheck(m.body);
        assert.equal(r.code, 0, `promtool: ${r.output}`);
      }
    } finally {
      await p.stop();
      await auth.stop();
      await backend.stop();
    }
  });

  it('/readyz is 503 while every pool server is down', async () => {
    const p = await startPosternProcess({
      pools: { mx: { servers: [`127.0.0.1:${await closedPort()}`], health: { interval: '200ms', timeout: '500ms', fall: 1 } } },
      route: { static: 'mx' },
      metrics: { listen: '127.0.0.1:0' },
    });
    try {
      const mport = await metricsPort(p);
      await until(async () => (await get(mport, '/readyz')).status === 503, '/readyz 503');
      const r = await get(mport, '/readyz');
      assert.match(r.body, /^not ready: every pool server is down \(mx 127\.0\.0\.1:\d+\)\n$/);
      assert.equal((await get(mport, '/livez')).status, 200, 'alive all the same');
      assert.equal(metric((await get(mport, '/metrics')).body, 'postern_backend_up', { pool: 'mx' }), 0);
    } finally {
      await p.stop();
    }
  });
});

describe('metrics: an IMAP server', () => {
  it('its sessions are counted as SMTP ones are: relayed, refused logins, back-end set-up', async () => {
    const backend = await FakeImap.start();
    const auth = await AuthStub.start(okAnswer(backend.port));
    const p = await startPosternProcess({ protocol: 'imap', route: { auth_http: { url: auth.url } }, metrics: { listen: '127.0.0.1:0' } });
    try {
      const mport = await metricsPort(p);
      const c = await ImapClient.connect(p.port);
      await c.read(/^\* OK/);
      assert.match((await c.cmd('a1', 'LOGIN alice secret')).at(-1)!, /^a1 OK/);
      assert.match((await c.cmd('a2', 'LOGOUT')).at(-1)!, /^a2 OK/);
      await c.ended();
      auth.answer = { 'Auth-Status': 'Invalid login or password', 'Auth-Wait': '0' };
      const d = await ImapClient.connect(p.port);
      await d.read(/^\* OK/);
      assert.deepEqual(await d.cmd('b1', 'LOGIN mallory guess'), ['b1 NO Invalid login or password']);
      d.close();
      await until(() => accessRecords(p).length === 2, 'two access records');
      const m = (await get(mport, '/metrics')).body;
      const L = { listener: '127.0.0.1:0' };
      assert.equal(metric(m, 'postern_sessions_total', { ...L, outcome: 'relayed' }), 1);
      assert.equal(metric(m, 'postern_sessions_total', L), 2);
      assert.equal(metric(m, 'postern_backend_connect_duration_seconds_count', { result: 'ok' }), 1, 'one back-end set-up, timed');
    } finally {
      await p.stop();
      await auth.stop();
      await backend.stop();
    }
  });
});

describe('metrics: workers: 2', () => {
  it('the primary merges both workers: their sessions add up; readiness follows the pool', async (t) => {
    const backend = await FakeBackend.start();
    const p = await startPosternProcess({
      workers: 2,
      pools: { mx: { servers: [`127.0.0.1:${backend.port}`], health: { interval: '200ms', timeout: '500ms', fall: 1, rise: 1 } } },
      route: { static: 'mx' },
      metrics: { listen: '127.0.0.1:0' },
    });
    try {
      const mport = await metricsPort(p);
      await p.waitForLog((r) => r.msg === 'worker started' && p.logs.filter((x) => x.msg === 'worker started').length === 2, 10_000);
      await until(async () => (await get(mport, '/readyz')).status === 200, '/readyz 200 once both workers listen');
      // The kernel spreads connections over the two workers' accept queues; go on until both have served some.
      const pids = (): Set<unknown> => new Set(accessRecords(p).map((r) => r.pid));
      let sent = 0;
      while (sent < 6 || pids().size < 2) {
        assert.ok(sent < 200, 'every session went to one worker');
        await Promise.all([deliver(p.port), deliver(p.port)]);
        sent += 2;
        await until(() => accessRecords(p).length === sent, `${sent} access records`);
      }
      const perWorker = [...pids()].map((pid) => accessRecords(p).filter((r) => r.pid === pid).length);
      assert.equal(perWorker.length, 2);
      assert.ok(perWorker.every((n) => n > 0));

      const m = await get(mport, '/metrics');
      assert.equal(metric(m.body, 'postern_sessions_total', { outcome: 'relayed' }), sent, `${perWorker.join(' + ')} sessions`);
      assert.equal(metric(m.body, 'postern_current_sessions'), 0);
      assert.equal(metric(m.body, 'postern_bytes_in_total'), accessRecords(p).reduce((n, r) => n + Number(r.bytes_in), 0));
      assert.equal(metric(m.body, 'postern_backend_connect_duration_seconds_count', { pool: 'mx', result: 'ok' }), sent);
      assert.equal(metric(m.body, 'postern_backend_up', { pool: 'mx', server: `127.0.0.1:${backend.port}` }), 1, 'the primary\'s verdict, once');
      assert.equal(metric(m.body, 'postern_backend_usable', { pool: 'mx' }), 1, 'min of the workers');
      assert.ok(metric(m.body, 'postern_backend_checks_total', { pool: 'mx', result: 'ok' }) >= 1);
      assert.equal(metric(m.body, 'postern_workers'), 2);
      assert.equal((m.body.match(/^# TYPE postern_sessions_total /gm) ?? []).length, 1, 'one family, merged');
      const s = JSON.parse((await get(mport, '/status.json')).body) as { mode: string; workers: number; totals: Record<string, number>; pools: { servers: { up: boolean }[] }[] };
      assert.deepEqual([s.mode, s.workers, s.totals.sessions, s.pools[0]!.servers[0]!.up], ['cluster', 2, sent, true]);
      if (needPromtool(t)) {
        const r = await promtoolCheck(m.body);
        assert.equal(r.code, 0, `promtool: ${r.output}`);
      }

      // Every pool server down: not ready, though the listeners stay bound; back up: ready again.
      const port = backend.port;
      await backend.stop();
      await until(async () => (await get(mport, '/readyz')).status === 503, '/readyz 503 with the back-end gone');
      assert.match((await get(mport, '/readyz')).body, /every pool server is down/);
      const again = net.createServer((sock) => {
        sock.on('error', () => {});
        sock.write('220 again.test ESMTP\r\n');
        sock.on('data', (d: Buffer) => sock.write(/^QUIT/im.test(d.toString()) ? '221 bye\r\n' : '250 again.test\r\n'));
      });
      await new Promise<void>((r) => again.listen(port, '127.0.0.1', r));
      try {
        await until(async () => (await get(mport, '/readyz')).status === 200, '/readyz 200 with the server back');
      } finally {
        again.close();
      }
    } finally {
      await p.stop();
      await backend.stop().catch(() => {});
    }
  });
});
