/**
 * ProxyHeaderReader (src/proxy/reader.ts): every valid and invalid case of HAProxy's doc/proxy-protocol.txt
 * (§2.1 v1, §2.2 v2 and its TLVs) and of beyond-nginx.md §3. Every input is fed whole, split at every offset,
 * byte by byte and in fixed steps, with the same outcome; the byte at which a bad input fails is checked too
 * (as soon as it can be known, never later).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { crc32c } from '../../src/proxy/crc32c.js';
import type { ProxyHeader } from '../../src/proxy/header.js';
import { ProxyHeaderReader, type ProxyHeaderReaderOptions } from '../../src/proxy/reader.js';
import { describeCut, splits } from '../helpers/split.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const SIG = '0d0a0d0a000d0a515549540a';

type Outcome = { kind: 'more' } | { kind: 'error'; reason: string } | { kind: 'done'; header: ProxyHeader; rest: string };

/** Pushes the chunks until the reader decides; `rest` is what it handed back plus the reads never pushed. */
function read(chunks: Buffer[], opts?: ProxyHeaderReaderOptions): Outcome {
  const r = new ProxyHeaderReader(opts);
  for (let i = 0; i < chunks.length; i++) {
    const res = r.push(chunks[i]!);
    if (res.kind === 'error') return res;
    if (res.kind === 'done') return { kind: 'done', header: res.header, rest: Buffer.concat([res.rest, ...chunks.slice(i + 1)]).toString('latin1') };
  }
  return { kind: 'more' };
}

/** The same outcome however the input is cut. */
function check(input: Buffer, expected: Outcome, opts?: ProxyHeaderReaderOptions): void {
  for (const chunks of splits(input)) assert.deepEqual(read(chunks, opts), expected, describeCut(chunks));
}

function ok(input: Buffer, header: Omit<ProxyHeader, 'length'>, rest = '', opts?: ProxyHeaderReaderOptions): void {
  check(input, { kind: 'done', header: { ...header, length: input.length - rest.length }, rest }, opts);
}

/** Fails with `reason`, decided exactly when byte `at` (1-based count) arrives, whatever follows. */
function bad(input: Buffer, reason: string, at: number, opts?: ProxyHeaderReaderOptions): void {
  check(input, { kind: 'error', reason }, opts);
  const r = new ProxyHeaderReader(opts);
  for (let i = 0; i < input.length; i++) {
    const res = r.push(input.subarray(i, i + 1));
    if (res.kind !== 'more') {
      assert.equal(i + 1, at, `decided at byte ${i + 1}, expected ${at}`);
      return;
    }
  }
  assert.fail('never decided');
}

/** Fails with `reason` once the whole header is in (the checks that need the addresses and TLVs). */
function badWhole(input: Buffer, reason: string, opts?: ProxyHeaderReaderOptions): void {
  bad(input, reason, input.length, opts);
}

const tcp4 = (s: string, sp: number, d: string, dp: number): Omit<ProxyHeader, 'length'> =>
  ({ version: 1, command: 'proxy', family: 'tcp4', source: { address: s, port: sp }, destination: { address: d, port: dp }, tlvs: {} });
const tcp6 = (s: string, sp: number, d: string, dp: number): Omit<ProxyHeader, 'length'> => ({ ...tcp4(s, sp, d, dp), family: 'tcp6' });

function u16(n: number): string {
  return n.toString(16).padStart(4, '0');
}
function tlv(type: number, value: Buffer | string): string {
  const v = typeof value === 'string' ? b(value) : value;
  return type.toString(16).padStart(2, '0') + u16(v.length) + v.toString('hex');
}
/** A v2 header: signature, ver_cmd, fam, len (computed unless given), body. */
function v2(verCmd: number, fam: number, body: string, len?: number): Buffer {
  const bd = hex(body);
  return Buffer.concat([hex(SIG), Buffer.from([verCmd, fam]), hex(u16(len ?? bd.length)), bd]);
}
const ADDR4 = 'cb007109 c0000219 9c40 0019'; // 203.0.113.9:40000 → 192.0.2.25:25
const P4 = { version: 2, command: 'proxy', family: 'tcp4', source: { address: '203.0.113.9', port: 40000 }, destination: { address: '192.0.2.25', port: 25 } } as const;
/** A TCP4 PROXY header with these TLVs and a valid CRC32C TLV in front. */
function withCrc(tlvs: string): Buffer {
  const h = v2(0x21, 0x11, ADDR4 + tlv(3, Buffer.alloc(4)) + tlvs);
  h.writeUInt32BE(crc32c(h), 16 + 12 + 3);
  return h;
}

