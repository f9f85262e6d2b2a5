/**
 * The active SMTP check against real peers on loopback — smtp-sink, a real Postfix with STARTTLS,
 * and scripted node servers for the faults (refusal, stall, drop, TLS with the wrong CA or name) —
 * and always a QUIT; then the checker on a short interval (down after `fall`, back after `rise`,
 * one change each), startHealthChecks with its status file and `postern status`, and the cluster
 * IPC that carries verdicts to workers.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import cluster from 'node:cluster';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { parseConfig } from '../../src/config/load.js';
import { createLogger } from '../../src/log/logger.js';
import { broadcastHealth, serveHealthSnapshots } from '../../src/pools/ipc.js';
import { HealthChecker, startHealthChecks } from '../../src/pools/checker.js';
import { probeSmtp, type ProbeOptions } from '../../src/pools/probe.js';
import { readStatus, statusCommand, statusFilePath } from '../../src/pools/status.js';
import type { HealthChange, PoolServer } from '../../src/pools/types.js';
import { closedPort } from '../helpers/fake-backend.js';
import { startPostfix, TLS_FIXTURES, type PostfixInstance } from '../helpers/postfix.js';
import { startSmtpSink, type SmtpSinkInstance } from '../helpers/smtp-sink.js';

const root = path.resolve(import.meta.dirname, '../..');
const fixture = (f: string): Buffer => readFileSync(path.join(TLS_FIXTURES, f));
const CA = fixture('ca.pem');
const OTHER_CA = fixture('other-ca.pem');
const BACKEND_CTX = tls.createSecureContext({ cert: fixture('backend.pem'), key: fixture('backend.key') });
const TLS_OK = { ca: CA, verify: true, serverName: 'backend.test', minVersion: 'TLSv1.2' as const };

/** What a scripted server does with a command line: reply text (CRLF added), or a fault. */
type Act = string | 'close' | 'stall' | 'starttls' | undefined;

interface FakeSmtpOptions {
  /** Greeting text, or 'stall'/'close'. Default `220 fake.test ESMTP`. */
  greeting?: Act;
  /** Offer STARTTLS in the EHLO reply (and upgrade on it) with the backend.test certificate. */
  starttls?: boolean;
  /** TLS from the first byte. */
  implicitTls?: boolean;
  /** Overrides the default answer to a line; return undefined for the default. */
  onLine?: (line: string, secure: boolean) => Act;
}

interface FakeSmtp {
  port: number;
  /** Command lines of every session, one array per session, in order. */
  sessions: string[][];
  /** Sessions whose socket has closed. */
  closed: number;
  stop(): Promise<void>;
}

async function fakeSmtp(o: FakeSmtpOptions = {}): Promise<FakeSmtp> {
  const sessions: string[][] = [];
  const sockets = new Set<net.Socket>();
  const state = { closed: 0 };
  const serve = (sock: net.Socket, secure: boolean, cmds: string[]): void => {
    let buf = '';
    const act = (a: Act): boolean => {
      if (a === 'stall') return false;
      if (a === 'close') {
        sock.end();
        return false;
      }
      if (a !== undefined) sock.write(`${a}\r\n`);
      return true;
    };
    const onData = (d: Buffer): void => {
      buf += d.toString('latin1');
      for (let nl = buf.indexOf('\n'); nl !== -1; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl).replace(/\r$/, '');
        buf = buf.slice(nl + 1);
        cmds.push(line);
        const verb = line.split(' ')[0]!.toUpperCase();
        const custom = o.onLine?.(line, secure);
        if (custom !== undefined) {
          if (!act(custom)) return;
          continue;
        }
        if (verb === 'EHLO') act(`250-fake.test\r\n250-PIPELINING\r\n${o.starttls && !secure ? '250-STARTTLS\r\n' : ''}250 8BITMIME`);
        else if (verb === 'STARTTLS' && o.starttls && !secure) {
          sock.removeListener('data', onData);
          sock.write('220 2.0.0 Ready to start TLS\r\n');
          const s = new tls.TLSSocket(sock, { isServer: true, secureContext: BACKEND_CTX });
          s.on('error', () => {});
          sockets.add(s);
          serve(s, true, cmds);
          return;
        } else if (verb === 'QUIT') {
          sock.end('221 2.0.0 Bye\r\n');
          return;
        } else act('502 5.5.2 unknown');
      }
    };
    sock.on('data', onData);
  };
  const onConnection = (sock: net.Socket): void => {
    const cmds: string[] = [];
    sessions.push(cmds);
    sockets.add(sock);
    sock.on('error', () => {});
    sock.on('close', () => {
      state.closed++;
      sockets.delete(sock);
    });
    const g = o.greeting ?? '220 fake.test ESMTP';
    if (g === 'close') return void sock.end();
    // A stalled greeting still records what the client sends (its QUIT after the timeout).
    if (g !== 'stall') sock.write(`${g}\r\n`);
    serve(sock, !!o.implicitTls, cmds);
  };
  const server = o.implicitTls ? tls.createServer({ cert: fixture('backend.pem'), key: fixture('backend.key') }, onConnection) : net.createServer(onConnection);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port,
    sessions,
    get closed() {
      return state.closed;
    },
    async stop() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

