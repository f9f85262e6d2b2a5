/**
 * Submission through Postern with real clients (swaks --auth PLAIN|LOGIN|CRAM-MD5, nodemailer)
 * and a real Postfix behind it that learns the authenticated user from XCLIENT LOGIN=.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { AuthStub, okAnswer, type RecordedRequest } from '../helpers/auth-stub.js';
import { requireBinary, startPostfix, TLS_FIXTURES, type PostfixInstance } from '../helpers/postfix.js';
import { startPostern, type RunningPostern } from '../helpers/postern.js';

const run = promisify(execFile);
const tmp = mkdtempSync(path.join(os.tmpdir(), 'postern-sub-'));

describe('submission with SMTP AUTH through Postern to Postfix', () => {
  let postfix: PostfixInstance;
  let stub: AuthStub;
  let p: RunningPostern;
  before(async () => {
    postfix = await startPostfix();
    stub = await AuthStub.start((req: RecordedRequest) => {
      const user = decodeURIComponent(req.get('Auth-User') ?? '');
      const pass = decodeURIComponent(req.get('Auth-Pass') ?? '');
      const ok = req.get('Auth-Method') === 'cram-md5'
        ? createHmac('md5', 'secret').update(req.get('Auth-Salt') ?? '').digest('hex') === pass && user === 'alice'
        : user === 'alice' && pass === 'secret';
      return ok ? okAnswer(postfix.port) : { 'Auth-Status': 'Invalid login or password', 'Auth-Error-Code': '535 5.7.8' };
    });
    p = await startPostern({
      listen: [{ address: '127.0.0.1:0', starttls: 'on', smtp_auth: ['plain', 'login', 'cram-md5'] }],
      tls: { certificates: [{ cert: path.join(TLS_FIXTURES, 'server.pem'), key: path.join(TLS_FIXTURES, 'server.key') }] },
      route: { auth_http: { url: stub.url } },
    });
  });
  after(async () => {
    await p?.stop();
    await stub?.stop();
    await postfix?.stop();
  });

  async function swaks(args: string[]): Promise<string> {
    const file = path.join(tmp, 'm.eml');
    writeFileSync(file, 'Subject: submission\n\nsent with AUTH\n');
    try {
      return (await run(await requireBinary('swaks', 'swaks'), ['--server', '127.0.0.1', '--port', String(p.port), '--from', 'alice@x.test', '--to', 'u@y.test', '--data', `@${file}`, '--tls', '--timeout', '20', ...args])).stdout;
    } catch (err) {
      return (err as { stdout: string }).stdout;
    }
  }

  for (const mech of ['PLAIN', 'LOGIN', 'CRAM-MD5']) {
    it(`swaks --auth ${mech}: 235 from Postern, the message reaches Postfix, which logs the user`, async () => {
      const before = (await postfix.waitForMessages(0)).length;
      const out = await swaks(['--auth', mech, '--auth-user', 'alice', '--auth-password', 'secret']);
      assert.match(out, /<~ +235 2\.0\.0 OK/, out);
      assert.match(out, /<~ +250 2\.0\.0 Ok: queued/, out);
      const files = await postfix.waitForMessages(before + 1, 20000);
      assert.ok(files.length > before);
      assert.match(postfix.log(), /sasl_username=alice/);
    });
  }

  it('swaks with a wrong password gets the auth service\'s 535 and no mail is relayed', async () => {
    const before = (await postfix.waitForMessages(0)).length;
    const out = await swaks(['--auth', 'PLAIN', '--auth-user', 'alice', '--auth-password', 'wrong']);
    assert.match(out, /<~\* +535 5\.7\.8 Invalid login or password/, out);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal((await postfix.waitForMessages(0)).length, before);
  });

  it('nodemailer with STARTTLS and AUTH LOGIN delivers', async () => {
    const t = nodemailer.createTransport({
      host: '127.0.0.1', port: p.port, secure: false, requireTLS: true, name: 'nodemailer.sub.test',
      tls: { ca: readFileSync(path.join(TLS_FIXTURES, 'ca.pem')), servername: 'proxy.test' },
      auth: { user: 'alice', pass: 'secret' }, authMethod: 'LOGIN',
    });
    const info = await t.sendMail({ from: 'alice@x.test', to: 'u@y.test', subject: 'nodemailer submission', text: 'hi' });
    t.close();
    assert.match(info.response, /^250 2\.0\.0 Ok: queued/);
  });
});
