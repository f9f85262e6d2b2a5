/**
 * The client-side session state machine under arbitrary and SMTP-looking byte streams: it never
 * throws, every action batch is well-formed, no control byte reaches a route envelope, and what
 * the client is told (and what the back-end is handed) does not depend on how TCP cut the stream.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { ERRORS } from '../../src/errors.js';
import { hasForbiddenByte } from '../../src/smtp/command.js';
import { lineReply, ReplyBook } from '../../src/smtp/replies.js';
import { MECHANISMS } from '../../src/smtp/sasl.js';
import { NO_AUTH, Session, type Action, type AuthLimits, type Envelope, type Phase, type SessionLimits } from '../../src/session/session.js';
import { b, b64, buf, bytes, chunking, latin1, lineSafe, split, type Chunking } from './arb.js';
import { runs } from './runs.js';

const book = new ReplyBook({ serverName: 'px.example', capabilities: ['PIPELINING', '8BITMIME', 'SIZE 1000'], starttls: true, auth: ['PLAIN', 'LOGIN', 'CRAM-MD5'] });
const TEMPFAIL: Action = { type: 'reply', data: lineReply('450 4.7.1 Try again later') };

interface Config {
  limits: SessionLimits;
  /** The route attempt that is handed off to the back-end; other routes are refused with Auth-Wait (keepOpen). */
  handoffAt: number | null;
}

const authLimits: fc.Arbitrary<AuthLimits> = fc.record({
  mechanisms: fc.subarray([...MECHANISMS], { minLength: 1 }),
  allowNone: fc.boolean(),
  plaintext: fc.boolean(),
  maxAttempts: fc.integer({ min: 1, max: 3 }),
  challenge: fc.constant(() => '<1.2@px.example>'),
});

function config(auth: fc.Arbitrary<AuthLimits>): fc.Arbitrary<Config> {
  return fc
    .record({
      maxLineLength: fc.oneof({ weight: 1, arbitrary: fc.constant(24) }, { weight: 4, arbitrary: fc.constantFrom(64, 512) }),
      maxErrors: fc.constantFrom(0, 3, 10),
      maxMessageSize: fc.constantFrom(0, 1000),
      requireHelo: fc.boolean(),
      greetingDelay: fc.boolean(),
      starttls: fc.constantFrom('off' as const, 'on' as const, 'only' as const),
      implicitTls: fc.boolean(),
      auth,
      handoffAt: fc.option(fc.integer({ min: 1, max: 3 })),
    })
    .map(({ handoffAt, ...limits }) => ({
      limits: { ...limits, starttls: limits.implicitTls ? ('off' as const) : limits.starttls },
      handoffAt,
    }));
}

// ---------------------------------------------------------------------------------------------
// SMTP-looking input: commands from a vocabulary, SASL responses, junk, CR/LF/NUL and 8-bit bytes.

const VOCABULARY = [
  'EHLO client.example', 'HELO client.example', 'ehlo [192.0.2.1]', 'EHLO', 'EHLO a b', 'HELO\tx',
  'MAIL FROM:<alice@example.org>', 'MAIL FROM:<>', 'MAIL FROM:<a@b> SIZE=500', 'MAIL FROM:<a@b> SIZE=5000', 'MAIL FROM:<a@b> SIZE=x',
  'MAIL FROM: <"a b"@c> BODY=8BITMIME', 'mail from:a@b', 'MAIL FROM:<a@b', 'MAIL TO:<a@b>', 'MAIL FROM:<a@\xe9xample.org> SMTPUTF8',
  'RCPT TO:<bob@example.net>', 'RCPT TO:<>', 'RCPT TO:<postmaster> NOTIFY=NEVER', 'rcpt to:c@d', 'RCPT TO:<"x>y"@z>', 'RCPT FROM:<a>',
  'DATA', 'BDAT 5', 'BDAT 0 LAST', 'BDAT 3 last', 'BDAT', 'BDAT x', 'BDAT 99999999',
  'RSET', 'NOOP', 'NOOP x', 'VRFY a', 'VRFY', 'EXPN a', 'HELP', 'STARTTLS', 'STARTTLS x',
  'AUTH', 'AUTH PLAIN', 'AUTH LOGIN', 'AUTH CRAM-MD5', 'AUTH EXTERNAL', 'AUTH XOAUTH2', 'AUTH OAUTHBEARER', 'AUTH FOO', 'AUTH PLAIN a b', 'AUTH CRAM-MD5 =',
  'XCLIENT ADDR=192.0.2.1', 'XFORWARD NAME=x', 'FOO bar', '', ' ', '*', '=',
];

/** SASL payloads, well-formed or not, with any bytes inside (control bytes included). */
const saslPayload: fc.Arbitrary<string> = fc
  .tuple(latin1(12), latin1(12), fc.constantFrom('plain', 'user', 'xoauth2', 'oauthbearer', 'cram', 'raw'))
  .map(([u, p, kind]) => {
    switch (kind) {
      case 'plain':
        return b64(`\0${u || 'u'}\0${p}`);
      case 'user':
        return b64(u);
      case 'xoauth2':
        return b64(`user=${u || 'u'}\x01auth=Bearer ${p || 't'}\x01\x01`);
      case 'oauthbearer':
        return b64(`n,a=${u || 'u'},\x01auth=Bearer ${p || 't'}\x01\x01`);
      case 'cram':
        return b64(`${u || 'u'} ${'0123456789abcdef'.repeat(2)}`);
      default:
        return `${u}${p}`;
    }
  });

