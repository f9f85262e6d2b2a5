/**
 * ProxyHeaderReader under arbitrary bytes, generated headers and mutated headers, in any chunking:
 * it never throws, answers the same however the bytes are cut, never returns more than the input, and
 * whatever it accepts is clean (text without control bytes, addresses Node would write) and re-encodes
 * (src/proxy/writer.ts encodeHeader) to a header that reads back the same. Each push is synchronous and
 * does bounded work, so "never hangs" is "every property finishes".
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { formatIPv6 } from '../../src/proxy/address.js';
import { V1_MAX, V2_SIGNATURE, type ProxyHeader, type ProxySsl, type ProxyTlvs } from '../../src/proxy/header.js';
import { ProxyHeaderReader } from '../../src/proxy/reader.js';
import { encodeHeader, type HeaderFields } from '../../src/proxy/writer.js';
import { buf, bytes, chunking, split, type Chunking } from './arb.js';
import { runs } from './runs.js';

type Outcome = { kind: 'more' } | { kind: 'error'; reason: string } | { kind: 'done'; header: ProxyHeader; rest: Buffer };

function read(input: Buffer, c: Chunking, max?: number): Outcome {
  const r = new ProxyHeaderReader(max === undefined ? {} : { maxV2Bytes: max });
  const chunks = split(input, c);
  for (let i = 0; i < chunks.length; i++) {
    const res = r.push(chunks[i]!);
    if (res.kind === 'error') {
      assert.deepEqual(r.push(Buffer.from('x')), res, 'an error sticks');
      return res;
    }
    if (res.kind === 'done') return { kind: 'done', header: res.header, rest: Buffer.concat([res.rest, ...chunks.slice(i + 1)]) };
  }
  return { kind: 'more' };
}

// eslint-disable-next-line no-control-regex
const DIRTY = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

function clean(s: string | undefined, ascii = false): void {
  if (s === undefined) return;
  assert.ok(!DIRTY.test(s), `control character in ${JSON.stringify(s)}`);
  if (ascii) assert.ok(/^[\x20-\x7e]*$/.test(s), `non-ASCII in ${JSON.stringify(s)}`);
}

/** What any accepted header must be, given the input it came from. */
function sane(o: Extract<Outcome, { kind: 'done' }>, input: Buffer, max: number): void {
  const h = o.header;
  assert.ok(h.length > 0 && h.length <= input.length);
  assert.deepEqual(o.rest, input.subarray(h.length));
  assert.ok(h.length <= (h.version === 1 ? V1_MAX : max));
  if (h.family === 'tcp4' || h.family === 'tcp6') {
    for (const e of [h.source!, h.destination!]) {
      assert.ok(h.family === 'tcp4' ? net.isIPv4(e.address) : net.isIPv6(e.address) && !e.address.includes('%'), e.address);
      assert.ok(Number.isInteger(e.port) && e.port >= 0 && e.port <= 65535);
    }
  } else if (h.family === 'unix') {
    clean(h.source!.address);
    clean(h.destination!.address);
  } else {
    assert.equal(h.source, undefined);
    assert.equal(h.destination, undefined);
  }
  const t = h.tlvs;
  clean(t.authority);
  clean(t.alpn, true);
  clean(t.uniqueId, true);
  clean(t.netns, true);
  if (t.ssl) {
    clean(t.ssl.cn);
    for (const s of [t.ssl.version, t.ssl.cipher, t.ssl.sigAlg, t.ssl.keyAlg]) clean(s, true);
  }
}

const strip = ({ length: _, ...rest }: ProxyHeader): HeaderFields => rest;

/** Re-encodes an accepted header and reads it back: the same header (its length may shrink: NOOPs, LOCAL bodies). */
function reencodes(h: ProxyHeader): void {
  const again = encodeHeader(strip(h));
  const back = new ProxyHeaderReader({ maxV2Bytes: 65551 }).push(again);
  assert.equal(back.kind, 'done', `re-encoded header refused: ${JSON.stringify(back)}`);
  assert.deepEqual(strip((back as { header: ProxyHeader }).header), strip(h));
}

