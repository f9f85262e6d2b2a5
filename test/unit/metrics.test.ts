/**
 * The metric set (src/observe/metrics.ts): access records, message events and refusals fed to a
 * server block's observer come out as the exposition text says; the protocol wrapper counts
 * sessions as they start and times back-end set-up; the base router is timed only when it
 * answers later (auth_http); the pool gauges; workers' registries merged by each metric's
 * aggregator; readiness's back-end rule; and the whole exposition through promtool.
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { describe, it } from 'node:test';
import { AggregatorRegistry, Registry } from 'prom-client';
import type { Router } from '../../src/auth/router.js';
import { parseConfig } from '../../src/config/load.js';
import type { RouteDecision } from '../../src/domain.js';
import { PosternError } from '../../src/errors.js';
import { createLogger } from '../../src/log/logger.js';
import { backendProblem } from '../../src/observe/http.js';
import type { MetricsJson } from '../../src/observe/metrics-cluster.js';
import { registerInstanceMetrics, registerProcessMetrics, replyResult, SessionMetrics } from '../../src/observe/metrics.js';
import type { SessionRecord } from '../../src/observe/observer.js';
import type { HealthChecker } from '../../src/pools/checker.js';
import { PoolRegistry } from '../../src/pools/pool.js';
import type { HealthSnapshotEntry } from '../../src/pools/types.js';
import type { BackendDone, ProtocolModule, ProtocolSession } from '../../src/protocol.js';
import { metric, needPromtool, promtoolCheck } from '../helpers/metrics.js';

const config = parseConfig('server_name: mx.test\nlisten: ["127.0.0.1:2525", "127.0.0.1:587"]\n');
const server = config.servers[0]!;
const L = { listener: '127.0.0.1:2525' };
const silent = createLogger('silent');

const session = (r: Partial<SessionRecord>): SessionRecord => ({ client: '192.0.2.7:40000', bytes_in: 100, bytes_out: 50, duration_ms: 3, outcome: 'quit', ...r });

const text = (m: SessionMetrics | Registry): Promise<string> => ('registry' in m ? m.registry : m).metrics();

describe('metrics: an observer fed records', () => {
  it('counts sessions by outcome, bytes, TLS handshakes and refusals, per server block', async () => {
    const m = new SessionMetrics(new Registry());
    const o = m.forServer(server, null).observer;
    o.sessionEnd!(session({ outcome: 'relayed', tls: 'TLSv1.3', bytes_in: 1000, bytes_out: 200 }));
    o.sessionEnd!(session({ outcome: 'quit', backend_session: 3 }));
    o.sessionEnd!(session({ outcome: 'PST_TLS_HANDSHAKE' }));
    o.sessionEnd!(session({ outcome: 'PST_TLS_CLIENT_CERT_MISSING', tls: 'TLSv1.2' }));
    o.sessionEnd!(session({ outcome: 'PST_DNSBL_LISTED', checks: { dnsbl: { score: 2 }, refused: ['PST_DNSBL_LISTED: 554'] } }));
    o.sessionEnd!(session({ outcome: 'quit', checks: { refused: ['PST_POLICY_REFUSED: 450', 'PST_RATE_RECIPIENTS: 452', 'PST_POLICY_REFUSED: 554'] } }));
    o.connectionRefused!('PST_RATE_CONNECTIONS');
    const t = await text(m);
    assert.equal(metric(t, 'postern_sessions_total', { ...L, outcome: 'relayed' }), 1);
    assert.equal(metric(t, 'postern_sessions_total', { ...L, outcome: 'quit' }), 2);
    assert.equal(metric(t, 'postern_sessions_total', L), 6, 'a refused connection is not a session');
    assert.equal(metric(t, 'postern_bytes_in_total', L), 1500);
    assert.equal(metric(t, 'postern_bytes_out_total', L), 450);
    assert.equal(metric(t, 'postern_backend_reused_sessions_total', L), 1, 'one session went on a kept back-end connection');
    assert.match(t, /^postern_tls_handshakes_total\{listener="127\.0\.0\.1:2525",protocol="TLSv1\.3",result="ok"\} 1$/m);
    assert.equal(metric(t, 'postern_tls_handshakes_total', { protocol: 'unknown', result: 'failed' }), 1);
    assert.equal(metric(t, 'postern_tls_handshakes_total', { protocol: 'TLSv1.2', result: 'refused' }), 1);
    assert.equal(metric(t, 'postern_tls_handshakes_total', {}), 3, 'sessions without TLS are not handshakes');
    assert.equal(metric(t, 'postern_check_refusals_total', { code: 'PST_POLICY_REFUSED' }), 2);
    assert.equal(metric(t, 'postern_check_refusals_total', { code: 'PST_DNSBL_LISTED' }), 1);
    assert.equal(metric(t, 'postern_check_refusals_total', { code: 'PST_RATE_RECIPIENTS' }), 1);
    assert.equal(metric(t, 'postern_check_refusals_total', { code: 'PST_RATE_CONNECTIONS' }), 1);
    assert.match(t, /^# TYPE postern_sessions_total counter$/m);
    assert.match(t, /^# TYPE postern_current_sessions gauge$/m);
  });

  it('counts messages and their recipients by reply class (transaction mode)', async () => {
    const m = new SessionMetrics(new Registry());
    const o = m.forServer(server, null).observer;
    const rcpt = (code: number) => ({ to: 'r@x.test', code });
    o.message!({ client: 'c', from: 's@x.test', recipients: [rcpt(250), rcpt(250), rcpt(452)], backend: 'b:25', size: 10, code: 250, reply: '2.0.0 Ok' });
    o.message!({ client: 'c', from: 's@x.test', recipients: [rcpt(250), rcpt(550)], backend: 'b:25', size: 10, code: 451, reply: '4.3.0 later' });
    o.message!({ client: 'c', from: 's@x.test', recipients: [rcpt(250)], backend: 'b:25', size: 10, code: 554, reply: '5.7.1 no' });
    const t = await text(m);
    assert.deepEqual(['accepted', 'deferred', 'rejected'].map((result) => metric(t, 'postern_messages_total', { ...L, result })), [1, 1, 1]);
    assert.deepEqual(['accepted', 'deferred', 'rejected'].map((result) => metric(t, 'postern_recipients_total', { ...L, result })), [4, 1, 1]);
    assert.deepEqual([250, 354, 421, 550, 0].map(replyResult), ['accepted', 'other', 'deferred', 'rejected', 'other']);
  });

  it('separate server blocks are separate label values; blocks of one address share them (a reload)', async () => {
    const m = new SessionMetrics(new Registry());
    const two = parseConfig('servers:\n  - listen: ["127.0.0.1:25"]\n  - listen: ["127.0.0.1:465"]\n');
    m.forServer(two.servers[0]!, null).observer.sessionEnd!(session({}));
    m.forServer(two.servers[1]!, null).observer.sessionEnd!(session({}));
    m.forServer(two.servers[1]!, null).observer.sessionEnd!(session({}));
    const t = await text(m);
    assert.equal(metric(t, 'postern_sessions_total', { listener: '127.0.0.1:25' }), 1);
    assert.equal(metric(t, 'postern_sessions_total', { listener: '127.0.0.1:465' }), 2);
  });
});

/** A protocol module whose connect answers after `ms` with `err` (or a session). */
function fakeProtocol(ms: number, err?: PosternError): ProtocolModule {
  return {
    name: 'smtp',
    sessions: () => () => ({ phase: 'greeting' }) as unknown as ProtocolSession,
    connect: (_c, _t, _e, done: BackendDone) => {
      const t = setTimeout(() => (err ? done(err) : done(null, { socket: null as never, tls: null, ready: null })), ms);
      return () => clearTimeout(t);
    },
    refusal: () => Buffer.from('421\r\n'),
    replyCode: () => 250,
  };
}

