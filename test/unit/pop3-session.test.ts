/**
 * The POP3 session machine before the hand-off (src/pop3/session.ts): nginx-tests' mail_pop3.t,
 * mail_capability.t and mail_max_errors.t dialogs, STLS, implicit TLS, Auth-Wait and the
 * password nginx requires. Every dialog runs with the client's bytes in one read, cut in two at
 * every offset, byte by byte and in a few fixed sizes; the records must all be the same.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import { buildAuthHeaders } from '../../src/auth/auth-http-protocol.js';
import type { RouteDecision } from '../../src/domain.js';
import type { Pop3Limits } from '../../src/pop3/limits.js';
import { splits, describeCut } from '../helpers/split.js';
import { Pop3Session } from '../../src/pop3/session.js';
import { FINAL, OK_ROUTE, pop3Book, pop3Limits, runPop3, SALT, strip, type Decide, type Pop3Outcome } from './pop3-harness.js';

const b64 = (s: string): string => Buffer.from(s, 'latin1').toString('base64');
const GREETING = `+OK POP3 ready ${SALT}\r\n`;
const ALL = pop3Limits();

/** Runs `input` whole and at every cutting; returns the one outcome they all share. */
function dialog(input: string, limits: Pop3Limits = ALL, decide?: Decide): Pop3Outcome {
  const buf = Buffer.from(input, 'latin1');
  const whole = strip(runPop3([buf], limits, decide));
  for (const chunks of splits(buf)) assert.deepEqual(strip(runPop3(chunks, limits, decide)), whole, describeCut(chunks));
  return whole;
}

const route = (auth: object, attempt = 1): string => `route ${JSON.stringify(auth)} ${attempt}`;
const REJECT: RouteDecision = { kind: 'reject', reply: '535 5.7.0 Invalid login or password', waitMs: 0, reason: 'Invalid login or password' };
const REJECT_WAIT: RouteDecision = { ...REJECT, waitMs: 1000 };

describe('POP3 session: greeting and CAPA (mail_capability.t)', () => {
  it('greets with nginx\'s timestamp when APOP or CRAM-MD5 is on, plainly otherwise', () => {
    assert.equal(dialog('').wire, GREETING);
    assert.equal(dialog('', pop3Limits(['plain'])).wire, '+OK POP3 ready\r\n');
  });

  it('CAPA lists the configured lines, SASL (plain implies LOGIN), and STLS only with starttls on', () => {
    const capa = '+OK Capability list follows\r\nTOP\r\nUSER\r\nUIDL\r\nSASL PLAIN LOGIN CRAM-MD5 EXTERNAL\r\n';
    assert.equal(dialog('CAPA\r\n').wire, `${GREETING}${capa}.\r\n`);
    assert.equal(dialog('CAPA\r\n', pop3Limits(undefined, { starttls: 'on' })).wire, `${GREETING}${capa}STLS\r\n.\r\n`);
  });

  it('starttls only: CAPA shows neither USER nor SASL, only STLS, and every login is refused before TLS', () => {
    const only = pop3Limits(undefined, { starttls: 'only' });
    const r = dialog(`CAPA\r\nUSER a\r\nAPOP a ${'0'.repeat(32)}\r\nAUTH PLAIN ${b64('\0a\0b')}\r\nAUTH\r\n`, only);
    assert.equal(r.wire, `${GREETING}+OK Capability list follows\r\nTOP\r\nUIDL\r\nSTLS\r\n.\r\n${'-ERR invalid command\r\n'.repeat(4)}`);
    assert.deepEqual(r.events.filter((e) => e.startsWith('error')), ['error PST_TLS_REQUIRED', 'error PST_TLS_REQUIRED', 'error PST_TLS_REQUIRED', 'error PST_TLS_REQUIRED']);
  });

  it('AUTH without an argument lists the methods (mail_pop3.t "auth capabilities")', () => {
    assert.equal(dialog('AUTH\r\n').wire, `${GREETING}+OK methods supported:\r\nPLAIN\r\nLOGIN\r\nCRAM-MD5\r\nEXTERNAL\r\n.\r\n`);
  });

  it('NOOP is +OK; QUIT is +OK and the close', () => {
    const r = dialog('NOOP\r\nQUIT\r\n');
    assert.equal(r.wire, `${GREETING}+OK\r\n+OK\r\n`);
    assert.equal(r.events.at(-1), 'close');
    assert.equal(r.phase, 'closed');
  });
});

