/**
 * LineReader: splitting a client's byte stream into command lines, and handing back the rest
 * byte for byte (the pipelined hand-off, RFC 2920). Every stream is also fed split at every
 * byte offset and byte by byte; the result must not depend on how TCP cut it.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LINE_TOO_LONG, LineReader } from '../../src/smtp/line-reader.js';
import { describeCut, pull, splits } from '../helpers/split.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');

interface Collected {
  lines: string[];
  tooLong: boolean;
  rest: string;
  skipping: number;
}

/**
 * Pushes chunks and pulls lines as the session does: after each push, every complete line.
 * A line `SKIP n` makes the reader step over the next n bytes (what BDAT does).
 * Stops at LINE_TOO_LONG (the session closes there).
 */
function collect(chunks: Buffer[], maxLine: number): Collected {
  const r = new LineReader(maxLine);
  const lines: string[] = [];
  for (const line of pull(r, chunks)) {
    if (line === LINE_TOO_LONG) return { lines, tooLong: true, rest: '', skipping: r.skipping };
    const text = line.toString('latin1');
    lines.push(text);
    const m = /^SKIP (\d+)$/.exec(text);
    if (m) r.skip(Number(m[1]));
  }
  return { lines, tooLong: false, skipping: r.skipping, rest: r.rest().toString('latin1') };
}

function assertSplitInvariant(input: string, maxLine: number, expected: Collected): void {
  const buf = b(input);
  assert.deepEqual(collect([buf], maxLine), expected, 'one chunk');
  for (const chunks of splits(buf)) {
    assert.deepEqual(collect(chunks, maxLine), expected, describeCut(chunks));
  }
}

describe('LineReader basics', () => {
  it('returns CRLF-terminated lines without the terminator', () => {
    const r = new LineReader(512);
    r.push(b('EHLO a.example\r\nNOOP\r\n'));
    assert.equal((r.next() as Buffer).toString('latin1'), 'EHLO a.example');
    assert.equal((r.next() as Buffer).toString('latin1'), 'NOOP');
    assert.equal(r.next(), null);
    assert.equal(r.buffered, 0);
  });

  it('accepts a bare LF as terminator (as nginx and Postfix do for commands)', () => {
    const r = new LineReader(512);
    r.push(b('HELO x\nNOOP\r\n'));
    assert.equal((r.next() as Buffer).toString('latin1'), 'HELO x');
    assert.equal((r.next() as Buffer).toString('latin1'), 'NOOP');
  });

  it('returns an empty line for CRLF alone and for LF alone', () => {
    const r = new LineReader(512);
    r.push(b('\r\n\n'));
    assert.equal((r.next() as Buffer).length, 0);
    assert.equal((r.next() as Buffer).length, 0);
    assert.equal(r.next(), null);
  });

  it('keeps a CR that is not directly before the LF inside the line (the session rejects it)', () => {
    const r = new LineReader(512);
    r.push(b('HELO a\rb\r\nNOOP\r\r\n\rX\n'));
    assert.equal((r.next() as Buffer).toString('latin1'), 'HELO a\rb');
    assert.equal((r.next() as Buffer).toString('latin1'), 'NOOP\r');
    assert.equal((r.next() as Buffer).toString('latin1'), '\rX');
  });

  it('returns null while a line is incomplete, then the whole line', () => {
    const r = new LineReader(512);
    r.push(b('MAIL FROM:<a@'));
    assert.equal(r.next(), null);
    assert.equal(r.buffered, 13);
    r.push(b('b>\r'));
    assert.equal(r.next(), null);
    r.push(b('\nRC'));
    assert.equal((r.next() as Buffer).toString('latin1'), 'MAIL FROM:<a@b>');
    assert.equal(r.next(), null);
    assert.equal(r.buffered, 2);
  });

  it('does not decode bytes: 8-bit and NUL bytes come back unchanged', () => {
    const raw = Buffer.from([0x48, 0x00, 0xff, 0xc3, 0xa9, 0x7f, 0x0d, 0x0a]);
    const r = new LineReader(512);
    r.push(raw);
    assert.deepEqual(r.next(), raw.subarray(0, 6));
  });
});

