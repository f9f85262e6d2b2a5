/**
 * The PROXY protocol writer (src/proxy/writer.ts) and what it stands on: the worked examples of
 * beyond-nginx.md §3.2, the family nginx and HAProxy pick for a pair of socket addresses, CRC32C against
 * RFC 3720's vectors, text refused as the reader refuses it, and writer → reader round trips for random
 * addresses (each header also read split at every offset). IPv6 text is checked against Node's own
 * formatting (net.SocketAddress, libuv's inet_ntop/inet_pton).
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { formatIPv6, parseIPv6 } from '../../src/proxy/address.js';
import { crc32c } from '../../src/proxy/crc32c.js';
import type { ProxyHeader } from '../../src/proxy/header.js';
import { ProxyHeaderReader } from '../../src/proxy/reader.js';
import { encodeHeader, proxyV1, proxyV2 } from '../../src/proxy/writer.js';
import { describeCut, splits } from '../helpers/split.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

function readOne(buf: Buffer): ProxyHeader {
  const r = new ProxyHeaderReader({ maxV2Bytes: 65551 }).push(buf);
  assert.equal(r.kind, 'done', JSON.stringify(r));
  assert.equal(r.kind === 'done' && r.rest.length, 0);
  return (r as { header: ProxyHeader }).header;
}

/** Read whole and at every cut: the same header. */
function readAllCuts(buf: Buffer): ProxyHeader {
  const whole = readOne(buf);
  for (const chunks of splits(buf)) {
    const r = new ProxyHeaderReader({ maxV2Bytes: 65551 });
    let got: ProxyHeader | undefined;
    for (const c of chunks) {
      const res = r.push(c);
      if (res.kind === 'done') got = res.header;
      if (res.kind !== 'more') break;
    }
    assert.deepEqual(got, whole, describeCut(chunks));
  }
  return whole;
}

const nodeV6 = (a: string): string | null => {
  try {
    return new net.SocketAddress({ address: a, family: 'ipv6' }).address;
  } catch {
    return null;
  }
};

describe('IPv6 text as Node has it', () => {
  const words = fc.array(fc.oneof({ weight: 3, arbitrary: fc.constant(0) }, fc.constant(0xffff), fc.integer({ min: 0, max: 0xffff })), { minLength: 8, maxLength: 8 });
  const bytesOf = (w: number[]): Buffer => Buffer.from(w.flatMap((x) => [x >> 8, x & 0xff]));

  it('formatIPv6 writes any 16 bytes exactly as libuv does (zero runs, ::ffff:a.b.c.d, ::a.b.c.d)', () => {
    fc.assert(fc.property(words, (w) => {
      const s = formatIPv6(bytesOf(w));
      assert.equal(s, nodeV6(s));
      assert.ok(net.isIPv6(s));
      assert.deepEqual(parseIPv6(s), new Uint8Array(bytesOf(w)));
      const hexOnly = formatIPv6(bytesOf(w), 0, false);
      assert.ok(!hexOnly.includes('.') && net.isIPv6(hexOnly));
      assert.deepEqual(parseIPv6(hexOnly), new Uint8Array(bytesOf(w)));
    }), { numRuns: 2000 });
  });

  it('parseIPv6 accepts exactly what inet_pton accepts, over hex digits, colons and dots', () => {
    const str = fc.string({ unit: fc.constantFrom('0', '1', 'a', 'F', 'ffff', ':', '::', '.', '255', '01', '1.2.3.4'), maxLength: 12 });
    fc.assert(fc.property(str, (s) => {
      const mine = parseIPv6(s);
      const node = nodeV6(s);
      assert.equal(mine !== null, node !== null, `${JSON.stringify(s)}: mine ${mine !== null}, inet_pton ${node !== null}`);
      if (mine) assert.equal(formatIPv6(mine), node);
    }), { numRuns: 5000 });
  });
});

describe('CRC32C (RFC 4960 App. B)', () => {
  it('matches RFC 3720 §B.4 and the usual check value', () => {
    assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283);
    assert.equal(crc32c(Buffer.alloc(32)), 0x8a9136aa);
    assert.equal(crc32c(Buffer.alloc(32, 0xff)), 0x62a8ab43);
    assert.equal(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => i))), 0x46dd794e);
    assert.equal(crc32c(Buffer.alloc(0)), 0);
    assert.equal(crc32c(Buffer.from('12345678abcd9'), 8), crc32c(Buffer.from('12345678\0\0\0\x009')));
  });
});

