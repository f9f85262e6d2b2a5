/**
 * The POP3 session machine under arbitrary and POP3-looking byte streams: it never throws, a
 * route is always the last action of its batch, no CR, LF or NUL reaches the credentials of a
 * route, the hand-off happens only after a login, and what the client is told (and what the
 * back-end is handed) does not depend on how TCP cut the stream.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import type { RouteDecision } from '../../src/domain.js';
import { Pop3Login } from '../../src/pop3/login.js';
import { OK_ROUTE, pop3Limits, runPop3, strip } from '../unit/pop3-harness.js';
import { b, b64, bytes, chunking, latin1, lineSafe, split } from './arb.js';
import { runs } from './runs.js';

const VOCABULARY = [
  'CAPA', 'capa', 'NOOP', 'QUIT', 'STLS', 'STLS now', 'USER alice', 'USER', 'USER  a b ', 'PASS secret', 'PASS', 'pass a b',
  'APOP alice 0123456789abcdef0123456789abcdef', 'APOP alice', 'AUTH', 'AUTH PLAIN', `AUTH PLAIN ${b64('\0alice\0secret')}`,
  'AUTH LOGIN', `AUTH LOGIN ${b64('alice')}`, 'AUTH CRAM-MD5', 'AUTH CRAM-MD5 x', 'AUTH EXTERNAL', `AUTH EXTERNAL ${b64('alice')}`,
  'AUTH XOAUTH2', 'AUTH a b c', 'AUTH a b c d', b64('alice'), b64('secret'), b64(`alice ${'0'.repeat(32)}`), '*', '=', '%%%',
  'STAT', 'RETR 1', 'XCLIENT ADDR=1.2.3.4', 'GET / HTTP/1.1', '', ' ', 'USER\tx',
];

const line: fc.Arbitrary<string> = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...VOCABULARY) },
  { weight: 2, arbitrary: lineSafe(40) },
  { weight: 1, arbitrary: latin1(40) },
  { weight: 1, arbitrary: fc.constantFrom('USER a\0b', 'PASS x\ry', `AUTH PLAIN ${b64('\0a\0b\r\nDELE 1')}`, 'X'.repeat(600)) },
);

const stream: fc.Arbitrary<Buffer> = fc.array(fc.tuple(line, fc.constantFrom('\r\n', '\n', '\r\n\r\n')), { maxLength: 14 }).map((ls) => b(ls.map(([l, e]) => l + e).join('')));

const limits = fc.record({
  auth: fc.subarray(['plain', 'apop', 'cram-md5', 'external', 'xoauth2', 'oauthbearer'], { minLength: 1 }),
  starttls: fc.constantFrom('off' as const, 'on' as const, 'only' as const),
  maxErrors: fc.constantFrom(0, 2, 5),
  maxLineLength: fc.constantFrom(32, 512),
  passOk: fc.boolean(),
}).map(({ auth, passOk, ...o }) => ({ l: pop3Limits(auth, o), passOk }));

/** The router: refuse the first login with Auth-Wait, hand the second off (with a password when asked). */
function decide(passOk: boolean) {
  return (n: number): RouteDecision => (n === 0 ? { kind: 'reject', reply: '535 5.7.0 No', waitMs: 10, reason: 'No' } : passOk ? { ...OK_ROUTE, pass: 'p' } : OK_ROUTE);
}

const REPLY_LINE = /^(\+OK( POP3 ready( <[^>]+>)?| Capability list follows| methods supported:| Logged in\.)?|-ERR [ -~]+|\+ [A-Za-z0-9+/=]*|TOP|USER|UIDL|SASL( [A-Z0-9-]+)+|STLS|PLAIN|LOGIN|CRAM-MD5|EXTERNAL|XOAUTH2|OAUTHBEARER|\.)$/;

describe('POP3 session fuzz', () => {
  it('the same replies and hand-off however the stream is cut; invariants hold', () => {
    fc.assert(
      fc.property(limits, fc.oneof(stream, bytes(300)), chunking, ({ l, passOk }, input, c) => {
        const whole = runPop3([input], l, decide(passOk));
        assert.deepEqual(strip(runPop3(split(input, c), l, decide(passOk))), strip(whole));
        for (const ev of whole.events) {
          if (!ev.startsWith('route ')) continue;
          const creds = JSON.parse(ev.slice(6, ev.lastIndexOf(' '))) as { user: string; pass: string };
          assert.ok(!/[\r\n\0]/.test(creds.user + creds.pass), `control byte in ${ev}`);
        }
        if (whole.handOff !== null) assert.ok(whole.events.some((e) => e.startsWith('connect')), 'hand-off only after a routed login');
        // The client reads only Postern's own lines (and the back-end's +OK): nothing it sent is echoed.
        for (const r of whole.wire.split('\r\n').slice(0, -1)) assert.match(r, REPLY_LINE);
      }),
      { numRuns: runs(400) },
    );
  });
});

const BACKEND_LINES = ['+OK Dovecot ready.', '+OK [XCLIENT] Dovecot ready.', '+OK [XCLIENT SASL] x', '+OK', '+OK Logged in.', '-ERR [AUTH] no', '-ERR [SYS/TEMP] later', '+ ', 'STLS', 'TOP', '.', '* OK IMAP', '220 smtp'];

describe('POP3 back-end login fuzz', () => {
  it('credentials only in order after +OK, XCLIENT only when offered, nothing after the end', () => {
    const backendLine = fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...BACKEND_LINES) }, { weight: 1, arbitrary: latin1(30) });
    const options = fc.record({ login: fc.constantFrom('user' as const, 'plain' as const), tls: fc.constantFrom('off' as const, 'opportunistic' as const, 'required' as const), xclient: fc.boolean() });
    fc.assert(
      fc.property(options, fc.array(backendLine, { maxLength: 10 }), (o, lines) => {
        const login = new Pop3Login({ user: 'alice', pass: 'secret', login: o.login, tls: o.tls, xclient: o.xclient ? { addr: '192.0.2.1', port: 1, session: 's', ttl: 5 } : null });
        const sent: string[] = [];
        let over = false;
        for (const [i, l] of lines.entries()) {
          const step = login.onLine(b(l), b(`${l}\r\n`));
          const s = step.kind === 'starttls' ? login.tlsReady() : step;
          if (s.kind === 'send') sent.push(s.data.toString('latin1'));
          if (s.kind === 'fail' || s.kind === 'done') {
            over = true;
            if (s.kind === 'done') assert.ok(lines[i]!.startsWith('+OK'), 'the client\'s line is an +OK');
            break;
          }
        }
        assert.ok(over || sent.length <= lines.length + 1);
        const pass = sent.findIndex((x) => x.startsWith('PASS '));
        if (pass >= 0) assert.equal(sent[pass - 1], 'USER alice\r\n');
        if (sent.some((x) => x.startsWith('XCLIENT'))) assert.ok(o.xclient && lines[0]!.startsWith('+OK [XCLIENT'));
        if (o.tls === 'required') assert.ok(!sent.some((x) => /^(USER|PASS|AUTH)/.test(x)) || sent.includes('STLS\r\n'), 'no credentials in the clear');
        for (const x of sent) assert.match(x, /^[^\r\n]*\r\n$/, 'one line per send');
      }),
      { numRuns: runs(2000) },
    );
  });
});
