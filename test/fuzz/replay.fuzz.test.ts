/**
 * The back-end replay fed arbitrary (valid) replies in any order: it never throws, and whatever
 * it sends is one or two whole CRLF-terminated command lines.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Replay, type ReplayOptions, type ReplayResult, type ReplayStep } from '../../src/backend/replay.js';
import type { Envelope } from '../../src/session/session.js';
import { ReplyError, ReplyReader, type Reply } from '../../src/smtp/reply-reader.js';
import { b, buf, latin1, lineSafe, lineSafeChar, printable } from './arb.js';
import { runs } from './runs.js';

/** EHLO keyword lines a back-end may advertise, XCLIENT with any subset of its attributes. */
const capability = fc.oneof(
  fc.constantFrom('PIPELINING', 'STARTTLS', 'SIZE 10240000', '8BITMIME', 'AUTH PLAIN LOGIN', 'ENHANCEDSTATUSCODES', 'XCLIENT', 'xclient addr', ''),
  fc.subarray(['NAME', 'ADDR', 'PROTO', 'HELO', 'REVERSE_NAME', 'PORT', 'LOGIN', 'DESTADDR']).map((a) => `XCLIENT ${a.join(' ')}`),
  printable(30),
  latin1(30).map((s) => s.replace(/\n/g, '')),
);

/** A reply as ReplyReader would produce it: any code 200–599 (often the ones the replay looks for), 1–6 lines, any bytes but LF. */
const reply: fc.Arbitrary<Reply> = fc
  .tuple(
    fc.oneof({ weight: 3, arbitrary: fc.constantFrom(220, 250, 235, 334, 354, 421, 450, 451, 500, 502, 530, 535, 550, 554) }, { weight: 1, arbitrary: fc.integer({ min: 200, max: 599 }) }),
    fc.array(capability, { minLength: 1, maxLength: 6 }),
    fc.constantFrom('\r\n', '\n'),
  )
  .map(([code, lines, eol]) => parse(code, lines, eol));

function parse(code: number, lines: string[], eol: string): Reply {
  const raw = lines.map((l, i) => `${code}${i === lines.length - 1 ? ' ' : '-'}${l}${eol}`).join('');
  const r = new ReplyReader();
  r.push(b(raw));
  const out = r.next();
  if (out === null || out instanceof ReplyError) throw new Error(`generator made a bad reply ${JSON.stringify(raw)}`);
  assert.deepEqual(out.raw, b(raw));
  return { ...out, raw: buf(raw) }; // the same bytes, shown as a string in counterexamples
}

/** The code that moves the replay on from each step, so that runs get past the greeting. */
const GOOD: Record<ReplayStep, number> = { greeting: 220, ehlo: 250, helo: 250, starttls: 220, tls: 220, xclient: 220, rehello: 250, auth: 334, mail: 250, rcpt: 250, done: 250 };

/** Either the reply as generated or, when `good`, the same lines with the code the current step wants (235 ends an AUTH). */
function steer(rp: Replay, r: Reply, good: number): Reply {
  if (good === 0) return r;
  const code = rp.step === 'auth' && good === 2 ? 235 : GOOD[rp.step];
  return parse(code, r.lines, '\r\n');
}

/** Envelopes as the session builds them: values from checked command lines (no control bytes), credentials of any bytes. */
const envelope: fc.Arbitrary<Envelope> = fc.oneof(
  fc.record({
    helo: fc.string({ unit: lineSafeChar.filter((c) => c !== ' ' && c !== '\t' && c !== '\xa0'), maxLength: 30 }),
    esmtp: fc.boolean(),
    mailLine: lineSafe(60).map((s) => `MAIL FROM:<${s}>`),
    rcptLine: lineSafe(60).map((s) => `RCPT TO:<${s}>`),
    mailFrom: lineSafe(20),
    rcptTo: lineSafe(20, 1),
    attempt: fc.integer({ min: 1, max: 5 }),
  }),
  fc.record({
    helo: fc.constantFrom('', 'client.example'),
    esmtp: fc.boolean(),
    mailLine: fc.constant(''),
    rcptLine: fc.constant(''),
    mailFrom: fc.constant(''),
    rcptTo: fc.constant(''),
    attempt: fc.integer({ min: 1, max: 5 }),
    auth: fc.record({ method: fc.constantFrom('plain' as const, 'cram-md5' as const, 'external' as const), user: latin1(20), pass: latin1(20) }),
  }),
);

const options: fc.Arbitrary<ReplayOptions> = fc.record(
  {
    serverName: fc.domain(),
    envelope,
    client: fc.record({
      addr: fc.oneof(fc.ipV4(), fc.ipV6()),
      port: fc.integer({ min: 1, max: 65535 }),
      name: fc.oneof(fc.constantFrom('[UNAVAILABLE]', '[TEMPUNAVAIL]'), fc.domain(), latin1(20)),
    }),
    xclient: fc.boolean(),
    login: latin1(30),
    backendAuth: fc.record({ mechanism: fc.constantFrom('plain' as const, 'login' as const), user: latin1(20), pass: fc.option(latin1(20)) }),
    tls: fc.constantFrom('off' as const, 'opportunistic' as const, 'required' as const),
    secure: fc.boolean(),
  },
  { requiredKeys: ['serverName', 'envelope', 'client', 'xclient'] },
);

/** One or two lines, each ending in CRLF, with no CR or LF inside. */
const SEND = /^(?:[^\r\n]*\r\n){1,2}$/;

function check(r: ReplayResult): void {
  if (r.kind === 'send') assert.match(r.data.toString('latin1'), SEND, `send ${JSON.stringify(r.data.toString('latin1'))}`);
}

describe('fuzz: Replay', () => {
  it('never throws on any sequence of replies; every send is one or two whole CRLF lines', () => {
    // Each reply comes with a steering choice: 0 keeps its code, 1 or 2 give the step's good code.
    const step = fc.tuple(reply, fc.oneof({ weight: 1, arbitrary: fc.constant(0) }, { weight: 4, arbitrary: fc.constantFrom(1, 2) }));
    fc.assert(
      fc.property(options, fc.array(step, { minLength: 1, maxLength: 14 }), (o, replies) => {
        const rp = new Replay(o);
        for (const [r, good] of replies) {
          const res = rp.onReply(steer(rp, r, good));
          check(res);
          // The TLS handshake "succeeds" at once: the replay greets again.
          if (res.kind === 'starttls') check(rp.tlsReady());
        }
      }),
      { numRuns: runs(1000) },
    );
  });
});
