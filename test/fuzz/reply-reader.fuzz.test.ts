/**
 * ReplyReader under arbitrary bytes, generated valid replies and size limits, in any chunking.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { ReplyError, ReplyReader } from '../../src/smtp/reply-reader.js';
import { pull } from '../helpers/split.js';
import { b, buf, bytes, chunking, printable, split, type Chunking } from './arb.js';
import { runs } from './runs.js';

type Item = { code: number; lines: string[]; raw: string } | { error: string };

/** Pushes the chunks, pulls every reply after each push; stops at the first ReplyError (the caller fails the session there). */
function collect(input: Buffer, c: Chunking, maxReply?: number): { items: Item[]; rest: string } {
  const r = new ReplyReader(maxReply);
  const items: Item[] = [];
  for (const reply of pull(r, split(input, c))) {
    if (reply instanceof ReplyError) {
      assert.equal(typeof reply.reason, 'string');
      items.push({ error: reply.reason });
      return { items, rest: '' };
    }
    assert.ok(reply.code >= 0 && reply.code <= 999 && Number.isInteger(reply.code));
    assert.ok(reply.lines.length >= 1);
    assert.equal(reply.raw[reply.raw.length - 1], 0x0a, 'raw must end with LF');
    if (maxReply !== undefined) assert.ok(reply.raw.length <= maxReply, `reply of ${reply.raw.length} bytes over maxReply ${maxReply}`);
    for (const l of reply.lines) assert.ok(!l.includes('\n'));
    items.push({ code: reply.code, lines: reply.lines, raw: reply.raw.toString('latin1') });
  }
  return { items, rest: r.rest().toString('latin1') };
}

interface GenReply {
  code: number;
  lines: string[];
}

const genReply: fc.Arbitrary<GenReply> = fc.record({
  code: fc.integer({ min: 200, max: 599 }),
  lines: fc.array(printable(40), { minLength: 1, maxLength: 5 }),
});

/** RFC 5321 §4.2.1 multi-line form: `code-text` on all lines but the last, `code text` on the last. */
function format(r: GenReply, eol: string): string {
  return r.lines.map((l, i) => `${r.code}${i === r.lines.length - 1 ? ' ' : '-'}${l}${eol}`).join('');
}

/** Reply-looking bytes with corruption: wrong digits, separators, codes changing mid-reply, bare CR/LF, NUL. */
const replyish: fc.Arbitrary<Buffer> = fc
  .array(
    fc.oneof(
      { weight: 4, arbitrary: genReply.map((r) => format(r, '\r\n')) },
      { weight: 2, arbitrary: fc.constantFrom('250-', '251 ', '25', '2x0 ', '250x', '\r\n', '\n', '\r', '\0', '250', ' ', '-', '999-a\r\n998 b\r\n') },
      { weight: 1, arbitrary: bytes(20).map((x) => x.toString('latin1')) },
    ),
    { maxLength: 12 },
  )
  .map((parts) => buf(parts.join('')));

describe('fuzz: ReplyReader', () => {
  it('never throws on any bytes in any chunking; replies it returns are sane', () => {
    fc.assert(
      fc.property(fc.oneof(replyish, bytes(300)), chunking, fc.option(fc.integer({ min: 1, max: 400 }), { nil: undefined }), (input, c, max) => {
        collect(input, c, max);
      }),
      { numRuns: runs(1000) },
    );
  });

  it('valid replies round-trip exactly (code, lines, raw) under any chunking', () => {
    fc.assert(
      fc.property(fc.array(genReply, { minLength: 1, maxLength: 6 }), fc.constantFrom('\r\n', '\n'), chunking, (replies, eol, c) => {
        const input = b(replies.map((r) => format(r, eol)).join(''));
        assert.deepEqual(collect(input, c), {
          items: replies.map((r) => ({ code: r.code, lines: r.lines, raw: format(r, eol) })),
          rest: '',
        });
      }),
      { numRuns: runs(1000) },
    );
  });

  it('malformed input gives ReplyError or null, never an exception, and the same result in any chunking', () => {
    fc.assert(
      fc.property(replyish, chunking, fc.option(fc.integer({ min: 1, max: 200 }), { nil: undefined }), (input, c, max) => {
        assert.deepEqual(collect(input, c, max), collect(input, { cuts: [] }, max));
      }),
      { numRuns: runs(1000) },
    );
  });

  it('is bounded: more than maxReply bytes without a complete reply is a ReplyError', () => {
    // A reply that never ends within the limit: a long last line without LF, or continuation lines without end.
    const unfinished = fc.oneof(
      fc.tuple(fc.integer({ min: 200, max: 599 }), printable(60)).map(([code, text]) => `${code} ${text}`),
      fc.tuple(fc.integer({ min: 200, max: 599 }), fc.array(printable(20), { minLength: 1, maxLength: 20 }), printable(20)).map(
        ([code, lines, tail]) => lines.map((l) => `${code}-${l}\r\n`).join('') + `${code}-${tail}`,
      ),
    );
    fc.assert(
      fc.property(unfinished, fc.integer({ min: 1, max: 200 }), chunking, (text, max, c) => {
        fc.pre(text.length > max);
        const { items } = collect(b(text), c, max);
        assert.equal(items.length, 1, `expected exactly one ReplyError, got ${JSON.stringify(items)}`);
        assert.ok('error' in items[0]!, `expected a ReplyError, got ${JSON.stringify(items[0])}`);
      }),
      { numRuns: runs(1000) },
    );
  });
});