describe('POP3 session: logins (mail_pop3.t)', () => {
  it('USER/PASS routes with Auth-Method plain and hands the back-end\'s +OK over', () => {
    const r = dialog('USER test@example.com\r\nPASS secret\r\n');
    assert.deepEqual(r.events, [`reply ${GREETING}`, 'reply +OK\r\n', route({ method: 'plain', user: 'test@example.com', pass: 'secret' }), 'connect 127.0.0.1', `splice ${FINAL}`]);
    assert.equal(r.handOff, '');
    assert.equal(r.phase, 'handed-off');
  });

  it('spaces belong to the user name and password, as nginx reads them', () => {
    const r = dialog('USER  a b\r\nPASS  s e c \r\n');
    assert.ok(r.events.includes(route({ method: 'plain', user: 'a b', pass: 's e c ' })));
  });

  it('APOP sends the digest with the greeting\'s timestamp as Auth-Salt', () => {
    const digest = createHash('md5').update(`${SALT}secret`).digest('hex');
    const r = dialog(`APOP test@example.com ${digest}\r\n`);
    const creds = { method: 'apop', user: 'test@example.com', pass: digest, salt: SALT } as const;
    assert.ok(r.events.includes(route(creds)));
    const h = buildAuthHeaders({ protocol: 'pop3', envelope: { helo: '', esmtp: false, mailLine: '', rcptLine: '', mailFrom: '', rcptTo: '', attempt: 1, auth: creds }, clientAddr: '192.0.2.1', clientPort: 1, clientHost: 'x' }, { host: 'a', extra: {} });
    assert.deepEqual(h.slice(0, 12), ['Host', 'a', 'Auth-Method', 'apop', 'Auth-User', 'test@example.com', 'Auth-Pass', digest, 'Auth-Salt', SALT, 'Auth-Protocol', 'pop3']);
  });

  it('APOP without a password from the auth service fails as nginx ("did not send password")', () => {
    const r = dialog(`APOP test@example.com ${'0'.repeat(32)}\r\nNOOP\r\n`);
    assert.deepEqual(r.events.slice(-1), ['error PST_BACKEND_AUTH_FAILED']);
    assert.equal(r.wire, `${GREETING}-ERR internal server error\r\n`);
    const ok = dialog(`APOP test@example.com ${'0'.repeat(32)}\r\n`, ALL, () => ({ ...OK_ROUTE, pass: 'secret' }));
    assert.equal(ok.phase, 'handed-off');
  });

  it('AUTH PLAIN with an initial response and after "+ "', () => {
    const creds = route({ method: 'plain', user: 'test@example.com', pass: 'secret' });
    assert.ok(dialog(`AUTH PLAIN ${b64('\0test@example.com\0secret')}\r\n`).events.includes(creds));
    const r = dialog(`AUTH PLAIN\r\n${b64('\0test@example.com\0secret')}\r\n`);
    assert.equal(r.events[1], 'reply + \r\n');
    assert.ok(r.events.includes(creds));
  });

  it('AUTH LOGIN: username and password prompts, or the user name as initial response', () => {
    const r = dialog(`AUTH LOGIN\r\n${b64('test@example.com')}\r\n${b64('secret')}\r\n`);
    assert.deepEqual(r.events.slice(1, 4), ['reply + VXNlcm5hbWU6\r\n', 'reply + UGFzc3dvcmQ6\r\n', route({ method: 'plain', user: 'test@example.com', pass: 'secret' })]);
    const s = dialog(`AUTH LOGIN ${b64('test@example.com')}\r\n${b64('secret')}\r\n`);
    assert.deepEqual(s.events.slice(1, 3), ['reply + UGFzc3dvcmQ6\r\n', route({ method: 'plain', user: 'test@example.com', pass: 'secret' })]);
  });

  it('AUTH CRAM-MD5: the challenge is the greeting\'s timestamp, base64', () => {
    const r = dialog(`AUTH CRAM-MD5\r\n${b64(`test@example.com ${'0'.repeat(32)}`)}\r\n`, ALL, () => ({ ...OK_ROUTE, pass: 'secret' }));
    assert.equal(r.events[1], `reply + ${b64(SALT)}\r\n`);
    assert.ok(r.events.includes(route({ method: 'cram-md5', user: 'test@example.com', pass: '0'.repeat(32), salt: SALT })));
    assert.equal(r.phase, 'handed-off');
  });

  it('AUTH EXTERNAL: "+ VXNlcm5hbWU6", or the identity as initial response', () => {
    const pass: Decide = () => ({ ...OK_ROUTE, pass: 'secret' });
    const r = dialog(`AUTH EXTERNAL\r\n${b64('test@example.com')}\r\n`, ALL, pass);
    assert.equal(r.events[1], 'reply + VXNlcm5hbWU6\r\n');
    assert.ok(r.events.includes(route({ method: 'external', user: 'test@example.com', pass: '' })));
    assert.ok(dialog(`AUTH EXTERNAL ${b64('test@example.com')}\r\n`, ALL, pass).events.includes(route({ method: 'external', user: 'test@example.com', pass: '' })));
  });

  it('a mechanism not configured, or CRAM-MD5 with an initial response, is an invalid command', () => {
    const plain = pop3Limits(['plain']);
    const r = dialog('AUTH CRAM-MD5\r\nAUTH EXTERNAL\r\nAPOP a b\r\nAUTH XOAUTH2\r\n', plain);
    assert.equal(r.wire, `+OK POP3 ready\r\n${'-ERR invalid command\r\n'.repeat(4)}`);
    assert.deepEqual(dialog('AUTH CRAM-MD5 abcd\r\n').events.slice(1), ['error PST_INVALID_ARGUMENT']);
  });

  it('a SASL response that is not base64, or "*", is refused and the session goes on', () => {
    const r = dialog('AUTH PLAIN\r\n%%%\r\nAUTH LOGIN\r\n*\r\nNOOP\r\n');
    assert.deepEqual(r.events.slice(1), ['reply + \r\n', 'error PST_AUTH_BAD_RESPONSE', 'reply + VXNlcm5hbWU6\r\n', 'error PST_AUTH_CANCELLED', 'reply +OK\r\n']);
  });

  it('CR, LF or NUL in a decoded credential never leaves the session', () => {
    const r = dialog(`AUTH PLAIN ${b64('\0a\0pass\r\nDELE 1')}\r\nAUTH LOGIN ${b64('us\0er')}\r\n${b64('x')}\r\n`);
    assert.ok(!r.events.some((e) => e.startsWith('route')), r.events.join('|'));
    // An auth service's Auth-Pass with CR/LF is refused too.
    const bad = dialog('USER a\r\nPASS b\r\n', ALL, () => ({ ...OK_ROUTE, pass: 'x\r\nDELE 1' }));
    assert.deepEqual(bad.events.slice(-1), ['error PST_AUTH_HTTP_INVALID']);
  });

  it('PASS without USER, and a command other than PASS after USER, are invalid (nginx\'s user state)', () => {
    const r = dialog('PASS x\r\nUSER a\r\nAPOP a b\r\nPASS x\r\n');
    assert.deepEqual(r.events.slice(1), ['error PST_UNKNOWN_COMMAND', 'reply +OK\r\n', 'error PST_UNKNOWN_COMMAND', 'error PST_UNKNOWN_COMMAND']);
  });
});

