/**
 * Pure helpers for the DNS checks: which names a PTR may give us, and the query names built from a
 * client address (in-addr.arpa / ip6.arpa for PTR, reversed octets / nibbles under a DNSBL zone).
 * No I/O; everything here is unit-tested directly.
 */
import { isIPv4, isIPv6 } from 'node:net';

/** The name sent for a client whose reverse name is known not to exist or not to be confirmed (nginx, Postfix). */
export const UNAVAILABLE = '[UNAVAILABLE]';
/** The name sent when the lookup failed temporarily (timeout, SERVFAIL…): Postfix's XCLIENT spelling. */
export const TEMPUNAVAIL = '[TEMPUNAVAIL]';

const LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/;
const NUMERIC = /^[0-9]+$/;

/**
 * A host name as it may leave Postern (Client-Host header, XCLIENT NAME=, log lines), or undefined.
 *
 * The rules, on the text Node's resolver returns (c-ares already renders bytes outside printable ASCII and
 * dots inside a label as `\DDD` / `\.` escapes, so those are caught by the character rule):
 * - one trailing dot is stripped, then ASCII is lower-cased;
 * - at most 253 characters in all, at least two labels (a single label is no public host name, and
 *   `localhost` from a PTR is a spoof), each label 1-63 characters;
 * - labels are LDH plus underscore: `a-z`, `0-9`, `-`, `_`; no label starts or ends with a hyphen. Underscore is
 *   accepted because Postfix's valid_hostname() accepts it (Postfix would show and accept such a NAME in
 *   XCLIENT) and DHCP-registered PTR names carry it; it is inert in headers, xtext and logs;
 * - the last label is not all digits (no `1.2.3.4` posing as a name; Postfix also refuses numeric names);
 * - anything else (CR, LF, NUL, space, tab, `*`, `\`, `"`, `:`, `/`, non-ASCII, empty labels, `..`) is refused.
 *   Punycode (`xn--…`) is plain LDH and passes.
 */
export function normalizeHostName(raw: string): string | undefined {
  if (typeof raw !== 'string') return undefined;
  let name = raw.endsWith('.') ? raw.slice(0, -1) : raw;
  if (name.length === 0 || name.length > 253) return undefined;
  // ASCII-only lower-casing: toLowerCase() would also map non-ASCII letters (e.g. 'İ' → 'i̇').
  name = name.replace(/[A-Z]/g, (c) => String.fromCharCode(c.charCodeAt(0) + 32));
  const labels = name.split('.');
  if (labels.length < 2) return undefined;
  for (const l of labels) if (!LABEL.test(l)) return undefined;
  if (NUMERIC.test(labels[labels.length - 1]!)) return undefined;
  return name;
}

/** The 16 bytes of an IPv6 address as 32 lower-case hex digits, or undefined (a `%scope` is ignored). */
export function ipv6Hex(addr: string): string | undefined {
  const a = addr.replace(/%.*$/, '');
  if (!isIPv6(a)) return undefined;
  let head = a;
  let v4: number[] = [];
  const lastColon = a.lastIndexOf(':');
  const tail = a.slice(lastColon + 1);
  if (tail.includes('.')) {
    v4 = tail.split('.').map(Number);
    head = a.slice(0, lastColon + 1) + '0:0'; // two groups for the embedded IPv4
  }
  const [l, r] = head.includes('::') ? head.split('::') as [string, string] : [head, undefined];
  const left = l ? l.split(':') : [];
  const right = r ? r.split(':') : [];
  const groups = r === undefined ? left : [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right];
  if (groups.length !== 8) return undefined;
  let hex = groups.map((g) => g.padStart(4, '0')).join('').toLowerCase();
  if (v4.length === 4) hex = hex.slice(0, 24) + v4.map((o) => o.toString(16).padStart(2, '0')).join('');
  return hex;
}

export type ParsedAddress = { family: 4; text: string; octets: number[] } | { family: 6; text: string; hex: string };

/**
 * A client address for the checks: IPv4, or IPv6 (IPv4-mapped `::ffff:a.b.c.d` becomes IPv4, as the
 * proxy's ClientIdentity already does), or undefined for anything else.
 */
export function parseAddress(addr: string): ParsedAddress | undefined {
  if (typeof addr !== 'string') return undefined;
  if (isIPv4(addr)) return { family: 4, text: addr, octets: addr.split('.').map(Number) };
  const hex = ipv6Hex(addr);
  if (hex === undefined) return undefined;
  if (hex.startsWith('00000000000000000000ffff')) {
    const octets = [24, 26, 28, 30].map((i) => parseInt(hex.slice(i, i + 2), 16));
    return { family: 4, text: octets.join('.'), octets };
  }
  return { family: 6, text: addr.replace(/%.*$/, '').toLowerCase(), hex };
}

/** Reversed octets (`4.3.2.1`) or nibbles (`b.a.9.8…`) of an address, without a zone. */
export function reversedLabels(a: ParsedAddress): string {
  return a.family === 4 ? [...a.octets].reverse().join('.') : a.hex.split('').reverse().join('.');
}

/** The PTR query name: `4.3.2.1.in-addr.arpa` or the 32 nibbles under `ip6.arpa`. */
export function ptrName(a: ParsedAddress): string {
  return `${reversedLabels(a)}.${a.family === 4 ? 'in-addr.arpa' : 'ip6.arpa'}`;
}

/** The DNSBL query name for an address under `zone` (already normalized, see {@link normalizeZone}). */
export function dnsblName(a: ParsedAddress, zone: string): string {
  return `${reversedLabels(a)}.${zone}`;
}

/** A DNSBL zone as configured: lower-cased, one trailing dot stripped; undefined unless a valid host name. */
export function normalizeZone(zone: string): string | undefined {
  return normalizeHostName(zone);
}

/** True when two textual addresses name the same IP (any IPv6 spelling, IPv4-mapped or not). */
export function sameAddress(a: string, b: string): boolean {
  const x = parseAddress(a);
  const y = parseAddress(b);
  if (!x || !y || x.family !== y.family) return false;
  return x.family === 4 ? x.text === y.text : x.hex === (y as { hex: string }).hex;
}
