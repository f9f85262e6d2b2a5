/**
 * The PROXY protocol with real peers, on loopback only.
 *
 * (a) A private HAProxy 2.6 (Debian's, .ci/run installs it; `-db`, its own config in a temporary directory)
 *     in TCP mode in front of Postern (`listen … proxy_protocol`, `set_real_ip_from: [127.0.0.1]`), with
 *     `send-proxy`, `send-proxy-v2`, `send-proxy-v2-ssl` and `send-proxy-v2-ssl-cn` (HAProxy ends the
 *     client's TLS with the test certificate and forwards plaintext with the SSL TLV). The clients — swaks
 *     and Node — connect from 127.0.0.5 while HAProxy connects to Postern from 127.0.0.1 (`source`), so the
 *     header's address is visibly not the TCP peer's: the auth request, XCLIENT and the access record name
 *     127.0.0.5; a client that talks before the greeting (HAProxy then sends its bytes right behind the
 *     header) loses nothing. HAProxy's SMTP health checks with `send-proxy-v2 check-send-proxy` (v2 LOCAL)
 *     leave no warning or error in Postern's log. TLS passed through to an implicit-TLS listener works,
 *     also with the ClientHello in the header's segment.
 * (b) Postern with `proxy_protocol: v1` and `v2` and `xclient: false` in front of a real Postfix with
 *     `smtpd_upstream_proxy_protocol = haproxy`: swaks from 127.0.0.7 through Postern, and Postfix's Received
 *     header and log name 127.0.0.7, not Postern's 127.0.0.1. Then the whole chain: HAProxy send-proxy-v2 →
 *     Postern (PROXY in and out) → Postfix names the client at HAProxy.
 *
 * Bounded: every wait has a deadline; the file takes about 8 s (Postfix's start is most of it). A missing
 * peer skips it, except with CI=true, where it fails (requireBinary names the package).
 */
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { AuthStub, okAnswer } from '../helpers/auth-stub.js';
import { FakeBackend } from '../helpers/fake-backend.js';
import { freePort, requireBinary, startPostfix, TLS_FIXTURES, type PostfixInstance } from '../helpers/postfix.js';
import { startPostern, type LogRecord, type RunningPostern } from '../helpers/postern.js';
import { SmtpClient, replyText } from '../helpers/smtp-client.js';

const run = promisify(execFile);
const HAPROXY = '/usr/sbin/haproxy';
const CLIENT = '127.0.0.5';
const WAIT = 5000;
const ci = process.env.CI === 'true';
/** The peers a part needs, each installed by its Debian package of the same name. */
const PEERS = { a: [HAPROXY, '/usr/bin/swaks'], b: [HAPROXY, '/usr/bin/swaks', '/usr/sbin/postfix'] };
/** Skip a part whose peers are missing, except with CI=true: then its before() fails naming the package. */
function skipUnless(peers: string[]): string | false {
  const missing = peers.filter((f) => !existsSync(f));
  return missing.length > 0 && !ci ? `missing ${missing.join(', ')} (apt-get install ${missing.map((f) => path.basename(f)).join(' ')})` : false;
}
async function requirePeers(peers: string[]): Promise<void> {
  for (const f of peers) await requireBinary(f, path.basename(f));
}
const fixture = (f: string): string => path.join(TLS_FIXTURES, f);

interface Haproxy {
  stderr(): string;
  stop(): Promise<void>;
}