describe('POP3 session: refusals and Auth-Wait', () => {
  it('a refusal without Auth-Wait is "-ERR <Auth-Status>" and the close', () => {
    const r = dialog('USER a\r\nPASS b\r\nNOOP\r\n', ALL, () => REJECT);
    assert.deepEqual(r.events.slice(-2), ['reply -ERR Invalid login or password\r\n', 'close']);
  });

  it('with Auth-Wait the -ERR comes after the wait and pipelined commands go on (mail_pop3.t "apop error")', () => {
    const r = dialog(`APOP test@example.com ${'1'.repeat(32)}\r\nUSER test@example.com\r\nPASS secret\r\n`, ALL, (n) => (n === 0 ? REJECT_WAIT : OK_ROUTE));
    assert.deepEqual(r.events.slice(2), ['timer 1000', 'reply -ERR Invalid login or password\r\n', 'reply +OK\r\n', route({ method: 'plain', user: 'test@example.com', pass: 'secret' }, 2), 'connect 127.0.0.1', `splice ${FINAL}`]);
  });

  it('auth.max_attempts refusals close the session', () => {
    const r = dialog('USER a\r\nPASS b\r\n'.repeat(4), ALL, () => REJECT_WAIT);
    assert.deepEqual(r.events.slice(-2), ['reply -ERR Invalid login or password\r\n', 'error PST_AUTH_TOO_MANY']);
    assert.equal(r.phase, 'closed');
  });

  it('a router failure is "-ERR internal server error"', () => {
    const r = dialog('USER a\r\nPASS b\r\n', ALL, () => ({ kind: 'error', code: 'PST_AUTH_HTTP_TIMEOUT', detail: 'x' }));
    assert.equal(r.wire, `${GREETING}+OK\r\n-ERR internal server error\r\n`);
  });
});

