/**
 * The v2 (binary) header, spec §2.2: the 16 fixed bytes (checked byte by byte as they arrive, so a wrong byte
 * fails at once), then, once all `16 + len` bytes are in, the addresses and TLVs.
 *
 *   0  12  signature 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A
 *   12  1  version (high nibble, must be 2) | command (0 LOCAL, 1 PROXY; anything else is dropped)
 *   13  1  family (0 UNSPEC, 1 INET, 2 INET6, 3 UNIX) | transport (0 UNSPEC, 1 STREAM, 2 DGRAM)
 *   14  2  len, network order: bytes after these 16
 *   16     INET 4+4+2+2, INET6 16+16+2+2, UNIX 108+108; then TLVs type(1) length(2) value
 *
 * - LOCAL: "the receiver … must use the real connection endpoints and discard the protocol block including the
 *   family which is ignored": nothing after byte 12 but `len` is looked at, as HAProxy and Postfix do.
 * - PROXY: the family byte must be one the spec lists as expected (0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32).
 *   UNSPEC and the UDP ones are reported as `unspec` without addresses or TLVs ("A receiver is not required to
 *   implement other ones, provided that it automatically falls back to the UNSPEC mode"); with UNSPEC the
 *   receiver cannot tell addresses from TLVs, so the whole block is skipped.
 * - TLVs (HAProxy's conn_recv_proxy): every TLV must fit and the block must end exactly on a TLV boundary;
 *   a CRC32C TLV is exactly 4 bytes and is verified (§2.2.3: on a mismatch "the receiver MUST treat the TCP
 *   connection providing the header as invalid"); AUTHORITY is at most 255 bytes and UNIQUE_ID at most 128
 *   (HAProxy refuses longer ones). Each decoded type may appear once: two CNs or two SNIs are ambiguous, and
 *   an ambiguity in identity is refused rather than resolved. Text values follow the rule in header.ts.
 */
import { crc32c } from './crc32c.js';
import { formatIPv4, formatIPv6 } from './address.js';
import {
  asciiText, AUTHORITY_MAX, DECODED_TLVS, PP2_CLIENT_CERT_CONN, PP2_CLIENT_CERT_SESS, PP2_SUBTYPE_SSL_CIPHER, PP2_SUBTYPE_SSL_CN,
  PP2_SUBTYPE_SSL_KEY_ALG, PP2_SUBTYPE_SSL_SIG_ALG, PP2_SUBTYPE_SSL_VERSION, PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_CRC32C,
  PP2_TYPE_NETNS, PP2_TYPE_NOOP, PP2_TYPE_SSL, PP2_TYPE_UNIQUE_ID, UNIQUE_ID_MAX, UNIX_ADDR_LEN, utf8Text, V2_FIXED, V2_SIGNATURE,
  type ProxyEndpoint, type ProxyFamily, type ProxyHeader, type ProxyRawTlv, type ProxySsl, type ProxyTlvs,
} from './header.js';

export type V2Prefix = { kind: 'more' } | { kind: 'error'; reason: string } | { kind: 'need'; total: number };
export type V2Result = { kind: 'error'; reason: string } | { kind: 'done'; header: ProxyHeader };

const fail = (reason: string): { kind: 'error'; reason: string } => ({ kind: 'error', reason });

/** Address bytes of each family byte the spec expects; null for the ones reported as UNSPEC. */
const FAMILIES = new Map<number, { family: ProxyFamily; addrLen: number } | null>([
  [0x00, null],
  [0x11, { family: 'tcp4', addrLen: 12 }],
  [0x12, null], // UDP over IPv4
  [0x21, { family: 'tcp6', addrLen: 36 }],
  [0x22, null], // UDP over IPv6
  [0x31, { family: 'unix', addrLen: 2 * UNIX_ADDR_LEN }],
  [0x32, null], // UNIX datagram
]);

/**
 * Checks the fixed 16 bytes as far as `b` has them (it starts with 0x0D). `need` with the header's whole
 * length once they are all in and valid; `max` is the largest header accepted, fixed part included.
 */