const commandText: fc.Arbitrary<string> = fc.oneof(
  { weight: 10, arbitrary: fc.constantFrom(...VOCABULARY) },
  { weight: 3, arbitrary: fc.tuple(fc.constantFrom('PLAIN', 'LOGIN', 'EXTERNAL', 'XOAUTH2', 'OAUTHBEARER', 'plain'), saslPayload).map(([m, p]) => `AUTH ${m} ${p}`) },
  { weight: 3, arbitrary: saslPayload },
  { weight: 1, arbitrary: fc.constant('QUIT') },
  { weight: 1, arbitrary: fc.constantFrom('GET / HTTP/1.1', 'POST /x HTTP/1.0', 'GET /') },
  { weight: 1, arbitrary: fc.integer({ min: 10, max: 600 }).map((n) => `NOOP ${'x'.repeat(n)}`) },
  { weight: 2, arbitrary: lineSafe(30) },
  { weight: 1, arbitrary: latin1(30) },
);

const terminator = fc.oneof(
  { weight: 10, arbitrary: fc.constant('\r\n') },
  { weight: 2, arbitrary: fc.constant('\n') },
  { weight: 1, arbitrary: fc.constantFrom('\r', '', '\r\r\n', '\n\r', '\0\r\n', ' \r\n') },
);

const junk = fc.oneof(fc.constantFrom('\0', '\r', '\n', '\x7f', '\x80', '\xff', '\t', ' ', '\r\n', '\x1b'), bytes(8).map((x) => x.toString('latin1')));

/** Whole exchanges that reach a routing decision (greeting, AUTH, MAIL, RCPT), so that routes, hand-offs and retries happen often. */
const exchange: fc.Arbitrary<string> = fc
  .tuple(
    fc.oneof(fc.constantFrom('EHLO client.example\r\n', 'HELO c\r\n', 'ehlo x\n', ''), latin1(12).map((h) => `EHLO ${h}\r\n`)),
    fc.oneof(
      { weight: 3, arbitrary: fc.constant('') },
      { weight: 1, arbitrary: fc.tuple(latin1(10), latin1(10)).map(([u, p]) => `AUTH PLAIN ${b64(`\0${u || 'u'}\0${p}`)}\r\n`) },
      { weight: 1, arbitrary: fc.tuple(latin1(10), latin1(10)).map(([u, p]) => `AUTH LOGIN\r\n${b64(u || 'u')}\r\n${b64(p)}\r\n`) },
      { weight: 1, arbitrary: latin1(10).map((u) => `AUTH CRAM-MD5\r\n${b64(`${u || 'u'} ${'0123456789abcdef'.repeat(2)}`)}\r\n`) },
      { weight: 1, arbitrary: saslPayload.map((p) => `AUTH XOAUTH2 ${p}\r\n`) },
    ),
    fc.oneof(
      fc.constantFrom('MAIL FROM:<alice@example.org>\r\n', 'MAIL FROM:<> SIZE=10\r\n', 'mail from:a@b\n', 'MAIL FROM:<a@b> SIZE=5000\r\n'),
      fc.tuple(latin1(16), latin1(8)).map(([a, p]) => `MAIL FROM:<${a}> ${p}\r\n`),
    ),
    fc.oneof(
      fc.constantFrom('RCPT TO:<bob@example.net>\r\n', 'RCPT TO:<c@d> NOTIFY=NEVER\r\n', 'rcpt to:<x@y>\n', 'RCPT TO:<>\r\n'),
      fc.tuple(latin1(16), latin1(8)).map(([a, p]) => `RCPT TO:${a} ${p}\r\n`),
    ),
  )
  .map((parts) => parts.join(''));

const smtpish: fc.Arbitrary<Buffer> = fc
  .array(
    fc.oneof(
      { weight: 10, arbitrary: fc.tuple(commandText, terminator).map(([c, t]) => c + t) },
      { weight: 3, arbitrary: exchange },
      { weight: 1, arbitrary: junk },
    ),
    { maxLength: 24 },
  )
  .map((parts) => buf(parts.join('')));

// ---------------------------------------------------------------------------------------------
// Harness

interface Outcome {
  /** One token per action: reply bytes, error code and detail, route envelope, close, starttls. */
  events: string[];
  /** Bytes the back-end is handed: handOff() plus every later chunk, or null. */
  handed: string | null;
  phase: Phase;
}