describe('PROXY v1 (spec §2.1)', () => {
  it('TCP4: the worked example, the bytes after the CRLF left alone', () => {
    ok(b('PROXY TCP4 203.0.113.9 192.0.2.25 40000 25\r\nEHLO x\r\n'), tcp4('203.0.113.9', 40000, '192.0.2.25', 25), 'EHLO x\r\n');
  });

  it('TCP4: the longest line (56 bytes), zeros, port 0 and 65535', () => {
    ok(b('PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n'), tcp4('255.255.255.255', 65535, '255.255.255.255', 65535));
    ok(b('PROXY TCP4 0.0.0.0 10.0.0.1 0 1\r\n'), tcp4('0.0.0.0', 0, '10.0.0.1', 1));
  });

  it('TCP6: any valid form, reported as Node writes it (lower case, compressed); IPv4-mapped stays IPv6', () => {
    ok(b('PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::1 1 2\r\n'), tcp6('2001:db8::1', 1, '::1', 2));
    ok(b('PROXY TCP6 ::ffff:192.0.2.1 ::FFFF:C000:0202 3 4\r\n'), tcp6('::ffff:192.0.2.1', 3, '::ffff:192.0.2.2', 4));
    ok(b('PROXY TCP6 :: 0001:0002:0003:0004:0005:0006:0007:0008 5 6\r\n'), tcp6('::', 5, '1:2:3:4:5:6:7:8', 6));
    const f = 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff';
    const longest = b(`PROXY TCP6 ${f} ${f} 65535 65535\r\n`);
    assert.equal(longest.length, 104);
    ok(longest, tcp6(f, 65535, f, 65535));
  });

  it('UNKNOWN: short form, and anything before the CRLF ignored, up to 107 bytes in all', () => {
    const unknown = { version: 1, command: 'proxy', family: 'unspec', tlvs: {} } as const;
    ok(b('PROXY UNKNOWN\r\nEHLO'), unknown, 'EHLO');
    ok(b('PROXY UNKNOWN ffff:: ::1 65535 1 \x00\xff junk\r\n'), unknown);
    const worst = b(`PROXY UNKNOWN ${'f'.repeat(39)} ${'f'.repeat(39)} 65535 65535\r\n`);
    assert.equal(worst.length, 107);
    ok(worst, unknown);
    bad(b(`PROXY UNKNOWN ${'f'.repeat(40)} ${'f'.repeat(39)} 65535 65535\r\n`), 'v1: no CRLF within 107 bytes', 107);
  });

  it('fails at the first byte that is neither PROXY nor the v2 signature', () => {
    bad(b('EHLO x\r\n'), 'not a PROXY protocol header', 1);
    bad(b('\x16\x03\x01\x02\x00'), 'not a PROXY protocol header', 1); // a TLS ClientHello
    bad(b('PROXZ TCP4'), 'not a PROXY protocol header', 5);
    bad(b('PROXY\tTCP4'), 'not a PROXY protocol header', 6);
    bad(b('proxy TCP4 1.2.3.4 1.2.3.4 1 1\r\n'), 'not a PROXY protocol header', 1);
  });

  it('refuses an unknown or mis-spelled protocol at its first wrong byte', () => {
    bad(b('PROXY TCP5 1.2.3.4 1.2.3.4 1 1\r\n'), 'v1: unknown protocol', 10);
    bad(b('PROXY tcp4 1.2.3.4 1.2.3.4 1 1\r\n'), 'v1: unknown protocol', 7);
    bad(b('PROXY UDP4 1.2.3.4 1.2.3.4 1 1\r\n'), 'v1: unknown protocol', 8); // U could begin UNKNOWN
    bad(b('PROXY TCP 1.2.3.4 1.2.3.4 1 1\r\n'), 'v1: unknown protocol', 10);
    bad(b('PROXY UNKNOWNX\r\n'), 'v1: unknown protocol', 14);
    bad(b('PROXY \r\n'), 'v1: unknown protocol', 8);
    bad(b('PROXY  TCP4 1.2.3.4 1.2.3.4 1 1\r\n'), 'v1: unknown protocol', 7);
    bad(b('PROXY TCP4\r\n'), 'v1: missing fields', 12);
  });

  it('exactly one space between fields, and exactly four fields', () => {
    bad(b('PROXY TCP4  1.2.3.4 1.2.3.4 1 1\r\n'), 'v1: bad source address', 12);
    bad(b('PROXY TCP4 1.2.3.4  1.2.3.4 1 1\r\n'), 'v1: bad destination address', 20);
    bad(b('PROXY TCP4 1.2.3.4 1.2.3.4 1 1 \r\n'), 'v1: too many fields', 31);
    bad(b('PROXY TCP4 1.2.3.4 1.2.3.4 1 1 2\r\n'), 'v1: too many fields', 31);
    bad(b('PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n'), 'v1: missing fields', 30);
    bad(b('PROXY TCP4 1.2.3.4\r\n'), 'v1: missing fields', 20);
  });

  it('CRLF is mandatory: a lone LF or CR fails as soon as it is seen', () => {
    bad(b('PROXY TCP4 1.2.3.4 1.2.3.4 1 1\nEHLO'), 'v1: line ends with a lone LF', 31);
    bad(b('PROXY TCP4 1.2.3.4 1.2.3.4 1 1\rEHLO'), 'v1: lone CR', 32);
    bad(b('PROXY UNKNOWN\n'), 'v1: line ends with a lone LF', 14);
    bad(b('PROXY UNKNOWN x\ry\r\n'), 'v1: lone CR', 17);
    bad(b('PROXY TCP4 1.2.3.4\r1.2.3.4 1 1\r\n'), 'v1: lone CR', 20);
  });

  it('no CRLF within 107 bytes fails at byte 107, a 108-byte TCP6 line too', () => {
    bad(b('PROXY UNKNOWN' + ' '.repeat(200)), 'v1: no CRLF within 107 bytes', 107);
    bad(b(`PROXY UNKNOWN ${'x'.repeat(92)}\r\n`), 'v1: no CRLF within 107 bytes', 107); // CR at byte 107
  });

  it('IPv4: four numbers 0–255, no leading zeros, no other characters', () => {
    // `at`: index in the address of the byte that decides (the address starts at byte 12; its length = the space after it).
    const src = (a: string, at: number): void => bad(b(`PROXY TCP4 ${a} 1.2.3.4 1 1\r\n`), 'v1: bad source address', 12 + at);
    src('01.2.3.4', 1);
    src('1.2.3.256', 8);
    src('1.2.3.4444', 8);
    src('1.2.3', 5);
    src('1.2.3.', 6);
    src('1.2.3.4.5', 7);
    src('1..3.4', 2);
    src('.1.2.3', 0);
    src('0x1.2.3.4', 1);
    src('::1', 0);
    src('1.2.3.4/8', 7);
    src('1.2.3.4%', 7);
    bad(b('PROXY TCP4 1.2.3.4 1.2.3.04 1 1\r\n'), 'v1: bad destination address', 27);
    bad(b('PROXY TCP4 1.2.3.4 1.2.3.4\xff 1 1\r\n'), 'v1: bad destination address', 27);
  });

  it('IPv6: 128 bits in hex groups, one ::, the family the line names', () => {
    const src = (a: string): void => check(b(`PROXY TCP6 ${a} ::1 1 1\r\n`), { kind: 'error', reason: 'v1: bad source address' });
    for (const a of ['1.2.3.4', '1::2::3', ':1::', '1:2:3:4:5:6:7:8:9', '1:2:3:4:5:6:7', '12345::', 'g::', '::1%lo', '[::1]', '1:2:3:4:5:6:7:8::', '::1.2.3.04', '1.2.3.4::']) src(a);
    bad(b('PROXY TCP6 ::1 ::1%lo 1 1\r\n'), 'v1: bad destination address', 19);
  });

  it('ports: decimal 0–65535 without leading zeros, failing at the first wrong digit', () => {
    bad(b('PROXY TCP4 1.2.3.4 1.2.3.4 01 1\r\n'), 'v1: bad source port', 29);
    bad(b('PROXY TCP4 1.2.3.4 1.2.3.4 00 1\r\n'), 'v1: bad source port', 29);
    bad(b('PROXY TCP4 1.2.3.4 1.2.3.4 65536 1\r\n'), 'v1: bad source port', 32);
    bad(b('PROXY TCP4 1.2.3.4 1.2.3.4 123456 1\r\n'), 'v1: bad source port', 33);
    bad(b('PROXY TCP4 1.2.3.4 1.2.3.4 -1 1\r\n'), 'v1: bad source port', 28);
    bad(b('PROXY TCP4 1.2.3.4 1.2.3.4 +1 1\r\n'), 'v1: bad source port', 28);
    bad(b('PROXY TCP4 1.2.3.4 1.2.3.4 1 \r\n'), 'v1: bad destination port', 31);
    bad(b('PROXY TCP4 1.2.3.4 1.2.3.4 1 99999\r\n'), 'v1: bad destination port', 34);
  });

  it('a strict prefix of a valid line is never complete', () => {
    const line = b('PROXY TCP4 203.0.113.9 192.0.2.25 40000 25\r\n');
    for (let i = 0; i < line.length; i++) assert.deepEqual(read([line.subarray(0, i)]), { kind: 'more' }, `prefix of ${i}`);
  });
});

