/**
 * IP addresses for the PROXY protocol codec: text ⇄ bytes, strictly, with no I/O and no `node:net`.
 *
 * - Parsing follows HAProxy's doc/proxy-protocol.txt §2.1 (v1 text): IPv4 is exactly four decimal numbers
 *   0–255 without leading zeros; IPv6 is hex groups of 1–4 digits with at most one `::`, 128 bits in all.
 *   A dotted IPv4 tail (`::ffff:192.0.2.1`) is accepted as inet_pton(3) accepts it (HAProxy and nginx parse
 *   TCP6 addresses with inet_pton); zone ids (`%eth0`) are not (they are not part of the format).
 * - Formatting is Node's: IPv4 dotted, IPv6 as libuv's uv_inet_ntop writes it (what `socket.remoteAddress`
 *   shows): lower case, the longest run of two or more zero groups compressed (the first one on a tie,
 *   RFC 5952 §4.2), and a dotted tail for IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-compatible (`::a.b.c.d`)
 *   addresses. IPv4-mapped IPv6 addresses stay IPv6: the codec reports what the sender sent.
 */

/** The 4 bytes of a strict dotted-quad IPv4 address, or null. */
export function parseIPv4(s: string): Uint8Array | null {
  const parts = s.split('.');
  if (parts.length !== 4) return null;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const n = decimal(parts[i]!, 3);
    if (n === null || n > 255) return null;
    out[i] = n;
  }
  return out;
}

/**
 * A decimal number of 1 to `maxDigits` digits without a leading zero (`0` itself is fine), or null.
 * doc/proxy-protocol.txt §2.1: "Heading zeroes are not permitted in front of numbers in order to avoid any
 * possible confusion with octal numbers."
 */
export function decimal(s: string, maxDigits: number): number | null {
  if (s.length === 0 || s.length > maxDigits) return null;
  if (s.length > 1 && s.charCodeAt(0) === 0x30) return null;
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i) - 0x30;
    if (c < 0 || c > 9) return null;
    n = n * 10 + c;
  }
  return n;
}

function hexGroup(s: string): number | null {
  if (s.length === 0 || s.length > 4) return null;
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    const d = c >= 0x30 && c <= 0x39 ? c - 0x30 : c >= 0x61 && c <= 0x66 ? c - 0x57 : c >= 0x41 && c <= 0x46 ? c - 0x37 : -1;
    if (d < 0) return null;
    n = n * 16 + d;
  }
  return n;
}

/** The 16 bytes of an IPv6 address in any valid text form (see the file comment), or null. */
export function parseIPv6(s: string): Uint8Array | null {
  if (s.length < 2 || s.length > 45) return null;
  const dbl = s.indexOf('::');
  if (dbl !== -1 && s.indexOf('::', dbl + 1) !== -1) return null;
  const head = dbl === -1 ? s : s.slice(0, dbl);
  const tail = dbl === -1 ? '' : s.slice(dbl + 2);
  const left = head === '' ? [] : head.split(':');
  const right = tail === '' ? [] : tail.split(':');
  // Without `::`, an empty head means a leading or trailing lone colon; `split` gives '' groups for those.
  if (dbl === -1 && left.length === 0) return null;
  const words: number[] = [];
  // A dotted IPv4 tail may only be the very last group of the whole address.
  const side = (groups: string[], isLast: boolean): boolean => {
    for (let i = 0; i < groups.length; i++) {
      const g = groups[i]!;
      if (isLast && i === groups.length - 1 && g.includes('.')) {
        const v4 = parseIPv4(g);
        if (v4 === null) return false;
        words.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
        continue;
      }
      const w = hexGroup(g);
      if (w === null) return false;
      words.push(w);
    }
    return true;
  };
  if (!side(left, dbl === -1)) return null;
  const leftWords = words.length;
  if (!side(right, true)) return null;
  const rightWords = words.length - leftWords;
  if (dbl === -1) {
    if (words.length !== 8) return null;
  } else {
    // `::` stands for at least one zero group (inet_pton accepts it for exactly one, as here).
    if (words.length > 7) return null;
    words.splice(leftWords, 0, ...Array<number>(8 - leftWords - rightWords).fill(0));
  }
  const out = new Uint8Array(16);
  for (let i = 0; i < 8; i++) {
    out[2 * i] = words[i]! >> 8;
    out[2 * i + 1] = words[i]! & 0xff;
  }
  return out;
}

/** Dotted quad of 4 bytes at `off`. */
export function formatIPv4(b: Uint8Array, off = 0): string {
  return `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`;
}

/**
 * 16 bytes at `off` as libuv's inet_ntop6 (and so Node) writes them. With `dottedTail` false, an IPv4-mapped
 * or -compatible address is written in hex groups too (`::ffff:c000:201`), the only form spec §2.1 lists.
 */
export function formatIPv6(b: Uint8Array, off = 0, dottedTail = true): string {
  const words: number[] = [];
  for (let i = 0; i < 8; i++) words.push((b[off + 2 * i]! << 8) | b[off + 2 * i + 1]!);
  // The longest run of zero words, the first one on a tie; a single zero word is not compressed.
  let best = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (bestLen < 2) best = -1;
  let out = '';
  for (let i = 0; i < 8; i++) {
    if (best !== -1 && i >= best && i < best + bestLen) {
      if (i === best) out += ':';
      continue;
    }
    if (i !== 0) out += ':';
    // An encapsulated IPv4 address: ::a.b.c.d (96 zero bits) or ::ffff:a.b.c.d (as inet_ntop6 decides it).
    if (dottedTail && i === 6 && best === 0 && (bestLen === 6 || (bestLen === 5 && words[5] === 0xffff))) {
      out += formatIPv4(b, off + 12);
      break;
    }
    out += words[i]!.toString(16);
  }
  if (best !== -1 && best + bestLen === 8) out += ':';
  return out;
}

/** True for the 16 bytes of an IPv4-mapped IPv6 address (::ffff:0:0/96, RFC 4291 §2.5.5.2). */
export function isV4Mapped(b: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return false;
  return b[10] === 0xff && b[11] === 0xff;
}