describe('POP3 session: pipelining, errors and junk', () => {
  it('mail_pop3.t pipelining: invalid command, NOOP, then USER PASS QUIT with QUIT for the back-end', () => {
    const r = dialog('INVALID COMMAND WITH ARGUMENTS\r\nNOOP\r\nUSER test@example.com\r\nPASS secret\r\nQUIT\r\n');
    assert.equal(r.wire, `${GREETING}-ERR invalid command\r\n+OK\r\n+OK\r\n`);
    assert.equal(r.handOff, 'QUIT\r\n');
  });

  it('pipelined AUTH LOGIN: both prompts, then the login', () => {
    const r = dialog(`AUTH LOGIN\r\n${b64('test@example.com')}\r\n${b64('secret')}\r\nSTAT\r\n`);
    assert.equal(r.wire, `${GREETING}+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n`);
    assert.equal(r.handOff, 'STAT\r\n');
  });

  it('max_errors (mail_max_errors.t): the last error is answered, then the close', () => {
    const r = dialog('FOO\r\nBAR\r\nBAZZ\r\n', pop3Limits(undefined, { maxErrors: 2 }));
    assert.equal(r.wire, `${GREETING}-ERR invalid command\r\n-ERR invalid command\r\n`);
    assert.deepEqual(r.events.slice(-2), ['log PST_UNKNOWN_COMMAND', 'error PST_TOO_MANY_ERRORS']);
  });

  it('an overlong line is refused and the session closed; NUL and bare CR are refused', () => {
    const long = dialog(`USER ${'a'.repeat(600)}\r\nNOOP\r\n`);
    assert.deepEqual(long.events.slice(1), ['error PST_LINE_TOO_LONG']);
    assert.equal(long.wire, `${GREETING}-ERR invalid command\r\n`);
    const junk = dialog('USER a\x00b\r\nNO\rOP\r\n\xff\xfe\r\nNOOP\r\n');
    assert.deepEqual(junk.events.slice(1), ['error PST_BAD_BYTES', 'error PST_BAD_BYTES', 'error PST_UNKNOWN_COMMAND', 'reply +OK\r\n']);
  });

  it('bytes after the login are the back-end\'s, byte for byte (NUL, 8-bit, long lines)', () => {
    const rest = `LIST\r\nRETR 1\x00\xff\r\n${'x'.repeat(2000)}\r\n`;
    assert.equal(dialog(`USER a\r\nPASS b\r\n${rest}`).handOff, rest);
  });
});

