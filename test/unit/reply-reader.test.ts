/**
 * ReplyReader: back-end replies (RFC 5321 §4.2), multi-line ones included, read whole however
 * TCP cuts them. Every stream is also fed split at every byte offset and byte by byte.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ReplyError, ReplyReader, type Reply } from '../../src/smtp/reply-reader.js';
import { POSTFIX_EHLO, POSTFIX_EHLO_LINES, POSTFIX_GREETING } from '../helpers/fixtures.js';
import { describeCut, pull, splits } from '../helpers/split.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');

type Item = { code: number; lines: readonly string[]; raw: string } | { error: string };

/** Pushes chunks, pulls every complete reply after each push; stops at the first error. */
function collect(chunks: Buffer[], maxReply?: number): { items: Item[]; rest: string } {
  const r = new ReplyReader(maxReply);
  const items: Item[] = [];
  for (const reply of pull(r, chunks)) {
    if (reply instanceof ReplyError) {
      items.push({ error: reply.reason });
      return { items, rest: '' };
    }
    items.push({ code: reply.code, lines: reply.lines, raw: reply.raw.toString('latin1') });
  }
  return { items, rest: r.rest().toString('latin1') };
}

function assertSplitInvariant(input: string, expected: { items: Item[]; rest: string }, maxReply?: number): void {
  const buf = b(input);
  assert.deepEqual(collect([buf], maxReply), expected, 'one chunk');
  for (const chunks of splits(buf)) {
    assert.deepEqual(collect(chunks, maxReply), expected, describeCut(chunks));
  }
}

function one(input: string, maxReply?: number): Reply | ReplyError | null {
  const r = new ReplyReader(maxReply);
  r.push(b(input));
  return r.next();
}

describe('ReplyReader single replies', () => {
  it('reads a one-line reply with its exact raw bytes', () => {
    assert.deepEqual(one(POSTFIX_GREETING), {
      code: 220,
      lines: ['mx.backend.example ESMTP Postfix'],
      raw: b(POSTFIX_GREETING),
    });
  });

  it('reads a whole multi-line EHLO reply', () => {
    const r = one(POSTFIX_EHLO) as Reply;
    assert.equal(r.code, 250);
    assert.deepEqual(r.lines, POSTFIX_EHLO_LINES);
    assert.equal(r.raw.toString('latin1'), POSTFIX_EHLO);
  });

  it('accepts a code with no text (RFC 5321 §4.2: the text is optional)', () => {
    assert.deepEqual(one('250\r\n'), { code: 250, lines: [''], raw: b('250\r\n') });
    assert.deepEqual(one('250 \r\n'), { code: 250, lines: [''], raw: b('250 \r\n') });
    assert.deepEqual(one('250-\r\n250 x\r\n'), { code: 250, lines: ['', 'x'], raw: b('250-\r\n250 x\r\n') });
  });

  it('accepts bare LF line ends and keeps them in raw', () => {
    assert.deepEqual(one('250-a\n250 b\n'), { code: 250, lines: ['a', 'b'], raw: b('250-a\n250 b\n') });
  });

  it('keeps 8-bit text byte for byte', () => {
    const r = one('550 5.1.1 <j\xf6rg@x>: unknown\r\n') as Reply;
    assert.equal(r.lines[0], '5.1.1 <j\xf6rg@x>: unknown');
    assert.deepEqual(r.raw, b('550 5.1.1 <j\xf6rg@x>: unknown\r\n'));
  });

  it('returns null until the last line of a multi-line reply is complete', () => {
    const r = new ReplyReader();
    r.push(b('250-a\r\n250-b\r\n'));
    assert.equal(r.next(), null);
    r.push(b('250 c'));
    assert.equal(r.next(), null);
    r.push(b('\r'));
    assert.equal(r.next(), null);
    r.push(b('\n'));
    assert.deepEqual((r.next() as Reply).lines, ['a', 'b', 'c']);
    assert.equal(r.next(), null);
  });
});

describe('ReplyReader several replies and rest', () => {
  it('returns pipelined replies one at a time, each with only its own raw bytes', () => {
    const r = new ReplyReader();
    r.push(b('250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n'));
    assert.deepEqual(r.next(), { code: 250, lines: ['2.1.0 Ok'], raw: b('250 2.1.0 Ok\r\n') });
    assert.deepEqual(r.next(), { code: 250, lines: ['2.1.5 Ok'], raw: b('250 2.1.5 Ok\r\n') });
    assert.deepEqual(r.next(), { code: 354, lines: ['End data with <CR><LF>.<CR><LF>'], raw: b('354 End data with <CR><LF>.<CR><LF>\r\n') });
    assert.equal(r.next(), null);
  });

  it('rest gives the bytes after the last complete reply and empties the reader', () => {
    const r = new ReplyReader();
    r.push(b('250 ok\r\n221 2.0'));
    assert.equal((r.next() as Reply).code, 250);
    assert.equal(r.rest().toString('latin1'), '221 2.0');
    assert.equal(r.next(), null);
    assert.equal(r.rest().length, 0);
  });

  it('raw of an earlier reply is not changed by later pushes', () => {
    const r = new ReplyReader();
    r.push(b('250 a\r\n25'));
    const first = r.next() as Reply;
    r.push(b('0 b\r\n'));
    assert.equal((r.next() as Reply).raw.toString('latin1'), '250 b\r\n');
    assert.equal(first.raw.toString('latin1'), '250 a\r\n');
  });
});

