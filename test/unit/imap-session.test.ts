/**
 * The IMAP session machine before login (nginx's ngx_mail_imap_handler.c; nginx-tests'
 * mail_imap.t, mail_capability.t and mail_max_errors.t cases; RFC 9051). Every dialog is run with
 * the client's bytes whole, cut in two at every offset, byte by byte and in fixed reads: what the
 * client reads, what the back-end is handed and the final phase must not change.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Credentials } from '../../src/domain.js';
import { PosternError } from '../../src/errors.js';
import { describeCut, splits } from '../helpers/split.js';
import { b, bookFor, LIMITS, run, SALT, strip, TARGET, type Outcome, type RunOptions } from './imap-harness.js';

const GREETING = '* OK IMAP4 ready\r\n';
const CAPS = 'IMAP4 IMAP4rev1 UIDPLUS ID';
const LOGGED_IN = '* CAPABILITY IMAP4rev1 IDLE\r\n';

/** Runs `input` whole and checks `expected`, then every cutting gives the same. Returns the whole run. */
function dialog(input: string, o: RunOptions, expected: Partial<Outcome>): ReturnType<typeof run> {
  const whole = run([b(input)], o);
  if (expected.wire !== undefined) assert.equal(whole.wire, expected.wire, 'wire');
  if (expected.handOff !== undefined) assert.equal(whole.handOff, expected.handOff, 'hand-off');
  if (expected.phase !== undefined) assert.equal(whole.phase, expected.phase, 'phase');
  if (expected.events !== undefined) assert.deepEqual(whole.events, expected.events, 'events');
  for (const chunks of splits(b(input))) assert.deepEqual(strip(run(chunks, o)), strip(whole), describeCut(chunks));
  return whole;
}

const auth = (r: ReturnType<typeof run>, n = 0): Credentials | undefined => r.envelopes[n]?.auth;
const loggedIn = (tag: string): string => `${LOGGED_IN}${tag} OK [CAPABILITY IMAP4rev1] Logged in\r\n`;

describe('IMAP session: greeting, CAPABILITY, NOOP, LOGOUT', () => {
  it('greets as nginx and answers NOOP and LOGOUT with its texts', () => {
    dialog('a1 NOOP\r\na2 LOGOUT\r\n', {}, { wire: `${GREETING}a1 OK completed\r\n* BYE\r\na2 OK completed\r\n`, phase: 'closed' });
  });

  it('LOGOUT with nothing after it closes as a goodbye', () => {
    assert.equal(run([b('a LOGOUT\r\n')]).events.at(-1), 'close goodbye');
    assert.equal(run([b('a LOGOUT\r\nb NOOP\r\n')]).events.at(-1), 'close');
  });

  it('lists the configured capabilities with ID, SASL-IR and AUTH= (mail_capability.t)', () => {
    dialog('1 CAPABILITY\r\n', {}, { wire: `${GREETING}* CAPABILITY ${CAPS} SASL-IR AUTH=PLAIN AUTH=CRAM-MD5 AUTH=EXTERNAL\r\n1 OK completed\r\n` });
    dialog('1 CAPABILITY\r\n', { starttls: 'on' }, { wire: `${GREETING}* CAPABILITY ${CAPS} SASL-IR AUTH=PLAIN AUTH=CRAM-MD5 AUTH=EXTERNAL STARTTLS\r\n1 OK completed\r\n` });
    dialog('1 CAPABILITY\r\n', { starttls: 'only' }, { wire: `${GREETING}* CAPABILITY ${CAPS} STARTTLS LOGINDISABLED\r\n1 OK completed\r\n` });
  });

  it('offers AUTH= in nginx order whatever the order configured', () => {
    assert.equal(bookFor('off', ['oauthbearer', 'external', 'login', 'plain']).capability.toString(), `* CAPABILITY ${CAPS} SASL-IR AUTH=PLAIN AUTH=LOGIN AUTH=EXTERNAL AUTH=OAUTHBEARER\r\n`);
  });

  it('after STARTTLS the list has AUTH= and no STARTTLS; pipelined bytes after STARTTLS are dropped', () => {
    // One read only: bytes of a later read are TLS records in real life (the harness does the handshake at once).
    const r = run([b('a STARTTLS\r\nb LOGIN u p\r\n')], { starttls: 'only' });
    assert.equal(r.wire, `${GREETING}a OK completed\r\n`);
    assert.equal(r.phase, 'command');
    assert.ok(r.events.includes('starttls 13'), r.events.join('|'));
    const s = run([b('a STARTTLS\r\n'), b('b CAPABILITY\r\n')], { starttls: 'only' });
    assert.equal(s.wire, `${GREETING}a OK completed\r\n* CAPABILITY ${CAPS} SASL-IR AUTH=PLAIN AUTH=CRAM-MD5 AUTH=EXTERNAL\r\nb OK completed\r\n`);
  });

  it('refuses STARTTLS when off, and a second STARTTLS inside TLS', () => {
    dialog('a STARTTLS\r\n', {}, { wire: `${GREETING}a BAD invalid command\r\n` });
    const r = run([b('a STARTTLS\r\n'), b('b STARTTLS\r\n')], { starttls: 'on' });
    assert.equal(r.wire, `${GREETING}a OK completed\r\nb BAD invalid command\r\n`);
  });

  it('greets after the handshake on an implicit-TLS listener', () => {
    const r = run([b('a CAPABILITY\r\n')], { limits: { implicitTls: true } });
    assert.equal(r.wire, `${GREETING}* CAPABILITY ${CAPS} SASL-IR AUTH=PLAIN AUTH=CRAM-MD5 AUTH=EXTERNAL\r\na OK completed\r\n`);
  });

  it('answers ID before login with * ID NIL and records the client fields, never its x- fields', () => {
    const r = dialog('a ID ("name" "Thunder\\"bird" "x-originating-ip" "6.6.6.6" "version" NIL)\r\nb LOGIN u p\r\n', {}, {
      wire: `${GREETING}* ID NIL\r\na OK completed\r\n${loggedIn('b')}`,
    });
    assert.equal(r.session.summary().helo, '"name" "Thunder\\"bird" "version" NIL');
    assert.equal(r.envelopes[0]!.helo, '"name" "Thunder\\"bird" "version" NIL');
    dialog('a ID NIL\r\nb ID "x"\r\nc ID ("a")\r\n', {}, { wire: `${GREETING}* ID NIL\r\na OK completed\r\nb BAD invalid command\r\nc BAD invalid command\r\n` });
  });
});

