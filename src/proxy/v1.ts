/**
 * The v1 (text) header, spec §2.1:
 *
 *   PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n     or     PROXY UNKNOWN[ <anything>]\r\n
 *
 * Strict: exactly one space between fields; IPv4 dotted quads and ports without leading zeros ("Heading zeroes
 * are not permitted"); IPv6 of the family TCP6 names ("The advertised protocol family dictates what format to
 * use"); ports 0–65535; CRLF within the first 107 bytes, never a lone CR or LF ("The receiver must not tolerate
 * a single CR or LF character to end the line"). After `UNKNOWN` the rest of the line is ignored ("the receiver
 * must ignore anything presented before the CRLF"), but it must still end in CRLF within 107 bytes.
 *
 * {@link scanV1} is given every byte buffered so far and looks at them left to right, each byte's checks
 * depending only on the bytes before it, so it fails at the first byte that cannot be part of a valid header
 * ("It is recommended to abort the connection as soon as possible", §2.1) and its answer does not depend on
 * how the bytes were cut into reads. Rescanning is cheap: at most 107 bytes.
 */
import { decimal, formatIPv4, formatIPv6, parseIPv4, parseIPv6 } from './address.js';
import { V1_MAX, type ProxyEndpoint, type ProxyHeader } from './header.js';

export type V1Result = { kind: 'more' } | { kind: 'error'; reason: string } | { kind: 'done'; header: ProxyHeader };

const CR = 0x0d;
const LF = 0x0a;
const SP = 0x20;
const PREFIX = 'PROXY ';
const PROTOCOLS = ['TCP4', 'TCP6', 'UNKNOWN'] as const;
type Protocol = (typeof PROTOCOLS)[number];

/** Why each field (after the protocol) is refused, by index: 1 src, 2 dst, 3 sport, 4 dport. */
const FIELD_ERROR = ['', 'v1: bad source address', 'v1: bad destination address', 'v1: bad source port', 'v1: bad destination port'];

const MORE: V1Result = { kind: 'more' };
const fail = (reason: string): V1Result => ({ kind: 'error', reason });

function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}

function isHex(c: number): boolean {
  return isDigit(c) || (c >= 0x61 && c <= 0x66) || (c >= 0x41 && c <= 0x46);
}

/**
 * May byte `c` follow `token`, the bytes of field `k` of a `proto` line so far? So that an impossible field
 * fails at its first wrong byte: IPv4 octets and ports are checked digit by digit (a leading zero, a value
 * over 255 or 65535, a fifth octet); IPv6 only by its characters and length, fully when the field ends
 * ({@link fieldValue}).
 */
function fieldByte(proto: Protocol, k: number, c: number, token: string): boolean {
  if (k <= 2 && proto === 'TCP6') {
    // Hex groups, colons, and a dotted tail; 45 is the longest text form (six groups and a dotted quad).
    return token.length < 45 && (isHex(c) || c === 0x3a || c === 0x2e);
  }
  const dot = k <= 2 ? token.lastIndexOf('.') : -1;
  const part = token.slice(dot + 1);
  if (k <= 2 && c === 0x2e) return part.length > 0 && token.split('.').length < 4;
  if (!isDigit(c) || part === '0') return false;
  return Number(part + String.fromCharCode(c)) <= (k <= 2 ? 255 : 0xffff);
}

/** The decoded value of a complete field, or null when it is invalid. */
function fieldValue(proto: 'TCP4' | 'TCP6', k: number, text: string): Uint8Array | number | null {
  if (k <= 2) return proto === 'TCP4' ? parseIPv4(text) : parseIPv6(text);
  const port = decimal(text, 5);
  return port !== null && port <= 0xffff ? port : null;
}

function formatAddress(proto: 'TCP4' | 'TCP6', b: Uint8Array): string {
  return proto === 'TCP4' ? formatIPv4(b) : formatIPv6(b);
}

/** Scans the buffered bytes `b` (which start with `P`) for a v1 header; see the file comment. */
export function scanV1(b: Uint8Array): V1Result {
  for (let i = 0; i < PREFIX.length; i++) {
    if (i >= b.length) return MORE;
    if (b[i] !== PREFIX.charCodeAt(i)) return fail('not a PROXY protocol header');
  }
  let proto: Protocol | undefined;
  /** Index of the field being read: 0 the protocol, 1–4 the addresses and ports. */
  let k = 0;
  let ignoreRest = false;
  const values: (Uint8Array | number)[] = [];
  let token = '';
  for (let i = PREFIX.length; ; i++) {
    if (i >= V1_MAX) return fail('v1: no CRLF within 107 bytes');
    if (i >= b.length) return MORE;
    const c = b[i]!;
    if (c === LF) return fail('v1: line ends with a lone LF');
    if (c === CR) {
      if (i + 1 >= V1_MAX) return fail('v1: no CRLF within 107 bytes');
      if (i + 1 >= b.length) return MORE;
      if (b[i + 1] !== LF) return fail('v1: lone CR');
      if (ignoreRest) return done(undefined, [], i + 2);
      // The CRLF ends the current field.
      if (k === 0) {
        if (token !== 'UNKNOWN') return fail(PROTOCOLS.includes(token as Protocol) ? 'v1: missing fields' : 'v1: unknown protocol');
        return done(undefined, [], i + 2);
      }
      const v = fieldValue(proto as 'TCP4' | 'TCP6', k, token);
      if (v === null) return fail(FIELD_ERROR[k]!);
      if (k < 4) return fail('v1: missing fields');
      values.push(v);
      return done(proto as 'TCP4' | 'TCP6', values, i + 2);
    }
    if (ignoreRest) continue;
    if (c === SP) {
      if (k === 0) {
        if (!PROTOCOLS.includes(token as Protocol)) return fail('v1: unknown protocol');
        proto = token as Protocol;
        if (proto === 'UNKNOWN') ignoreRest = true;
      } else {
        const v = fieldValue(proto as 'TCP4' | 'TCP6', k, token);
        if (v === null) return fail(FIELD_ERROR[k]!);
        if (k === 4) return fail('v1: too many fields');
        values.push(v);
      }
      k++;
      token = '';
      continue;
    }
    if (k === 0) {
      const next = token + String.fromCharCode(c);
      if (!PROTOCOLS.some((p) => p.startsWith(next))) return fail('v1: unknown protocol');
      token = next;
      continue;
    }
    if (!fieldByte(proto!, k, c, token)) return fail(FIELD_ERROR[k]!);
    token += String.fromCharCode(c);
  }
}

function done(proto: 'TCP4' | 'TCP6' | undefined, values: (Uint8Array | number)[], length: number): V1Result {
  if (proto === undefined) return { kind: 'done', header: { version: 1, command: 'proxy', family: 'unspec', tlvs: {}, length } };
  const [src, dst, sport, dport] = values as [Uint8Array, Uint8Array, number, number];
  const source: ProxyEndpoint = { address: formatAddress(proto, src), port: sport };
  const destination: ProxyEndpoint = { address: formatAddress(proto, dst), port: dport };
  return {
    kind: 'done',
    header: { version: 1, command: 'proxy', family: proto === 'TCP4' ? 'tcp4' : 'tcp6', source, destination, tlvs: {}, length },
  };
}