const probe = (port: number, extra: Partial<ProbeOptions> = {}) =>
  probeSmtp({ host: '127.0.0.1', port, ehloName: 'postern.test', timeoutMs: 2000, ...extra });

async function withFake<T>(o: FakeSmtpOptions, fn: (f: FakeSmtp) => Promise<T>): Promise<T> {
  const f = await fakeSmtp(o);
  try {
    return await fn(f);
  } finally {
    await f.stop();
  }
}

async function until(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe('probeSmtp against real peers', () => {
  let sink: SmtpSinkInstance;
  let postfix: PostfixInstance | undefined;
  let postfixError: Error | undefined;
  let postfixStarting: Promise<void>;
  before(async () => {
    // Postfix takes ~3 s to start: start it now, while the other tests run.
    postfixStarting = startPostfix({ tls: true }).then(
      (p) => void (postfix = p),
      (e: Error) => void (postfixError = e),
    );
    sink = await startSmtpSink();
  });
  after(async () => {
    await sink?.stop();
    await postfixStarting;
    await postfix?.stop();
  });

  it('smtp-sink: ok', async () => {
    const r = await probe(sink.port);
    assert.deepEqual({ ok: r.ok, reason: r.reason }, { ok: true, reason: 'ok' });
    assert.ok(r.ms >= 0 && r.ms < 2000);
  });

  it('a closed port: connect ECONNREFUSED', async () => {
    const r = await probe(await closedPort());
    assert.deepEqual({ ok: r.ok, reason: r.reason }, { ok: false, reason: 'connect ECONNREFUSED' });
  });

  it('the full dialogue of a good check: EHLO <name>, QUIT, and the back-end closes', async () => {
    await withFake({}, async (f) => {
      assert.equal((await probe(f.port)).reason, 'ok');
      assert.deepEqual(f.sessions, [['EHLO postern.test', 'QUIT']]);
      await until(() => f.closed === 1, 2000, 'the session to close');
    });
  });

  it('a multi-line 2xx greeting is accepted', async () => {
    await withFake({ greeting: '220-fake.test ESMTP\r\n220-more text\r\n220 end' }, async (f) => {
      assert.equal((await probe(f.port)).reason, 'ok');
    });
  });

  it('greeting 421: failure with the reply text, and still a QUIT', async () => {
    await withFake({ greeting: '421 4.3.2 busy' }, async (f) => {
      const r = await probe(f.port);
      assert.deepEqual({ ok: r.ok, reason: r.reason }, { ok: false, reason: 'greeting 421 4.3.2 busy' });
      await until(() => f.sessions[0]?.includes('QUIT') === true, 2000, 'QUIT');
      assert.deepEqual(f.sessions[0], ['QUIT']);
    });
  });

  it('a multi-line refusal is quoted whole', async () => {
    await withFake({ greeting: '554-5.3.2 not here\r\n554 5.3.2 go away' }, async (f) => {
      assert.equal((await probe(f.port)).reason, 'greeting 554 5.3.2 not here / 5.3.2 go away');
    });
  });

  it('EHLO refused: failure, QUIT', async () => {
    await withFake({ onLine: (l) => (l.startsWith('EHLO') ? '550 5.7.1 no' : undefined) }, async (f) => {
      assert.equal((await probe(f.port)).reason, 'ehlo 550 5.7.1 no');
      await until(() => f.sessions[0]?.at(-1) === 'QUIT', 2000, 'QUIT');
    });
  });

  it('a server that stalls: timeout, naming the step', async () => {
    await withFake({ greeting: 'stall' }, async (f) => {
      const r = await probe(f.port, { timeoutMs: 300 });
      assert.deepEqual({ ok: r.ok, reason: r.reason }, { ok: false, reason: 'timeout after 300 ms at greeting' });
      assert.ok(r.ms >= 290 && r.ms < 1500, `${r.ms} ms`);
      await until(() => f.sessions[0]?.includes('QUIT') === true, 2000, 'QUIT after the timeout');
    });
    await withFake({ onLine: (l) => (l.startsWith('EHLO') ? 'stall' : undefined) }, async (f) => {
      assert.equal((await probe(f.port, { timeoutMs: 300 })).reason, 'timeout after 300 ms at ehlo');
    });
  });

  it('a server that drops the connection after EHLO: failure', async () => {
    await withFake({ onLine: (l) => (l.startsWith('EHLO') ? 'close' : undefined) }, async (f) => {
      const r = await probe(f.port);
      assert.deepEqual({ ok: r.ok, reason: r.reason }, { ok: false, reason: 'ehlo: connection closed by the server' });
    });
  });

  it('a server that does not answer QUIT with 221: failure', async () => {
    await withFake({ onLine: (l) => (l === 'QUIT' ? '250 ok' : undefined) }, async (f) => {
      assert.equal((await probe(f.port)).reason, 'quit 250 ok');
    });
  });

  it('garbage, and replies nobody asked for: failure', async () => {
    await withFake({ greeting: 'hello there' }, async (f) => {
      assert.match((await probe(f.port)).reason, /^greeting: invalid reply: malformed reply line/);
    });
    await withFake({ greeting: '220 fake.test\r\n250 unasked' }, async (f) => {
      assert.equal((await probe(f.port)).reason, 'greeting: unsolicited data after the reply');
    });
  });

  it('STARTTLS with certificate verification against a node TLS server: ok', async () => {
    await withFake({ starttls: true }, async (f) => {
      const r = await probe(f.port, { tls: 'starttls', tlsOptions: TLS_OK });
      assert.equal(r.ok, true, r.reason);
      assert.match(r.reason, /^ok \(TLSv1\.[23]\)$/);
      assert.deepEqual(f.sessions[0], ['EHLO postern.test', 'STARTTLS', 'EHLO postern.test', 'QUIT']);
    });
  });

  it('STARTTLS with the wrong CA, or the wrong name: failure at tls', async () => {
    await withFake({ starttls: true }, async (f) => {
      const r = await probe(f.port, { tls: 'starttls', tlsOptions: { ...TLS_OK, ca: OTHER_CA } });
      assert.equal(r.ok, false);
      assert.match(r.reason, /^tls (UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|SELF_SIGNED_CERT_IN_CHAIN)/);
      const n = await probe(f.port, { tls: 'starttls', tlsOptions: { ...TLS_OK, serverName: 'wrong.test' } });
      assert.match(n.reason, /^tls ERR_TLS_CERT_ALTNAME_INVALID/);
    });
  });

  it('STARTTLS asked for but not offered, or refused: failure, QUIT', async () => {
    await withFake({}, async (f) => {
      assert.equal((await probe(f.port, { tls: 'starttls', tlsOptions: TLS_OK })).reason, 'ehlo: STARTTLS not offered');
      await until(() => f.sessions[0]?.at(-1) === 'QUIT', 2000, 'QUIT');
    });
    await withFake({ starttls: true, onLine: (l) => (l === 'STARTTLS' ? '454 4.7.0 TLS not available' : undefined) }, async (f) => {
      assert.equal((await probe(f.port, { tls: 'starttls', tlsOptions: TLS_OK })).reason, 'starttls 454 4.7.0 TLS not available');
    });
  });

  it('plaintext injected after the STARTTLS reply: failure (RFC 3207 §4.2)', async () => {
    await withFake({ starttls: true, onLine: (l) => (l === 'STARTTLS' ? '220 go ahead\r\n250 injected' : undefined) }, async (f) => {
      assert.equal((await probe(f.port, { tls: 'starttls', tlsOptions: TLS_OK })).reason, 'starttls: unsolicited data after the reply');
    });
  });

  it('implicit TLS: ok with the right CA, failure with the wrong one', async () => {
    await withFake({ implicitTls: true }, async (f) => {
      const r = await probe(f.port, { tls: 'implicit', tlsOptions: TLS_OK });
      assert.equal(r.ok, true, r.reason);
      const w = await probe(f.port, { tls: 'implicit', tlsOptions: { ...TLS_OK, ca: OTHER_CA } });
      assert.match(w.reason, /^tls /);
    });
  });

  it('abort ends a check at once', async () => {
    await withFake({ greeting: 'stall' }, async (f) => {
      const ac = new AbortController();
      const p = probe(f.port, { signal: ac.signal });
      await until(() => f.sessions.length === 1, 2000, 'the connection');
      ac.abort();
      assert.equal((await p).reason, 'aborted');
    });
  });

  it('a real Postfix with STARTTLS: ok, verified as backend.test; its log shows a clean QUIT', async () => {
    await postfixStarting;
    if (postfixError) throw postfixError;
    const r = await probe(postfix!.port, { tls: 'starttls', tlsOptions: TLS_OK });
    assert.equal(r.ok, true, r.reason);
    assert.match(r.reason, /^ok \(TLSv1\.[23]\)$/);
    const log = await postfix!.waitForLog((l) => /disconnect from .*ehlo=2 starttls=1 quit=1 commands=4/.test(l), 5000);
    assert.doesNotMatch(log, /lost connection/);
    const bad = await probe(postfix!.port, { tls: 'starttls', tlsOptions: { ...TLS_OK, ca: OTHER_CA } });
    assert.equal(bad.ok, false);
    assert.match(bad.reason, /^tls /);
  });
});

const HEALTH = { enabled: true, interval: 40, timeout: 500, rise: 2, fall: 2, starttls: false, protocol: 'smtp' as const };
const server = (port: number): PoolServer => ({ id: `127.0.0.1:${port}`, host: '127.0.0.1', port, weight: 1, backup: false, maxConnections: 0 });

describe('HealthChecker on a short interval', () => {
  it('down after `fall` failed checks, back after `rise` good ones: one change each', async () => {
    let mode: 'good' | 'bad' = 'good';
    await withFake({ onLine: (l) => (mode === 'bad' && l.startsWith('EHLO') ? '421 4.3.2 busy' : undefined) }, async (f) => {
      const checker = new HealthChecker({ pools: { mx: { servers: [server(f.port)], health: HEALTH } }, ehloName: 'postern.test' });
      const changes: HealthChange[] = [];
      const checks: boolean[] = [];
      const checksAtChange: number[] = [];
      checker.on('change', (c) => {
        changes.push(c);
        checksAtChange.push(checks.length); // 'check' comes first: this count includes the deciding check
      });
      checker.on('check', (c) => checks.push(c.ok));
      checker.start();
      try {
        await until(() => checks.length >= 3, 3000, 'three checks');
        assert.deepEqual(changes, [], 'good checks: no change');
        assert.equal(checker.snapshot()[0]!.lastResult, 'ok');

        mode = 'bad';
        const before = checks.length;
        await until(() => changes.length === 1, 3000, 'the server to go down');
        // Two failures in a row (a check under way at the flip may still have passed).
        assert.deepEqual(checks.slice(before, checksAtChange[0]).filter((ok) => !ok), [false, false]);
        assert.deepEqual(checks.slice(checksAtChange[0]! - 2, checksAtChange[0]), [false, false]);
        assert.deepEqual(changes[0], { pool: 'mx', server: `127.0.0.1:${f.port}`, up: false, reason: 'check failed 2 times: ehlo 421 4.3.2 busy' });
        const snap = checker.snapshot()[0]!;
        assert.equal(snap.up, false);
        assert.equal(snap.reason, 'check failed 2 times: ehlo 421 4.3.2 busy');
        assert.equal(snap.since, snap.lastCheck);
        await until(() => checks.length >= before + 4, 3000, 'more checks');
        assert.equal(changes.length, 1, 'further failures: no change');

        mode = 'good';
        const back = checks.length;
        await until(() => changes.length === 2, 3000, 'the server to come back');
        assert.deepEqual(checks.slice(back, checksAtChange[1]).filter((ok) => ok), [true, true]);
        assert.deepEqual(checks.slice(checksAtChange[1]! - 2, checksAtChange[1]), [true, true]);
        assert.deepEqual(changes[1], { pool: 'mx', server: `127.0.0.1:${f.port}`, up: true, reason: 'recovered: check passed 2 times' });
        await until(() => checks.length >= back + 5, 3000, 'more checks');
        assert.equal(changes.length, 2);
        // Every check said QUIT, also those that failed.
        assert.ok(f.sessions.every((s) => s.at(-1) === 'QUIT'), JSON.stringify(f.sessions));
      } finally {
        checker.stop();
      }
      const n = f.sessions.length;
      await sleep(150);
      assert.equal(f.sessions.length, n, 'no check after stop()');
    });
  });

  it('checks spread: the first comes at a random offset within the interval; a disabled pool is never checked', async () => {
    const seen: number[] = [];
    const t0 = Date.now();
    const fake = async (o: ProbeOptions) => {
      seen.push(o.port);
      return { ok: true, reason: 'ok', ms: 0 };
    };
    const offsets = [0.9, 0.1];
    const checker = new HealthChecker({
      pools: { a: { servers: [server(1), server(2)], health: { ...HEALTH, interval: 300 } }, off: { servers: [server(3)], health: { ...HEALTH, enabled: false } } },
      ehloName: 'x',
      probe: fake,
      random: () => offsets.shift() ?? 0.5,
    });
    checker.start();
    await until(() => seen.length >= 2, 2000, 'two checks');
    checker.stop();
    assert.deepEqual(seen.slice(0, 2), [2, 1], 'server 2 (offset 30 ms) before server 1 (270 ms)');
    assert.ok(Date.now() - t0 >= 250);
    const off = checker.snapshot().find((e) => e.pool === 'off')!;
    assert.deepEqual({ up: off.up, checked: off.checked, lastCheck: off.lastCheck }, { up: true, checked: false, lastCheck: null });
  });
});

describe('startHealthChecks: log lines, status file, postern status', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'postern-health-'));
  it('writes the status file on change; `postern status` reads it; stop() removes it', async () => {
    const sink = await startSmtpSink();
    const dead = await closedPort();
    const configFile = path.join(dir, 'postern.yaml');
    const yaml = `pools:
  good:
    servers: ["127.0.0.1:${sink.port}"]
    health: { interval: 50ms, timeout: 1s, fall: 1 }
  bad:
    servers: ["127.0.0.1:${dead}"]
    health: { interval: 50ms, timeout: 1s, fall: 1 }
`;
    writeFileSync(configFile, yaml);
    const records: Record<string, unknown>[] = [];
    const logger = createLogger('info', { write: (s: string) => void records.push(JSON.parse(s) as Record<string, unknown>) });
    const file = statusFilePath(configFile);
    const hc = startHealthChecks(parseConfig(yaml, configFile), logger, { configFile });
    try {
      await until(() => readStatus(file)?.servers.some((e) => !e.up) === true, 3000, 'the status file to show the down server');
      const status = readStatus(file)!;
      assert.equal(status.pid, process.pid);
      assert.equal(status.config, configFile);
      assert.deepEqual(status.servers.map((e) => [e.pool, e.server, e.up]), [['good', `127.0.0.1:${sink.port}`, true], ['bad', `127.0.0.1:${dead}`, false]]);
      const down = records.filter((r) => r.msg === 'pool server down');
      assert.deepEqual(down.map((r) => [r.level, r.pool, r.server, r.reason]), [['warn', 'bad', `127.0.0.1:${dead}`, 'check failed 1 time: connect ECONNREFUSED']]);
      assert.ok(records.some((r) => r.msg === 'health checks started' && r.status === file));

      const out: string[] = [];
      assert.equal(statusCommand(configFile, (s) => out.push(s), () => {}), 1);
      const lines = out.join('').trimEnd().split('\n');
      assert.equal(lines.length, 3);
      assert.match(lines[0]!, new RegExp(`^good +127\\.0\\.0\\.1:${sink.port} +up +since `));
      assert.match(lines[1]!, new RegExp(`^bad +127\\.0\\.0\\.1:${dead} +DOWN +since \\S+ \\(\\d+s\\) +check failed 1 time: connect ECONNREFUSED; last check \\d+s ago: connect ECONNREFUSED$`));
      assert.equal(lines[2], 'no usable server in pool bad');

      // The same through the command line (another process; this one is the writer).
      const cli = await promisify(execFile)(process.execPath, ['--import', 'tsx', path.join(root, 'src/cli.ts'), 'status', '--config', configFile], { cwd: root }).then(
        (r) => ({ code: 0, stdout: r.stdout }),
        (e: { code: number; stdout: string }) => ({ code: e.code, stdout: e.stdout }),
      );
      assert.equal(cli.code, 1);
      assert.match(cli.stdout, /^bad +127\.0\.0\.1:\d+ +DOWN/m);
    } finally {
      await hc.stop();
      await sink.stop();
    }
    assert.equal(existsSync(file), false, 'stop() removes the status file');
    const err: string[] = [];
    assert.equal(statusCommand(configFile, () => {}, (s) => err.push(s)), 2);
    assert.match(err.join(''), /no status file/);
  });

  it('no pools: nothing is checked and no status file is written', async () => {
    const configFile = path.join(dir, 'empty.yaml');
    const hc = startHealthChecks(parseConfig('{}', configFile), createLogger('silent'), { configFile });
    assert.deepEqual(hc.checker.snapshot(), []);
    assert.equal(existsSync(statusFilePath(configFile)), false);
    await hc.stop();
  });
});