describe('IMAP session: LOGIN (mail_imap.t)', () => {
  it('refuses LOGIN without arguments, then logs in and hands the back-end OK to the client', () => {
    const r = dialog('a01 LOGIN\r\na03 LOGIN test@example.com secret\r\n', {}, { wire: `${GREETING}a01 BAD invalid command\r\n${loggedIn('a03')}`, handOff: '', phase: 'handed-off' });
    assert.deepEqual(auth(r), { method: 'plain', user: 'test@example.com', pass: 'secret' });
    assert.equal(r.envelopes[0]!.attempt, 1);
  });

  it('quoted strings with escapes', () => {
    const r = dialog('a01 LOGIN "te\\\\\\"st@example.com" "se\\\\\\"cret"\r\n', {}, { phase: 'handed-off' });
    assert.deepEqual(auth(r), { method: 'plain', user: 'te\\"st@example.com', pass: 'se\\"cret' });
  });

  it('synchronising literals get + OK each', () => {
    const r = dialog('a01 LOGIN {18}\r\nte\\"st@example.com {8}\r\nse\\"cret\r\n', {}, { wire: `${GREETING}+ OK\r\n+ OK\r\n${loggedIn('a01')}` });
    assert.deepEqual(auth(r), { method: 'plain', user: 'te\\"st@example.com', pass: 'se\\"cret' });
  });

  it('non-synchronising literals, and a literal beside a quoted string', () => {
    const r = dialog('a01 LOGIN {18+}\r\nte\\"st@example.com {8+}\r\nse\\"cret\r\n', {}, { wire: `${GREETING}${loggedIn('a01')}` });
    assert.deepEqual(auth(r), { method: 'plain', user: 'te\\"st@example.com', pass: 'se\\"cret' });
    const q = dialog('a01 LOGIN {18+}\r\nte\\"st@example.com "se\\\\\\"cret"\r\n', {}, { phase: 'handed-off' });
    assert.deepEqual(auth(q), { method: 'plain', user: 'te\\"st@example.com', pass: 'se\\"cret' });
  });

  it('a password literal may carry CR and LF', () => {
    const r = dialog('a LOGIN u {5+}\r\np\r\nq!\r\n', {}, { phase: 'handed-off' });
    assert.equal(auth(r)?.pass, 'p\r\nq!');
  });

  it('pipelined LOGIN and LOGOUT: the LOGOUT goes to the back-end', () => {
    dialog('a01 LOGIN test@example.com secret\r\na02 LOGOUT\r\n', {}, { wire: `${GREETING}${loggedIn('a01')}`, handOff: 'a02 LOGOUT\r\n', phase: 'handed-off' });
  });

  it('nothing after LOGIN is read while the router is asked', () => {
    dialog('a LOGIN u p\r\nb FOO\0\r\n', { decide: () => 'pending' }, { wire: GREETING, phase: 'routing' });
  });

  it('LOGIN and AUTHENTICATE are refused before TLS with starttls: only (LOGINDISABLED)', () => {
    dialog('a LOGIN u p\r\nb AUTHENTICATE PLAIN\r\n', { starttls: 'only' }, { wire: `${GREETING}a BAD invalid command\r\nb BAD invalid command\r\n`, phase: 'command' });
    const r = run([b('a STARTTLS\r\n'), b('b LOGIN u p\r\n')], { starttls: 'only' });
    assert.equal(r.phase, 'handed-off');
  });
});