describe('LineReader max line length (CRLF included)', () => {
  it('accepts a line of exactly maxLine bytes with CRLF, refuses one byte more', () => {
    const ok = new LineReader(16);
    ok.push(b(`${'x'.repeat(14)}\r\n`));
    assert.equal((ok.next() as Buffer).toString('latin1'), 'x'.repeat(14));

    const long = new LineReader(16);
    long.push(b(`${'x'.repeat(15)}\r\n`));
    assert.equal(long.next(), LINE_TOO_LONG);
  });

  it('counts a bare LF line the same way: maxLine bytes including the LF', () => {
    const ok = new LineReader(16);
    ok.push(b(`${'x'.repeat(15)}\n`));
    assert.equal((ok.next() as Buffer).length, 15);
    const long = new LineReader(16);
    long.push(b(`${'x'.repeat(16)}\n`));
    assert.equal(long.next(), LINE_TOO_LONG);
  });

  it('reports LINE_TOO_LONG as soon as maxLine bytes are buffered without a LF', () => {
    const r = new LineReader(16);
    r.push(b('x'.repeat(15)));
    assert.equal(r.next(), null, '15 bytes could still be a 16-byte line with its LF');
    r.push(b('x'));
    assert.equal(r.next(), LINE_TOO_LONG);
  });

  it('applies the limit to each line, not to the buffer', () => {
    const r = new LineReader(16);
    const line = `${'y'.repeat(14)}\r\n`;
    r.push(b(line.repeat(5)));
    for (let i = 0; i < 5; i++) assert.equal((r.next() as Buffer).length, 14);
    assert.equal(r.next(), null);
  });

  it('a line that becomes too long after an earlier good line is detected', () => {
    assertSplitInvariant(`OK\r\n${'z'.repeat(40)}\r\nNEXT\r\n`, 16, { lines: ['OK'], tooLong: true, rest: '', skipping: 0 });
  });

  it('exact-limit lines are accepted under every split (CR and LF split apart included)', () => {
    const input = `${'a'.repeat(14)}\r\n${'b'.repeat(15)}\n${'c'.repeat(13)}\r\r\n`;
    assertSplitInvariant(input, 16, {
      lines: ['a'.repeat(14), 'b'.repeat(15), `${'c'.repeat(13)}\r`],
      tooLong: false,
      rest: '',
      skipping: 0,
    });
  });

  it('one byte over the limit is refused under every split', () => {
    assertSplitInvariant(`${'a'.repeat(15)}\r\n`, 16, { lines: [], tooLong: true, rest: '', skipping: 0 });
    assertSplitInvariant(`${'a'.repeat(16)}\n`, 16, { lines: [], tooLong: true, rest: '', skipping: 0 });
    // No terminator at all: refused once 16 bytes are in, whatever the cuts.
    assertSplitInvariant('a'.repeat(40), 16, { lines: [], tooLong: true, rest: '', skipping: 0 });
  });
});

describe('LineReader rest (the hand-off bytes)', () => {
  it('returns every byte after the last line taken, untouched, and empties the reader', () => {
    const r = new LineReader(64);
    const tail = Buffer.from('DATA\r\nSubject: x\r\n\r\n\x00\xff bare\rcr\nlf\r\n.\r\n', 'latin1');
    r.push(Buffer.concat([b('RCPT TO:<a@b>\r\n'), tail]));
    assert.equal((r.next() as Buffer).toString('latin1'), 'RCPT TO:<a@b>');
    assert.deepEqual(r.rest(), tail);
    assert.equal(r.buffered, 0);
    assert.equal(r.next(), null);
    assert.deepEqual(r.rest(), Buffer.alloc(0));
  });

  it('includes an incomplete line and bytes pushed after the last next()', () => {
    const r = new LineReader(64);
    r.push(b('A\r\nB'));
    assert.equal((r.next() as Buffer).toString('latin1'), 'A');
    r.push(b('CD\r\nE'));
    assert.equal(r.rest().toString('latin1'), 'BCD\r\nE');
  });

  it('a reader with nothing consumed gives back exactly what was pushed', () => {
    const r = new LineReader(64);
    r.push(b('abc'));
    r.push(b('\r\ndef'));
    assert.equal(r.rest().toString('latin1'), 'abc\r\ndef');
  });

  it('rest is split-invariant for a pipelined burst', () => {
    const input = 'EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n';
    // Pull only the first three lines, then take the rest.
    const expectRest = 'DATA\r\nhello\r\n.\r\nQUIT\r\n';
    for (const chunks of splits(b(input))) {
      const r = new LineReader(64);
      const got: string[] = [];
      const kept: Buffer[] = [];
      for (const c of chunks) {
        if (got.length === 3) {
          kept.push(c);
          continue;
        }
        r.push(c);
        while (got.length < 3) {
          const line = r.next();
          if (line === null) break;
          assert.notEqual(line, LINE_TOO_LONG);
          got.push((line as Buffer).toString('latin1'));
        }
      }
      assert.deepEqual(got, ['EHLO c', 'MAIL FROM:<a@b>', 'RCPT TO:<x@y>']);
      assert.equal(Buffer.concat([r.rest(), ...kept]).toString('latin1'), expectRest);
    }
  });
});