describe('metrics: the instrumented protocol module and router', () => {
  it('sessions open now are those started and not ended; back-end set-up is timed by pool and result', async () => {
    const m = new SessionMetrics(new Registry());
    const s = m.forServer(server, null);
    const p = s.protocol(fakeProtocol(5));
    const newSession = p.sessions(server.listen[0]!);
    newSession();
    newSession();
    newSession();
    s.observer.sessionEnd!(session({}));
    const t0 = await text(m);
    assert.equal(metric(t0, 'postern_current_sessions', L), 2);
    const connect = (pm: ProtocolModule, pool?: string) =>
      new Promise<void>((r) => pm.connect({ addr: '192.0.2.7', port: 1, name: '[UNAVAILABLE]' }, { kind: 'ok', host: pool ? '' : '127.0.0.1', port: pool ? 0 : 25, ...(pool ? { pool } : {}) }, { from: null, to: [] } as never, () => r()));
    await connect(p, 'mx');
    await connect(p);
    await connect(s.protocol(fakeProtocol(1, new PosternError('PST_POOL_EXHAUSTED', 'all down'))), 'mx');
    const t = await text(m);
    assert.equal(metric(t, 'postern_backend_connect_duration_seconds_count', { pool: 'mx', result: 'ok' }), 1);
    assert.equal(metric(t, 'postern_backend_connect_duration_seconds_count', { pool: '', result: 'ok' }), 1);
    assert.equal(metric(t, 'postern_backend_connect_duration_seconds_count', { pool: 'mx', result: 'PST_POOL_EXHAUSTED' }), 1);
    assert.ok(metric(t, 'postern_backend_connect_duration_seconds_sum', { pool: 'mx', result: 'ok' }) >= 0.004, 'seconds, not milliseconds');
    assert.equal(metric(t, 'postern_backend_connect_duration_seconds_bucket', { pool: 'mx', result: 'ok', le: '+Inf' }), 1);
  });

  it('auth_http is timed when the base router answers later, by result; a synchronous answer is not', async () => {
    const m = new SessionMetrics(new Registry());
    const answers: (RouteDecision | Error)[] = [
      { kind: 'ok', host: '10.0.0.1', port: 25 },
      { kind: 'reject', reply: '535 5.7.8 no', waitMs: 0, reason: 'no' },
      { kind: 'error', code: 'PST_AUTH_HTTP_TIMEOUT', detail: 'slow' },
      new Error('reset'),
    ];
    const later: Router = { route: () => { const a = answers.shift()!; return new Promise((ok, fail) => setTimeout(() => (a instanceof Error ? fail(a) : ok(a)), 2)); }, close: async () => {} };
    const r = m.timeAuthHttp(later);
    for (let i = 0; i < 4; i++) await Promise.resolve(r.route({} as never)).catch(() => {});
    const now: Router = { route: () => ({ kind: 'ok', host: 'h', port: 25 }), close: async () => {} };
    assert.deepEqual(m.timeAuthHttp(now).route({} as never), { kind: 'ok', host: 'h', port: 25 });
    const t = await text(m);
    for (const result of ['ok', 'reject', 'PST_AUTH_HTTP_TIMEOUT', 'PST_AUTH_HTTP_UNAVAILABLE']) {
      assert.equal(metric(t, 'postern_auth_http_duration_seconds_count', { result }), 1, result);
    }
    assert.equal(metric(t, 'postern_auth_http_duration_seconds_count'), 4);
  });

  it('pool servers: connections held and usability (active verdict and passive hold)', async () => {
    const m = new SessionMetrics(new Registry());
    const cfg = parseConfig('pools:\n  mx: { servers: ["10.0.0.1:25", "10.0.0.2:25", "10.0.0.3:25"], max_fails: 1 }\nroute: { static: mx }\n');
    const pools = new PoolRegistry(cfg.pools, silent);
    m.forServer(cfg.servers[0]!, pools);
    const mx = pools.get('mx')!;
    mx.acquire(0);
    mx.acquire(0);
    mx.failed(1, 'refused');
    pools.setUp('mx', '10.0.0.3:25', false);
    const t = await text(m);
    const at = (server: string) => ({ pool: 'mx', server });
    assert.deepEqual(['10.0.0.1:25', '10.0.0.2:25', '10.0.0.3:25'].map((s) => metric(t, 'postern_backend_current_connections', at(s))), [2, 0, 0]);
    assert.deepEqual(['10.0.0.1:25', '10.0.0.2:25', '10.0.0.3:25'].map((s) => metric(t, 'postern_backend_usable', at(s))), [1, 0, 0]);
  });
});

