/**
 * PROXY protocol headers to send to a back-end (Postfix `smtpd_upstream_proxy_protocol = haproxy` takes v1
 * and v2; Dovecot `haproxy = yes` too). Pure: each function returns the whole header as one Buffer, to be
 * written in a single `socket.write()` before anything else (spec §2: "the sender must always ensure that the
 * header is sent at once").
 *
 * - {@link proxyV1} / {@link proxyV2} take Node's socket addresses and pick the family as nginx and HAProxy do
 *   (beyond-nginx.md §3.4): two IPv4 addresses → TCP4; a mixed pair → TCP6 with the IPv4 one mapped
 *   (`::ffff:a.b.c.d`); two IPv4-mapped addresses (a dual-stack listener) → TCP4; an endpoint Node does not
 *   know (`remoteAddress` undefined, a UNIX socket client) → v1 `PROXY UNKNOWN` (nginx's v1 writer; Postfix
 *   refuses it) or v2 LOCAL/UNSPEC (nginx's and HAProxy's v2 writers). A `%scope` is dropped: the protocol has
 *   no field for it.
 * - {@link encodeHeader} writes a {@link ProxyHeader} as it is (the reader's inverse; tests and re-encoding).
 * - Nothing is written that the reader would refuse: text TLVs follow the rule in header.ts, AUTHORITY ≤ 255
 *   and UNIQUE_ID ≤ 128 bytes; a violation throws RangeError (a bug in the caller, not a network condition).
 * - Size: Postfix reads at most 536 bytes ({@link POSTFIX_MAX}); keeping a header for Postfix under that (few
 *   TLVs: Postfix ignores them all) is the caller's choice, checked against `.length`.
 */
import { formatIPv4, formatIPv6, isV4Mapped, parseIPv4, parseIPv6 } from './address.js';
import { crc32c } from './crc32c.js';
import {
  asciiText, AUTHORITY_MAX, DECODED_TLVS, PP2_CLIENT_CERT_CONN, PP2_CLIENT_CERT_SESS, PP2_SUBTYPE_SSL_CIPHER, PP2_SUBTYPE_SSL_CN,
  PP2_SUBTYPE_SSL_KEY_ALG, PP2_SUBTYPE_SSL_SIG_ALG, PP2_SUBTYPE_SSL_VERSION, PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_CRC32C,
  PP2_TYPE_NETNS, PP2_TYPE_NOOP, PP2_TYPE_SSL, PP2_TYPE_UNIQUE_ID, UNIQUE_ID_MAX, UNIX_ADDR_LEN, utf8Text, V2_FIXED, V2_SIGNATURE,
  type ProxyEndpoint, type ProxyHeader, type ProxySsl, type ProxyTlvs,
} from './header.js';

export interface ProxyV2Options {
  /** Send LOCAL (the proxy's own connection, e.g. a health check): the receiver uses the real endpoints. */
  local?: boolean;
  tlvs?: ProxyTlvs;
  /** Add a PP2_TYPE_CRC32C TLV over the whole header (spec §2.2.3). */
  crc32c?: boolean;
}

/** What {@link encodeHeader} needs of a header (`length` is an outcome, not an input). */
export type HeaderFields = Pick<ProxyHeader, 'version' | 'command' | 'family' | 'source' | 'destination' | 'tlvs'>;

/** A socket's end as Node reports it: `remoteAddress` and `remotePort` may be undefined (a UNIX socket, a closed one). */
export interface SocketEndpoint {
  address?: string | undefined;
  port?: number | undefined;
}

type Pair = { family: 'tcp4' | 'tcp6'; src: Uint8Array; dst: Uint8Array; sport: number; dport: number };

/** A v1 header for a client `src` that connected to `dst` (an address or port undefined: `PROXY UNKNOWN`). */
export function proxyV1(src: SocketEndpoint | undefined, dst: SocketEndpoint | undefined): Buffer {
  const p = pair(src, dst);
  return p ? v1Line(p) : Buffer.from('PROXY UNKNOWN\r\n', 'latin1');
}

/** A v2 header for a client `src` that connected to `dst` (an address or port undefined, or `local`: LOCAL/UNSPEC). */
export function proxyV2(src: SocketEndpoint | undefined, dst: SocketEndpoint | undefined, options: ProxyV2Options = {}): Buffer {
  const p = options.local ? null : pair(src, dst);
  if (!p) return v2(0x20, 0x00, Buffer.alloc(0), options.tlvs ?? {}, options.crc32c ?? false);
  return v2(0x21, p.family === 'tcp4' ? 0x11 : 0x21, ipBlock(p), options.tlvs ?? {}, options.crc32c ?? false);
}

