/**
 * nginx's value syntaxes (times, sizes, listen addresses, the auth_http URL, resolver
 * addresses) turned into the strings Postern's schema takes.
 */

const TIME_MS: Record<string, number> = {
  ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 7 * 86_400_000, M: 30 * 86_400_000, y: 365 * 86_400_000,
};

/** ngx_parse_time: `60`, `5s`, `500ms`, `1h30m`, `1h 30m`; a bare number is seconds. Returns ms, or null. */
export function nginxTime(v: string): number | null {
  const s = v.trim();
  if (!/^(\d+(ms|[yMwdhms])?\s*)+$/.test(s)) return null;
  let ms = 0;
  const parts = [...s.matchAll(/(\d+)(ms|[yMwdhms])?/g)];
  for (const [i, m] of parts.entries()) {
    // Only the last number may go without a unit (ngx_parse_time takes it as seconds).
    if (m[2] === undefined && i !== parts.length - 1) return null;
    ms += Number(m[1]) * TIME_MS[m[2] ?? 's']!;
  }
  return ms;
}

/** Milliseconds as a Postern duration, in the largest unit that divides it: `90s`, `5m`, `250ms`. */
export function duration(ms: number): string {
  for (const [unit, n] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) {
    if (ms > 0 && ms % n === 0) return `${ms / n}${unit}`;
  }
  return `${ms}ms`;
}

/** ngx_parse_size: `4096`, `4k`, `1m`, `1g`. Returns bytes, or null. */
export function nginxSize(v: string): number | null {
  const m = /^(\d+)([kKmMgG]?)$/.exec(v.trim());
  if (!m) return null;
  return Number(m[1]) * ({ '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2]!.toLowerCase()] ?? 1);
}

/** A listen address as Postern writes it (`0.0.0.0:25`, `[::]:25`), or why it cannot be. */
export function listenAddress(v: string): { address: string; port: number } | { error: string } {
  if (v.startsWith('unix:')) return { error: 'Postern listens on TCP only, not on unix sockets' };
  let m = /^(\d{1,5})$/.exec(v) ?? /^\*:(\d{1,5})$/.exec(v);
  if (m) return port(Number(m[1]), '0.0.0.0');
  m = /^\[([0-9A-Fa-f:.]+)\]:(\d{1,5})$/.exec(v);
  if (m) return port(Number(m[2]), `[${m[1]}]`);
  m = /^([A-Za-z0-9.-]+):(\d{1,5})$/.exec(v);
  if (m) return port(Number(m[2]), m[1]!);
  return { error: 'an address without a port (Postern needs address:port)' };
}

function port(p: number, host: string): { address: string; port: number } | { error: string } {
  if (p < 1 || p > 65535) return { error: `port ${p} is out of range` };
  return { address: `${host}:${p}`, port: p };
}

/** nginx infers the protocol of a server without `protocol` from its ports. */
export function protocolOfPort(p: number): 'smtp' | 'imap' | 'pop3' | null {
  if ([25, 465, 587].includes(p)) return 'smtp';
  if ([143, 993].includes(p)) return 'imap';
  if ([110, 995].includes(p)) return 'pop3';
  return null;
}

/** nginx's `auth_http` URL (an optional `http://`, a default path of `/`) as a full URL, or why not. */
export function authHttpUrl(v: string): { url: string } | { error: string } {
  if (v.startsWith('unix:')) return { error: 'Postern asks auth services over TCP only (http:// or https://), not unix sockets' };
  const rest = v.replace(/^http:\/\//i, '');
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(rest)) return { error: 'nginx takes only http:// URLs here' };
  const url = `http://${rest.includes('/') ? rest : `${rest}/`}`;
  try {
    const u = new URL(url);
    return u.hostname ? { url } : { error: 'no host in the URL' };
  } catch {
    return { error: 'not a URL' };
  }
}

/** One `resolver` address as Postern's resolver.servers takes it, or null for a host name. */
export function resolverAddress(v: string): string | null {
  if (/^[0-9.]+(:\d{1,5})?$/.test(v)) return v;
  const m = /^\[([0-9A-Fa-f:.]+)\](:\d{1,5})?$/.exec(v);
  if (m) return m[2] ? v : m[1]!;
  if (/^[0-9A-Fa-f:]+$/.test(v) && v.includes(':')) return v;
  return null;
}

/** `on`/`off` of an nginx flag, or null for anything else. */
export function flag(v: string | undefined): boolean | null {
  if (v === 'on') return true;
  if (v === 'off') return false;
  return null;
}