describe('LineReader skip (BDAT chunks)', () => {
  it('skips bytes already buffered', () => {
    const r = new LineReader(64);
    r.push(b('BDAT 5\r\nQUIT\r\nNOOP\r\n'));
    assert.equal((r.next() as Buffer).toString('latin1'), 'BDAT 5');
    r.skip(5);
    assert.equal(r.skipping, 0);
    assert.equal(r.buffered, 7, 'QUIT\\r skipped, \\nNOOP\\r\\n left');
    assert.equal((r.next() as Buffer).toString('latin1'), '');
    assert.equal((r.next() as Buffer).toString('latin1'), 'NOOP');
  });

  it('skips bytes that have not arrived yet, across several pushes', () => {
    const r = new LineReader(64);
    r.push(b('BDAT 10\r\nab'));
    assert.equal((r.next() as Buffer).toString('latin1'), 'BDAT 10');
    r.skip(10);
    assert.equal(r.skipping, 8);
    assert.equal(r.buffered, 0);
    r.push(b('cde'));
    assert.equal(r.skipping, 5);
    assert.equal(r.next(), null);
    r.push(b('fghij'));
    assert.equal(r.skipping, 0);
    assert.equal(r.next(), null);
    r.push(b('NOOP\r\n'));
    assert.equal((r.next() as Buffer).toString('latin1'), 'NOOP');
  });

  it('a push that ends the skip keeps the bytes after it', () => {
    const r = new LineReader(64);
    r.skip(3);
    assert.equal(r.skipping, 3);
    r.push(b('xyzRSET\r\n'));
    assert.equal(r.skipping, 0);
    assert.equal((r.next() as Buffer).toString('latin1'), 'RSET');
  });

  it('skipped bytes never count toward the line limit', () => {
    assertSplitInvariant(`SKIP 100\r\n${'\n'.repeat(30)}${'q'.repeat(70)}NOOP\r\n`, 16, {
      lines: ['SKIP 100', 'NOOP'],
      tooLong: false,
      rest: '',
      skipping: 0,
    });
  });

  it('skip is split-invariant, including chunks that look like commands', () => {
    const payload = 'QUIT\r\nRSET\r\n';
    const input = `SKIP ${payload.length}\r\n${payload}NOOP\r\nSKIP 0\r\nA\r\nSKIP 3\r\nabcB\r\ntail`;
    assertSplitInvariant(input, 64, { lines: [`SKIP ${payload.length}`, 'NOOP', 'SKIP 0', 'A', 'SKIP 3', 'B'], tooLong: false, rest: 'tail', skipping: 0 });
  });

  it('a skip still pending at the end is reported and swallows what arrived', () => {
    assertSplitInvariant('SKIP 50\r\nonly twenty bytes...', 64, { lines: ['SKIP 50'], tooLong: false, rest: '', skipping: 30 });
  });
});

describe('LineReader split invariance', () => {
  const cases: Array<[string, string, Collected]> = [
    ['mixed terminators', 'EHLO a\r\nNOOP\nRSET\r\n\r\nQUIT\r\n', { lines: ['EHLO a', 'NOOP', 'RSET', '', 'QUIT'], tooLong: false, rest: '', skipping: 0 }],
    ['trailing partial line', 'A\r\nB\r\nC', { lines: ['A', 'B'], tooLong: false, rest: 'C', skipping: 0 }],
    ['trailing CR', 'A\r\nB\r', { lines: ['A'], tooLong: false, rest: 'B\r', skipping: 0 }],
    ['CRs inside lines', 'a\rb\r\n\r\r\n\r\rc\n', { lines: ['a\rb', '\r', '\r\rc'], tooLong: false, rest: '', skipping: 0 }],
    ['binary', 'x\x00y\xff\r\nz\x80\n', { lines: ['x\x00y\xff', 'z\x80'], tooLong: false, rest: '', skipping: 0 }],
  ];
  for (const [name, input, expected] of cases) {
    it(name, () => assertSplitInvariant(input, 64, expected));
  }
});