describe('IMAP session: invalid input and max_errors', () => {
  it('a pipelined invalid command is BAD and the next one is answered (mail_imap.t)', () => {
    dialog('a01 INVALID COMMAND WITH ARGUMENTS\r\na02 NOOP\r\n', {}, { wire: `${GREETING}a01 BAD invalid command\r\na02 OK completed\r\n` });
  });

  it('FOOBAR {10+} is BAD and closes: its literal is no command (mail_imap.t)', () => {
    dialog('a03 FOOBAR {10+}\r\ntest test \r\na04 NOOP\r\n', {}, { wire: `${GREETING}a03 BAD invalid command\r\n`, phase: 'closed' });
  });

  it('closes after max_errors invalid commands (mail_max_errors.t)', () => {
    dialog('a BAD\r\nb BAD\r\nc BAD\r\nd NOOP\r\n', { limits: { maxErrors: 3 } }, {
      wire: `${GREETING}a BAD invalid command\r\nb BAD invalid command\r\nc BAD invalid command\r\n* BYE Too many invalid commands\r\n`,
      phase: 'closed',
    });
  });

  it('NUL and bare CR are refused, untagged when there is no tag', () => {
    dialog('a NO\0OP\r\n\0\r\nb NOOP\r\n', {}, { wire: `${GREETING}a BAD invalid command\r\n* BAD invalid command\r\nb OK completed\r\n` });
  });

  it('a line over max_line_length closes, and so does a literal announced too large', () => {
    dialog(`a LOGIN ${'x'.repeat(80)} p\r\n`, { limits: { maxLineLength: 64 } }, { wire: `${GREETING}a BAD invalid command\r\n* BYE Line too long\r\n`, phase: 'closed' });
    dialog('a LOGIN {100}\r\n', { limits: { maxLineLength: 64 } }, { wire: `${GREETING}a BAD invalid command\r\n* BYE Line too long\r\n`, phase: 'closed' });
  });

  it('an idle client is told BYE (RFC 9051 §7.1.5 autologout)', () => {
    const s = run([b('a NOOP\r\n')]);
    assert.deepEqual(s.session.idleTimeout().map((a) => a.type === 'error' && a.reply?.toString()), ['* BYE Autologout; idle for too long\r\n']);
  });

  it('EOF in the command phase closes quietly; a stop says BYE', () => {
    const r = run([b('a NOOP\r\n')]);
    assert.deepEqual(r.session.clientEnded().map((a) => a.type), ['log', 'close']);
    const s = run([]);
    assert.deepEqual(s.session.shutdown().map((a) => a.type === 'error' && a.reply?.toString()), ['* BYE [UNAVAILABLE] Server shutting down\r\n']);
  });
});

