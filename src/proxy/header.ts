/**
 * The PROXY protocol header as the codec reports it (reader.ts) and writes it (writer.ts), the wire
 * constants, and the rule for text that comes out of a header.
 *
 * Spec: HAProxy's doc/proxy-protocol.txt ("the spec" below; §2.1 v1, §2.2 v2, §2.2.1–2.2.8 TLVs). What the
 * codec accepts and refuses, and why: docs/proxy-protocol.md.
 */

/** An address and port. For `family: 'unix'` the address is the socket path (`@name` for an abstract socket) and the port 0. */
export interface ProxyEndpoint {
  address: string;
  port: number;
}

/** PP2_TYPE_SSL (spec §2.2.6). */
export interface ProxySsl {
  /** The `client` bit field: {@link PP2_CLIENT_SSL}, {@link PP2_CLIENT_CERT_CONN}, {@link PP2_CLIENT_CERT_SESS}. */
  client: number;
  /**
   * True when a client certificate was presented (CERT_CONN or CERT_SESS set) and `verify` is 0. `verify` alone
   * is not enough: HAProxy leaves it 0 when no certificate was presented (make_proxy_line_v2 zeroes the TLV),
   * and Dovecot trusts the CN only with both (beyond-nginx.md §3.4).
   */
  verified: boolean;
  /** PP2_SUBTYPE_SSL_VERSION, e.g. `TLSv1.3` (US-ASCII). */
  version?: string;
  /** PP2_SUBTYPE_SSL_CN: the client certificate's subject CN (UTF-8). */
  cn?: string;
  /** PP2_SUBTYPE_SSL_CIPHER, e.g. `ECDHE-RSA-AES128-GCM-SHA256` (US-ASCII). */
  cipher?: string;
  /** PP2_SUBTYPE_SSL_SIG_ALG, e.g. `RSA-SHA256` (US-ASCII). */
  sigAlg?: string;
  /** PP2_SUBTYPE_SSL_KEY_ALG, e.g. `RSA2048` (US-ASCII). */
  keyAlg?: string;
}

/** A TLV the codec does not decode (custom 0xE0–0xEF such as cloud ids, experimental, future), kept as it came. */
export interface ProxyRawTlv {
  type: number;
  value: Buffer;
}

/** The decoded TLVs of a v2 PROXY header; always empty for v1 and for v2 LOCAL or UNSPEC. */
export interface ProxyTlvs {
  /** PP2_TYPE_ALPN (§2.2.1): the negotiated protocol, e.g. `h2`. */
  alpn?: string;
  /** PP2_TYPE_AUTHORITY (§2.2.2): the host name the client asked for (TLS SNI), UTF-8. */
  authority?: string;
  /** PP2_TYPE_UNIQUE_ID (§2.2.5): at most 128 bytes; accepted as printable ASCII only. */
  uniqueId?: string;
  ssl?: ProxySsl;
  /** PP2_TYPE_NETNS (§2.2.7): a network namespace name (US-ASCII). */
  netns?: string;
  /** Every other TLV but NOOP and CRC32C, in order. */
  other?: ProxyRawTlv[];
}

export type ProxyCommand = 'proxy' | 'local';
export type ProxyFamily = 'tcp4' | 'tcp6' | 'unix' | 'unspec';

/**
 * A complete, valid header.
 *
 * - `command: 'local'` (v2 only): the proxy's own connection (a health check); use the real endpoints
 *   (spec §2.2). The family and every byte after the fixed 16 are ignored, so family is `unspec`.
 * - `family: 'unspec'` with `command: 'proxy'`: v1 `UNKNOWN`, v2 AF_UNSPEC, or v2 UDP (which the spec lets a
 *   receiver treat as UNSPEC); no addresses; the receiver decides to use the real endpoints or refuse (Postfix
 *   refuses, nginx accepts).
 * - Otherwise `source` (the client) and `destination` (the address it connected to) are set. IPv6 addresses
 *   are in Node's form; an IPv4-mapped address (`::ffff:192.0.2.1`) stays IPv6, as the sender sent it.
 */
export interface ProxyHeader {
  version: 1 | 2;
  command: ProxyCommand;
  family: ProxyFamily;
  source?: ProxyEndpoint;
  destination?: ProxyEndpoint;
  tlvs: ProxyTlvs;
  /** Bytes the header took on the wire, CRLF or TLVs included. */
  length: number;
}

