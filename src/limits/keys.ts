/**
 * Client address keys for limiters: one client is counted under its own address and under the
 * network around it, so that a client spreading over its neighbours' addresses is still caught.
 *
 *   IPv4  192.0.2.77            → ['192.0.2.77/32', '192.0.2.0/24']
 *   IPv6  2001:db8:1:2:3:4:5:6  → ['2001:db8:1:2::/64', '2001:db8:1::/48']
 *
 * An IPv4-mapped IPv6 address (`::ffff:192.0.2.77`, how a dual-stack listener reports IPv4
 * clients, or its hex form `::ffff:c000:24d`) is treated as the IPv4 address. IPv6 keys are in
 * RFC 5952 form (lower case, the longest run of zero groups compressed), so every spelling of
 * one network gives one key; a zone (`%eth0`) is dropped. Anything else (not an IP address) is
 * returned as the single key it is.
 */
import net from 'node:net';

export const IPV4_PREFIXES = [32, 24] as const;
export const IPV6_PREFIXES = [64, 48] as const;

/** The limiter keys of one client address: its host key first, then its wider network. */
export function clientKeys(addr: string): string[] {
  const v4 = toIPv4(addr);
  if (v4) return IPV4_PREFIXES.map((bits) => `${formatV4(maskV4(v4, bits))}/${bits}`);
  const v6 = parseV6(addr);
  if (v6) return IPV6_PREFIXES.map((bits) => `${formatV6(maskV6(v6, bits))}/${bits}`);
  return [addr];
}

/** One prefix key (`net/bits`) of an address, for prefix lengths other than the defaults. */
export function prefixKey(addr: string, bits: number): string {
  const v4 = toIPv4(addr);
  if (v4) return `${formatV4(maskV4(v4, Math.min(bits, 32)))}/${Math.min(bits, 32)}`;
  const v6 = parseV6(addr);
  if (v6) return `${formatV6(maskV6(v6, Math.min(bits, 128)))}/${Math.min(bits, 128)}`;
  return addr;
}

/** The address as a client would name itself: an IPv4-mapped IPv6 address as its IPv4 address (for replies). */
export function plainAddress(addr: string): string {
  const v4 = toIPv4(addr);
  return v4 ? formatV4(v4) : addr;
}

/** The IPv4 address an address stands for (itself or IPv4-mapped), as 4 bytes; null otherwise. */
function toIPv4(addr: string): number[] | null {
  if (net.isIPv4(addr)) return addr.split('.').map(Number);
  const g = parseV6(addr);
  if (g && g[0] === 0 && g[1] === 0 && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0xffff) {
    return [g[6]! >> 8, g[6]! & 0xff, g[7]! >> 8, g[7]! & 0xff];
  }
  return null;
}

function maskV4(b: number[], bits: number): number[] {
  return b.map((x, i) => {
    const keep = Math.max(0, Math.min(8, bits - i * 8));
    return x & ((0xff << (8 - keep)) & 0xff);
  });
}

function formatV4(b: number[]): string {
  return b.join('.');
}

/** Eight 16-bit groups, or null when `addr` is not IPv6. */
function parseV6(addr: string): number[] | null {
  const a = addr.replace(/%.*$/, '');
  if (!net.isIPv6(a)) return null;
  let s = a.toLowerCase();
  // A trailing dotted quad (::ffff:1.2.3.4, 64:ff9b::1.2.3.4) becomes two groups.
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (dotted) {
    const b = dotted[1]!.split('.').map(Number);
    s = s.slice(0, dotted.index) + `${((b[0]! << 8) | b[1]!).toString(16)}:${((b[2]! << 8) | b[3]!).toString(16)}`;
  }
  const [head, tail] = s.includes('::') ? (s.split('::') as [string, string]) : [s, undefined];
  const h = head === '' ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  if (groups.length !== 8) return null;
  return groups.map((x) => parseInt(x, 16));
}

function maskV6(g: number[], bits: number): number[] {
  return g.map((x, i) => {
    const keep = Math.max(0, Math.min(16, bits - i * 16));
    return x & ((0xffff << (16 - keep)) & 0xffff);
  });
}

/** RFC 5952: lower case, no leading zeros, the longest run (first if tied) of two or more zero groups as `::`. */
function formatV6(g: number[]): string {
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = g.map((x) => x.toString(16));
  if (best < 0) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}