/** Writes `h` exactly as described: its version, command, family and addresses, no family guessing. */
export function encodeHeader(h: HeaderFields, options: { crc32c?: boolean } = {}): Buffer {
  if (h.version === 1) {
    if (h.command !== 'proxy') throw new RangeError('v1 has no LOCAL command');
    if (h.family === 'unspec') return Buffer.from('PROXY UNKNOWN\r\n', 'latin1');
    if (h.family === 'unix') throw new RangeError('v1 has no UNIX family');
    return v1Line(exactPair(h.family, h.source, h.destination));
  }
  const crc = options.crc32c ?? false;
  if (h.command === 'local') return v2(0x20, 0x00, Buffer.alloc(0), h.tlvs, crc);
  switch (h.family) {
    case 'unspec':
      return v2(0x21, 0x00, Buffer.alloc(0), h.tlvs, crc);
    case 'unix': {
      if (!h.source || !h.destination) throw new RangeError('a UNIX header needs both paths');
      return v2(0x21, 0x31, Buffer.concat([unixBytes(h.source.address), unixBytes(h.destination.address)]), h.tlvs, crc);
    }
    default: {
      const p = exactPair(h.family, h.source, h.destination);
      return v2(0x21, h.family === 'tcp4' ? 0x11 : 0x21, ipBlock(p), h.tlvs, crc);
    }
  }
}

function port(p: number): number {
  if (!Number.isInteger(p) || p < 0 || p > 0xffff) throw new RangeError(`not a port: ${p}`);
  return p;
}

function ip(address: string): { v4: Uint8Array } | { v6: Uint8Array } {
  const a = address.replace(/%.*$/s, '');
  const v4 = parseIPv4(a);
  if (v4) return { v4 };
  const v6 = parseIPv6(a);
  if (v6) return { v6 };
  throw new RangeError(`not an IP address: ${JSON.stringify(address)}`);
}

function mapped(v4: Uint8Array): Uint8Array {
  const b = new Uint8Array(16);
  b[10] = 0xff;
  b[11] = 0xff;
  b.set(v4, 12);
  return b;
}

/** nginx's and HAProxy's choice of family for two socket addresses; null when either is missing. */
function pair(src: SocketEndpoint | undefined, dst: SocketEndpoint | undefined): Pair | null {
  if (src?.address === undefined || dst?.address === undefined || src.port === undefined || dst.port === undefined) return null;
  const s = ip(src.address);
  const d = ip(dst.address);
  const sport = port(src.port);
  const dport = port(dst.port);
  if ('v4' in s && 'v4' in d) return { family: 'tcp4', src: s.v4, dst: d.v4, sport, dport };
  const s6 = 'v4' in s ? mapped(s.v4) : s.v6;
  const d6 = 'v4' in d ? mapped(d.v4) : d.v6;
  if (isV4Mapped(s6) && isV4Mapped(d6)) return { family: 'tcp4', src: s6.subarray(12), dst: d6.subarray(12), sport, dport };
  return { family: 'tcp6', src: s6, dst: d6, sport, dport };
}

/** The addresses of `family` as given: IPv4 text for tcp4, IPv6 text for tcp6 (an IPv4-mapped one stays IPv6). */
function exactPair(family: 'tcp4' | 'tcp6', src: ProxyEndpoint | undefined, dst: ProxyEndpoint | undefined): Pair {
  if (!src || !dst) throw new RangeError(`a ${family} header needs both endpoints`);
  const s = ip(src.address);
  const d = ip(dst.address);
  const want = family === 'tcp4' ? 'v4' : 'v6';
  if (!(want in s) || !(want in d)) throw new RangeError(`addresses do not match the family ${family}`);
  const bytes = (x: { v4: Uint8Array } | { v6: Uint8Array }): Uint8Array => ('v4' in x ? x.v4 : x.v6);
  return { family, src: bytes(s), dst: bytes(d), sport: port(src.port), dport: port(dst.port) };
}

/**
 * `PROXY TCP4|TCP6 src dst sport dport\r\n`. IPv6 in hex groups only, with `::` (spec §2.1 lists no dotted
 * form), so a mapped address is `::ffff:c000:201`, which every inet_pton reads the same.
 */
function v1Line(p: Pair): Buffer {
  const fmt = (b: Uint8Array): string => (p.family === 'tcp4' ? formatIPv4(b) : formatIPv6(b, 0, false));
  const proto = p.family === 'tcp4' ? 'TCP4' : 'TCP6';
  return Buffer.from(`PROXY ${proto} ${fmt(p.src)} ${fmt(p.dst)} ${p.sport} ${p.dport}\r\n`, 'latin1');
}

/** The INET or INET6 address block, spec §2.2: src, dst, sport, dport in network order. */
function ipBlock(p: Pair): Buffer {
  const n = p.src.length;
  const b = Buffer.alloc(2 * n + 4);
  b.set(p.src, 0);
  b.set(p.dst, n);
  b.writeUInt16BE(p.sport, 2 * n);
  b.writeUInt16BE(p.dport, 2 * n + 2);
  return b;
}