function consistent(input: Buffer, c: Chunking, max: number): Outcome {
  const whole = read(input, { cuts: [] }, max);
  const cut = read(input, c, max);
  assert.deepEqual(cut, whole, 'the outcome depends on the cuts');
  if (whole.kind === 'done') {
    sane(whole, input, max);
    reencodes(whole.header);
  }
  return whole;
}

// Generators of header fields.
const printable = (max: number): fc.Arbitrary<string> => fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), maxLength: max });
const utf8 = (max: number): fc.Arbitrary<string> =>
  fc.string({ unit: fc.oneof(fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), fc.constantFrom('ü', 'é', 'Ж', '中', '😀', '\u00a0')), maxLength: max });
const v4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((o) => o.join('.'));
const v6 = fc.array(fc.oneof(fc.constant(0), fc.constant(0xffff), fc.integer({ min: 0, max: 0xffff })), { minLength: 8, maxLength: 8 })
  .map((w) => formatIPv6(Buffer.from(w.flatMap((x) => [x >> 8, x & 0xff]))));
const port = fc.integer({ min: 0, max: 65535 });
const unixPath = fc.oneof(fc.constant(''), utf8(30).filter((s) => s !== '').map((s) => `/run/${s}`), printable(40).filter((s) => s !== '').map((s) => `@${s}`));
const ssl: fc.Arbitrary<ProxySsl> = fc.record({
  client: fc.nat(7), verified: fc.boolean(), version: printable(10), cn: utf8(20), cipher: printable(30), sigAlg: printable(12), keyAlg: printable(8),
}, { requiredKeys: ['client', 'verified'], noNullPrototype: true }).map((s) => ({ ...s, verified: s.verified && (s.client & 6) !== 0 }));
const tlvs: fc.Arbitrary<ProxyTlvs> = fc.record({
  alpn: printable(8), authority: utf8(40), uniqueId: printable(128), ssl, netns: printable(10),
  other: fc.array(fc.record({ type: fc.oneof(fc.integer({ min: 0x06, max: 0x1f }), fc.integer({ min: 0xe0, max: 0xff })), value: bytes(20) }, { noNullPrototype: true }), { minLength: 1, maxLength: 3 }),
}, { requiredKeys: [], noNullPrototype: true });

const header: fc.Arbitrary<HeaderFields> = fc.oneof(
  fc.record({ s: v4, d: v4, sp: port, dp: port, version: fc.constantFrom(1 as const, 2 as const), t: tlvs }).map(({ s, d, sp, dp, version, t }) =>
    ({ version, command: 'proxy' as const, family: 'tcp4' as const, source: { address: s, port: sp }, destination: { address: d, port: dp }, tlvs: version === 2 ? t : {} })),
  fc.record({ s: v6, d: v6, sp: port, dp: port, version: fc.constantFrom(1 as const, 2 as const), t: tlvs }).map(({ s, d, sp, dp, version, t }) =>
    ({ version, command: 'proxy' as const, family: 'tcp6' as const, source: { address: s, port: sp }, destination: { address: d, port: dp }, tlvs: version === 2 ? t : {} })),
  fc.record({ s: unixPath, d: unixPath, t: tlvs }).map(({ s, d, t }) =>
    ({ version: 2 as const, command: 'proxy' as const, family: 'unix' as const, source: { address: s, port: 0 }, destination: { address: d, port: 0 }, tlvs: t })),
  fc.constantFrom<HeaderFields>(
    { version: 1, command: 'proxy', family: 'unspec', tlvs: {} },
    { version: 2, command: 'proxy', family: 'unspec', tlvs: {} },
    { version: 2, command: 'local', family: 'unspec', tlvs: {} },
  ),
);

