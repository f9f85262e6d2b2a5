/**
 * proxy_smtp_auth against a real peer: a Postfix that offers and REQUIRES SMTP AUTH (Dovecot SASL, one user
 * "relay"). The client authenticates to Postern as alice; the auth service maps that login to the back-end
 * credentials (Auth-User/Auth-Pass), and Postern authenticates to Postfix with AUTH PLAIN or AUTH LOGIN.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { AuthStub, okAnswer } from '../helpers/auth-stub.js';
import { requireBinary, startPostfix, type PostfixInstance } from '../helpers/postfix.js';
import { startPostern } from '../helpers/postern.js';
import { SmtpClient } from '../helpers/smtp-client.js';

const run = promisify(execFile);
const BACKEND = { user: 'relay', password: 'relay-pw' };

describe('proxy_smtp_auth to a Postfix that requires AUTH (Dovecot SASL)', () => {
  let postfix: PostfixInstance;
  let stub: AuthStub;
  let tmp: string;
  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'postern-pxauth-'));
    postfix = await startPostfix({ sasl: BACKEND });
    stub = await AuthStub.start(okAnswer(postfix.port));
  });
  after(async () => {
    await stub?.stop();
    await postfix?.stop();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  /** swaks to `port`; its transcript, also when it exits non-zero (a refused command). Bounded by --timeout and a kill. */
  async function swaks(port: number, subject: string, extra: string[]): Promise<{ ok: boolean; out: string }> {
    const file = path.join(tmp, `${subject}.eml`);
    writeFileSync(file, `Subject: ${subject}\nFrom: <a@x.test>\nTo: <u@y.test>\n\nproxy_smtp_auth interop\n`);
    const args = ['--server', '127.0.0.1', '--port', String(port), '--from', 'a@x.test', '--to', 'u@y.test', '--data', `@${file}`, '--timeout', '20', ...extra];
    try {
      const { stdout } = await run(await requireBinary('swaks', 'swaks'), args, { timeout: 40_000, killSignal: 'SIGKILL' });
      return { ok: true, out: stdout };
    } catch (err) {
      return { ok: false, out: `${(err as { stdout?: string }).stdout ?? ''}${(err as Error).message}` };
    }
  }

  /** The delivered file whose Subject is `subject`, once there are `n` messages. */
  async function delivered(n: number, subject: string): Promise<string> {
    const files = await postfix.waitForMessages(n, 20_000);
    const hit = files.map((f) => readFileSync(f, 'latin1')).find((m) => m.includes(`Subject: ${subject}\n`));
    assert.ok(hit, `no delivered message with Subject: ${subject}`);
    return hit;
  }

  const count = async () => (await postfix.waitForMessages(0)).length;

  it('the peer: AUTH PLAIN as relay delivers; without AUTH the RCPT is refused', async () => {
    const n = await count();
    const authed = await swaks(postfix.port, 'direct-auth', ['--auth', 'PLAIN', '--auth-user', BACKEND.user, '--auth-password', BACKEND.password]);
    assert.ok(authed.ok, authed.out);
    assert.match(authed.out, /^<- +250[- ]AUTH PLAIN LOGIN$/m, authed.out);
    assert.match(authed.out, /<- +235 2\.7\.0 Authentication successful/, authed.out);
    assert.match(authed.out, /<- +250 2\.0\.0 Ok: queued as/, authed.out);
    assert.match(await delivered(n + 1, 'direct-auth'), /\(Authenticated sender: relay\)/);

    const anon = await swaks(postfix.port, 'direct-anon', []);
    assert.ok(!anon.ok, anon.out);
    assert.match(anon.out, /<\*\* +554 5\.7\.1 <u@y\.test>: Recipient address rejected: Access denied/, anon.out);
    assert.match(postfix.log(), /NOQUEUE: reject: RCPT from \S+: 554 5\.7\.1 <u@y\.test>: Recipient address rejected: Access denied; from=<a@x\.test>/);
    await sleep(300);
    assert.equal(await count(), n + 1, 'the unauthenticated message was not delivered');
  });

  for (const [mechanism, clientMech] of [['plain', 'PLAIN'], ['login', 'LOGIN']] as const) {
    it(`proxy_smtp_auth: ${mechanism} — alice authenticates to Postern (${clientMech}), Postern to Postfix as relay with AUTH ${mechanism.toUpperCase()}`, async () => {
      stub.answer = { ...okAnswer(postfix.port), 'Auth-User': BACKEND.user, 'Auth-Pass': BACKEND.password };
      const asked = stub.requests.length;
      const p = await startPostern({
        listen: [{ address: '127.0.0.1:0', smtp_auth: ['plain', 'login'], auth_plaintext: true }],
        route: { auth_http: { url: stub.url } },
        proxy_smtp_auth: mechanism,
      });
      try {
        const n = await count();
        const subject = `via-postern-${mechanism}`;
        const r = await swaks(p.port, subject, ['--auth', clientMech, '--auth-user', 'alice', '--auth-password', 'whatever']);
        assert.ok(r.ok, r.out);
        assert.match(r.out, /<- +235 2\.0\.0 OK/, r.out);
        const queued = /<- +250 2\.0\.0 Ok: queued as ([0-9A-F]+)/.exec(r.out);
        assert.ok(queued, r.out);

        // The auth service saw the client's login; the back-end saw only the mapped one.
        const req = stub.requests[asked];
        assert.ok(req, 'Postern asked the auth service');
        assert.equal(req.get('Auth-User'), 'alice');
        // As nginx: "plain" for both cleartext mechanisms (PLAIN and LOGIN).
        assert.equal(req.get('Auth-Method'), 'plain');
        assert.equal(req.get('Auth-Pass'), 'whatever');

        const msg = await delivered(n + 1, subject);
        const headers = msg.slice(0, msg.indexOf(`Subject: ${subject}`));
        assert.match(headers, /Received: from [^\n]*\n\t\(Authenticated sender: relay\)\n\tby backend\.test \(Postfix\) with ESMTPA/, headers);
        assert.doesNotMatch(headers, /alice/, 'the client login does not reach the back-end');
        assert.match(postfix.log(), new RegExp(`${queued[1]}: client=\\S+, sasl_method=${mechanism.toUpperCase()}, sasl_username=relay\\n`));
      } finally {
        await p.stop();
      }
    });
  }

  it('a wrong back-end password: Postfix refuses AUTH, the client gets 451 4.3.2 and nothing is delivered', async () => {
    stub.answer = { ...okAnswer(postfix.port), 'Auth-User': BACKEND.user, 'Auth-Pass': 'wrong' };
    const p = await startPostern({
      listen: [{ address: '127.0.0.1:0', smtp_auth: ['plain', 'login'], auth_plaintext: true }],
      route: { auth_http: { url: stub.url } },
      proxy_smtp_auth: 'plain',
    });
    const c = await SmtpClient.connect(p.port);
    try {
      const n = await count();
      const failuresBefore = postfix.log().match(/SASL PLAIN authentication failed/g)?.length ?? 0;
      assert.equal((await c.reply()).code, 220);
      assert.match(await c.cmd('EHLO client.test'), /^250 /);
      const plain = Buffer.from('\0alice\0whatever').toString('base64');
      c.send(`AUTH PLAIN ${plain}`);
      const reply = await c.reply(20_000);
      assert.deepEqual([reply.code, reply.lines.at(-1)], [451, '4.3.2 Internal server error']);
      assert.ok(await c.waitClosed(5000), 'Postern closes after the 451');

      await p.waitForLog((r) => r.code === 'PST_BACKEND_AUTH_FAILED', 5000);
      // The refusal was Postfix's (via Dovecot), for the mapped user and the wrong password.
      const deadline = Date.now() + 5000;
      while ((postfix.log().match(/SASL PLAIN authentication failed/g)?.length ?? 0) <= failuresBefore && Date.now() < deadline) await sleep(50);
      assert.match(postfix.log(), /warning: \S+: SASL PLAIN authentication failed: [^\n]*sasl_username=relay\n/);
      assert.match(postfix.sasl!.dovecotLog(), /passwd-file\(relay,127\.0\.0\.1\): Password mismatch/);
      await sleep(300);
      assert.equal(await count(), n, 'nothing was delivered');
    } finally {
      c.close();
      await p.stop();
    }
  });
});