function token(a: Action): string {
  switch (a.type) {
    case 'reply':
      return `reply ${JSON.stringify(a.data.toString('latin1'))}`;
    case 'error':
      return `error ${a.code}${a.detail === undefined ? '' : ` ${JSON.stringify(a.detail)}`}`;
    case 'route': {
      // Envelope.transaction (the policy instance's message number) is tested in session-checks.test.ts.
      const { transaction: _t, ...e } = a.envelope;
      return `route ${JSON.stringify(e)}`;
    }
    case 'close':
      return 'close';
    case 'starttls':
      // How many pipelined plaintext bytes were thrown away depends on what had arrived yet.
      return 'starttls';
    default:
      return a.type;
  }
}

const ENVELOPE_STRINGS = ['helo', 'mailLine', 'rcptLine', 'mailFrom', 'rcptTo'] as const;

function checkEnvelope(e: Envelope): void {
  for (const k of ENVELOPE_STRINGS) {
    assert.doesNotMatch(e[k], /[\r\n\0]/, `envelope ${k} ${JSON.stringify(e[k])} holds CR, LF or NUL`);
    assert.ok(!hasForbiddenByte(b(e[k])), `envelope ${k} ${JSON.stringify(e[k])} holds a control byte`);
  }
  if (e.mailLine !== '' || !e.auth) {
    assert.match(e.mailLine, /^MAIL /i);
    assert.match(e.rcptLine, /^RCPT /i);
    assert.notEqual(e.rcptTo, '');
  }
}

function checkBatch(actions: Action[], phase: Phase): void {
  actions.forEach((a, i) => {
    const last = i === actions.length - 1;
    if (a.type === 'route') {
      assert.ok(last, 'a route action must be the last of its batch');
      checkEnvelope(a.envelope);
    }
    if (a.type === 'close' || a.type === 'starttls') assert.ok(last, `${a.type} must be the last action of its batch`);
    if (a.type === 'error' && ERRORS[a.code].close) assert.ok(last, `closing error ${a.code} must be the last action of its batch`);
    if (a.type === 'reply') assert.match(a.data.toString('latin1'), /^(?:\d{3}[ -][^\r\n]*\r\n)+$/, 'reply bytes');
  });
  const last = actions[actions.length - 1];
  if (last === undefined) return;
  // The phase the batch leaves the session in agrees with its last action.
  if (phase === 'routing') assert.equal(last.type, 'route');
  if (last.type === 'route') assert.equal(phase, 'routing');
  if (phase === 'tls-handshake') assert.equal(last.type, 'starttls');
  if (last.type === 'starttls') assert.equal(phase, 'tls-handshake');
  if (phase === 'closed') assert.ok(last.type === 'close' || (last.type === 'error' && ERRORS[last.code].close), `closed after ${token(last)}`);
  if (phase === 'command') assert.ok(actions.every((a) => a.type === 'reply' || (a.type === 'error' && !ERRORS[a.code].close)), 'command phase after a closing action');
}

function run(input: Buffer, c: Chunking, cfg: Config): Outcome {
  const s = new Session(book, cfg.limits);
  const events: string[] = [];
  const st: { handed: Buffer[] | null } = { handed: null };
  const apply = (actions: Action[]): void => {
    checkBatch(actions, s.phase);
    for (const a of actions) events.push(token(a));
    const last = actions[actions.length - 1];
    if (last?.type !== 'route') return;
    const e = last.envelope;
    if (cfg.handoffAt === e.attempt) st.handed = [s.handOff()];
    else if (e.auth && e.mailLine === '' && e.attempt % 2 === 1) apply(s.authAccepted(e.auth));
    else apply(s.routeFailed(TEMPFAIL, true));
  };
  apply(s.start());
  if (cfg.limits.implicitTls) apply(s.tlsStarted());
  if (cfg.limits.greetingDelay) apply(s.greetingDue());
  assert.equal(s.phase, 'command');
  for (const chunk of split(input, c)) {
    if (st.handed) st.handed.push(chunk); // after the hand-off the relay owns the bytes
    else apply(s.receive(chunk));
  }
  return { events, handed: st.handed ? Buffer.concat(st.handed).toString('latin1') : null, phase: s.phase };
}

function property(input: fc.Arbitrary<Buffer>, cfg: fc.Arbitrary<Config>): fc.IPropertyWithHooks<[Buffer, Chunking, Config]> {
  return fc.property(input, chunking, cfg, (data, c, conf) => {
    const whole = run(data, { cuts: [] }, conf);
    const cut = run(data, c, conf);
    assert.deepEqual(cut, whole, 'outcome depends on chunking');
  });
}

describe('fuzz: Session', () => {
  it('uniform random bytes: never throws, well-formed batches, same outcome in any chunking', () => {
    fc.assert(property(bytes(300), config(fc.oneof(fc.constant(NO_AUTH), authLimits))), { numRuns: runs(1000) });
  });

  it('SMTP-looking input without AUTH: never throws, clean envelopes, well-formed batches, same outcome in any chunking', () => {
    fc.assert(property(smtpish, config(fc.constant(NO_AUTH))), { numRuns: runs(2000) });
  });

  it('SMTP-looking input with AUTH: never throws, clean envelopes, well-formed batches, same outcome in any chunking', () => {
    fc.assert(property(smtpish, config(authLimits)), { numRuns: runs(2000) });
  });
});