describe('cluster IPC: the primary tells every worker', () => {
  it('a new worker gets the snapshot when it subscribes, then every broadcast change', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'postern-health-worker-'));
    const script = path.join(dir, 'worker.ts');
    writeFileSync(
      script,
      `import { onHealthMessages } from ${JSON.stringify(path.join(root, 'src/pools/ipc.ts'))};
const stop = onHealthMessages((change, fromSnapshot) => {
  process.send!({ type: 'echo', change, fromSnapshot });
  if (change.server === 'last') { stop(); process.disconnect(); }
});
`,
    );
    cluster.setupPrimary({ exec: script, execArgv: ['--import', 'tsx'], silent: true });
    const state: HealthChange[] = [
      { pool: 'mx', server: '10.0.0.1:25', up: true, reason: 'up until checks say otherwise' },
      { pool: 'mx', server: '10.0.0.2:25', up: false, reason: 'check failed 3 times: connect ECONNREFUSED' },
    ];
    const unserve = serveHealthSnapshots(() => state);
    const worker = cluster.fork();
    const got: { change: HealthChange; fromSnapshot: boolean }[] = [];
    worker.on('message', (m: { type: string; change: HealthChange; fromSnapshot: boolean }) => {
      if (m.type === 'echo') got.push({ change: m.change, fromSnapshot: m.fromSnapshot });
    });
    const exited = new Promise<number | null>((r) => worker.once('exit', (code) => r(code)));
    try {
      await until(() => got.length === 2, 8000, 'the snapshot in the worker');
      assert.deepEqual(got, state.map((change) => ({ change, fromSnapshot: true })));
      const change: HealthChange = { pool: 'mx', server: '10.0.0.2:25', up: true, reason: 'recovered: check passed 2 times' };
      broadcastHealth(change);
      broadcastHealth({ pool: 'mx', server: 'last', up: true, reason: 'end' });
      await until(() => got.length === 4, 3000, 'the broadcast in the worker');
      assert.deepEqual(got[2], { change, fromSnapshot: false });
      assert.equal(await exited, 0, 'the worker exits once it unsubscribes and disconnects');
    } finally {
      unserve();
      if (!worker.isDead()) worker.process.kill('SIGKILL');
    }
  });
});