/** A health checker stand-in: a snapshot and `check` events. */
function fakeChecker(entries: HealthSnapshotEntry[]): HealthChecker {
  const e = new EventEmitter() as EventEmitter & { snapshot(): HealthSnapshotEntry[] };
  e.snapshot = () => entries.map((x) => ({ ...x }));
  return e as unknown as HealthChecker;
}

const entry = (server: string, up: boolean): HealthSnapshotEntry => ({ pool: 'mx', server, up, reason: up ? 'ok' : 'check failed 3 times', since: 1_700_000_000_000, lastCheck: null, lastResult: null, checked: true });

describe('metrics: the instance and the cluster', () => {
  it('the checker\'s verdicts, its checks, the version and the workers', async () => {
    const reg = new Registry();
    const checker = fakeChecker([entry('10.0.0.1:25', true), entry('10.0.0.2:25', false)]);
    const stop = registerInstanceMetrics(reg, { checker: () => checker, version: '9.9.9', workers: () => 3 });
    checker.emit('check', { pool: 'mx', server: '10.0.0.2:25', ok: false, reason: 'connect ECONNREFUSED', ms: 12 });
    checker.emit('check', { pool: 'mx', server: '10.0.0.2:25', ok: false, reason: 'connect ECONNREFUSED', ms: 8 });
    checker.emit('check', { pool: 'mx', server: '10.0.0.1:25', ok: true, reason: 'ok', ms: 4 });
    const t = await reg.metrics();
    stop();
    assert.equal(metric(t, 'postern_backend_up', { pool: 'mx', server: '10.0.0.1:25' }), 1);
    assert.equal(metric(t, 'postern_backend_up', { pool: 'mx', server: '10.0.0.2:25' }), 0);
    assert.equal(metric(t, 'postern_backend_checks_total', { server: '10.0.0.2:25', result: 'failed' }), 2);
    assert.equal(metric(t, 'postern_backend_checks_total', { server: '10.0.0.1:25', result: 'ok' }), 1);
    assert.equal(metric(t, 'postern_backend_check_duration_seconds', { server: '10.0.0.2:25' }), 0.008);
    assert.equal(metric(t, 'postern_backend_last_change_timestamp_seconds', { server: '10.0.0.2:25' }), 1_700_000_000);
    assert.equal(metric(t, 'postern_build_info', { version: '9.9.9' }), 1);
    assert.equal(metric(t, 'postern_workers'), 3);
  });

  it('a reload\'s new checker is followed', async () => {
    const reg = new Registry();
    let checker = fakeChecker([entry('10.0.0.1:25', true)]);
    const stop = registerInstanceMetrics(reg, { checker: () => checker, version: '1', workers: () => 1 });
    checker.emit('check', { pool: 'mx', server: '10.0.0.1:25', ok: true, reason: 'ok', ms: 1 });
    const old = checker;
    checker = fakeChecker([entry('10.0.0.1:25', false)]);
    await reg.metrics(); // a scrape notices the new one
    old.emit('check', { pool: 'mx', server: '10.0.0.1:25', ok: true, reason: 'ok', ms: 1 });
    checker.emit('check', { pool: 'mx', server: '10.0.0.1:25', ok: false, reason: 'down', ms: 1 });
    const t = await reg.metrics();
    stop();
    assert.equal(metric(t, 'postern_backend_checks_total', { result: 'ok' }), 1, 'the old checker is no longer heard');
    assert.equal(metric(t, 'postern_backend_checks_total', { result: 'failed' }), 1);
    assert.equal(metric(t, 'postern_backend_up'), 0);
  });

  it('two workers and the primary merge by aggregator: sums, the minimum of usability, the primary\'s own', async () => {
    const cfg = parseConfig('listen: ["127.0.0.1:2525"]\npools:\n  mx: { servers: ["10.0.0.1:25", "10.0.0.2:25"], max_fails: 1 }\nroute: { static: mx }\n');
    const workers = [0, 1].map(() => {
      const m = new SessionMetrics(new Registry());
      registerProcessMetrics(m.registry);
      const pools = new PoolRegistry(cfg.pools, silent);
      const s = m.forServer(cfg.servers[0]!, pools);
      s.protocol(fakeProtocol(0)).sessions(cfg.servers[0]!.listen[0]!)();
      return { m, s, pools };
    });
    workers[0]!.s.observer.sessionEnd!(session({ outcome: 'relayed' }));
    workers[1]!.s.observer.sessionEnd!(session({ outcome: 'relayed' }));
    workers[1]!.s.observer.sessionEnd!(session({ outcome: 'quit' }));
    workers[0]!.pools.get('mx')!.acquire(0);
    workers[1]!.pools.get('mx')!.acquire(0);
    workers[1]!.pools.get('mx')!.failed(1, 'refused'); // one worker holds 10.0.0.2 out
    const primary = new Registry();
    registerProcessMetrics(primary);
    const stop = registerInstanceMetrics(primary, { checker: () => fakeChecker([entry('10.0.0.1:25', true), entry('10.0.0.2:25', true)]), version: '1', workers: () => 2 });
    const all = [...(await Promise.all(workers.map((w) => w.m.registry.getMetricsAsJSON()))), await primary.getMetricsAsJSON()] as MetricsJson[];
    const t = await AggregatorRegistry.aggregate(all).metrics();
    stop();
    assert.equal(metric(t, 'postern_sessions_total', { outcome: 'relayed' }), 2);
    assert.equal(metric(t, 'postern_sessions_total'), 3);
    assert.equal(metric(t, 'postern_current_sessions'), -1, 'started 2, ended 3: the sum of started − ended');
    assert.equal(metric(t, 'postern_bytes_in_total'), 300);
    assert.equal(metric(t, 'postern_backend_current_connections', { server: '10.0.0.1:25' }), 2);
    assert.equal(metric(t, 'postern_backend_usable', { server: '10.0.0.1:25' }), 1);
    assert.equal(metric(t, 'postern_backend_usable', { server: '10.0.0.2:25' }), 0, 'min: held out by one worker');
    assert.equal(metric(t, 'postern_backend_up', { server: '10.0.0.2:25' }), 1);
    assert.equal(metric(t, 'postern_workers'), 2);
    assert.ok(metric(t, 'process_resident_memory_bytes') > 0);
  });
});