describe('IMAP session: AUTHENTICATE (mail_imap.t)', () => {
  const plain = (u: string, p: string): string => Buffer.from(`\0${u}\0${p}`).toString('base64');
  const b64 = (s: string): string => Buffer.from(s).toString('base64');

  it('without a mechanism is BAD', () => {
    dialog('1 AUTHENTICATE\r\n', {}, { wire: `${GREETING}1 BAD invalid command\r\n` });
  });

  it('PLAIN with an initial response, and after + ', () => {
    const r = dialog(`1 AUTHENTICATE PLAIN ${plain('test@example.com', 'secret')}\r\n`, {}, { wire: `${GREETING}${loggedIn('1')}` });
    assert.deepEqual(auth(r), { method: 'plain', user: 'test@example.com', pass: 'secret' });
    dialog(`1 AUTHENTICATE PLAIN\r\n${plain('u', 'p')}\r\n`, {}, { wire: `${GREETING}+ \r\n${loggedIn('1')}` });
  });

  it('LOGIN with both prompts, and with the user name given', () => {
    const r = dialog(`1 AUTHENTICATE LOGIN\r\n${b64('test@example.com')}\r\n${b64('secret')}\r\n`, {}, { wire: `${GREETING}+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n${loggedIn('1')}` });
    assert.deepEqual(auth(r), { method: 'plain', user: 'test@example.com', pass: 'secret' });
    dialog(`1 AUTHENTICATE LOGIN ${b64('test@example.com')}\r\n${b64('secret')}\r\n`, {}, { wire: `${GREETING}+ UGFzc3dvcmQ6\r\n${loggedIn('1')}` });
  });

  it('CRAM-MD5 sends the salt and gives the auth service the digest and salt; the back-end needs Auth-Pass', () => {
    const resp = b64(`test@example.com ${'0'.repeat(32)}`);
    const r = dialog(`1 AUTHENTICATE CRAM-MD5\r\n${resp}\r\n`, { decide: () => ({ ...TARGET, pass: 'secret' }) }, { wire: `${GREETING}+ ${b64(SALT)}\r\n${loggedIn('1')}` });
    assert.deepEqual(auth(r), { method: 'cram-md5', user: 'test@example.com', pass: '0'.repeat(32), salt: SALT });
    // nginx: "auth http server did not send password" — the session fails.
    const n = dialog(`1 AUTHENTICATE CRAM-MD5\r\n${resp}\r\n`, {}, { wire: `${GREETING}+ ${b64(SALT)}\r\n1 NO [UNAVAILABLE] Internal server error\r\n`, phase: 'closed' });
    assert.ok(n.events.includes('error PST_BACKEND_AUTH_FAILED'));
  });

  it('EXTERNAL after its prompt and with the identity given', () => {
    const withPass = { decide: () => ({ ...TARGET, pass: 'secret' }) };
    const r = dialog(`1 AUTHENTICATE EXTERNAL\r\n${b64('test@example.com')}\r\n`, withPass, { wire: `${GREETING}+ VXNlcm5hbWU6\r\n${loggedIn('1')}` });
    assert.deepEqual(auth(r), { method: 'external', user: 'test@example.com', pass: '' });
    dialog(`1 AUTHENTICATE EXTERNAL ${b64('test@example.com')}\r\n`, withPass, { wire: `${GREETING}${loggedIn('1')}` });
  });

  it('XOAUTH2 and OAUTHBEARER tokens go to the auth service', () => {
    const x = dialog(`1 AUTHENTICATE XOAUTH2 ${b64('user=u@x\x01auth=Bearer tok\x01\x01')}\r\n`, { decide: () => ({ ...TARGET, pass: 'p' }) }, { phase: 'handed-off' });
    assert.deepEqual(auth(x), { method: 'xoauth2', user: 'u@x', pass: 'tok' });
    const o = dialog(`1 AUTHENTICATE OAUTHBEARER\r\n${b64('n,a=u@x,\x01auth=Bearer t2\x01\x01')}\r\n`, { decide: () => ({ ...TARGET, pass: 'p' }) }, { wire: `${GREETING}+ \r\n${loggedIn('1')}` });
    assert.deepEqual(auth(o), { method: 'oauthbearer', user: 'u@x', pass: 't2' });
  });

  it('a mechanism not offered, a cancel and undecodable responses are BAD and the session goes on', () => {
    dialog(`1 AUTHENTICATE CRAM-MD5\r\n2 NOOP\r\n`, { limits: { mechanisms: ['PLAIN', 'LOGIN'] } }, { wire: `${GREETING}1 BAD invalid command\r\n2 OK completed\r\n` });
    dialog('1 AUTHENTICATE PLAIN\r\n*\r\n2 NOOP\r\n', {}, { wire: `${GREETING}+ \r\n1 BAD authentication cancelled\r\n2 OK completed\r\n` });
    dialog('1 AUTHENTICATE PLAIN !!!\r\n2 AUTHENTICATE LOGIN\r\n\x01\r\n3 NOOP\r\n', {}, { wire: `${GREETING}1 BAD invalid command\r\n+ VXNlcm5hbWU6\r\n2 BAD invalid command\r\n3 OK completed\r\n` });
  });

  it('a SASL response over max_line_length closes with the exchange\'s tag', () => {
    dialog(`1 AUTHENTICATE PLAIN\r\n${'A'.repeat(100)}\r\n`, { limits: { maxLineLength: 64 } }, { wire: `${GREETING}+ \r\n1 BAD invalid command\r\n* BYE Line too long\r\n`, phase: 'closed' });
  });
});

