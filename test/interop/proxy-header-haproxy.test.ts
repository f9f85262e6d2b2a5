/**
 * The PROXY codec against real HAProxy (Debian 12's haproxy 2.6, installed by .ci/run), on loopback only:
 * one private haproxy process (`-db`, its own config in a temporary directory, no chroot, no system files) in
 * front of small Node servers that capture the bytes HAProxy sends them.
 *
 * - reader: HAProxy's `send-proxy` (v1) and `send-proxy-v2` headers for TCP4 connections, with CRC32C and
 *   UNIQUE_ID; over TLS with a client certificate, `send-proxy-v2-ssl-cn` plus SSL, CN, cipher, signature and
 *   key algorithms, AUTHORITY (SNI) and ALPN; the headers of its health checks (v2 LOCAL; v1 a real TCP4 line
 *   of the check's own addresses, as spec §2.1 advises, not UNKNOWN).
 * - writer: our own headers sent to an `accept-proxy` frontend (HAProxy refuses a bad one, a wrong CRC32C
 *   included, by closing), which HAProxy then re-emits: TCP6 and IPv4-mapped addresses come back as we sent
 *   them, and where HAProxy formats as we do (v1 TCP4/TCP6, v2 CRC32C + AUTHORITY) the bytes are identical.
 *
 * Bounded: every wait has a deadline (5 s), the whole file takes about a second. Without /usr/sbin/haproxy
 * it is skipped, except with CI=true, where it fails: CI must not lose this check silently.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import type { ProxyHeader } from '../../src/proxy/header.js';
import { ProxyHeaderReader } from '../../src/proxy/reader.js';
import { proxyV1, proxyV2 } from '../../src/proxy/writer.js';

const HAPROXY = '/usr/sbin/haproxy';
const fixturePath = (f: string): string => fileURLToPath(new URL(`../fixtures/${f}`, import.meta.url));
const MARK = 'POSTERN-END\r\n';
const WAIT = 5000;
const present = existsSync(HAPROXY);
const skip = !present && process.env.CI !== 'true' ? `${HAPROXY} is missing (apt-get install haproxy)` : false;

/** A loopback server keeping each connection's bytes until MARK arrives or the peer closes. */
class Capture {
  readonly server = net.createServer();
  readonly #done: Buffer[] = [];
  readonly #waiting: ((b: Buffer) => void)[] = [];
  readonly #sockets = new Set<net.Socket>();
  port = 0;

  constructor() {
    this.server.on('connection', (s) => {
      this.#sockets.add(s);
      s.on('close', () => this.#sockets.delete(s));
      let data = Buffer.alloc(0);
      let sent = false;
      const finish = (): void => {
        if (sent) return;
        sent = true;
        const w = this.#waiting.shift();
        if (w) w(data);
        else this.#done.push(data);
      };
      s.on('data', (d: Buffer) => {
        data = Buffer.concat([data, d]);
        if (data.toString('latin1').endsWith(MARK)) {
          finish();
          s.end('ok\r\n');
        }
      });
      s.on('error', () => {});
      s.on('close', finish);
    });
  }

  async listen(): Promise<this> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this;
  }

  /** The bytes of the next finished connection, within `ms`. */
  next(ms = WAIT): Promise<Buffer> {
    const ready = this.#done.shift();
    if (ready) return Promise.resolve(ready);
    return new Promise((resolve, reject) => {
      const waiter = (b: Buffer): void => {
        clearTimeout(t);
        resolve(b);
      };
      const t = setTimeout(() => {
        this.#waiting.splice(this.#waiting.indexOf(waiter), 1);
        reject(new Error(`nothing captured on ${this.port} within ${ms} ms`));
      }, ms);
      this.#waiting.push(waiter);
    });
  }

  close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    return new Promise((r) => this.server.close(() => r()));
  }
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

async function waitListening(port: number): Promise<void> {
  const deadline = Date.now() + WAIT;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = net.connect({ host: '127.0.0.1', port }, () => {
        c.destroy();
        resolve(true);
      });
      c.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`haproxy is not listening on ${port}`);
    await sleep(50);
  }
}

/** Connects, writes `first` (if any) and MARK; resolves with the client's own port once haproxy answers or closes. */
function send(port: number, first?: Buffer): Promise<number> {
  return new Promise((resolve, reject) => {
    const c = net.connect({ host: '127.0.0.1', port }, () => {
      const local = c.localPort!;
      c.write(Buffer.concat([first ?? Buffer.alloc(0), Buffer.from(MARK)]));
      c.on('close', () => resolve(local));
    });
    c.setTimeout(WAIT, () => c.destroy(new Error('timeout')));
    c.on('data', () => c.end());
    c.on('error', reject);
  });
}

