/**
 * TLS in front: STARTTLS and implicit TLS, the STARTTLS injection defence, `starttls: only`, SNI,
 * client certificates with nginx's replies and Auth-SSL-* headers, and broken handshakes.
 * Certificates: test/fixtures/tls (make.sh).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AuthStub, okAnswer } from '../helpers/auth-stub.js';
import { FakeBackend } from '../helpers/fake-backend.js';
import { startPostern, type RunningPostern } from '../helpers/postern.js';
import { hello, toRcpt } from '../helpers/preamble.js';
import { SmtpClient, replyText } from '../helpers/smtp-client.js';

const FIX = path.resolve(import.meta.dirname, '../fixtures/tls');
const f = (name: string): string => path.join(FIX, name);
const CA = readFileSync(f('ca.pem'));
const CERTS = [{ cert: f('server.pem'), key: f('server.key') }, { cert: f('server2.pem'), key: f('server2.key') }];
const clientCert = (name: string): { cert: Buffer; key: Buffer } => ({ cert: readFileSync(f(`${name}.pem`)), key: readFileSync(f(`${name}.key`)) });

let backend: FakeBackend;
let stub: AuthStub;
before(async () => {
  backend = await FakeBackend.start();
  stub = await AuthStub.start(okAnswer(0));
  stub.answer = okAnswer(backend.port);
});
after(async () => {
  await stub.stop();
  await backend.stop();
});

function tlsConfig(listen: Record<string, unknown>, tls: Record<string, unknown> = {}, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { listen: [{ address: '127.0.0.1:0', ...listen }], tls: { certificates: CERTS, ...tls }, route: { auth_http: { url: stub.url } }, ...extra };
}

describe('STARTTLS', () => {
  let p: RunningPostern;
  before(async () => {
    p = await startPostern(tlsConfig({ starttls: 'on' }, {}, { timeouts: { handshake: '500ms' } }));
  });
  after(() => p.stop());

  it('is offered before TLS, resets the session after it, and is not offered again', async () => {
    const { c, ehlo } = await hello(p.port);
    assert.ok(ehlo.lines.includes('STARTTLS'));
    await c.cmd('MAIL FROM:<before@x.test>');
    assert.equal(await c.cmd('STARTTLS'), '220 2.0.0 Start TLS');
    const secure = await c.startTls({ ca: CA, servername: 'proxy.test' });
    assert.equal(secure.authorized, true);
    // RFC 3207 §4.2: the HELO and the transaction from before TLS are gone.
    assert.equal(await c.cmd('MAIL FROM:<a@x.test>'), '503 5.5.1 Send HELO/EHLO first');
    c.send('EHLO c.test');
    const lines = (await c.reply()).lines;
    assert.ok(!lines.includes('STARTTLS'), lines.join(','));
    assert.equal(await c.cmd('STARTTLS'), '503 5.5.1 TLS already active');
    await c.cmd('MAIL FROM:<a@x.test>');
    assert.equal(await c.cmd('RCPT TO:<u@y.test>'), '250 2.1.5 Ok');
    assert.equal(await c.data('Subject: over TLS\r\n\r\nhi\r\n'), '250 2.0.0 Ok: queued');
    c.close();
    const req = stub.requests.at(-1)!;
    assert.equal(req.get('Auth-SSL'), 'on');
    assert.match(req.get('Auth-SSL-Protocol') ?? '', /^TLSv1\.[23]$/);
    assert.ok(req.get('Auth-SSL-Cipher'));
    assert.equal(req.get('Auth-SSL-Verify'), undefined, 'no verify header with verify_client off');
  });

  it('discards commands pipelined after STARTTLS (CVE-2011-0411, nginx CVE-2014-3556)', async () => {
    const { c } = await hello(p.port);
    c.write('STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n');
    assert.equal(replyText(await c.reply()), '220 2.0.0 Start TLS');
    await c.startTls({ ca: CA, servername: 'proxy.test' });
    await c.cmd('EHLO c.test');
    // Had the injected MAIL been executed inside TLS, this would be "Nested MAIL command".
    assert.equal(await c.cmd('MAIL FROM:<a@x.test>'), '250 2.1.0 OK');
    c.close();
    await p.waitForLog((r) => /discarded bytes pipelined after STARTTLS/.test(r.msg));
  });

  it('STARTTLS with an argument is a syntax error', async () => {
    const { c } = await hello(p.port);
    assert.equal(await c.cmd('STARTTLS now'), '501 5.5.4 Invalid argument');
    c.close();
  });

  it('garbage instead of a handshake: the connection is closed and logged', async () => {
    const { c } = await hello(p.port);
    await c.cmd('STARTTLS');
    c.write('EHLO this is not TLS\r\n');
    assert.ok(await c.waitClosed());
    await p.waitForLog((r) => r.code === 'PST_TLS_HANDSHAKE');
  });

  it('a client that never finishes the handshake is closed after timeouts.handshake', async () => {
    const { c } = await hello(p.port);
    await c.cmd('STARTTLS');
    assert.ok(await c.waitClosed(3000));
    await p.waitForLog((r) => r.code === 'PST_TLS_HANDSHAKE_TIMEOUT');
  });
});

describe('starttls: only', () => {
  it('refuses MAIL and RCPT before TLS (nginx lets them through), accepts them after', async () => {
    const p = await startPostern(tlsConfig({ starttls: 'only' }));
    try {
      const { c } = await hello(p.port);
      assert.equal(await c.cmd('MAIL FROM:<a@x.test>'), '530 5.7.0 Must issue a STARTTLS command first');
      assert.equal(await c.cmd('RCPT TO:<u@y.test>'), '530 5.7.0 Must issue a STARTTLS command first');
      await c.cmd('STARTTLS');
      await c.startTls({ ca: CA, servername: 'proxy.test' });
      await c.cmd('EHLO c.test');
      assert.equal(await c.cmd('MAIL FROM:<a@x.test>'), '250 2.1.0 OK');
      c.close();
    } finally {
      await p.stop();
    }
  });
});

describe('implicit TLS', () => {
  let p: RunningPostern;
  before(async () => {
    p = await startPostern(tlsConfig({ implicit_tls: true }, {}, { timeouts: { handshake: '500ms' } }));
  });
  after(() => p.stop());

  it('greets after the handshake; EHLO offers no STARTTLS; SNI picks the certificate', async () => {
    const { c, ehlo } = await hello(await SmtpClient.connectTls(p.port, { ca: CA, servername: 'proxy.test' }));
    assert.ok(!ehlo.lines.includes('STARTTLS'));
    c.close();
    const c2 = await SmtpClient.connectTls(p.port, { ca: CA, servername: 'mx2.test' });
    const peer = (c2.socket as import('node:tls').TLSSocket).getPeerX509Certificate()!;
    assert.match(peer.subject, /CN=mx2\.test/);
    assert.equal(replyText(await c2.reply()), '220 proxy.test ESMTP ready');
    c2.close();
  });

  it('a plaintext client on the implicit-TLS port gets no SMTP reply and is closed', async () => {
    const c = await SmtpClient.connect(p.port);
    c.write('EHLO plain.test\r\n');
    assert.ok(await c.waitClosed());
    assert.doesNotMatch(c.transcript, /^2/);
    await p.waitForLog((r) => r.code === 'PST_TLS_HANDSHAKE');
  });

  it('a silent client is closed after timeouts.handshake', async () => {
    const s = net.connect(p.port, '127.0.0.1');
    s.on('error', () => {});
    await new Promise((r) => s.once('close', r));
    await p.waitForLog((r) => r.code === 'PST_TLS_HANDSHAKE_TIMEOUT');
  });
});

describe('client certificates (verify_client)', () => {
  const openssl = (args: string[]): string => execFileSync('openssl', args, { encoding: 'utf8' }).trim();

  async function withVerify(verify: string, fn: (p: RunningPostern) => Promise<void>, passCert = false): Promise<void> {
    const p = await startPostern(tlsConfig({ implicit_tls: true }, { verify_client: verify, client_ca: f('ca.pem'), pass_client_cert: passCert }));
    try {
      await fn(p);
    } finally {
      await p.stop();
    }
  }

  async function rcptWith(p: RunningPostern, cert?: string): Promise<string> {
    const c = await SmtpClient.connectTls(p.port, { ca: CA, servername: 'proxy.test', ...(cert ? clientCert(cert) : {}) });
    try {
      const greeting = await c.reply();
      if (greeting.code !== 220) return replyText(greeting);
      return (await toRcpt(c, { greeted: true })).rcpt;
    } finally {
      c.close();
    }
  }

  it('on: a good certificate passes, and the auth service gets nginx\'s Auth-SSL-* headers', () =>
    withVerify('on', async (p) => {
      assert.equal(await rcptWith(p, 'client'), '250 2.1.5 Ok');
      const req = stub.requests.at(-1)!;
      const pem = f('client.pem');
      assert.equal(req.get('Auth-SSL-Verify'), 'SUCCESS');
      assert.equal(req.get('Auth-SSL-Subject'), openssl(['x509', '-in', pem, '-noout', '-subject', '-nameopt', 'RFC2253']).replace(/^subject=/, ''));
      assert.equal(req.get('Auth-SSL-Issuer'), openssl(['x509', '-in', pem, '-noout', '-issuer', '-nameopt', 'RFC2253']).replace(/^issuer=/, ''));
      assert.equal(req.get('Auth-SSL-Serial'), openssl(['x509', '-in', pem, '-noout', '-serial']).replace(/^serial=/, ''));
      assert.equal(req.get('Auth-SSL-Fingerprint'), openssl(['x509', '-in', pem, '-noout', '-fingerprint', '-sha1']).replace(/^.*=/, '').replace(/:/g, '').toLowerCase());
      assert.equal(req.get('Auth-SSL-Cert'), undefined);
      const names = req.headers.map(([n]) => n);
      assert.ok(names.indexOf('Auth-SSL') > names.indexOf('Auth-SMTP-To'), 'Auth-SSL-* follow Auth-SMTP-* as in nginx');
    }));

  it('pass_client_cert: Auth-SSL-Cert is the URL-escaped PEM', () =>
    withVerify('on', async (p) => {
      await rcptWith(p, 'client');
      const sent = decodeURIComponent(stub.requests.at(-1)!.get('Auth-SSL-Cert')!);
      assert.equal(new X509Certificate(sent).fingerprint256, new X509Certificate(readFileSync(f('client.pem'))).fingerprint256);
      // nginx's escaping: only 0x00-0x20 and % are %XX; base64's + / = stay raw.
      assert.doesNotMatch(stub.requests.at(-1)!.get('Auth-SSL-Cert')!, /[\n ]|%2B|%2F|%3D/);
      assert.match(stub.requests.at(-1)!.get('Auth-SSL-Cert')!, /^-----BEGIN%20CERTIFICATE-----%0A/);
    }, true));

  it('on: no certificate → 421 4.7.1 No required SSL certificate', () =>
    withVerify('on', async (p) => {
      assert.equal(await rcptWith(p), '421 4.7.1 No required SSL certificate');
      await p.waitForLog((r) => r.code === 'PST_TLS_CLIENT_CERT_MISSING');
    }));

  for (const bad of ['client-expired', 'client-wrong-ca', 'client-selfsigned']) {
    it(`on: ${bad} → 421 4.7.1 SSL certificate error`, () =>
      withVerify('on', async (p) => {
        assert.equal(await rcptWith(p, bad), '421 4.7.1 SSL certificate error');
        const rec = await p.waitForLog((r) => r.code === 'PST_TLS_CLIENT_CERT_INVALID');
        assert.ok(rec.detail);
      }));
  }

  it('optional: no certificate is fine (Verify NONE), a bad one is not', () =>
    withVerify('optional', async (p) => {
      assert.equal(await rcptWith(p), '250 2.1.5 Ok');
      assert.equal(stub.requests.at(-1)!.get('Auth-SSL-Verify'), 'NONE');
      assert.equal(await rcptWith(p, 'client-expired'), '421 4.7.1 SSL certificate error');
    }));

  it('optional_no_ca: an untrusted certificate passes with FAILED:<reason> for the auth service to judge', () =>
    withVerify('optional_no_ca', async (p) => {
      assert.equal(await rcptWith(p, 'client-selfsigned'), '250 2.1.5 Ok');
      assert.match(stub.requests.at(-1)!.get('Auth-SSL-Verify') ?? '', /^FAILED:self-signed certificate$/);
    }));
});

describe('TLS settings', () => {
  it('session resumption: a second connection resumes the first one\'s session', async () => {
    const p = await startPostern(tlsConfig({ implicit_tls: true }));
    try {
      const first = await SmtpClient.connectTls(p.port, { ca: CA, servername: 'proxy.test' });
      const session = await new Promise<Buffer>((resolve) => (first.socket as import('node:tls').TLSSocket).once('session', resolve));
      await first.reply();
      first.close();
      const second = await SmtpClient.connectTls(p.port, { ca: CA, servername: 'proxy.test', session });
      assert.equal((second.socket as import('node:tls').TLSSocket).isSessionReused(), true);
      assert.equal((await second.reply()).code, 220);
      second.close();
    } finally {
      await p.stop();
    }
  });

  it('ciphers: the TLS 1.2 cipher list is the configured one', async () => {
    const p = await startPostern(tlsConfig({ implicit_tls: true }, { ciphers: 'ECDHE-ECDSA-CHACHA20-POLY1305' }));
    try {
      const c = await SmtpClient.connectTls(p.port, { ca: CA, servername: 'proxy.test', maxVersion: 'TLSv1.2' });
      assert.equal((c.socket as import('node:tls').TLSSocket).getCipher().name, 'ECDHE-ECDSA-CHACHA20-POLY1305');
      c.close();
      await assert.rejects(SmtpClient.connectTls(p.port, { ca: CA, servername: 'proxy.test', maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256' }));
    } finally {
      await p.stop();
    }
  });

  it('min_version: a client below the floor cannot connect', async () => {
    const p = await startPostern(tlsConfig({ implicit_tls: true }, { min_version: 'TLSv1.3' }));
    try {
      await assert.rejects(SmtpClient.connectTls(p.port, { ca: CA, servername: 'proxy.test', maxVersion: 'TLSv1.2' }));
      const ok = await SmtpClient.connectTls(p.port, { ca: CA, servername: 'proxy.test' });
      assert.equal((ok.socket as import('node:tls').TLSSocket).getProtocol(), 'TLSv1.3');
      ok.close();
      await p.waitForLog((r) => r.code === 'PST_TLS_HANDSHAKE');
    } finally {
      await p.stop();
    }
  });
});

describe('AUTH EXTERNAL with a client certificate', () => {
  it('Auth-Method external with the Auth-SSL-* facts for the auth service to map the certificate to a login', async () => {
    const p = await startPostern({
      listen: [{ address: '127.0.0.1:0', implicit_tls: true, smtp_auth: ['external'] }],
      tls: { certificates: CERTS, verify_client: 'on', client_ca: f('ca.pem') },
      route: { auth_http: { url: stub.url } },
    });
    try {
      const { c, ehlo } = await hello(await SmtpClient.connectTls(p.port, { ca: CA, servername: 'proxy.test', ...clientCert('client') }));
      assert.ok(ehlo.lines.includes('AUTH EXTERNAL'));
      assert.equal(await c.cmd('AUTH EXTERNAL ='), '235 2.0.0 OK');
      c.close();
      const req = stub.requests.at(-1)!;
      assert.equal(req.get('Auth-Method'), 'external');
      assert.equal(req.get('Auth-User'), '');
      assert.equal(req.get('Auth-SSL-Verify'), 'SUCCESS');
      assert.match(req.get('Auth-SSL-Subject') ?? '', /CN=client\.test/);
    } finally {
      await p.stop();
    }
  });
});

describe('starttls: only and AUTH', () => {
  it('AUTH before TLS is refused with 530, as nginx\'s starttls only does', async () => {
    const p = await startPostern(tlsConfig({ starttls: 'only', smtp_auth: ['plain'] }));
    try {
      const { c } = await hello(p.port);
      assert.equal(await c.cmd(`AUTH PLAIN ${Buffer.from('\0alice\0secret').toString('base64')}`), '530 5.7.0 Must issue a STARTTLS command first');
      c.close();
    } finally {
      await p.stop();
    }
  });
});