describe('IMAP session: the auth service\'s answer', () => {
  const reject = (waitMs: number) => ({ kind: 'reject' as const, reply: '535 5.7.0 Invalid login or password', waitMs, reason: 'Invalid login or password' });

  it('a refusal is <tag> NO <Auth-Status> and closes without Auth-Wait', () => {
    dialog('a02 LOGIN test@example.com bad\r\na03 NOOP\r\n', { decide: () => reject(0) }, { wire: `${GREETING}a02 NO Invalid login or password\r\n`, phase: 'closed' });
  });

  it('with Auth-Wait the NO comes after the wait and the next login goes on (auth external after failed plain)', () => {
    const r = dialog('a02 LOGIN test@example.com bad\r\na03 LOGIN test@example.com secret\r\n', { decide: (n) => (n === 0 ? reject(1000) : TARGET) }, {
      wire: `${GREETING}a02 NO Invalid login or password\r\n${loggedIn('a03')}`,
      phase: 'handed-off',
    });
    assert.ok(r.events.includes('timer 1000'));
    assert.equal(r.envelopes[1]!.attempt, 2);
  });

  it('closes after auth.max_attempts refusals', () => {
    dialog('a LOGIN u p\r\nb LOGIN u p\r\nc LOGIN u p\r\n', { limits: { maxAttempts: 2 }, decide: () => reject(10) }, {
      wire: `${GREETING}a NO Invalid login or password\r\nb NO Invalid login or password\r\n* BYE Too many authentication failures\r\n`,
      phase: 'closed',
    });
  });

  it('a router failure is <tag> NO [UNAVAILABLE] and closes', () => {
    dialog('a LOGIN u p\r\n', { decide: () => ({ kind: 'error', code: 'PST_AUTH_HTTP_TIMEOUT', detail: 'slow' }) }, { wire: `${GREETING}a NO [UNAVAILABLE] Internal server error\r\n`, phase: 'closed' });
  });

  it('EOF while the router is asked: the refusal after Auth-Wait is the last word', () => {
    const r = run([b('a LOGIN u p\r\n')], { decide: () => 'pending' });
    assert.deepEqual(r.session.clientEnded(), []);
    const out = r.session.routed(reject(0));
    assert.deepEqual(out.map((a) => a.type), ['reply', 'close']);
  });
});

describe('IMAP session: the back-end login', () => {
  it('a failed back-end login is <tag> NO [UNAVAILABLE] and closes', () => {
    dialog('a LOGIN u p\r\n', { backend: { fail: new PosternError('PST_BACKEND_TIMEOUT', 'slow') } }, { wire: `${GREETING}a NO [UNAVAILABLE] Internal server error\r\n`, phase: 'closed' });
    dialog('a LOGIN u p\r\n', { backend: { fail: new PosternError('PST_POOL_EXHAUSTED', 'all down') } }, { wire: `${GREETING}a NO [UNAVAILABLE] No back-end available, try again later\r\n` });
  });

  it('with proxy_pass_error_message the back-end\'s own NO goes out under the client\'s tag', () => {
    const fail = new PosternError('PST_BACKEND_AUTH_FAILED', 'refused', 'NO [AUTHENTICATIONFAILED] Authentication failed.\r\n');
    dialog('x7 LOGIN u p\r\n', { limits: { passErrorMessage: true }, backend: { fail } }, { wire: `${GREETING}x7 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n`, phase: 'closed' });
    dialog('x7 LOGIN u p\r\n', { backend: { fail } }, { wire: `${GREETING}x7 NO [UNAVAILABLE] Internal server error\r\n` });
  });

  it('the access record names the user', () => {
    const r = run([b('a LOGIN alice p\r\n')]);
    assert.deepEqual(r.session.summary(), { user: 'alice' });
  });

  it('the connect-time refusal is a BYE greeting', () => {
    const r = run([]);
    const s = new (r.session.constructor as typeof import('../../src/imap/session.js').ImapSession)(bookFor(), LIMITS);
    const out = s.refused('PST_DNSBL_LISTED', 'zen', '554 5.7.1 Service unavailable; client host blocked');
    assert.equal(out[0]!.type === 'error' && out[0].reply?.toString(), '* BYE Service unavailable; client host blocked\r\n');
  });
});