describe('PROXY v2 (spec §2.2)', () => {
  it('the worked example of beyond-nginx.md §3.2: TCP4 and an SSL TLV with VERSION', () => {
    const ex = hex(`${SIG} 21 11 001e ${ADDR4} 20000f 01 00000000 210007 544c5376312e33`);
    assert.equal(ex.length, 46);
    ok(Buffer.concat([ex, b('EHLO x\r\n')]), { ...P4, tlvs: { ssl: { client: 1, verified: false, version: 'TLSv1.3' } } }, 'EHLO x\r\n');
  });

  it('TCP6, an IPv4-mapped source kept as given', () => {
    ok(v2(0x21, 0x21, '00000000000000000000ffffc0000201 20010db8000000000000000000000001 0401 0019'),
      { version: 2, command: 'proxy', family: 'tcp6', source: { address: '::ffff:192.0.2.1', port: 1025 }, destination: { address: '2001:db8::1', port: 25 }, tlvs: {} });
  });

  it('UNIX stream: paths up to the first NUL, an abstract socket as @name, an unnamed one as empty', () => {
    const path = (s: string): string => Buffer.concat([b(s), Buffer.alloc(108 - s.length)]).toString('hex');
    const unix = (src: string, dst: string): Omit<ProxyHeader, 'length'> =>
      ({ version: 2, command: 'proxy', family: 'unix', source: { address: src, port: 0 }, destination: { address: dst, port: 0 }, tlvs: {} });
    ok(v2(0x21, 0x31, path('/run/client.sock') + path('/run/postern.sock')), unix('/run/client.sock', '/run/postern.sock'));
    ok(v2(0x21, 0x31, path('\0abstract\0junk') + path('')), unix('@abstract', ''));
    ok(v2(0x21, 0x31, b('x'.repeat(108)).toString('hex') + path('/s') + tlv(0x02, 'mx.test')), { ...unix('x'.repeat(108), '/s'), tlvs: { authority: 'mx.test' } });
    badWhole(v2(0x21, 0x31, path('/run/a\nb') + path('/s')), 'v2: bad UNIX address');
    badWhole(v2(0x21, 0x31, path('/run/\xff') + path('/s')), 'v2: bad UNIX address');
  });

  it('LOCAL: the real endpoints are used; len bytes are skipped, whatever the family and body', () => {
    const local = { version: 2, command: 'local', family: 'unspec', tlvs: {} } as const;
    ok(Buffer.concat([v2(0x20, 0x00, ''), b('EHLO')]), local, 'EHLO');
    ok(Buffer.concat([v2(0x20, 0x11, ADDR4 + tlv(0x02, 'x\r\n')), b('EHLO')]), local, 'EHLO');
    ok(v2(0x20, 0xff, 'ff'), local);
  });

  it('PROXY with UNSPEC or a UDP family falls back to UNSPEC: no addresses, the block skipped', () => {
    const unspec = { version: 2, command: 'proxy', family: 'unspec', tlvs: {} } as const;
    ok(v2(0x21, 0x00, ''), unspec);
    ok(v2(0x21, 0x00, 'deadbeef'), unspec);
    for (const fam of [0x12, 0x22, 0x32]) ok(v2(0x21, fam, ADDR4), unspec);
  });

  it('fails at the first byte off the signature', () => {
    const sig = hex(SIG);
    for (let i = 1; i < 12; i++) {
      const x = Buffer.concat([sig, hex('2111000c'), hex(ADDR4)]);
      x[i] = x[i]! ^ 0x40;
      bad(x, 'not a PROXY protocol header', i + 1);
    }
  });

  it('version nibble 2 only, command LOCAL or PROXY only, an expected family byte only', () => {
    for (const vc of [0x11, 0x31, 0x01, 0xf1]) bad(v2(vc, 0x11, ADDR4), 'v2: unsupported version', 13);
    for (const vc of [0x22, 0x2f]) bad(v2(vc, 0x11, ADDR4), 'v2: unknown command', 13);
    for (const fam of [0x41, 0x13, 0x10, 0x01, 0x30, 0xff]) bad(v2(0x21, fam, ADDR4), 'v2: bad address family', 14);
  });

  it('a length too short for the addresses fails as soon as the length is read', () => {
    bad(v2(0x21, 0x11, ADDR4.slice(0, -2)), 'v2: too short for its addresses', 16);
    bad(v2(0x21, 0x21, '00'.repeat(35)), 'v2: too short for its addresses', 16);
    bad(v2(0x21, 0x31, '00'.repeat(215)), 'v2: too short for its addresses', 16);
  });

  it('a header over the limit (default 4096 in all, nginx) fails at its length, without waiting', () => {
    const body = (n: number): string => ADDR4 + tlv(0x04, Buffer.alloc(n - 16 - 12 - 3));
    ok(v2(0x21, 0x11, body(4096)), { ...P4, tlvs: {} });
    bad(v2(0x21, 0x11, body(4097)), 'v2: header too large', 16);
    ok(v2(0x21, 0x11, body(536)), { ...P4, tlvs: {} }, '', { maxV2Bytes: 536 });
    bad(v2(0x21, 0x11, body(537)), 'v2: header too large', 16, { maxV2Bytes: 536 });
    bad(hex(`${SIG} 2111 ffff`), 'v2: header too large', 16);
    ok(v2(0x21, 0x11, body(65551)), { ...P4, tlvs: {} }, '', { maxV2Bytes: 65551 });
    for (const m of [15, 65552, 1.5, Number.NaN]) assert.throws(() => new ProxyHeaderReader({ maxV2Bytes: m }), RangeError);
  });

  it('a truncated header is never complete, and the reader never reads past one', () => {
    const h = withCrc(tlv(0x02, 'mx.example'));
    for (let i = 0; i < h.length; i++) assert.deepEqual(read([h.subarray(0, i)]), { kind: 'more' }, `prefix of ${i}`);
    const r = new ProxyHeaderReader();
    assert.equal(r.push(h.subarray(0, 20)).kind, 'more');
    const res = r.push(Buffer.concat([h.subarray(20), b('\r\n\r\n')]));
    assert.equal(res.kind === 'done' && res.rest.toString('latin1'), '\r\n\r\n');
  });
});

