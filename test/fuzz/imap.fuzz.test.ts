/**
 * The IMAP reader and session machine under arbitrary and IMAP-looking byte streams: they never
 * throw, what they yield does not depend on how TCP cut the stream, nothing the client sent is
 * echoed into Postern's own replies (printable lines, nginx's texts and tags only), and the
 * login the router is asked about is well-formed.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { COMMANDS } from '../../src/imap/dialog.js';
import { ImapReader, type ReaderItem } from '../../src/imap/reader.js';
import type { RouteDecision } from '../../src/domain.js';
import { run, strip, TARGET, type RunOptions } from '../unit/imap-harness.js';
import { b64, buf, bytes, chunking, latin1, printable, split } from './arb.js';
import { runs } from './runs.js';

const tag = fc.stringMatching(/^[A-Za-z0-9._-]{1,6}$/);
const word = fc.oneof(printable(12, 1).map((s) => s.replace(/[ "(){\\]/g, 'x')), fc.constant('NIL'));
const quoted = latin1(12).map((s) => `"${s.replace(/[\\"]/g, (c) => `\\${c}`)}"`);
const literal = fc.tuple(latin1(12), fc.boolean()).map(([s, plus]) => `{${s.length}${plus ? '+' : ''}}\r\n${s}`);
const arg = fc.oneof(word, quoted, literal, fc.array(fc.oneof(quoted, word), { maxLength: 4 }).map((a) => `(${a.join(' ')})`));
const name = fc.oneof(fc.constantFrom(...COMMANDS), fc.constantFrom('login', 'Authenticate', 'SELECT', 'FOOBAR', 'X'));
const command = fc.tuple(tag, name, fc.array(arg, { maxLength: 4 }), fc.constantFrom('\r\n', '\n', '\r', '')).map(([t, n, a, end]) => `${t} ${[n, ...a].join(' ')}${end}`);
const saslLine = fc.oneof(fc.constant('*\r\n'), latin1(24).map((s) => `${b64(s)}\r\n`), latin1(8).map((s) => `${s}\r\n`), fc.constant(`${b64('\0u\0p')}\r\n`));
const stream = fc.array(fc.oneof({ weight: 5, arbitrary: command }, { weight: 2, arbitrary: saslLine }, { weight: 1, arbitrary: latin1(16) }), { maxLength: 8 }).map((p) => buf(p.join('')));
const input = fc.oneof({ weight: 3, arbitrary: stream }, { weight: 1, arbitrary: bytes(200) });

function readAll(r: ImapReader, chunks: Buffer[], mode: (n: number) => 'command' | 'line'): string[] {
  const out: string[] = [];
  for (const c of chunks) {
    r.push(c);
    for (let item: ReaderItem | null; (item = r.next(mode(out.length))) !== null; ) {
      out.push(JSON.stringify(item));
      if (item.kind === 'too-long') return out;
    }
  }
  return out;
}

const limits = fc.record({
  maxLineLength: fc.constantFrom(40, 128, 512),
  maxErrors: fc.constantFrom(0, 3, 10),
  starttls: fc.constantFrom('off' as const, 'on' as const, 'only' as const),
  maxAttempts: fc.integer({ min: 1, max: 3 }),
  passErrorMessage: fc.boolean(),
});

const decision = fc.constantFrom<'ok' | 'reject' | 'wait' | 'error'>('ok', 'reject', 'wait', 'error');

function decide(d: 'ok' | 'reject' | 'wait' | 'error'): (n: number) => RouteDecision {
  return (n) => {
    if (n > 0 || d === 'ok') return { ...TARGET, pass: 'p' };
    if (d === 'error') return { kind: 'error', code: 'PST_AUTH_HTTP_TIMEOUT', detail: 'x' };
    return { kind: 'reject', reply: '535 5.7.0 No\r\n\0', waitMs: d === 'wait' ? 10 : 0, reason: 'no' };
  };
}

describe('IMAP fuzz: the reader', () => {
  it('yields the same items for any cutting, in command and line mode alike', () => {
    fc.assert(
      fc.property(input, chunking, fc.constantFrom(40, 128, 512), fc.integer({ min: 0, max: 7 }), (data, c, max, linesAt) => {
        const mode = (n: number): 'command' | 'line' => (n === linesAt ? 'line' : 'command');
        const whole = readAll(new ImapReader(max, COMMANDS), [data], mode);
        assert.deepEqual(readAll(new ImapReader(max, COMMANDS), split(data, c), mode), whole);
        for (const s of whole) {
          const item = JSON.parse(s) as ReaderItem;
          if (item.kind === 'command') {
            assert.match(item.tag, /^[A-Za-z0-9._-]{1,32}$/);
            assert.ok(COMMANDS.has(item.name));
          }
        }
      }),
      { numRuns: runs(400) },
    );
  });
});

describe('IMAP fuzz: the session', () => {
  it('never throws, answers the same for any cutting, and says only printable lines of its own', () => {
    fc.assert(
      fc.property(input, chunking, limits, decision, (data, c, l, d) => {
        const o: RunOptions = { limits: l, starttls: l.starttls, decide: decide(d) };
        const whole = run([data], o);
        // After STARTTLS later reads are TLS records: only the one-read run is compared past it.
        // LOGOUT's goodbye close depends on whether more bytes had come yet: the same close otherwise.
        const same = (r: ReturnType<typeof run>) => ({ ...strip(r), events: r.events.map((e) => (e === 'close goodbye' ? 'close' : e)) });
        if (!whole.events.some((e) => e.startsWith('starttls'))) assert.deepEqual(same(run(split(data, c), o)), same(whole));
        // The back-end's lines (the splice) are the harness's; Postern's own are printable CRLF lines.
        const own = whole.events.filter((e) => e.startsWith('reply ')).map((e) => e.slice(6)).join('');
        assert.match(own, /^(?:[\x20-\x7e]*\r\n)*$/);
        for (const e of whole.envelopes) {
          assert.ok(e.auth, 'a route is always a login');
          assert.ok(['plain', 'cram-md5', 'external', 'xoauth2', 'oauthbearer'].includes(e.auth.method));
        }
        if (whole.phase === 'closed') assert.deepEqual(whole.session.receive(buf('a NOOP\r\n')), []);
      }),
      { numRuns: runs(300) },
    );
  });
});