export function checkV2Prefix(b: Uint8Array, max: number): V2Prefix {
  const n = Math.min(b.length, V2_FIXED);
  for (let i = 0; i < n && i < V2_SIGNATURE.length; i++) {
    if (b[i] !== V2_SIGNATURE[i]) return fail('not a PROXY protocol header');
  }
  if (n > 12) {
    if (b[12]! >> 4 !== 2) return fail('v2: unsupported version');
    const cmd = b[12]! & 0x0f;
    if (cmd > 1) return fail('v2: unknown command');
  }
  const proxy = n > 12 && (b[12]! & 0x0f) === 1;
  if (n > 13 && proxy && !FAMILIES.has(b[13]!)) return fail('v2: bad address family');
  if (n < V2_FIXED) return { kind: 'more' };
  const len = (b[14]! << 8) | b[15]!;
  if (V2_FIXED + len > max) return fail('v2: header too large');
  const fam = proxy ? FAMILIES.get(b[13]!) : null;
  if (fam && len < fam.addrLen) return fail('v2: too short for its addresses');
  return { kind: 'need', total: V2_FIXED + len };
}

/** One TLV: its type and where its value lies in the buffer. */
interface Tlv {
  type: number;
  start: number;
  end: number;
}

/** The TLVs between `from` and `to`, or null unless they tile the range exactly. */
function splitTlvs(b: Uint8Array, from: number, to: number): Tlv[] | null {
  const out: Tlv[] = [];
  let p = from;
  while (p < to) {
    if (p + 3 > to) return null;
    const len = (b[p + 1]! << 8) | b[p + 2]!;
    const end = p + 3 + len;
    if (end > to) return null;
    out.push({ type: b[p]!, start: p + 3, end });
    p = end;
  }
  return out;
}

/** Parses a whole v2 header: `h` holds exactly the bytes {@link checkV2Prefix} asked for, already checked. */
export function parseV2(h: Uint8Array): V2Result {
  const length = h.length;
  if ((h[12]! & 0x0f) === 0) return { kind: 'done', header: { version: 2, command: 'local', family: 'unspec', tlvs: {}, length } };
  const fam = FAMILIES.get(h[13]!);
  if (!fam) return { kind: 'done', header: { version: 2, command: 'proxy', family: 'unspec', tlvs: {}, length } };

  let source: ProxyEndpoint;
  let destination: ProxyEndpoint;
  const a = V2_FIXED;
  if (fam.family === 'tcp4') {
    source = { address: formatIPv4(h, a), port: (h[a + 8]! << 8) | h[a + 9]! };
    destination = { address: formatIPv4(h, a + 4), port: (h[a + 10]! << 8) | h[a + 11]! };
  } else if (fam.family === 'tcp6') {
    source = { address: formatIPv6(h, a), port: (h[a + 32]! << 8) | h[a + 33]! };
    destination = { address: formatIPv6(h, a + 16), port: (h[a + 34]! << 8) | h[a + 35]! };
  } else {
    const src = unixPath(h.subarray(a, a + UNIX_ADDR_LEN));
    const dst = unixPath(h.subarray(a + UNIX_ADDR_LEN, a + 2 * UNIX_ADDR_LEN));
    if (src === null || dst === null) return fail('v2: bad UNIX address');
    source = { address: src, port: 0 };
    destination = { address: dst, port: 0 };
  }

  const tlvList = splitTlvs(h, a + fam.addrLen, length);
  if (tlvList === null) return fail('v2: malformed TLVs');
  const crcs = tlvList.filter((t) => t.type === PP2_TYPE_CRC32C);
  if (crcs.length > 1) return fail('v2: duplicate TLV');
  const crc = crcs[0];
  if (crc) {
    if (crc.end - crc.start !== 4) return fail('v2: bad CRC32C TLV');
    const sent = ((h[crc.start]! << 24) | (h[crc.start + 1]! << 16) | (h[crc.start + 2]! << 8) | h[crc.start + 3]!) >>> 0;
    if (crc32c(h, crc.start) !== sent) return fail('v2: CRC32C mismatch');
  }
  const tlvs = decodeTlvs(h, tlvList);
  if (typeof tlvs === 'string') return fail(tlvs);
  return { kind: 'done', header: { version: 2, command: 'proxy', family: fam.family, source, destination, tlvs, length } };
}

/**
 * A sun_path as text: the bytes up to the first NUL; an abstract socket (first byte NUL) as `@name` (the
 * convention of ss(8) and systemd); an unnamed socket (all NULs) as ''. null unless it is clean UTF-8 text.
 */
function unixPath(b: Uint8Array): string | null {
  const abstract = b[0] === 0;
  const from = abstract ? 1 : 0;
  let end = b.indexOf(0, from);
  if (end === -1) end = b.length;
  const text = utf8Text(b.subarray(from, end));
  if (text === null) return null;
  return abstract && text !== '' ? `@${text}` : text;
}