/** A sun_path of 108 bytes: `@name` is abstract (a leading NUL), '' unnamed; NUL padded. */
function unixBytes(path: string): Buffer {
  const abstract = path.startsWith('@');
  const name = Buffer.from(abstract ? path.slice(1) : path, 'utf8');
  if (utf8Text(name) === null) throw new RangeError(`UNIX path not allowed: ${JSON.stringify(path)}`);
  const b = Buffer.alloc(UNIX_ADDR_LEN);
  const at = abstract ? 1 : 0;
  if (at + name.length > UNIX_ADDR_LEN) throw new RangeError('UNIX path longer than 108 bytes');
  name.copy(b, at);
  return b;
}

function tlv(type: number, value: Uint8Array): Buffer {
  if (value.length > 0xffff) throw new RangeError(`TLV 0x${type.toString(16)} longer than 65535 bytes`);
  const b = Buffer.alloc(3 + value.length);
  b[0] = type;
  b.writeUInt16BE(value.length, 1);
  b.set(value, 3);
  return b;
}

function text(name: string, value: string, utf8: boolean, max = 0xffff): Buffer {
  const b = Buffer.from(value, utf8 ? 'utf8' : 'latin1');
  const ok = utf8 ? utf8Text(b) === value : asciiText(b) !== null;
  if (!ok) throw new RangeError(`${name}: control or non-text characters are not allowed`);
  if (b.length > max) throw new RangeError(`${name}: longer than ${max} bytes`);
  return b;
}

function sslValue(ssl: ProxySsl): Buffer {
  const certs = PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS;
  if (!Number.isInteger(ssl.client) || ssl.client < 0 || ssl.client > 0xff) throw new RangeError(`SSL client flags: ${ssl.client}`);
  if (ssl.verified && (ssl.client & certs) === 0) throw new RangeError('SSL verified without a client certificate flag');
  const head = Buffer.alloc(5);
  head[0] = ssl.client;
  // verify: 0 only for a presented and verified certificate; 1 otherwise (the conservative choice, §3.2).
  head.writeUInt32BE(ssl.verified ? 0 : 1, 1);
  const subs: Buffer[] = [head];
  const add = (type: number, name: string, v: string | undefined, utf8: boolean): void => {
    if (v !== undefined) subs.push(tlv(type, text(name, v, utf8)));
  };
  add(PP2_SUBTYPE_SSL_VERSION, 'SSL VERSION', ssl.version, false);
  add(PP2_SUBTYPE_SSL_CN, 'SSL CN', ssl.cn, true);
  add(PP2_SUBTYPE_SSL_CIPHER, 'SSL CIPHER', ssl.cipher, false);
  add(PP2_SUBTYPE_SSL_SIG_ALG, 'SSL SIG_ALG', ssl.sigAlg, false);
  add(PP2_SUBTYPE_SSL_KEY_ALG, 'SSL KEY_ALG', ssl.keyAlg, false);
  return Buffer.concat(subs);
}

function tlvBytes(t: ProxyTlvs): Buffer[] {
  const out: Buffer[] = [];
  if (t.alpn !== undefined) out.push(tlv(PP2_TYPE_ALPN, text('ALPN', t.alpn, false)));
  if (t.authority !== undefined) out.push(tlv(PP2_TYPE_AUTHORITY, text('AUTHORITY', t.authority, true, AUTHORITY_MAX)));
  if (t.uniqueId !== undefined) out.push(tlv(PP2_TYPE_UNIQUE_ID, text('UNIQUE_ID', t.uniqueId, false, UNIQUE_ID_MAX)));
  if (t.ssl !== undefined) out.push(tlv(PP2_TYPE_SSL, sslValue(t.ssl)));
  if (t.netns !== undefined) out.push(tlv(PP2_TYPE_NETNS, text('NETNS', t.netns, false)));
  for (const o of t.other ?? []) {
    if (!Number.isInteger(o.type) || o.type < 0 || o.type > 0xff || DECODED_TLVS.has(o.type) || o.type === PP2_TYPE_NOOP) {
      throw new RangeError(`TLV type ${o.type} cannot be sent as a raw TLV`);
    }
    out.push(tlv(o.type, o.value));
  }
  return out;
}

/** Signature, ver_cmd, fam, len, then the address block and the TLVs; CRC32C first when asked for. */
function v2(verCmd: number, fam: number, addresses: Buffer, tlvs: ProxyTlvs, crc: boolean): Buffer {
  const parts = tlvBytes(tlvs);
  if (crc) parts.unshift(tlv(PP2_TYPE_CRC32C, Buffer.alloc(4)));
  const body = Buffer.concat([addresses, ...parts]);
  if (body.length > 0xffff) throw new RangeError('v2 header longer than 65551 bytes');
  const fixed = Buffer.alloc(V2_FIXED);
  V2_SIGNATURE.copy(fixed, 0);
  fixed[12] = verCmd;
  fixed[13] = fam;
  fixed.writeUInt16BE(body.length, 14);
  const out = Buffer.concat([fixed, body]);
  if (crc) {
    const at = V2_FIXED + addresses.length + 3;
    out.writeUInt32BE(crc32c(out), at);
  }
  return out;
}