/** Parses captured bytes in one read and byte by byte: a header, then exactly MARK. */
function parse(bytes: Buffer): ProxyHeader {
  const whole = new ProxyHeaderReader().push(bytes);
  assert.equal(whole.kind, 'done', `${JSON.stringify(whole)} for ${bytes.toString('hex')}`);
  const r = new ProxyHeaderReader();
  let bytewise: ProxyHeader | undefined;
  for (let i = 0; i < bytes.length && !bytewise; i++) {
    const res = r.push(bytes.subarray(i, i + 1));
    if (res.kind === 'done') bytewise = res.header;
    else assert.equal(res.kind, 'more');
  }
  const { header, rest } = whole as { header: ProxyHeader; rest: Buffer };
  assert.deepEqual(bytewise, header);
  assert.equal(rest.toString('latin1'), header.command === 'local' || rest.length === 0 ? rest.toString('latin1') : MARK);
  return header;
}

describe('PROXY codec against HAProxy', { skip }, () => {
  let dir = '';
  let haproxy: ChildProcess | undefined;
  let stderr = '';
  const cap = { v1: new Capture(), v2: new Capture(), tls: new Capture(), relay1: new Capture(), relay2: new Capture(), check1: new Capture(), check2: new Capture() };
  // `ready` refuses every connection: probing it tells haproxy listens without reaching a capture.
  const port = { ready: 0, v1: 0, v2: 0, tls: 0, relay1: 0, relay2: 0, checks: 0 };

  before(async () => {
    if (!present) throw new Error(`${HAPROXY} is missing: install the Debian package haproxy (.ci/run does)`);
    for (const c of Object.values(cap)) await c.listen();
    for (const k of Object.keys(port) as (keyof typeof port)[]) port[k] = await freePort();
    dir = await mkdtemp(path.join(os.tmpdir(), 'postern-haproxy-'));
    const pem = path.join(dir, 'server.pem');
    await writeFile(pem, readFileSync(fixturePath('tls/server.pem'), 'latin1') + readFileSync(fixturePath('tls/server.key'), 'latin1'));
    const cfg = `
global
  maxconn 200
defaults
  mode tcp
  timeout connect 2s
  timeout client 10s
  timeout server 10s
listen ready
  bind 127.0.0.1:${port.ready}
  tcp-request connection reject
listen v1
  bind 127.0.0.1:${port.v1}
  server cap 127.0.0.1:${cap.v1.port} send-proxy
listen v2
  bind 127.0.0.1:${port.v2}
  unique-id-format pp-%ci-%cp
  server cap 127.0.0.1:${cap.v2.port} send-proxy-v2 proxy-v2-options crc32c,unique-id
listen v2tls
  bind 127.0.0.1:${port.tls} ssl crt ${pem} ca-file ${fixturePath('tls/ca.pem')} verify optional alpn x-postern-test
  unique-id-format tls-%ci
  server cap 127.0.0.1:${cap.tls.port} send-proxy-v2-ssl-cn proxy-v2-options crc32c,authority,ssl-cipher,cert-sig,cert-key,unique-id
listen relay1
  bind 127.0.0.1:${port.relay1} accept-proxy
  server cap 127.0.0.1:${cap.relay1.port} send-proxy
listen relay2
  bind 127.0.0.1:${port.relay2} accept-proxy
  server cap 127.0.0.1:${cap.relay2.port} send-proxy-v2 proxy-v2-options crc32c,authority
listen checks
  bind 127.0.0.1:${port.checks}
  server c1 127.0.0.1:${cap.check1.port} send-proxy check check-send-proxy inter 300ms
  server c2 127.0.0.1:${cap.check2.port} send-proxy-v2 check check-send-proxy inter 300ms
`;
    const file = path.join(dir, 'haproxy.cfg');
    await writeFile(file, cfg);
    const check = spawnSync(HAPROXY, ['-c', '-q', '-f', file], { encoding: 'utf8', timeout: WAIT });
    assert.equal(check.status, 0, `haproxy -c: ${check.stdout}${check.stderr}`);
    haproxy = spawn(HAPROXY, ['-db', '-f', file], { stdio: ['ignore', 'ignore', 'pipe'] });
    haproxy.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    await waitListening(port.ready); // haproxy binds every listener before it serves any
  });

  after(async () => {
    if (haproxy && haproxy.exitCode === null) {
      const gone = new Promise((r) => haproxy!.once('exit', r));
      haproxy.kill('SIGTERM');
      const t = setTimeout(() => haproxy!.kill('SIGKILL'), 2000);
      await gone;
      clearTimeout(t);
    }
    for (const c of Object.values(cap)) await c.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('send-proxy: a v1 TCP4 line for the client, the same bytes our writer makes', async () => {
    const client = await send(port.v1);
    const bytes = await cap.v1.next();
    const h = parse(bytes);
    assert.deepEqual(h, { version: 1, command: 'proxy', family: 'tcp4', source: { address: '127.0.0.1', port: client },
      destination: { address: '127.0.0.1', port: port.v1 }, tlvs: {}, length: h.length });
    assert.deepEqual(bytes.subarray(0, h.length), proxyV1(h.source, h.destination));
  });

  it('send-proxy-v2 with crc32c and unique-id: checksum verified, the id as formatted', async () => {
    const client = await send(port.v2);
    const h = parse(await cap.v2.next());
    assert.deepEqual(h, { version: 2, command: 'proxy', family: 'tcp4', source: { address: '127.0.0.1', port: client },
      destination: { address: '127.0.0.1', port: port.v2 }, tlvs: { uniqueId: `pp-127.0.0.1-${client}` }, length: h.length });
  });

  it('over TLS with a verified client certificate: SSL, CN, cipher, algorithms, AUTHORITY and ALPN', async () => {
    const read = (f: string): Buffer => readFileSync(fixturePath(`tls/${f}`));
    await new Promise<void>((resolve, reject) => {
      const c = tls.connect({ host: '127.0.0.1', port: port.tls, servername: 'mx.postern.test', ALPNProtocols: ['x-postern-test'],
        ca: read('ca.pem'), cert: read('client.pem'), key: read('client.key'), checkServerIdentity: () => undefined }, () => c.write(MARK));
      c.setTimeout(WAIT, () => c.destroy(new Error('timeout')));
      c.on('data', () => c.end());
      c.on('close', () => resolve());
      c.on('error', reject);
    });
    const h = parse(await cap.tls.next());
    const ssl = h.tlvs.ssl!;
    assert.equal(ssl.client, 0x07, 'PP2_CLIENT_SSL | CERT_CONN | CERT_SESS');
    assert.equal(ssl.verified, true);
    assert.equal(ssl.cn, 'client.test');
    assert.match(ssl.version ?? '', /^TLSv1\.[23]$/);
    assert.match(ssl.cipher ?? '', /^[A-Z0-9_-]+$/);
    assert.equal(ssl.sigAlg, 'ecdsa-with-SHA256'); // the fixtures are EC P-256 keys signed with SHA-256
    assert.equal(ssl.keyAlg, 'EC256');
    assert.equal(h.tlvs.authority, 'mx.postern.test');
    assert.equal(h.tlvs.alpn, 'x-postern-test');
    assert.match(h.tlvs.uniqueId ?? '', /^tls-127\.0\.0\.1$/);
  });

  it('accept-proxy takes our v1 TCP6 and TCP4 headers and re-emits the same bytes', async () => {
    for (const [s, d] of [['2001:db8::7', '2001:db8::25'], ['203.0.113.9', '192.0.2.25']] as const) {
      const ours = proxyV1({ address: s, port: 40000 }, { address: d, port: 25 });
      await send(port.relay1, ours);
      const bytes = await cap.relay1.next();
      const h = parse(bytes);
      assert.deepEqual([h.source, h.destination], [{ address: s, port: 40000 }, { address: d, port: 25 }]);
      assert.deepEqual(bytes.subarray(0, h.length), ours);
    }
  });

  it('an IPv4-mapped source comes back from HAProxy as ::ffff:a.b.c.d (a dotted tail we accept), still TCP6', async () => {
    await send(port.relay1, proxyV1({ address: '::ffff:192.0.2.7', port: 1 }, { address: '2001:db8::25', port: 25 }));
    const bytes = await cap.relay1.next();
    const h = parse(bytes);
    assert.equal(h.family, 'tcp6');
    assert.deepEqual(h.source, { address: '::ffff:192.0.2.7', port: 1 });
  });

  it('accept-proxy verifies our v2 CRC32C and passes our AUTHORITY on: the same bytes come back', async () => {
    const ours = proxyV2({ address: '2001:db8::7', port: 40000 }, { address: '2001:db8::25', port: 25 }, { tlvs: { authority: 'relay.postern.test' }, crc32c: true });
    await send(port.relay2, ours);
    const bytes = await cap.relay2.next();
    const h = parse(bytes);
    assert.equal(h.tlvs.authority, 'relay.postern.test');
    assert.deepEqual(bytes.subarray(0, h.length), ours);
    // A wrong checksum: HAProxy drops the connection, nothing reaches the back-end.
    const broken = Buffer.from(ours);
    broken[broken.length - 1] = broken[broken.length - 1]! ^ 1;
    await send(port.relay2, broken).catch(() => 0);
    await assert.rejects(cap.relay2.next(500), /nothing captured/);
  });

  it('health checks with check-send-proxy: v1 a real TCP4 line (spec §2.1\'s advice), v2 LOCAL as our writer makes it', async () => {
    const v1 = parse(await cap.check1.next());
    assert.equal(v1.family, 'tcp4');
    assert.deepEqual(v1.destination, { address: '127.0.0.1', port: cap.check1.port });
    const v2 = await cap.check2.next();
    assert.deepEqual(parse(v2), { version: 2, command: 'local', family: 'unspec', tlvs: {}, length: 16 });
    assert.deepEqual(v2.subarray(0, 16), proxyV2(undefined, undefined));
    assert.ok(!/\[ALERT\]/.test(stderr), stderr);
  });
});