/** A private haproxy running `sections` (plus a `ready` listener that refuses everything, probed to know it is up). */
async function startHaproxy(sections: string): Promise<Haproxy> {
  await requireBinary(HAPROXY, 'haproxy');
  const dir = await mkdtemp(path.join(os.tmpdir(), 'postern-haproxy-pp-'));
  const ready = await freePort();
  const pem = path.join(dir, 'server.pem');
  await writeFile(pem, readFileSync(fixture('server.pem'), 'latin1') + readFileSync(fixture('server.key'), 'latin1'));
  const cfg = `
global
  maxconn 200
defaults
  mode tcp
  timeout connect 2s
  timeout client 20s
  timeout server 20s
listen ready
  bind 127.0.0.1:${ready}
  tcp-request connection reject
${sections.replaceAll('@PEM@', pem)}`;
  const file = path.join(dir, 'haproxy.cfg');
  await writeFile(file, cfg);
  const check = spawnSync(HAPROXY, ['-c', '-q', '-f', file], { encoding: 'utf8', timeout: WAIT });
  assert.equal(check.status, 0, `haproxy -c: ${check.stdout}${check.stderr}\n${cfg}`);
  const child: ChildProcess = spawn(HAPROXY, ['-db', '-f', file], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const deadline = Date.now() + WAIT;
  for (;;) {
    const up = await new Promise<boolean>((resolve) => {
      const c = net.connect({ host: '127.0.0.1', port: ready }, () => {
        c.destroy();
        resolve(true);
      });
      c.on('error', () => resolve(false));
    });
    if (up) break;
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      await rm(dir, { recursive: true, force: true });
      throw new Error(`haproxy did not start: ${stderr}`);
    }
    await sleep(50);
  }
  return {
    stderr: () => stderr,
    async stop() {
      if (child.exitCode === null) {
        const gone = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 2000);
        await gone;
        clearTimeout(t);
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** swaks from `from` to 127.0.0.1:port; resolves with its transcript (rejects on a failed transaction). */
async function swaks(port: number, from: string, extra: string[] = []): Promise<string> {
  const { stdout } = await run(await requireBinary('swaks', 'swaks'), [
    '--server', '127.0.0.1', '--port', String(port), '--local-interface', from, '--from', 'a@x.test', '--to', 'u@y.test',
    '--helo', 'swaks.client.test', '--timeout', '15', ...extra,
  ], { timeout: 20_000 });
  return stdout;
}

/** The access record of the session whose client is `client` (addr:port). */
function accessOf(p: RunningPostern, client: string): Promise<LogRecord> {
  return p.waitForLog((l) => l.type === 'access' && l.client === client);
}

describe('HAProxy in front of Postern: the client behind it is the client', { skip: skipUnless(PEERS.a) }, () => {
  let backend: FakeBackend;
  let stub: AuthStub;
  let p: RunningPostern;
  /** Implicit TLS behind a TCP pass-through (HAProxy does not see inside the TLS). */
  let smtps: RunningPostern;
  let haproxy: Haproxy;
  const port = { v1: 0, v2: 0, ssl: 0, sslcn: 0, checks: 0, passthrough: 0 };

  before(async () => {
    await requirePeers(PEERS.a);
    backend = await FakeBackend.start();
    stub = await AuthStub.start(() => okAnswer(backend.port));
    p = await startPostern({
      listen: [{ address: '127.0.0.1:0', proxy_protocol: true }],
      set_real_ip_from: ['127.0.0.1'],
      route: { auth_http: { url: stub.url } },
    });
    smtps = await startPostern({
      listen: [{ address: '127.0.0.1:0', proxy_protocol: true, implicit_tls: true }],
      tls: { certificates: [{ cert: fixture('server.pem'), key: fixture('server.key') }] },
      set_real_ip_from: ['127.0.0.1'],
      route: { auth_http: { url: stub.url } },
      timeouts: { handshake: '1s' },
    });
    for (const k of Object.keys(port) as (keyof typeof port)[]) port[k] = await freePort();
    const to = `127.0.0.1:${p.port}`;
    haproxy = await startHaproxy(`
listen v1
  bind 127.0.0.1:${port.v1}
  server postern ${to} send-proxy source 127.0.0.1
listen v2
  bind 127.0.0.1:${port.v2}
  server postern ${to} send-proxy-v2 source 127.0.0.1
listen ssl
  bind 127.0.0.1:${port.ssl} ssl crt @PEM@
  server postern ${to} send-proxy-v2-ssl source 127.0.0.1
listen sslcn
  bind 127.0.0.1:${port.sslcn} ssl crt @PEM@ ca-file ${fixture('ca.pem')} verify optional
  server postern ${to} send-proxy-v2-ssl-cn proxy-v2-options authority source 127.0.0.1
listen checks
  bind 127.0.0.1:${port.checks}
  option smtpchk EHLO haproxy.test
  server postern ${to} send-proxy-v2 check check-send-proxy inter 200ms source 127.0.0.1
listen passthrough
  bind 127.0.0.1:${port.passthrough}
  server postern 127.0.0.1:${smtps.port} send-proxy-v2 source 127.0.0.1
`);
  });

  after(async () => {
    await haproxy?.stop();
    await p?.stop();
    await smtps?.stop();
    await stub?.stop();
    await backend?.stop();
  });

  it('send-proxy (v1), swaks: the message goes through; Client-IP, Proxy-Protocol-*, XCLIENT and the access record name 127.0.0.5', async () => {
    const sessions = backend.sessions.length;
    const out = await swaks(port.v1, CLIENT);
    assert.match(out, /<[-~] +250 2\.0\.0 Ok: queued/);
    const r = stub.requests.at(-1)!;
    assert.equal(r.get('Client-IP'), CLIENT);
    assert.equal(r.get('Proxy-Protocol-Addr'), CLIENT);
    assert.match(r.get('Proxy-Protocol-Port') ?? '', /^[1-9]\d*$/);
    assert.equal(r.get('Proxy-Protocol-Server-Addr'), '127.0.0.1');
    assert.equal(r.get('Proxy-Protocol-Server-Port'), String(port.v1), 'the address the client connected to: HAProxy\'s bind');
    assert.equal(r.get('X-Postern-Proxy-SSL'), undefined);
    const xclient = backend.sessions[sessions]!.commands.find((l) => l.startsWith('XCLIENT'));
    assert.match(xclient ?? '', new RegExp(`^XCLIENT ADDR=127\\.0\\.0\\.5 PORT=${r.get('Proxy-Protocol-Port')} `));
    assert.equal(backend.accepted.length, sessions + 1);
    const rec = await accessOf(p, `${CLIENT}:${r.get('Proxy-Protocol-Port')}`);
    assert.deepEqual(rec.proxy, { peer: '127.0.0.1', version: 1 });
  });

  it('send-proxy-v2, a Node client: the exact client port everywhere', async () => {
    const sessions = backend.sessions.length;
    const c = await SmtpClient.connect(port.v2, '127.0.0.1', CLIENT);
    const local = c.socket.localPort!;
    assert.equal((await c.reply()).code, 220);
    assert.match(await c.cmd('EHLO node.client.test'), /^250 /);
    assert.equal(await c.cmd('MAIL FROM:<a@x.test>'), '250 2.1.0 OK');
    assert.equal(await c.cmd('RCPT TO:<u@y.test>'), '250 2.1.5 Ok');
    assert.equal(await c.data('Subject: via haproxy v2\r\n\r\nhello\r\n'), '250 2.0.0 Ok: queued');
    assert.equal(await c.cmd('QUIT'), '221 2.0.0 Bye');
    c.close();
    const r = stub.requests.at(-1)!;
    assert.deepEqual([r.get('Client-IP'), r.get('Proxy-Protocol-Addr'), r.get('Proxy-Protocol-Port'), r.get('Proxy-Protocol-Server-Port')], [CLIENT, CLIENT, String(local), String(port.v2)]);
    assert.match(backend.sessions[sessions]!.commands.find((l) => l.startsWith('XCLIENT')) ?? '', new RegExp(`^XCLIENT ADDR=127\\.0\\.0\\.5 PORT=${local} `));
    const rec = await accessOf(p, `${CLIENT}:${local}`);
    assert.deepEqual(rec.proxy, { peer: '127.0.0.1', version: 2 });
  });

  it('a client that talks before the greeting: HAProxy sends its bytes right behind the header, and none is lost', async () => {
    for (const to of [port.v1, port.v2, port.v1, port.v2]) {
      const c = await SmtpClient.connect(to, '127.0.0.1', CLIENT);
      const local = c.socket.localPort!;
      c.write('EHLO early.test\r\nNOOP\r\n');
      assert.equal((await c.reply()).code, 220);
      assert.match(replyText(await c.reply()), /^250 /);
      assert.equal(replyText(await c.reply()), '250 2.0.0 OK');
      assert.equal(await c.cmd('QUIT'), '221 2.0.0 Bye');
      c.close();
      await accessOf(p, `${CLIENT}:${local}`);
    }
  });

  it('send-proxy-v2-ssl, swaks over TLS to HAProxy: X-Postern-Proxy-SSL is the client\'s TLS version, no CN without a certificate', async () => {
    const out = await swaks(port.ssl, CLIENT, ['--tls-on-connect']);
    assert.match(out, /<[-~] +250 2\.0\.0 Ok: queued/);
    const r = stub.requests.at(-1)!;
    assert.equal(r.get('Client-IP'), CLIENT);
    assert.match(r.get('X-Postern-Proxy-SSL') ?? '', /^TLSv1\.[23]$/);
    assert.equal(r.get('X-Postern-Proxy-SSL-CN'), undefined);
    const rec = await accessOf(p, `${CLIENT}:${r.get('Proxy-Protocol-Port')}`);
    assert.deepEqual(rec.proxy, { peer: '127.0.0.1', version: 2, ssl: r.get('X-Postern-Proxy-SSL') });
    assert.equal(rec.tls, undefined, 'Postern itself spoke plaintext: HAProxy ended the TLS');
  });

  it('send-proxy-v2-ssl-cn with a verified client certificate and SNI: X-Postern-Proxy-SSL-CN and -Authority', async () => {
    const raw = net.connect({ host: '127.0.0.1', port: port.sslcn, localAddress: CLIENT });
    await new Promise<void>((resolve, reject) => raw.once('connect', resolve).once('error', reject));
    const c = await SmtpClient.connectTls(port.sslcn, {
      socket: raw, servername: 'mx.postern.test', ca: readFileSync(fixture('ca.pem')), cert: readFileSync(fixture('client.pem')), key: readFileSync(fixture('client.key')),
      checkServerIdentity: () => undefined,
    });
    assert.equal((await c.reply()).code, 220);
    await c.cmd('EHLO tls.client.test');
    await c.cmd('MAIL FROM:<a@x.test>');
    assert.equal(await c.cmd('RCPT TO:<u@y.test>'), '250 2.1.5 Ok');
    await c.cmd('QUIT');
    c.close();
    const r = stub.requests.at(-1)!;
    assert.equal(r.get('Client-IP'), CLIENT);
    assert.equal(r.get('X-Postern-Proxy-Authority'), 'mx.postern.test');
    assert.match(r.get('X-Postern-Proxy-SSL') ?? '', /^TLSv1\.[23]$/);
    assert.equal(r.get('X-Postern-Proxy-SSL-CN'), 'client.test');
  });

  // The hello often arrives in the header's read (test/integration/proxy-protocol.test.ts makes that deterministic).
  it('implicit TLS passed through: the header, then the client\'s ClientHello (often in one segment), then SMTP over TLS', async () => {
    for (let i = 0; i < 3; i++) {
      const raw = net.connect({ host: '127.0.0.1', port: port.passthrough, localAddress: CLIENT });
      // The ClientHello leaves at once: it reaches HAProxy before its connection to Postern is up.
      const c = await SmtpClient.connectTls(port.passthrough, { socket: raw, servername: 'proxy.test', ca: readFileSync(fixture('ca.pem')) });
      const local = raw.localPort!;
      assert.equal((await c.reply()).code, 220);
      await c.cmd('EHLO tls.client.test');
      await c.cmd('MAIL FROM:<a@x.test>');
      assert.equal(await c.cmd('RCPT TO:<u@y.test>'), '250 2.1.5 Ok');
      await c.cmd('QUIT');
      c.close();
      const r = stub.requests.at(-1)!;
      assert.deepEqual([r.get('Client-IP'), r.get('Proxy-Protocol-Port'), r.get('X-Postern-Proxy-SSL')], [CLIENT, String(local), undefined]);
      const rec = await accessOf(smtps, `${CLIENT}:${local}`);
      assert.match(String(rec.tls), /^TLSv1\.[23]$/);
      assert.deepEqual(rec.proxy, { peer: '127.0.0.1', version: 2 });
    }
    assert.deepEqual(smtps.logs.filter((l) => l.level === 'warn' || l.level === 'error'), []);
  });

  it('health checks with send-proxy-v2 (LOCAL) are the peer\'s own sessions and leave no warning or error', async () => {
    // The checks run every 200 ms from the start: wait for a few more of them.
    const checks = (): LogRecord[] => p.logs.filter((l) => l.type === 'access' && String(l.client).startsWith('127.0.0.1:'));
    const seen = checks().length;
    await p.waitForLog(() => checks().length >= seen + 3, WAIT);
    for (const rec of checks()) assert.equal(rec.proxy, undefined, JSON.stringify(rec));
    assert.deepEqual(p.logs.filter((l) => l.level === 'warn' || l.level === 'error' || l.level === 'fatal'), []);
    assert.ok(!/\[(ALERT|WARNING)\]/.test(haproxy.stderr()), haproxy.stderr());
  });

  it('the client going to Postern directly (not in set_real_ip_from) is closed before a byte', async () => {
    const c = await SmtpClient.connect(p.port, '127.0.0.1', CLIENT);
    c.write('PROXY TCP4 192.0.2.1 127.0.0.1 1 25\r\n');
    assert.ok(await c.waitClosed(WAIT));
    assert.equal(c.transcript, '');
    const rec = await p.waitForLog((l) => l.code === 'PST_PROXY_UNTRUSTED');
    assert.equal(rec.peer, CLIENT);
  });
});

describe('Postern sending PROXY to a real Postfix (smtpd_upstream_proxy_protocol = haproxy)', { skip: skipUnless(PEERS.b) }, () => {
  const FROM = '127.0.0.7';
  let postfix: PostfixInstance;
  const posterns: RunningPostern[] = [];
  let haproxy: Haproxy | undefined;

  before(async () => {
    await requirePeers(PEERS.b);
    postfix = await startPostfix({ upstreamProxyProtocol: true });
  });

  after(async () => {
    await haproxy?.stop();
    for (const p of posterns) await p.stop();
    await postfix?.stop();
  });

  /** The delivered message whose Subject is `subject`. */
  async function delivered(subject: string): Promise<string> {
    const deadline = Date.now() + 15_000;
    for (;;) {
      const files = await postfix.waitForMessages(1, 15_000);
      const hit = files.map((f) => readFileSync(f, 'latin1')).find((m) => m.includes(`Subject: ${subject}\n`));
      if (hit) return hit;
      if (Date.now() > deadline) throw new Error(`no message "${subject}"\n--- log ---\n${postfix.log()}`);
      await sleep(50);
    }
  }

  for (const version of ['v1', 'v2'] as const) {
    it(`proxy_protocol: ${version}, xclient off: Received and Postfix's log name the client 127.0.0.7, not Postern`, async () => {
      const p = await startPostern({ route: { static: `127.0.0.1:${postfix.port}` }, proxy_protocol: version, xclient: false });
      posterns.push(p);
      const out = await swaks(p.port, FROM, ['--header', `Subject: pp ${version}`, '--body', `through Postern with ${version}`]);
      assert.match(out, /<[-~] +250 2\.0\.0 Ok: queued as/);
      const msg = await delivered(`pp ${version}`);
      const received = msg.slice(0, msg.indexOf('Subject:'));
      assert.match(received, /Received: from proxy\.test \(\S+ \[127\.0\.0\.7\]\)/, received);
      assert.doesNotMatch(received, /\[127\.0\.0\.1\]/);
      const queueId = /queued as ([0-9A-Za-z]+)/.exec(out)![1]!;
      const log = await postfix.waitForLog((l) => l.includes(`${queueId}: client=`));
      assert.match(log, new RegExp(`${queueId}: client=\\S+\\[127\\.0\\.0\\.7\\]`));
      assert.doesNotMatch(log, /haproxy read|warning: haproxy/);
    });
  }

  it('the whole chain: HAProxy send-proxy-v2 → Postern (PROXY in and out) → Postfix names the client at HAProxy', async () => {
    const p = await startPostern({
      listen: [{ address: '127.0.0.1:0', proxy_protocol: true }],
      set_real_ip_from: ['127.0.0.1'],
      route: { static: `127.0.0.1:${postfix.port}` },
      proxy_protocol: 'v2',
      xclient: false,
    });
    posterns.push(p);
    const front = await freePort();
    haproxy = await startHaproxy(`
listen chain
  bind 127.0.0.1:${front}
  server postern 127.0.0.1:${p.port} send-proxy-v2 source 127.0.0.1
`);
    const out = await swaks(front, CLIENT, ['--header', 'Subject: pp chain', '--body', 'client -> haproxy -> postern -> postfix']);
    assert.match(out, /<[-~] +250 2\.0\.0 Ok: queued as/);
    const msg = await delivered('pp chain');
    const received = msg.slice(0, msg.indexOf('Subject:'));
    assert.match(received, /Received: from proxy\.test \(\S+ \[127\.0\.0\.5\]\)/, received);
    const rec = await p.waitForLog((l) => l.type === 'access' && String(l.client).startsWith(`${CLIENT}:`));
    assert.deepEqual(rec.proxy, { peer: '127.0.0.1', version: 2 });
  });
});
