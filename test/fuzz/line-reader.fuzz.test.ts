/**
 * LineReader under arbitrary bytes and arbitrary read boundaries, checked against a plain
 * whole-input model of how lines are split, bounded and skipped.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { LINE_TOO_LONG, LineReader } from '../../src/smtp/line-reader.js';
import { pull } from '../helpers/split.js';
import { buf, bytes, chunking, split, type Chunking } from './arb.js';
import { runs } from './runs.js';

const LF = 0x0a;
const CR = 0x0d;

/** Bytes rich in terminators, so that lines (and CR/LF edge cases) actually occur. */
const lineBytes: fc.Arbitrary<Buffer> = fc
  .array(
    fc.oneof(
      { weight: 4, arbitrary: fc.constantFrom('\r\n', '\n', '\r', '\r\r\n', '\n\n', '\r\n\r\n', 'x', 'NOOP', ' ', '\0') },
      { weight: 2, arbitrary: fc.string({ maxLength: 20 }) },
      { weight: 1, arbitrary: bytes(24).map((x) => x.toString('latin1')) },
    ),
    { maxLength: 40 },
  )
  .map((parts) => buf(parts.join('')));

const anyInput = fc.oneof(lineBytes, bytes(300));

type Item = Buffer | typeof LINE_TOO_LONG;

/** Pushes every chunk and takes lines out after each; stops at the first LINE_TOO_LONG (as the session does). */
function read(input: Buffer, c: Chunking, maxLine: number): { items: Item[]; rest: Buffer | null } {
  const r = new LineReader(maxLine);
  const items: Item[] = [];
  for (const line of pull(r, split(input, c))) {
    if (line === LINE_TOO_LONG) {
      items.push(line);
      return { items, rest: null };
    }
    items.push(Buffer.from(line)); // a view is valid only until the next push
  }
  return { items, rest: Buffer.from(r.rest()) };
}

/** The model: split the whole input at LF, strip one CR, a line (terminator included) over maxLine is too long. */
function model(input: Buffer, maxLine: number): { items: Item[]; rest: Buffer | null } {
  const items: Item[] = [];
  let pos = 0;
  for (;;) {
    const lf = input.indexOf(LF, pos);
    if (lf === -1) break;
    if (lf - pos + 1 > maxLine) return { items: [...items, LINE_TOO_LONG], rest: null };
    const end = lf > pos && input[lf - 1] === CR ? lf - 1 : lf;
    items.push(input.subarray(pos, end));
    pos = lf + 1;
  }
  if (input.length - pos >= maxLine) return { items: [...items, LINE_TOO_LONG], rest: null };
  return { items, rest: input.subarray(pos) };
}

const maxLine = fc.oneof(fc.integer({ min: 1, max: 16 }), fc.integer({ min: 17, max: 600 }));

describe('fuzz: LineReader', () => {
  it('never throws; lines hold no LF and fit maxLine (terminator included)', () => {
    fc.assert(
      fc.property(anyInput, chunking, maxLine, (input, c, max) => {
        const r = new LineReader(max);
        let tooLong = false;
        for (const line of pull(r, split(input, c))) {
          if (line === LINE_TOO_LONG) {
            tooLong = true;
            r.rest(); // what the session does before closing; the reader must stay usable (empty: next() is null until the next push)
            continue;
          }
          assert.equal(line.indexOf(LF), -1, 'a returned line contains LF');
          assert.ok(line.length + 1 <= max, `line of ${line.length} bytes + LF exceeds maxLine ${max}`);
        }
        assert.ok(tooLong || r.buffered < max, 'a partial line of maxLine bytes or more is buffered without LINE_TOO_LONG');
      }),
      { numRuns: runs(1000) },
    );
  });

  it('lines + terminators + rest() reproduce the input when no LINE_TOO_LONG happened', () => {
    fc.assert(
      fc.property(anyInput, chunking, maxLine, (input, c, max) => {
        const { items, rest } = read(input, c, max);
        if (rest === null) return; // LINE_TOO_LONG: the session closes, nothing to reproduce
        let pos = 0;
        for (const item of items) {
          const line = item as Buffer;
          assert.deepEqual(input.subarray(pos, pos + line.length), line);
          pos += line.length;
          if (input[pos] === CR && input[pos + 1] === LF) pos += 2;
          else {
            assert.equal(input[pos], LF, `line at ${pos} is not followed by CRLF or LF`);
            pos += 1;
          }
        }
        assert.deepEqual(Buffer.concat([input.subarray(0, pos), rest]), input);
        assert.equal(pos + rest.length, input.length);
      }),
      { numRuns: runs(1000) },
    );
  });

  it('matches the whole-input model (lines, LINE_TOO_LONG, rest) under any chunking', () => {
    fc.assert(
      fc.property(anyInput, chunking, maxLine, (input, c, max) => {
        assert.deepEqual(read(input, c, max), model(input, max));
      }),
      { numRuns: runs(1000) },
    );
  });

  it('skip(n) consumes exactly n bytes, including bytes not yet received', () => {
    // A line `SKIP n` makes the consumer skip n bytes, as the session does for `BDAT n`.
    const piece = fc.oneof(
      fc.integer({ min: 0, max: 40 }).map((n) => `SKIP ${n}\r\n`),
      fc.constantFrom('NOOP\r\n', 'A\n', '\r\n', 'SKIP 3\n', 'x'),
      bytes(12).map((x) => x.toString('latin1')),
    );
    const input = fc.array(piece, { maxLength: 16 }).map((p) => buf(p.join('')));
    fc.assert(
      fc.property(input, chunking, (data, c) => {
        const r = new LineReader(1 << 20);
        const lines: string[] = [];
        for (const line of pull(r, split(data, c))) {
          assert.notEqual(line, LINE_TOO_LONG);
          const text = (line as Buffer).toString('latin1');
          lines.push(text);
          const m = /^SKIP (\d+)$/.exec(text);
          if (m) r.skip(Number(m[1]));
        }
        const skipping = r.skipping;
        const rest = r.rest().toString('latin1');
        // Model: the same walk over the whole input, with `skip` as a jump forward.
        const want: string[] = [];
        let pos = 0;
        for (;;) {
          const lf = data.indexOf(LF, pos);
          if (pos >= data.length || lf === -1) break;
          const end = lf > pos && data[lf - 1] === CR ? lf - 1 : lf;
          const text = data.toString('latin1', pos, end);
          want.push(text);
          pos = lf + 1;
          const m = /^SKIP (\d+)$/.exec(text);
          if (m) pos += Number(m[1]);
        }
        assert.deepEqual(lines, want);
        assert.equal(skipping, Math.max(0, pos - data.length), 'bytes still to skip');
        assert.equal(rest, data.toString('latin1', Math.min(pos, data.length)));
      }),
      { numRuns: runs(1000) },
    );
  });
});
