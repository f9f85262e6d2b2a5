/**
 * Generators and helpers shared by the fuzz tests (not a test file itself).
 */
import fc from 'fast-check';
import { cutAt, cutEvery } from '../helpers/split.js';

// The node:test reporter does not print an error's `cause`: put the failing assertion into
// fast-check's report itself, next to the (default-shrunk) counterexample.
fc.configureGlobal({ ...fc.readConfigureGlobal(), includeErrorInReport: true });

/** A latin1 string of length 1 (code 0–255): how Postern carries raw bytes in strings. */
export const latin1Char: fc.Arbitrary<string> = fc.integer({ min: 0, max: 0xff }).map((c) => String.fromCharCode(c));

/** Any latin1 string. */
export function latin1(maxLength = 48): fc.Arbitrary<string> {
  return fc.string({ unit: latin1Char, maxLength });
}

/** A byte that {@link hasForbiddenByte} lets through: TAB, 0x20–0x7E, 0x80–0xFF. */
export const lineSafeChar: fc.Arbitrary<string> = fc
  .oneof(fc.constant(0x09), fc.integer({ min: 0x20, max: 0x7e }), fc.integer({ min: 0x80, max: 0xff }))
  .map((c) => String.fromCharCode(c));

/** Text a checked command line could hold: printable latin1, no control bytes. */
export function lineSafe(maxLength = 48, minLength = 0): fc.Arbitrary<string> {
  return fc.string({ unit: lineSafeChar, minLength, maxLength });
}

/** Printable ASCII (0x20–0x7E). */
export function printable(maxLength = 48, minLength = 0): fc.Arbitrary<string> {
  return fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), minLength, maxLength });
}

export const b = (s: string): Buffer => Buffer.from(s, 'latin1');

/** A string literal for a latin1 string, with 8-bit bytes as \xNN: how counterexamples are shown. */
export const quote = (s: string): string =>
  JSON.stringify(s).replace(/[\x7f-\xff]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);

/** A Buffer of the latin1 bytes of `s` that fast-check reports as `b("...")` rather than a list of numbers. */
export function buf(s: string): Buffer {
  const out = b(s);
  Object.defineProperty(out, fc.toStringMethod, { value: () => `b(${quote(s)})` });
  return out;
}

/** Arbitrary bytes. */
export function bytes(maxLength = 256): fc.Arbitrary<Buffer> {
  return latin1(maxLength).map(buf);
}
export const b64 = (s: string): string => Buffer.from(s, 'latin1').toString('base64');

/** How a byte stream is cut into reads: at random offsets (empty reads included), byte by byte, or in fixed steps. */
export type Chunking = { cuts: number[] } | { step: number };

export const chunking: fc.Arbitrary<Chunking> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ cuts: fc.array(fc.nat(), { maxLength: 12 }) }) },
  { weight: 1, arbitrary: fc.record({ step: fc.constant(1) }) },
  { weight: 2, arbitrary: fc.record({ step: fc.integer({ min: 2, max: 16 }) }) },
);

/** Splits `buf` as `c` says; the parts concatenate back to `buf`. */
export function split(buf: Buffer, c: Chunking): Buffer[] {
  if ('step' in c) return cutEvery(buf, c.step);
  return cutAt(buf, c.cuts.map((n) => n % (buf.length + 1)));
}