describe('proxyV1', () => {
  it('writes the worked example', () => {
    assert.equal(proxyV1({ address: '203.0.113.9', port: 40000 }, { address: '192.0.2.25', port: 25 }).toString('latin1'),
      'PROXY TCP4 203.0.113.9 192.0.2.25 40000 25\r\n');
  });

  it('picks the family as nginx and HAProxy do; IPv6 in hex groups only (spec §2.1)', () => {
    const line = (s: string, d: string): string => proxyV1({ address: s, port: 1 }, { address: d, port: 2 }).toString('latin1');
    assert.equal(line('::ffff:192.0.2.1', '::ffff:192.0.2.25'), 'PROXY TCP4 192.0.2.1 192.0.2.25 1 2\r\n');
    assert.equal(line('192.0.2.1', '2001:db8::25'), 'PROXY TCP6 ::ffff:c000:201 2001:db8::25 1 2\r\n');
    assert.equal(line('::FFFF:192.0.2.1', '2001:DB8:0:0::25'), 'PROXY TCP6 ::ffff:c000:201 2001:db8::25 1 2\r\n');
    assert.equal(line('fe80::1%eth0', '::1'), 'PROXY TCP6 fe80::1 ::1 1 2\r\n');
    assert.equal(line('::', '::1.2.3.4'), 'PROXY TCP6 :: ::102:304 1 2\r\n');
  });

  it('UNKNOWN when Node has no address or port (a UNIX socket client)', () => {
    assert.equal(proxyV1(undefined, { address: '::1', port: 25 }).toString('latin1'), 'PROXY UNKNOWN\r\n');
    assert.equal(proxyV1({ address: undefined, port: undefined }, { address: '::1', port: 25 }).toString('latin1'), 'PROXY UNKNOWN\r\n');
  });

  it('throws on what is not an address or a port', () => {
    for (const a of ['mx.example', '1.2.3.04', '', '1.2.3.4\r\n']) assert.throws(() => proxyV1({ address: a, port: 1 }, { address: '1.2.3.4', port: 1 }), RangeError);
    for (const p of [-1, 65536, 1.5, Number.NaN]) assert.throws(() => proxyV1({ address: '1.2.3.4', port: p }, { address: '1.2.3.4', port: 1 }), RangeError);
  });
});

describe('proxyV2', () => {
  const src = { address: '203.0.113.9', port: 40000 };
  const dst = { address: '192.0.2.25', port: 25 };
  it('writes the worked example, with verify 1 for an unverified client (beyond-nginx.md §3.2, the conservative choice)', () => {
    const h = proxyV2(src, dst, { tlvs: { ssl: { client: 1, verified: false, version: 'TLSv1.3' } } });
    assert.deepEqual(h, hex('0d0a0d0a000d0a515549540a 21 11 001e cb007109 c0000219 9c40 0019 20000f 01 00000001 210007 544c5376312e33'));
    assert.deepEqual(proxyV2(src, dst, { tlvs: { ssl: { client: 5, verified: true } } }).subarray(28), hex('200005 05 00000000'));
  });

  it('LOCAL/UNSPEC when asked or without addresses (nginx, HAProxy); TCP6 for a mixed pair; TCP4 for two mapped', () => {
    const local = hex('0d0a0d0a000d0a515549540a 20 00 0000');
    assert.deepEqual(proxyV2(src, dst, { local: true }), local);
    assert.deepEqual(proxyV2(undefined, dst), local);
    assert.equal(proxyV2({ address: '::ffff:1.2.3.4', port: 1 }, { address: '::ffff:5.6.7.8', port: 2 })[13], 0x11);
    const mixed = readOne(proxyV2({ address: '1.2.3.4', port: 1 }, { address: '2001:db8::1', port: 2 }));
    assert.deepEqual(mixed.source, { address: '::ffff:1.2.3.4', port: 1 });
  });

  it('every TLV, CRC32C included, reads back the same at every cut', () => {
    const tlvs = {
      alpn: 'smtp', authority: 'mx.bücher.example', uniqueId: 'u-1 2', netns: 'blue',
      ssl: { client: 7, verified: true, version: 'TLSv1.3', cn: 'Jörg', cipher: 'TLS_AES_256_GCM_SHA384', sigAlg: 'RSA-SHA256', keyAlg: 'RSA2048' },
      other: [{ type: 0xea, value: Buffer.from('\x01vpce-0123', 'latin1') }],
    };
    const h = proxyV2({ address: '2001:db8::1', port: 1 }, { address: '2001:db8::2', port: 25 }, { tlvs, crc32c: true });
    assert.deepEqual(readAllCuts(h), { version: 2, command: 'proxy', family: 'tcp6', source: { address: '2001:db8::1', port: 1 },
      destination: { address: '2001:db8::2', port: 25 }, tlvs, length: h.length });
  });

  it('never writes what the reader refuses', () => {
    const bad: [string, object][] = [
      ['authority CRLF', { authority: 'mx\r\n' }], ['authority 256', { authority: 'a'.repeat(256) }], ['authority surrogate', { authority: '\ud800' }],
      ['uniqueId 129', { uniqueId: 'a'.repeat(129) }], ['uniqueId non-ASCII', { uniqueId: 'é' }], ['alpn NUL', { alpn: 'h2\0' }],
      ['cn LF', { ssl: { client: 7, verified: true, cn: 'a\nb' } }], ['verified without a certificate', { ssl: { client: 1, verified: true } }],
      ['raw AUTHORITY', { other: [{ type: 2, value: Buffer.from('x') }] }], ['raw NOOP', { other: [{ type: 4, value: Buffer.alloc(0) }] }],
      ['huge', { other: [{ type: 0xe0, value: Buffer.alloc(65536) }] }],
    ];
    for (const [name, tlvs] of bad) assert.throws(() => proxyV2(src, dst, { tlvs }), RangeError, name);
    assert.throws(() => encodeHeader({ version: 1, command: 'local', family: 'unspec', tlvs: {} }), RangeError);
    assert.throws(() => encodeHeader({ version: 2, command: 'proxy', family: 'tcp4', source: { address: '::1', port: 1 }, destination: dst, tlvs: {} }), RangeError);
    assert.throws(() => encodeHeader({ version: 2, command: 'proxy', family: 'unix', source: { address: 'x'.repeat(109), port: 0 }, destination: { address: '', port: 0 }, tlvs: {} }), RangeError);
  });
});