describe('ReplyReader errors', () => {
  const reason = (input: string, maxReply?: number): string => {
    const r = one(input, maxReply);
    assert.ok(r instanceof ReplyError, `expected a ReplyError for ${JSON.stringify(input)}, got ${JSON.stringify(r)}`);
    return r.reason;
  };

  it('refuses lines that do not start with three digits', () => {
    assert.equal(reason('HTTP/1.1 400 Bad Request\r\n'), 'malformed reply line "HTTP/1.1 400 Bad Request"');
    assert.equal(reason('25\r\n'), 'malformed reply line "25"');
    assert.equal(reason('\r\n'), 'malformed reply line ""');
    assert.equal(reason('2x0 ok\r\n'), 'malformed reply line "2x0 ok"');
  });

  it('refuses a fourth character other than space or hyphen', () => {
    assert.equal(reason('2500 ok\r\n'), 'malformed reply separator');
    assert.equal(reason('250_ok\r\n'), 'malformed reply separator');
  });

  it('refuses a code that changes in the middle of a multi-line reply', () => {
    assert.equal(reason('250-a\r\n251 b\r\n'), 'reply code changed from 250 to 251 mid-reply');
  });

  it('refuses a malformed continuation line', () => {
    assert.equal(reason('250-a\r\nb\r\n'), 'malformed reply line "b"');
  });

  it('caps the malformed-line excerpt at 64 bytes', () => {
    const r = reason(`${'x'.repeat(200)}\r\n`);
    assert.equal(r, `malformed reply line "${'x'.repeat(64)}"`);
  });

  it('accepts a reply of exactly maxReply bytes and refuses one byte more', () => {
    const exact = `250 ${'a'.repeat(10)}\r\n`; // 16 bytes
    assert.equal((one(exact, 16) as Reply).raw.length, 16);
    assert.equal(reason(`250 ${'a'.repeat(11)}\r\n`, 16), 'reply too long');
  });

  it('counts the whole multi-line reply against maxReply', () => {
    const reply = '250-aaaa\r\n250-bbbb\r\n250 c\r\n'; // 27 bytes, no line over 10
    assert.equal((one(reply, 27) as Reply).lines.length, 3);
    assert.equal(reason(reply, 26), 'reply too long');
  });

  it('refuses an unterminated reply once more than maxReply bytes are buffered', () => {
    const r = new ReplyReader(16);
    r.push(b('250 '.padEnd(16, 'x')));
    assert.equal(r.next(), null);
    r.push(b('x'));
    const e = r.next();
    assert.ok(e instanceof ReplyError);
    assert.equal(e.reason, 'reply too long');
  });

  it('the limit applies per reply, not to everything buffered', () => {
    const r = new ReplyReader(16);
    r.push(b('250 aaaaaaaaaa\r\n250 bbbbbbbbbb\r\n'));
    assert.equal((r.next() as Reply).lines[0], 'aaaaaaaaaa');
    assert.equal((r.next() as Reply).lines[0], 'bbbbbbbbbb');
  });
});

describe('ReplyReader split invariance', () => {
  it('a Postfix-like replay transcript', () => {
    const input = `${POSTFIX_GREETING}${POSTFIX_EHLO}${POSTFIX_GREETING}250-mx.backend.example\r\n250 8BITMIME\r\n250 2.1.0 Ok\r\n550 5.1.1 <x@y>: Recipient address rejected\r\n`;
    assertSplitInvariant(input, {
      items: [
        { code: 220, lines: ['mx.backend.example ESMTP Postfix'], raw: POSTFIX_GREETING },
        { code: 250, lines: POSTFIX_EHLO_LINES, raw: POSTFIX_EHLO },
        { code: 220, lines: ['mx.backend.example ESMTP Postfix'], raw: POSTFIX_GREETING },
        { code: 250, lines: ['mx.backend.example', '8BITMIME'], raw: '250-mx.backend.example\r\n250 8BITMIME\r\n' },
        { code: 250, lines: ['2.1.0 Ok'], raw: '250 2.1.0 Ok\r\n' },
        { code: 550, lines: ['5.1.1 <x@y>: Recipient address rejected'], raw: '550 5.1.1 <x@y>: Recipient address rejected\r\n' },
      ],
      rest: '',
    });
  });

  it('bare LF, empty text and a trailing partial reply', () => {
    assertSplitInvariant('250-\n250 x\r\n220\r\n354 go', {
      items: [
        { code: 250, lines: ['', 'x'], raw: '250-\n250 x\r\n' },
        { code: 220, lines: [''], raw: '220\r\n' },
      ],
      rest: '354 go',
    });
  });

  it('an error after good replies is found wherever the cut falls', () => {
    assertSplitInvariant('250 ok\r\n250-a\r\n251 b\r\n250 never\r\n', {
      items: [{ code: 250, lines: ['ok'], raw: '250 ok\r\n' }, { error: 'reply code changed from 250 to 251 mid-reply' }],
      rest: '',
    });
  });

  it('the size limit is independent of the cuts', () => {
    assertSplitInvariant(`250 ${'a'.repeat(10)}\r\n250 ${'b'.repeat(11)}\r\n`, {
      items: [{ code: 250, lines: ['a'.repeat(10)], raw: `250 ${'a'.repeat(10)}\r\n` }, { error: 'reply too long' }],
      rest: '',
    }, 16);
  });
});