describe('readiness: a usable back-end', () => {
  const snap = (...up: boolean[]) => up.map((u, i) => entry(`10.0.0.${i + 1}:25`, u));
  it('without pools, or with a route to host:port, a back-end is usable', () => {
    assert.equal(backendProblem(parseConfig('route: { static: "127.0.0.1:25" }\n'), []), null);
    const cfg = parseConfig('pools:\n  mx: { servers: ["10.0.0.1:25"] }\nroute: { static: "127.0.0.1:25" }\n');
    assert.equal(backendProblem(cfg, snap(false)), null);
    const rules = parseConfig('pools:\n  mx: { servers: ["10.0.0.1:25"] }\nroute:\n  rules:\n    rules: [{ rcpt_domain: [x.test], to: mx }]\n    default: { to: "127.0.0.1:25" }\n');
    assert.equal(backendProblem(rules, snap(false)), null);
  });
  it('with pools only, one server up is enough; none up is not ready', () => {
    const cfg = parseConfig('pools:\n  mx: { servers: ["10.0.0.1:25", "10.0.0.2:25"] }\nroute: { static: mx }\n');
    assert.equal(backendProblem(cfg, snap(false, true)), null);
    assert.equal(backendProblem(cfg, snap(false, false)), 'every pool server is down (mx 10.0.0.1:25, mx 10.0.0.2:25)');
    const auth = parseConfig('pools:\n  mx: { servers: ["10.0.0.1:25"] }\nroute: { auth_http: { url: "http://127.0.0.1:9000/auth" } }\n');
    assert.match(backendProblem(auth, snap(false)) ?? '', /every pool server is down/);
  });
});