describe('POP3 session: STLS and implicit TLS', () => {
  const on = pop3Limits(undefined, { starttls: 'on' });

  it('STLS: +OK, the handshake, and every byte pipelined after it dropped (STLS injection)', () => {
    const r = dialog('STLS\r\nUSER evil\r\nPASS x\r\n', on);
    assert.deepEqual(r.events.slice(1), ['reply +OK\r\n', 'starttls']);
    assert.equal(r.phase, 'tls-handshake');
    const s = new Pop3Session(pop3Book(on), on);
    s.start();
    assert.deepEqual(s.receive(Buffer.from('STLS\r\nUSER evil\r\n')).at(-1), { type: 'starttls', discarded: 11 });
    assert.deepEqual(s.receive(Buffer.from('PASS x\r\n')), [], 'bytes during the handshake are not commands');
    assert.deepEqual(s.tlsStarted(), [], 'no new greeting after STLS (RFC 2595 §4)');
    assert.equal(s.secure, true);
    assert.deepEqual(s.receive(Buffer.from('PASS x\r\n')).map((a) => a.type), ['error'], 'USER before the handshake was forgotten');
  });

  it('STLS is invalid when off or inside TLS; CAPA drops STLS after TLS', () => {
    assert.deepEqual(dialog('STLS\r\n').events.slice(1), ['error PST_NOT_IMPLEMENTED']);
    const s = runPop3([Buffer.from('STLS\r\n')], on).session;
    s.tlsStarted();
    assert.deepEqual(s.receive(Buffer.from('STLS\r\n')).map((a) => a.type === 'error' && a.code), ['PST_TLS_ACTIVE']);
    const capa = s.receive(Buffer.from('CAPA\r\n'))[0];
    assert.ok(capa?.type === 'reply' && !capa.data.toString().includes('STLS'));
  });

  it('implicit TLS: nothing before the handshake, the greeting after it; a failed handshake closes silently', () => {
    const imp = pop3Limits(undefined, { implicitTls: true });
    const r = runPop3([Buffer.from('USER a\r\n')], imp);
    assert.deepEqual(r.events, []);
    assert.deepEqual(r.session.tlsStarted(), [{ type: 'reply', data: Buffer.from(GREETING) }]);
    const f = runPop3([], imp).session;
    assert.deepEqual(f.tlsFailed('PST_TLS_HANDSHAKE', 'x').map((a) => a.type), ['log', 'close']);
  });
});

describe('POP3 session: timers, EOF and shutdown', () => {
  it('the idle timeout closes without a reply (RFC 1939 §3)', () => {
    const s = runPop3([], ALL).session;
    const a = s.idleTimeout();
    assert.deepEqual(a, [{ type: 'error', code: 'PST_IDLE_TIMEOUT' }]);
    assert.equal(s.errorReply('PST_IDLE_TIMEOUT').length, 0);
  });

  it('EOF after pipelined commands: they are answered, then the close', () => {
    const r = runPop3([Buffer.from('NOOP\r\n')], ALL);
    assert.deepEqual(r.session.clientEnded().map((a) => a.type), ['log', 'close']);
  });

  it('shutdown closes an idle session with -ERR [SYS/TEMP]', () => {
    const s = runPop3([], ALL).session;
    assert.deepEqual(s.shutdown(), [{ type: 'error', code: 'PST_SHUTDOWN' }]);
    assert.equal(s.errorReply('PST_SHUTDOWN').toString(), '-ERR [SYS/TEMP] Server shutting down\r\n');
  });

  it('a back-end failure is "-ERR internal server error", or its own -ERR with proxy_pass_error_message', async () => {
    const { PosternError } = await import('../../src/errors.js');
    const err = new PosternError('PST_BACKEND_AUTH_FAILED', 'PASS: -ERR [AUTH] no', '-ERR [AUTH] Authentication failed.');
    const s = runPop3([Buffer.from('USER a\r\nPASS b\r\n')], ALL, () => 'pending').session;
    s.routed(OK_ROUTE);
    assert.deepEqual(s.backendFailed(err), [{ type: 'error', code: 'PST_BACKEND_AUTH_FAILED', detail: 'PASS: -ERR [AUTH] no' }]);
    const p = runPop3([Buffer.from('USER a\r\nPASS b\r\n')], pop3Limits(undefined, { passErrorMessage: true }), () => 'pending').session;
    p.routed(OK_ROUTE);
    const a = p.backendFailed(err)[0];
    assert.equal(a?.type === 'error' && a.reply?.toString(), '-ERR [AUTH] Authentication failed.\r\n');
  });
});