/** The decoded TLVs, or why they are refused. */
function decodeTlvs(h: Uint8Array, list: Tlv[]): ProxyTlvs | string {
  const tlvs: ProxyTlvs = {};
  const seen = new Set<number>();
  const other: ProxyRawTlv[] = [];
  for (const t of list) {
    if (t.type === PP2_TYPE_NOOP || t.type === PP2_TYPE_CRC32C) continue;
    if (!DECODED_TLVS.has(t.type)) {
      other.push({ type: t.type, value: Buffer.from(h.subarray(t.start, t.end)) });
      continue;
    }
    if (seen.has(t.type)) return 'v2: duplicate TLV';
    seen.add(t.type);
    const v = h.subarray(t.start, t.end);
    switch (t.type) {
      case PP2_TYPE_ALPN: {
        const s = asciiText(v);
        if (s === null) return 'v2: bad ALPN TLV';
        tlvs.alpn = s;
        break;
      }
      case PP2_TYPE_AUTHORITY: {
        if (v.length > AUTHORITY_MAX) return 'v2: AUTHORITY TLV too long';
        const s = utf8Text(v);
        if (s === null) return 'v2: bad AUTHORITY TLV';
        tlvs.authority = s;
        break;
      }
      case PP2_TYPE_UNIQUE_ID: {
        if (v.length > UNIQUE_ID_MAX) return 'v2: UNIQUE_ID TLV too long';
        const s = asciiText(v);
        if (s === null) return 'v2: bad UNIQUE_ID TLV';
        tlvs.uniqueId = s;
        break;
      }
      case PP2_TYPE_SSL: {
        const ssl = decodeSsl(v);
        if (typeof ssl === 'string') return ssl;
        tlvs.ssl = ssl;
        break;
      }
      case PP2_TYPE_NETNS: {
        const s = asciiText(v);
        if (s === null) return 'v2: bad NETNS TLV';
        tlvs.netns = s;
        break;
      }
    }
  }
  if (other.length > 0) tlvs.other = other;
  return tlvs;
}

type SslText = { key: 'version' | 'cn' | 'cipher' | 'sigAlg' | 'keyAlg'; utf8: boolean; error: string };
const SSL_TEXT: ReadonlyMap<number, SslText> = new Map<number, SslText>([
  [PP2_SUBTYPE_SSL_VERSION, { key: 'version', utf8: false, error: 'v2: bad SSL VERSION TLV' }],
  [PP2_SUBTYPE_SSL_CN, { key: 'cn', utf8: true, error: 'v2: bad SSL CN TLV' }],
  [PP2_SUBTYPE_SSL_CIPHER, { key: 'cipher', utf8: false, error: 'v2: bad SSL CIPHER TLV' }],
  [PP2_SUBTYPE_SSL_SIG_ALG, { key: 'sigAlg', utf8: false, error: 'v2: bad SSL SIG_ALG TLV' }],
  [PP2_SUBTYPE_SSL_KEY_ALG, { key: 'keyAlg', utf8: false, error: 'v2: bad SSL KEY_ALG TLV' }],
]);

/**
 * PP2_TYPE_SSL, spec §2.2.6: client(1) verify(4, network order) then sub-TLVs that tile the rest. Sub-types
 * other than 0x21–0x25 (the 2026 revision's GROUP, SIG_SCHEME, CLIENT_CERT…) are skipped.
 */
function decodeSsl(v: Uint8Array): ProxySsl | string {
  if (v.length < 5) return 'v2: bad SSL TLV';
  const client = v[0]!;
  const verify = ((v[1]! << 24) | (v[2]! << 16) | (v[3]! << 8) | v[4]!) >>> 0;
  const subs = splitTlvs(v, 5, v.length);
  if (subs === null) return 'v2: bad SSL TLV';
  const ssl: ProxySsl = { client, verified: verify === 0 && (client & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS)) !== 0 };
  for (const s of subs) {
    const field = SSL_TEXT.get(s.type);
    if (!field) continue;
    if (ssl[field.key] !== undefined) return 'v2: duplicate TLV';
    const value = v.subarray(s.start, s.end);
    const text = field.utf8 ? utf8Text(value) : asciiText(value);
    if (text === null) return field.error;
    ssl[field.key] = text;
  }
  return ssl;
}