/** The v2 signature, spec §2.2: `\r\n\r\n\0\r\nQUIT\n`. */
export const V2_SIGNATURE: Buffer = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
/** The fixed part of a v2 header: signature, ver_cmd, fam, len. */
export const V2_FIXED = 16;
/** Longest v1 line, CRLF included (spec §2.1, "worst case"). */
export const V1_MAX = 107;
/**
 * Default limit of a whole v2 header, fixed part included: nginx's NGX_PROXY_PROTOCOL_MAX_HEADER, the largest
 * of the receivers in beyond-nginx.md §3.4 (Postfix 536, Dovecot 1500, nginx 4096).
 */
export const V2_DEFAULT_MAX = 4096;
/** What a v2 header can be at most: 16 + a 16-bit length. */
export const V2_ABSOLUTE_MAX = V2_FIXED + 0xffff;
/** Postfix reads at most this much (HAPROXY_HEADER_MAX_LEN): a header for Postfix must not be longer. */
export const POSTFIX_MAX = 536;

export const PP2_TYPE_ALPN = 0x01;
export const PP2_TYPE_AUTHORITY = 0x02;
export const PP2_TYPE_CRC32C = 0x03;
export const PP2_TYPE_NOOP = 0x04;
export const PP2_TYPE_UNIQUE_ID = 0x05;
export const PP2_TYPE_SSL = 0x20;
export const PP2_SUBTYPE_SSL_VERSION = 0x21;
export const PP2_SUBTYPE_SSL_CN = 0x22;
export const PP2_SUBTYPE_SSL_CIPHER = 0x23;
export const PP2_SUBTYPE_SSL_SIG_ALG = 0x24;
export const PP2_SUBTYPE_SSL_KEY_ALG = 0x25;
export const PP2_TYPE_NETNS = 0x30;

export const PP2_CLIENT_SSL = 0x01;
export const PP2_CLIENT_CERT_CONN = 0x02;
export const PP2_CLIENT_CERT_SESS = 0x04;

/** The TLV types the codec decodes (and so never keeps in `other`); each may appear once. */
export const DECODED_TLVS: ReadonlySet<number> = new Set([
  PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_CRC32C, PP2_TYPE_UNIQUE_ID, PP2_TYPE_SSL, PP2_TYPE_NETNS,
]);

/** HAProxy refuses a longer AUTHORITY (PP2_AUTHORITY_MAX, 255: a DNS name's limit). */
export const AUTHORITY_MAX = 255;
/** Spec §2.2.5: "an opaque byte sequence of up to 128 bytes". */
export const UNIQUE_ID_MAX = 128;
/** Bytes of one AF_UNIX address (sun_path), spec §2.2. */
export const UNIX_ADDR_LEN = 108;

/**
 * The text rule. Values from a header reach log lines and auth_http headers, so none may carry CR, LF, NUL
 * or any other control character, and a value that does is REFUSED (the whole header is an error), not
 * cleaned up:
 * - sanitizing would change identities: two different CNs or SNIs could become the same string;
 * - a well-behaved sender never puts such bytes there; when one does, it is relaying a client-controlled value
 *   (SNI, an unverified certificate's CN) as it came, and only that client's connection fails;
 * - the spec asks receivers to drop what does not match the protocol (§2.1: "must be discarded and cause the
 *   receiver to abort the connection"), and Dovecot likewise refuses an AUTHORITY that is no DNS name.
 */

/** The bytes as a string if every one is printable US-ASCII (0x20–0x7E), else null. For the US-ASCII fields. */
export function asciiText(b: Uint8Array): string | null {
  for (let i = 0; i < b.length; i++) {
    const c = b[i]!;
    if (c < 0x20 || c > 0x7e) return null;
  }
  return Buffer.from(b.buffer, b.byteOffset, b.length).toString('latin1');
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * The bytes as a string if they are valid UTF-8 without control characters (C0, DEL, C1) or the Unicode
 * line and paragraph separators (U+2028, U+2029, which some log viewers break lines at), else null.
 * For the UTF-8 fields (AUTHORITY, CN) and UNIX socket paths.
 */
export function utf8Text(b: Uint8Array): string | null {
  let ascii = true;
  for (let i = 0; i < b.length; i++) {
    const c = b[i]!;
    if (c < 0x20 || c === 0x7f) return null;
    if (c >= 0x80) ascii = false;
  }
  if (ascii) return Buffer.from(b.buffer, b.byteOffset, b.length).toString('latin1');
  let s: string;
  try {
    s = utf8.decode(b);
  } catch {
    return null;
  }
  return /[\u0080-\u009f\u2028\u2029]/.test(s) ? null : s;
}