describe('the exposition passes promtool check metrics', () => {
  it('every metric, with values', async (t) => {
    if (!needPromtool(t)) return;
    const m = new SessionMetrics(new Registry());
    registerProcessMetrics(m.registry);
    const cfg = parseConfig('pools:\n  mx: { servers: ["10.0.0.1:25"] }\nroute: { static: mx }\n');
    const s = m.forServer(cfg.servers[0]!, new PoolRegistry(cfg.pools, silent));
    s.observer.sessionEnd!(session({ outcome: 'relayed', tls: 'TLSv1.3', checks: { refused: ['PST_POLICY_REFUSED: 554'] } }));
    s.observer.message!({ client: 'c', from: 'a@b', recipients: [{ to: 'c@d', code: 250 }], backend: 'b', size: 1, code: 250, reply: 'ok' });
    await new Promise<void>((r) => s.protocol(fakeProtocol(0)).connect({ addr: 'a', port: 1, name: 'n' }, { kind: 'ok', host: '', port: 0, pool: 'mx' }, {} as never, () => r()));
    await m.timeAuthHttp({ route: async () => ({ kind: 'ok', host: 'h', port: 25 }), close: async () => {} }).route({} as never);
    const stop = registerInstanceMetrics(m.registry, { checker: () => fakeChecker([entry('10.0.0.1:25', true)]), version: '1', workers: () => 1 });
    const exposition = await m.registry.metrics();
    stop();
    const r = await promtoolCheck(exposition);
    assert.equal(r.code, 0, `promtool: ${r.output}\n${exposition}`);
    assert.equal(r.output.trim(), '');
  });
});
