/**
 * The POP3 login towards the back-end (src/pop3/login.ts): nginx's USER/PASS after +OK, AUTH
 * PLAIN, Dovecot's XCLIENT only when the greeting offers it, STLS, and which failures may fail
 * over to another server.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { PosternError } from '../../src/errors.js';
import { Pop3Login, pop3Retryable, type LoginOptions, type LoginStep } from '../../src/pop3/login.js';

const BASE: LoginOptions = { user: 'alice', pass: 's3cret', login: 'user', xclient: null, tls: 'off' };
const X = { addr: '192.0.2.8', port: 6666, session: 'sess1', ttl: 5 };

/** Feeds the back-end's lines one by one; returns what Postern sent and the last step. */
function talk(o: Partial<LoginOptions>, lines: string[]): { sent: string[]; last: LoginStep; login: Pop3Login } {
  const login = new Pop3Login({ ...BASE, ...o });
  const sent: string[] = [];
  let last: LoginStep = { kind: 'wait' };
  for (const l of lines) {
    last = login.onLine(Buffer.from(l, 'latin1'), Buffer.from(`${l}\r\n`, 'latin1'));
    if (last.kind === 'send') sent.push(last.data.toString('latin1'));
    if (last.kind === 'starttls') last = login.tlsReady();
    if (last.kind === 'send' && !sent.includes(last.data.toString('latin1'))) sent.push(last.data.toString('latin1'));
    if (last.kind === 'fail' || last.kind === 'done') break;
  }
  return { sent, last, login };
}

describe('POP3 back-end login', () => {
  it('nginx: +OK, USER, +OK, PASS, +OK — the last +OK is the client\'s', () => {
    const r = talk({}, ['+OK Dovecot ready.', '+OK', '+OK Logged in.']);
    assert.deepEqual(r.sent, ['USER alice\r\n', 'PASS s3cret\r\n']);
    assert.deepEqual(r.last, { kind: 'done', final: Buffer.from('+OK Logged in.\r\n') });
  });

  it('backend_login plain: AUTH PLAIN with the initial response (RFC 5034)', () => {
    const r = talk({ login: 'plain' }, ['+OK ready', '+OK Logged in.']);
    assert.deepEqual(r.sent, [`AUTH PLAIN ${Buffer.from('\0alice\0s3cret').toString('base64')}\r\n`]);
    assert.equal(r.last.kind, 'done');
  });

  it('XCLIENT only when the greeting shows [XCLIENT], in Dovecot\'s pop3-proxy form', () => {
    const offered = talk({ xclient: X }, ['+OK [XCLIENT] Dovecot (Debian) ready.', '+OK Updated', '+OK', '+OK Logged in.']);
    assert.deepEqual(offered.sent, ['XCLIENT ADDR=192.0.2.8 PORT=6666 SESSION=sess1 TTL=5\r\n', 'USER alice\r\n', 'PASS s3cret\r\n']);
    assert.equal(offered.login.xclientDone, true);
    const plain = talk({ xclient: X }, ['+OK Dovecot ready.', '+OK', '+OK Logged in.']);
    assert.deepEqual(plain.sent, ['USER alice\r\n', 'PASS s3cret\r\n']);
    assert.equal(plain.login.offersXclient, false);
  });

  it('a refused XCLIENT, or a value with a space, fails before any credential is sent', () => {
    assert.deepEqual(talk({ xclient: X }, ['+OK [XCLIENT] ready', '-ERR no']).last, { kind: 'fail', code: 'PST_BACKEND_REJECTED', detail: 'XCLIENT: -ERR no', reply: '-ERR no' });
    const bad = talk({ xclient: { ...X, session: 'a b' } }, ['+OK [XCLIENT] ready']);
    assert.equal(bad.last.kind === 'fail' && bad.last.code, 'PST_BACKEND_REJECTED');
    assert.deepEqual(bad.sent, []);
  });

  it('a greeting that is not +OK, and -ERR to USER or PASS', () => {
    assert.equal(talk({}, ['-ERR [SYS/TEMP] busy']).last.kind === 'fail' && 'PST_BACKEND_REJECTED', 'PST_BACKEND_REJECTED');
    const user = talk({}, ['+OK', '-ERR unknown']).last;
    assert.equal(user.kind === 'fail' && user.code, 'PST_BACKEND_AUTH_FAILED');
    const pass = talk({}, ['+OK', '+OK', '-ERR [AUTH] Authentication failed.']).last;
    assert.deepEqual(pass, { kind: 'fail', code: 'PST_BACKEND_AUTH_FAILED', detail: 'PASS: -ERR [AUTH] Authentication failed.', reply: '-ERR [AUTH] Authentication failed.' });
  });

  it('CR, LF or NUL in a credential is never sent', () => {
    for (const creds of [{ user: 'a\r\nDELE 1' }, { pass: 'x\nQUIT' }, { pass: 'x\0' }, { user: '' }]) {
      const r = talk(creds, ['+OK ready']);
      assert.deepEqual(r.sent, [], JSON.stringify(creds));
      assert.equal(r.last.kind === 'fail' && r.last.code, 'PST_BACKEND_AUTH_FAILED');
    }
  });

  it('STLS: required sends it at once; opportunistic only when CAPA lists it', () => {
    const req = new Pop3Login({ ...BASE, tls: 'required' });
    assert.equal(step(req, '+OK ready'), 'STLS\r\n');
    assert.deepEqual(req.onLine(Buffer.from('+OK Begin TLS'), Buffer.alloc(0)), { kind: 'starttls' });
    assert.equal((req.tlsReady() as { data: Buffer }).data.toString(), 'USER alice\r\n');
    const refused = new Pop3Login({ ...BASE, tls: 'required' });
    step(refused, '+OK');
    assert.equal((refused.onLine(Buffer.from('-ERR no'), Buffer.alloc(0)) as { code: string }).code, 'PST_BACKEND_TLS_REQUIRED');
    const opp = new Pop3Login({ ...BASE, tls: 'opportunistic' });
    assert.equal(step(opp, '+OK'), 'CAPA\r\n');
    for (const l of ['+OK', 'TOP', 'STLS']) assert.deepEqual(opp.onLine(Buffer.from(l), Buffer.alloc(0)), { kind: 'wait' });
    assert.equal(step(opp, '.'), 'STLS\r\n');
    const none = new Pop3Login({ ...BASE, tls: 'opportunistic' });
    step(none, '+OK');
    assert.equal(step(none, '-ERR no CAPA'), 'USER alice\r\n');
  });

  it('retryable: faults yes; a refused login no, unless the back-end says [SYS/TEMP] (RFC 3206)', () => {
    assert.equal(pop3Retryable(new PosternError('PST_BACKEND_TIMEOUT')), true);
    assert.equal(pop3Retryable(new PosternError('PST_BACKEND_REJECTED', 'greeting', '-ERR x')), true);
    assert.equal(pop3Retryable(new PosternError('PST_BACKEND_AUTH_FAILED', 'PASS', '-ERR [AUTH] no')), false);
    assert.equal(pop3Retryable(new PosternError('PST_BACKEND_AUTH_FAILED', 'PASS', '-ERR [SYS/TEMP] try later')), true);
    assert.equal(pop3Retryable(new PosternError('PST_CLIENT_LOST')), false);
  });
});

function step(login: Pop3Login, line: string): string {
  const s = login.onLine(Buffer.from(line), Buffer.from(`${line}\r\n`));
  return s.kind === 'send' ? s.data.toString() : s.kind;
}
