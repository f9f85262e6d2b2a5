/**
 * The auth_http router against a recording auth service: the request is nginx's, header for
 * header, and every kind of answer (and non-answer) gets nginx's treatment.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { AuthStub, okAnswer } from '../helpers/auth-stub.js';
import { FakeBackend } from '../helpers/fake-backend.js';
import { startPostern, type RunningPostern } from '../helpers/postern.js';
import { hello, toRcpt } from '../helpers/preamble.js';

/** Greets, sends MAIL and the RCPT that triggers routing; the Auth-SMTP-* headers carry these lines as typed. */
const envelope = (port: number): ReturnType<typeof toRcpt> =>
  toRcpt(port, { hello: 'EHLO client.test', mail: 'MAIL FROM:<a@x.test> SIZE=42', rcpt: 'RCPT TO:<u@y.test> ORCPT=rfc822;u@y.test' });

function authConfig(stub: AuthStub, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { route: { auth_http: { url: `${stub.url}?svc=smtp`, headers: { 'X-Auth-Key': 's3cret' }, ...extra } }, timeouts: { auth: '1s' } };
}

describe('auth_http: the request', () => {
  let backend: FakeBackend;
  let stub: AuthStub;
  let p: RunningPostern;
  before(async () => {
    backend = await FakeBackend.start();
    stub = await AuthStub.start(okAnswer(0));
    stub.answer = okAnswer(backend.port);
    p = await startPostern(authConfig(stub));
  });
  after(async () => {
    await p.stop();
    await stub.stop();
    await backend.stop();
  });

  it('sends nginx\'s headers, in nginx\'s order, with nginx\'s values for Auth-Method none', async () => {
    const { c, rcpt } = await envelope(p.port);
    assert.equal(rcpt, '250 2.1.5 Ok');
    c.close();
    const req = stub.requests.at(-1)!;
    assert.equal(req.method, 'GET');
    assert.equal(req.url, '/auth?svc=smtp');
    const names = req.headers.map(([n]) => n.toLowerCase());
    assert.deepEqual(names, [
      'host', 'auth-method', 'auth-user', 'auth-pass', 'auth-protocol', 'auth-login-attempt', 'client-ip', 'client-host',
      'auth-smtp-helo', 'auth-smtp-from', 'auth-smtp-to', 'x-auth-key',
    ]);
    assert.equal(req.get('Host'), '127.0.0.1');
    assert.equal(req.get('Auth-Method'), 'none');
    assert.equal(req.get('Auth-User'), '');
    assert.equal(req.get('Auth-Pass'), '');
    assert.equal(req.get('Auth-Protocol'), 'smtp');
    assert.equal(req.get('Auth-Login-Attempt'), '1');
    assert.equal(req.get('Client-IP'), '127.0.0.1');
    assert.equal(req.get('Client-Host'), '[UNAVAILABLE]');
    assert.equal(req.get('Auth-SMTP-Helo'), 'client.test');
    assert.equal(req.get('Auth-SMTP-From'), 'MAIL FROM:<a@x.test> SIZE=42');
    assert.equal(req.get('Auth-SMTP-To'), 'RCPT TO:<u@y.test> ORCPT=rfc822;u@y.test');
    assert.equal(req.get('X-Auth-Key'), 's3cret');
  });

  it('reuses one keep-alive connection for successive sessions (nginx opens one per request)', async () => {
    const before = stub.connections;
    for (let i = 0; i < 5; i++) (await envelope(p.port)).c.close();
    assert.ok(stub.connections - before <= 1, `opened ${stub.connections - before} connections for 5 requests`);
  });

  it('passes 8-bit bytes in Auth-SMTP-* raw, as nginx does', async () => {
    const { c } = await hello(p.port, { hello: 'EHLO client.test' });
    c.write(Buffer.from('MAIL FROM:<j\xfcrgen@x.test>\r\n', 'latin1'));
    await c.reply();
    c.send('RCPT TO:<u@y.test>');
    await c.reply();
    c.close();
    const raw = stub.requests.at(-1)!.get('Auth-SMTP-From')!;
    assert.equal(Buffer.from(raw, 'latin1').toString('latin1'), 'MAIL FROM:<j\xfcrgen@x.test>');
  });
});