describe('probeSmtp with a PROXY header (a back-end that requires one, HAProxy check-send-proxy)', () => {
  it('writes the header first, alone, then speaks SMTP once greeted; a back-end that gets none would never greet', async () => {
    const { proxyV2 } = await import('../../src/proxy/writer.js');
    const { ProxyHeaderReader } = await import('../../src/proxy/reader.js');
    let first: Buffer | null = null;
    const srv = net.createServer((s) => {
      const reader = new ProxyHeaderReader();
      s.once('data', (d: Buffer) => {
        first = d;
        const r = reader.push(d);
        if (r.kind !== 'done' || r.header.command !== 'local' || r.rest.length > 0) return void s.destroy();
        s.write('220 pf.test ESMTP\r\n');
        s.on('data', (c: Buffer) => {
          const line = c.toString('latin1');
          if (line.startsWith('EHLO')) s.write('250 pf.test\r\n');
          else if (line.startsWith('QUIT')) s.end('221 2.0.0 Bye\r\n');
        });
      });
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const port = (srv.address() as AddressInfo).port;
    try {
      const ok = await probeSmtp({ host: '127.0.0.1', port, ehloName: 'postern.test', timeoutMs: 2000, proxyHeader: proxyV2(undefined, undefined, { local: true }) });
      assert.equal(ok.ok, true, ok.reason);
      assert.ok(first && (first as Buffer).subarray(0, 12).equals(Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a])));
      const none = await probeSmtp({ host: '127.0.0.1', port, ehloName: 'postern.test', timeoutMs: 500 });
      assert.equal(none.ok, false);
    } finally {
      srv.close();
    }
  });
});