/** Byte-level damage: flip, set, cut, insert. */
type Edit = { at: number; op: 'xor' | 'set' | 'cut' | 'insert'; v: number };
const edits = fc.array(fc.record({ at: fc.nat(), op: fc.constantFrom('xor' as const, 'set' as const, 'cut' as const, 'insert' as const), v: fc.integer({ min: 1, max: 255 }) }), { minLength: 1, maxLength: 3 });
function damage(input: Buffer, es: Edit[]): Buffer {
  let b = Buffer.from(input);
  for (const e of es) {
    if (b.length === 0) break;
    const i = e.at % b.length;
    if (e.op === 'xor') b[i] = b[i]! ^ e.v;
    else if (e.op === 'set') b[i] = e.v;
    else if (e.op === 'cut') b = b.subarray(0, i);
    else b = Buffer.concat([b.subarray(0, i), Buffer.from([e.v]), b.subarray(i)]);
  }
  return buf(b.toString('latin1'));
}

const maxes = fc.constantFrom(16, 64, 232, 536, 4096, 65551);
const prefixed = fc.oneof(
  bytes(200),
  bytes(150).map((x) => buf('PROXY ' + x.toString('latin1'))),
  fc.tuple(fc.constantFrom('TCP4 ', 'TCP6 ', 'UNKNOWN', 'UNKNOWN '), bytes(100)).map(([p, x]) => buf(`PROXY ${p}${x.toString('latin1')}`)),
  bytes(300).map((x) => buf(V2_SIGNATURE.toString('latin1') + x.toString('latin1'))),
  fc.tuple(fc.constantFrom(0x20, 0x21), fc.constantFrom(0x00, 0x11, 0x12, 0x21, 0x31), bytes(300)).map(([vc, fam, x]) =>
    buf(V2_SIGNATURE.toString('latin1') + String.fromCharCode(vc, fam, x.length >> 8, x.length & 0xff) + x.toString('latin1'))),
);

describe('fuzz: ProxyHeaderReader', () => {
  it('never throws on any bytes in any chunking, answers the same whatever the cuts, accepts only clean headers', () => {
    fc.assert(fc.property(prefixed, chunking, maxes, (input, c, max) => {
      consistent(input, c, max);
    }), { numRuns: runs(3000) });
  });

  it('generated headers read back as written, at any cut, followed by anything', () => {
    fc.assert(fc.property(header, fc.boolean(), bytes(20), chunking, (h, crc, after, c) => {
      const wire = encodeHeader(h, { crc32c: crc });
      const input = Buffer.concat([wire, after]);
      const o = consistent(input, c, 65551);
      assert.equal(o.kind, 'done');
      const got = o as Extract<Outcome, { kind: 'done' }>;
      assert.equal(got.header.length, wire.length);
      assert.deepEqual(strip(got.header), h);
      assert.deepEqual(got.rest, after);
    }), { numRuns: runs(2000) });
  });

  it('damaged headers are refused, still incomplete, or accepted clean and re-encodable', () => {
    fc.assert(fc.property(header, fc.boolean(), edits, chunking, maxes, (h, crc, es, c, max) => {
      consistent(damage(encodeHeader(h, { crc32c: crc }), es), c, max);
    }), { numRuns: runs(3000) });
  });

  it('with CRC32C, any damaged byte after the fixed 16 of a v2 PROXY header with addresses is refused', () => {
    const v2 = header.filter((h) => h.version === 2 && h.family !== 'unspec' && h.command === 'proxy');
    const addrLen = { tcp4: 12, tcp6: 36, unix: 216 } as const;
    fc.assert(fc.property(v2, fc.nat(), fc.integer({ min: 1, max: 255 }), (h, at, x) => {
      const wire = encodeHeader(h, { crc32c: true });
      // The CRC32C TLV comes first (as HAProxy writes it); its own type byte is the one it cannot cover: changed,
      // it is another TLV. Damage to the fixed 16 bytes can make a valid LOCAL, UNSPEC or shorter header.
      const crcType = 16 + addrLen[h.family as keyof typeof addrLen];
      const i = 16 + (at % (wire.length - 16));
      fc.pre(i !== crcType);
      const bad = Buffer.from(wire);
      bad[i] = bad[i]! ^ x;
      const o = read(bad, { cuts: [] });
      assert.equal(o.kind, 'error', `byte ${i} damaged, header still accepted`);
    }), { numRuns: runs(2000) });
  });
});