describe('PROXY v2 TLVs (spec §2.2.1–2.2.8)', () => {
  it('ALPN, AUTHORITY (UTF-8), UNIQUE_ID, NETNS; NOOP skipped; unknown types kept as they came', () => {
    ok(v2(0x21, 0x11, ADDR4 + tlv(0x01, 'smtp') + tlv(0x04, '\0\r\n\xff') + tlv(0x02, 'bücher.example'.replace('ü', '\xc3\xbc')) +
      tlv(0x05, 'a'.repeat(128)) + tlv(0x30, 'blue') + tlv(0xea, '\x01vpce-1') + tlv(0x04, '') + tlv(0xea, '\x00')), {
      ...P4,
      tlvs: { alpn: 'smtp', authority: 'bücher.example', uniqueId: 'a'.repeat(128), netns: 'blue',
        other: [{ type: 0xea, value: b('\x01vpce-1') }, { type: 0xea, value: b('\x00') }] },
    });
  });

  it('SSL: client flags, verified only with a certificate flag and verify 0, every sub-TLV; unknown sub-types skipped', () => {
    const ssl = (client: number, verify: number, subs: string): string => tlv(0x20, Buffer.concat([Buffer.from([client]), hex(verify.toString(16).padStart(8, '0')), hex(subs)]));
    const subs = tlv(0x21, 'TLSv1.3') + tlv(0x22, 'J\xc3\xb6rg Example') + tlv(0x23, 'TLS_AES_128_GCM_SHA256') + tlv(0x24, 'ecdsa-with-SHA256') +
      tlv(0x25, 'EC256') + tlv(0x28, '\x30\x82\x00\x00');
    ok(v2(0x21, 0x11, ADDR4 + ssl(0x07, 0, subs)), { ...P4, tlvs: { ssl: { client: 7, verified: true, version: 'TLSv1.3', cn: 'Jörg Example',
      cipher: 'TLS_AES_128_GCM_SHA256', sigAlg: 'ecdsa-with-SHA256', keyAlg: 'EC256' } } });
    ok(v2(0x21, 0x11, ADDR4 + ssl(0x01, 0, '')), { ...P4, tlvs: { ssl: { client: 1, verified: false } } });
    ok(v2(0x21, 0x11, ADDR4 + ssl(0x05, 1, '')), { ...P4, tlvs: { ssl: { client: 5, verified: false } } });
    ok(v2(0x21, 0x11, ADDR4 + ssl(0x03, 20, '')), { ...P4, tlvs: { ssl: { client: 3, verified: false } } });
    badWhole(v2(0x21, 0x11, ADDR4 + tlv(0x20, hex('01000000'))), 'v2: bad SSL TLV');
    badWhole(v2(0x21, 0x11, ADDR4 + ssl(1, 0, '210009544c53')), 'v2: bad SSL TLV');
    badWhole(v2(0x21, 0x11, ADDR4 + ssl(1, 0, tlv(0x22, 'a') + tlv(0x22, 'b'))), 'v2: duplicate TLV');
  });

  it('CRC32C: verified when present (RFC 4960 App. B); a wrong one or a wrong size fails', () => {
    const good = withCrc(tlv(0x02, 'mx.example'));
    ok(good, { ...P4, tlvs: { authority: 'mx.example' } });
    const flipped = Buffer.from(good);
    flipped[16] = flipped[16]! ^ 1; // the source address
    badWhole(flipped, 'v2: CRC32C mismatch');
    const wrong = Buffer.from(good);
    wrong[31] = wrong[31]! ^ 0x80; // the checksum itself
    badWhole(wrong, 'v2: CRC32C mismatch');
    badWhole(v2(0x21, 0x11, ADDR4 + tlv(0x03, '\0\0\0')), 'v2: bad CRC32C TLV');
    badWhole(v2(0x21, 0x11, ADDR4 + tlv(0x03, '\0\0\0\0\0')), 'v2: bad CRC32C TLV');
    const twice = withCrc(tlv(0x03, Buffer.alloc(4)));
    badWhole(twice, 'v2: duplicate TLV');
  });

  it('TLVs must tile the block exactly', () => {
    badWhole(v2(0x21, 0x11, ADDR4 + '02000a' + '6d78'), 'v2: malformed TLVs');
    badWhole(v2(0x21, 0x11, ADDR4 + tlv(0x01, 'h2') + '00'), 'v2: malformed TLVs');
    badWhole(v2(0x21, 0x11, ADDR4 + tlv(0x01, 'h2') + '0000'), 'v2: malformed TLVs');
  });

  it('each decoded TLV at most once; AUTHORITY ≤ 255 and UNIQUE_ID ≤ 128 bytes', () => {
    badWhole(v2(0x21, 0x11, ADDR4 + tlv(0x02, 'a.test') + tlv(0x02, 'b.test')), 'v2: duplicate TLV');
    badWhole(v2(0x21, 0x11, ADDR4 + tlv(0x01, 'h2') + tlv(0x01, 'h2')), 'v2: duplicate TLV');
    ok(v2(0x21, 0x11, ADDR4 + tlv(0x02, 'a'.repeat(255))), { ...P4, tlvs: { authority: 'a'.repeat(255) } });
    badWhole(v2(0x21, 0x11, ADDR4 + tlv(0x02, 'a'.repeat(256))), 'v2: AUTHORITY TLV too long');
    badWhole(v2(0x21, 0x11, ADDR4 + tlv(0x05, 'a'.repeat(129))), 'v2: UNIQUE_ID TLV too long');
  });

  it('text values never carry CR, LF, NUL or other control bytes: the header is refused, not cleaned', () => {
    const cases: [number, string, string][] = [
      [0x02, 'mx.test\r\nX-Auth: 1', 'v2: bad AUTHORITY TLV'],
      [0x02, 'mx\0.test', 'v2: bad AUTHORITY TLV'],
      [0x02, 'mx\x7f.test', 'v2: bad AUTHORITY TLV'],
      [0x02, 'mx\xff.test', 'v2: bad AUTHORITY TLV'], // not UTF-8
      [0x02, 'mx\xc2\x85.test', 'v2: bad AUTHORITY TLV'], // U+0085 NEL
      [0x02, 'mx\xe2\x80\xa8.test', 'v2: bad AUTHORITY TLV'], // U+2028
      [0x01, 'h2\0', 'v2: bad ALPN TLV'],
      [0x05, 'id\n', 'v2: bad UNIQUE_ID TLV'],
      [0x05, 'id\xc3\xa9', 'v2: bad UNIQUE_ID TLV'],
      [0x30, 'blue\t', 'v2: bad NETNS TLV'],
    ];
    for (const [type, value, reason] of cases) {
      const h = v2(0x21, 0x11, ADDR4 + tlv(type, value));
      badWhole(h, reason);
    }
    const ssl = (sub: string): Buffer => v2(0x21, 0x11, ADDR4 + tlv(0x20, Buffer.concat([hex('0700000000'), hex(sub)])));
    for (const [sub, reason] of [[tlv(0x22, 'cn\r\n'), 'v2: bad SSL CN TLV'], [tlv(0x21, 'TLSv1.3\0'), 'v2: bad SSL VERSION TLV'],
      [tlv(0x23, 'AES\xc3\xa9'), 'v2: bad SSL CIPHER TLV'], [tlv(0x24, '\x1b[31m'), 'v2: bad SSL SIG_ALG TLV'], [tlv(0x25, 'RSA\n'), 'v2: bad SSL KEY_ALG TLV']]) {
      const h = ssl(sub!);
      badWhole(h, reason!);
    }
    ok(v2(0x21, 0x11, ADDR4 + tlv(0x05, 'haproxy 1 2 ~!')), { ...P4, tlvs: { uniqueId: 'haproxy 1 2 ~!' } }); // spaces are fine
  });
});

describe('ProxyHeaderReader life cycle', () => {
  it('an error sticks; pushing after done is a bug; buffered shows what a rejected header held', () => {
    const r = new ProxyHeaderReader();
    assert.deepEqual(r.push(b('PROXY TCP4 1.2.3.4 ')), { kind: 'more' });
    assert.deepEqual(r.push(b('x')), { kind: 'error', reason: 'v1: bad destination address' });
    assert.deepEqual(r.push(b('1.2.3.4 1 1\r\n')), { kind: 'error', reason: 'v1: bad destination address' });
    assert.equal(r.buffered.toString('latin1'), 'PROXY TCP4 1.2.3.4 x');
    const d = new ProxyHeaderReader();
    assert.deepEqual(d.push(Buffer.alloc(0)), { kind: 'more' });
    assert.equal(d.push(b('PROXY UNKNOWN\r\n')).kind, 'done');
    assert.equal(d.buffered.length, 0);
    assert.throws(() => d.push(b('x')), /already complete/);
  });
});