describe('auth_http: answers', () => {
  let backend: FakeBackend;
  before(async () => {
    backend = await FakeBackend.start();
  });
  after(() => backend.stop());

  async function withStub(answer: ConstructorParameters<typeof Object>[0], fn: (p: RunningPostern, stub: AuthStub) => Promise<void>, extra?: Record<string, unknown>): Promise<void> {
    const stub = await AuthStub.start(answer as never);
    const p = await startPostern(authConfig(stub, extra));
    try {
      await fn(p, stub);
    } finally {
      await p.stop();
      await stub.stop();
    }
  }

  it('a refusal is sent with Auth-Error-Code and the session is closed', () =>
    withStub({ 'Auth-Status': 'Relay access denied', 'Auth-Error-Code': '554 5.7.1' }, async (p) => {
      const { c, rcpt } = await envelope(p.port);
      assert.equal(rcpt, '554 5.7.1 Relay access denied');
      assert.ok(await c.waitClosed());
      await p.waitForLog((r) => r.code === 'PST_AUTH_REJECTED');
    }));

  it('a refusal without Auth-Error-Code gets nginx\'s 535 5.7.0', () =>
    withStub({ 'Auth-Status': 'Invalid login' }, async (p) => {
      assert.equal((await envelope(p.port)).rcpt, '535 5.7.0 Invalid login');
    }));

  it('Auth-Wait delays the refusal and keeps the session open for another RCPT, counting attempts', () =>
    withStub((_req: unknown, n: number) => (n === 1 ? { 'Auth-Status': 'Greylisted, retry', 'Auth-Error-Code': '451 4.7.1', 'Auth-Wait': '1' } : okAnswer(backend.port)), async (p, stub) => {
      const t0 = Date.now();
      const { c, rcpt } = await envelope(p.port);
      assert.equal(rcpt, '451 4.7.1 Greylisted, retry');
      assert.ok(Date.now() - t0 >= 900, 'the refusal waited Auth-Wait seconds');
      assert.equal(await c.cmd('RCPT TO:<u@y.test>'), '250 2.1.5 Ok');
      assert.deepEqual(stub.requests.map((r) => r.get('Auth-Login-Attempt')), ['1', '2']);
      assert.equal(stub.requests[1]!.get('Auth-SMTP-To'), 'RCPT TO:<u@y.test>');
      c.close();
    }));

  it('Auth-Status: WAIT is asked again, and a service that answers WAIT forever is given up on', () =>
    withStub({ 'Auth-Status': 'WAIT', 'Auth-Wait': '0' }, async (p, stub) => {
      const { c, rcpt } = await envelope(p.port);
      assert.equal(rcpt, '451 4.3.2 Internal server error');
      assert.ok(await c.waitClosed());
      assert.equal(stub.requests.length, 3, 'first request plus max_wait_retries (2)');
      await p.waitForLog((r) => r.code === 'PST_AUTH_HTTP_INVALID' && String(r.detail).includes('WAIT'));
    }, { max_wait_retries: 2 }));

  it('answers without Auth-Status but with Auth-Server/Auth-Port are a success, as in nginx', () =>
    withStub({ 'Auth-Server': '127.0.0.1', 'Auth-Port': '0' }, async (p, stub) => {
      stub.answer = { 'Auth-Server': '127.0.0.1', 'Auth-Port': String(backend.port) };
      assert.equal((await envelope(p.port)).rcpt, '250 2.1.5 Ok');
    }));

  it('a slow auth service that answers within timeouts.auth: the session proceeds', () =>
    withStub(async () => {
      await new Promise((r) => setTimeout(r, 600));
      return okAnswer(backend.port);
    }, async (p) => {
      assert.equal((await envelope(p.port)).rcpt, '250 2.1.5 Ok');
    }));

  it('Auth-Server may be a host name (nginx accepts only IP literals)', () =>
    withStub({}, async (p, stub) => {
      stub.answer = okAnswer(backend.port, 'localhost');
      assert.equal((await envelope(p.port)).rcpt, '250 2.1.5 Ok');
    }));

  it('X-Postern-Backend-TLS lets the auth service require TLS for one route (nginx ignores the header)', () =>
    withStub({}, async (p, stub) => {
      stub.answer = { ...okAnswer(backend.port), 'X-Postern-Backend-TLS': 'required', 'X-Postern-Backend-TLS-Name': 'backend.test' };
      assert.equal((await envelope(p.port)).rcpt, '451 4.3.2 Internal server error');
      const rec = await p.waitForLog((r) => r.code === 'PST_BACKEND_TLS_REQUIRED');
      assert.match(String(rec.detail), /does not offer STARTTLS/);
      stub.answer = { ...okAnswer(backend.port), 'X-Postern-Backend-TLS': 'sometimes' };
      assert.equal((await envelope(p.port)).rcpt, '451 4.3.2 Internal server error');
      await p.waitForLog((r) => r.code === 'PST_AUTH_HTTP_INVALID' && /X-Postern-Backend-TLS/.test(String(r.detail)));
    }));

  for (const [name, answer, code] of [
    ['missing Auth-Server', { 'Auth-Status': 'OK', 'Auth-Port': '25' }, 'PST_AUTH_HTTP_INVALID'],
    ['a bad Auth-Port', { 'Auth-Status': 'OK', 'Auth-Server': '127.0.0.1', 'Auth-Port': '99999' }, 'PST_AUTH_HTTP_INVALID'],
    ['an Auth-Server that does not resolve', { 'Auth-Status': 'OK', 'Auth-Server': 'no-such-host.invalid', 'Auth-Port': '25' }, 'PST_ROUTE_RESOLVE'],
    ['a hanging service', 'hang', 'PST_AUTH_HTTP_TIMEOUT'],
    ['a service that drops the connection', 'destroy', 'PST_AUTH_HTTP_UNAVAILABLE'],
  ] as const) {
    it(`${name}: 451 4.3.2, a log line with the reason, and close`, () =>
      withStub(typeof answer === 'string' ? () => answer : answer, async (p) => {
        const { c, rcpt } = await envelope(p.port);
        assert.equal(rcpt, '451 4.3.2 Internal server error');
        assert.ok(await c.waitClosed());
        const rec = await p.waitForLog((r) => r.code === code);
        assert.ok(rec.detail, 'the log line carries the reason');
      }));
  }

  it('an auth service that is down: 451 4.3.2', async () => {
    const p = await startPostern({ route: { auth_http: { url: 'http://127.0.0.1:1/auth' } }, timeouts: { auth: '1s' } });
    try {
      const { c, rcpt } = await envelope(p.port);
      assert.equal(rcpt, '451 4.3.2 Internal server error');
      assert.ok(await c.waitClosed());
      await p.waitForLog((r) => r.code === 'PST_AUTH_HTTP_UNAVAILABLE');
    } finally {
      await p.stop();
    }
  });
});
