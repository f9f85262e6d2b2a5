/**
 * TLS with real peers: openssl s_client and swaks (with and without a client certificate) in
 * front of Postern, and a real Postfix with TLS behind it (STARTTLS and implicit TLS, verified,
 * refused on a bad certificate). Scripted back-ends cover what Postfix will not do on cue.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { FakeBackend } from '../helpers/fake-backend.js';
import { requireBinary, startPostfix, TLS_FIXTURES, type PostfixInstance } from '../helpers/postfix.js';
import { startPostern, type RunningPostern } from '../helpers/postern.js';
import { toRcpt } from '../helpers/preamble.js';

const run = promisify(execFile);
const f = (name: string): string => path.join(TLS_FIXTURES, name);
const CERTS = [{ cert: f('server.pem'), key: f('server.key') }];
const tmp = mkdtempSync(path.join(os.tmpdir(), 'postern-tls-'));

function sClient(args: string[], input: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('openssl', ['s_client', '-crlf', '-ign_eof', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString('latin1')));
    child.stderr.on('data', (c: Buffer) => (out += c.toString('latin1')));
    const t = setTimeout(() => child.kill('SIGKILL'), 15000);
    child.on('error', reject);
    child.on('close', () => {
      clearTimeout(t);
      resolve(out);
    });
    // One command at a time, slowly: s_client must finish the handshake before QUIT is useful.
    setTimeout(() => child.stdin.end(input), 1000);
  });
}

async function swaks(port: number, args: string[]): Promise<string> {
  const file = path.join(tmp, 'msg.eml');
  writeFileSync(file, 'Subject: tls interop\n\nhello over TLS\n');
  try {
    const { stdout } = await run(await requireBinary('swaks', 'swaks'), ['--server', '127.0.0.1', '--port', String(port), '--from', 'a@x.test', '--to', 'u@y.test', '--data', `@${file}`, '--timeout', '20', ...args]);
    return stdout;
  } catch (err) {
    return (err as { stdout: string }).stdout;
  }
}

describe('Postern with TLS in front of a real Postfix with TLS', () => {
  let postfix: PostfixInstance;
  let p: RunningPostern;
  before(async () => {
    postfix = await startPostfix({ tls: true, implicitTlsPort: true });
    p = await startPostern({
      listen: [{ address: '127.0.0.1:0', starttls: 'on' }],
      tls: { certificates: CERTS, verify_client: 'optional', client_ca: f('ca.pem') },
      route: { static: `127.0.0.1:${postfix.port}` },
      backend_tls: { mode: 'required', ca: f('ca.pem'), server_name: 'backend.test' },
    });
  });
  after(async () => {
    await p?.stop();
    await postfix?.stop();
  });

  it('openssl s_client -starttls smtp verifies Postern\'s certificate', async () => {
    const out = await sClient(['-starttls', 'smtp', '-connect', `127.0.0.1:${p.port}`, '-CAfile', f('ca.pem'), '-verify_return_error', '-servername', 'proxy.test'], 'EHLO s-client.test\nQUIT\n');
    assert.match(out, /Verify return code: 0 \(ok\)/);
    assert.match(out, /subject=CN = proxy\.test/);
    assert.match(out, /250-proxy\.test/);
    assert.match(out, /221 2\.0\.0 Bye/);
  });

  it('swaks --tls delivers through Postern and Postfix records TLS on both legs', async () => {
    const out = await swaks(p.port, ['--tls', '--helo', 'tls.client.test']);
    assert.match(out, /<~ +250 2\.0\.0 Ok: queued/, out);
    const [file] = await postfix.waitForMessages(1, 20000);
    const msg = readFileSync(file!, 'latin1');
    assert.match(msg, /\(using TLSv1\.[23] with cipher/, 'Postfix received it over TLS from Postern');
    assert.match(msg, /Received: from tls\.client\.test/, 'XCLIENT still works over TLS');
    const rec = await p.waitForLog((r) => r.type === 'access' && r.helo === 'tls.client.test');
    assert.match(String(rec.tls), /^TLSv1\.[23]$/);
    assert.match(String(rec.backend_tls), /^TLSv1\.[23]$/);
  });

  it('swaks --tls with a client certificate (--tls-cert/--tls-key) is accepted', async () => {
    const out = await swaks(p.port, ['--tls', '--tls-cert', f('client.pem'), '--tls-key', f('client.key')]);
    assert.match(out, /<~ +250 2\.0\.0 Ok: queued/, out);
  });

  it('swaks --tls with an expired client certificate gets nginx\'s 421 4.7.1', async () => {
    const out = await swaks(p.port, ['--tls', '--tls-cert', f('client-expired.pem'), '--tls-key', f('client-expired.key')]);
    assert.match(out, /421 4\.7\.1 SSL certificate error/, out);
  });
});

describe('implicit TLS with swaks --tlsc', () => {
  it('swaks --tlsc (TLS on connect) delivers through an implicit-TLS listener', async () => {
    const postfix = await startPostfix();
    const p = await startPostern({ listen: [{ address: '127.0.0.1:0', implicit_tls: true }], tls: { certificates: CERTS }, route: { static: `127.0.0.1:${postfix.port}` } });
    try {
      const out = await swaks(p.port, ['--tlsc', '--helo', 'tlsc.client.test']);
      assert.match(out, /<~ +220 proxy\.test ESMTP ready/, out);
      assert.match(out, /<~ +250 2\.0\.0 Ok: queued/, out);
      await postfix.waitForMessages(1, 20000);
    } finally {
      await p.stop();
      await postfix.stop();
    }
  });
});

describe('back-end TLS policies against Postfix', () => {
  let postfix: PostfixInstance;
  before(async () => {
    postfix = await startPostfix({ tls: true, implicitTlsPort: true });
  });
  after(() => postfix?.stop());

  async function rcpt(backendTls: Record<string, unknown>, port = postfix.port): Promise<{ reply: string; p: RunningPostern }> {
    const p = await startPostern({ route: { static: `127.0.0.1:${port}` }, backend_tls: backendTls });
    const { c, rcpt: reply } = await toRcpt(p.port);
    c.close();
    return { reply, p };
  }

  it('opportunistic STARTTLS with verification succeeds', async () => {
    const { reply, p } = await rcpt({ mode: 'opportunistic', ca: f('ca.pem'), server_name: 'backend.test' });
    await p.stop();
    assert.match(reply, /^250 /);
  });

  it('implicit TLS to the wrapper-mode port succeeds', async () => {
    const { reply, p } = await rcpt({ mode: 'implicit', ca: f('ca.pem'), server_name: 'backend.test' }, postfix.tlsPort);
    await p.stop();
    assert.match(reply, /^250 /);
  });

  for (const [name, cfg, code] of [
    ['a certificate from another CA', { mode: 'required', ca: f('other-ca.pem'), server_name: 'backend.test' }, 'PST_BACKEND_TLS_FAILED'],
    ['a name that does not match', { mode: 'required', ca: f('ca.pem'), server_name: 'mail.example.org' }, 'PST_BACKEND_TLS_FAILED'],
  ] as const) {
    it(`required with ${name}: 451 to the client, nothing relayed`, async () => {
      const { reply, p } = await rcpt(cfg);
      try {
        assert.equal(reply, '451 4.3.2 Internal server error');
        await p.waitForLog((r) => r.code === code);
      } finally {
        await p.stop();
      }
    });
  }

  it('verify: false is an explicit opt-out: the same certificate is then accepted', async () => {
    const { reply, p } = await rcpt({ mode: 'required', ca: f('other-ca.pem'), verify: false });
    await p.stop();
    assert.match(reply, /^250 /);
  });
});

describe('back-end TLS faults (scripted back-ends)', () => {
  async function rcptVia(b: FakeBackend, mode: string): Promise<{ reply: string; p: RunningPostern }> {
    const p = await startPostern({ route: { static: `127.0.0.1:${b.port}` }, backend_tls: { mode }, timeouts: { backend: '2s' } });
    const { c, rcpt: reply } = await toRcpt(p.port);
    c.close();
    return { reply, p };
  }

  it('required, but the back-end offers no STARTTLS: 451 and PST_BACKEND_TLS_REQUIRED', async () => {
    const b = await FakeBackend.start();
    const { reply, p } = await rcptVia(b, 'required');
    try {
      assert.equal(reply, '451 4.3.2 Internal server error');
      await p.waitForLog((r) => r.code === 'PST_BACKEND_TLS_REQUIRED');
      assert.ok(!b.commands.some((l) => l.startsWith('MAIL')), 'nothing was relayed in the clear');
    } finally {
      await p.stop();
      await b.stop();
    }
  });

  it('opportunistic, back-end offers no STARTTLS: goes on in the clear', async () => {
    const b = await FakeBackend.start();
    const { reply, p } = await rcptVia(b, 'opportunistic');
    await p.stop();
    await b.stop();
    assert.equal(reply, '250 2.1.5 Ok');
  });

  it('the back-end drops the connection during the TLS handshake: 451, PST_BACKEND_TLS_FAILED', async () => {
    // A back-end that agrees to STARTTLS and hangs up on the first handshake byte.
    const server = net.createServer((s) => {
      s.on('error', () => {});
      s.write('220 fake.backend ESMTP\r\n');
      let tlsStarted = false;
      s.on('data', (d: Buffer) => {
        if (tlsStarted) return void s.destroy();
        const line = d.toString('latin1');
        if (line.startsWith('EHLO')) s.write('250-fake.backend\r\n250-STARTTLS\r\n250 PIPELINING\r\n');
        else if (line.startsWith('STARTTLS')) {
          tlsStarted = true;
          s.write('220 2.0.0 Ready to start TLS\r\n');
        }
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    const p = await startPostern({ route: { static: `127.0.0.1:${port}` }, backend_tls: { mode: 'required' }, timeouts: { backend: '2s' } });
    try {
      const { c, rcpt } = await toRcpt(p.port);
      assert.equal(rcpt, '451 4.3.2 Internal server error');
      c.close();
      await p.waitForLog((r) => r.code === 'PST_BACKEND_TLS_FAILED');
    } finally {
      await p.stop();
      server.close();
    }
  });
});