describe('writer → reader round trip, random addresses', () => {
  const v4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((o) => o.join('.'));
  const v6 = fc.array(fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffff })), { minLength: 8, maxLength: 8 })
    .map((w) => formatIPv6(Buffer.from(w.flatMap((x) => [x >> 8, x & 0xff]))));
  const endpoint = fc.record({ address: fc.oneof(v4, v6, v4.map((a) => `::ffff:${a}`)), port: fc.integer({ min: 0, max: 65535 }) });

  it('v1 and v2 carry any pair, with the family nginx would pick', () => {
    fc.assert(fc.property(endpoint, endpoint, fc.boolean(), (s, d, crc) => {
      for (const buf of [proxyV1(s, d), proxyV2(s, d, { crc32c: crc })]) {
        const h = readOne(buf);
        const isV4 = (a: string): boolean => net.isIPv4(a) || a.startsWith('::ffff:') && a.includes('.');
        assert.equal(h.family, isV4(s.address) && isV4(d.address) ? 'tcp4' : 'tcp6');
        for (const [got, want] of [[h.source!, s], [h.destination!, d]] as const) {
          assert.equal(got.port, want.port);
          const norm = (a: string): string => (h.family === 'tcp4' ? a.replace(/^::ffff:/, '') : net.isIPv4(a) ? `::ffff:${a}` : nodeV6(a)!);
          assert.equal(got.address, norm(want.address));
        }
      }
    }), { numRuns: 500 });
  });

  it('encodeHeader is the reader\'s inverse for UNIX paths and mapped TCP6 too', () => {
    const unix: Omit<ProxyHeader, 'length'> = { version: 2, command: 'proxy', family: 'unix', source: { address: '@abstract', port: 0 },
      destination: { address: '/run/pøstern.sock', port: 0 }, tlvs: { authority: 'mx.test' } };
    const u = encodeHeader(unix);
    assert.deepEqual(readAllCuts(u), { ...unix, length: 16 + 216 + 10 });
    const mapped: Omit<ProxyHeader, 'length'> = { version: 1, command: 'proxy', family: 'tcp6', source: { address: '::ffff:1.2.3.4', port: 9 },
      destination: { address: '::1', port: 25 }, tlvs: {} };
    const line = encodeHeader(mapped);
    assert.equal(line.toString('latin1'), 'PROXY TCP6 ::ffff:102:304 ::1 9 25\r\n');
    assert.deepEqual(readOne(line), { ...mapped, length: line.length });
  });
});
