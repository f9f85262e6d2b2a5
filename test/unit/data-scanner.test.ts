/**
 * The end of a DATA body (RFC 5321 §4.1.1.4) found in a stream, whatever the cuts: every input is
 * fed whole, split at every offset, byte by byte and in fixed steps, and the scanner must forward
 * exactly the same bytes and stop at exactly the same place. Also the smuggling sequences
 * (a dot line framed by a bare LF), which must never be forwarded whole.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DataScanner } from '../../src/smtp/data-scanner.js';
import { describeCut, splits } from '../helpers/split.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');

interface Outcome {
  /** Bytes that may go to the back-end. */
  forwarded: string;
  /** `end` (with what followed it), `smuggling`, or `open` (no end yet). */
  result: string;
}

function scan(chunks: Buffer[]): Outcome {
  const s = new DataScanner();
  let forwarded = '';
  for (let i = 0; i < chunks.length; i++) {
    const c = chunks[i]!;
    const r = s.scan(c);
    if (r.kind === 'body') {
      forwarded += c.toString('latin1');
      continue;
    }
    if (r.kind === 'smuggling') return { forwarded: forwarded + c.toString('latin1', 0, r.safe), result: 'smuggling' };
    const rest = Buffer.concat([c.subarray(r.end), ...chunks.slice(i + 1)]).toString('latin1');
    return { forwarded: forwarded + c.toString('latin1', 0, r.end), result: `end ${JSON.stringify(rest)}` };
  }
  return { forwarded, result: 'open' };
}

function check(input: string, expected: Outcome): void {
  const buf = b(input);
  for (const chunks of splits(buf)) assert.deepEqual(scan(chunks), expected, describeCut(chunks));
}

describe('DataScanner: the end of data across any cut', () => {
  it('a plain body ends at CRLF.CRLF; what follows is left for the command reader', () => {
    check('Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n', { forwarded: 'Subject: x\r\n\r\nhello\r\n.\r\n', result: 'end "QUIT\\r\\n"' });
  });

  it('an empty body: the DATA command\'s CRLF counts, so ".CRLF" first is the end', () => {
    check('.\r\nMAIL FROM:<a@b>\r\n', { forwarded: '.\r\n', result: 'end "MAIL FROM:<a@b>\\r\\n"' });
  });

  it('dot-stuffed lines and a lone dot inside a line are body', () => {
    check('..\r\n..x\r\na.b\r\nend .\r\n . \r\n.\r\n', { forwarded: '..\r\n..x\r\na.b\r\nend .\r\n . \r\n.\r\n', result: 'end ""' });
  });

  it('bare LF, bare CR and 8-bit bytes inside lines are relayed as they are', () => {
    check('a\nb\rc\xff\x00\r\n.\rnot the end\r\n.\r\n', { forwarded: 'a\nb\rc\xff\x00\r\n.\rnot the end\r\n.\r\n', result: 'end ""' });
  });

  it('no end yet: everything is forwarded and the scanner waits', () => {
    check('line\r\n.', { forwarded: 'line\r\n.', result: 'open' });
    check('line\r\n.\r', { forwarded: 'line\r\n.\r', result: 'open' });
  });

  it('pipelined commands after the dot stay out of the body', () => {
    check('x\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n', { forwarded: 'x\r\n.\r\n', result: 'end "MAIL FROM:<a@b>\\r\\nRCPT TO:<c@d>\\r\\nDATA\\r\\n"' });
  });
});

describe('DataScanner: SMTP smuggling sequences are never forwarded whole', () => {
  for (const [name, input, safe] of [
    ['LF.LF', 'hello\n.\nMAIL FROM:<evil@x>\r\n', 'hello\n'],
    ['LF.CRLF', 'hello\n.\r\nMAIL FROM:<evil@x>\r\n', 'hello\n'],
    ['CRLF.LF', 'hello\r\n.\nMAIL FROM:<evil@x>\r\n', 'hello\r\n'],
    ['at the very start (DATA CRLF, then .LF)', '.\nMAIL FROM:<evil@x>\r\n', ''],
  ] as const) {
    it(`${name}: the bytes before the dot only`, () => {
      const buf = b(input);
      for (const chunks of splits(buf)) {
        const o = scan(chunks);
        assert.equal(o.result, 'smuggling', describeCut(chunks));
        // Bytes of earlier reads may already be out (up to the lone dot at most), never the dot's line end.
        assert.ok(o.forwarded === safe || o.forwarded === `${safe}.`, `${describeCut(chunks)}: forwarded ${JSON.stringify(o.forwarded)}`);
      }
    });
  }

  it('a second message in one stream starts clean after reset()', () => {
    const s = new DataScanner();
    assert.deepEqual(s.scan(b('a\r\n.\r\n')), { kind: 'end', end: 6 });
    s.reset();
    assert.deepEqual(s.scan(b('.\r\n')), { kind: 'end', end: 3 });
  });
});
