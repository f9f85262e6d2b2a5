/** Parsers for the human units used in the YAML config: durations and byte sizes. */

const DURATION = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$/;
const DURATION_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** `"30s"`, `"5m"`, `"250ms"`, `"1h"`; a bare number means seconds (as in nginx). Returns ms, or null. */
export function parseDuration(v: string | number): number | null {
  if (typeof v === 'number') return Number.isFinite(v) && v >= 0 ? Math.round(v * 1000) : null;
  const m = DURATION.exec(v.trim());
  if (!m) return null;
  return Math.round(Number(m[1]) * DURATION_MS[m[2] ?? 's']!);
}

const SIZE = /^(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?$/i;
const SIZE_MULT: Record<string, number> = {
  b: 1, k: 1024, kb: 1000, kib: 1024, m: 1024 ** 2, mb: 1000 ** 2, mib: 1024 ** 2, g: 1024 ** 3, gb: 1000 ** 3, gib: 1024 ** 3,
};

/** `"10MiB"`, `"4k"` (nginx-style k/m are binary), `"1000000"`, or a number of bytes. Returns bytes, or null. */
export function parseSize(v: string | number): number | null {
  if (typeof v === 'number') return Number.isInteger(v) && v >= 0 ? v : null;
  const m = SIZE.exec(v.trim());
  if (!m) return null;
  return Math.floor(Number(m[1]) * SIZE_MULT[(m[2] ?? 'b').toLowerCase()]!);
}

/** Splits `host:port` or `[v6]:port`. Returns null when malformed. */
export function parseHostPort(v: string, allowPortZero = false): { host: string; port: number } | null {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^\s:[\]]+)):(\d{1,5})$/.exec(v.trim());
  if (!m) return null;
  const port = Number(m[3]);
  if (port > 65535 || (port === 0 && !allowPortZero)) return null;
  return { host: (m[1] ?? m[2])!, port };
}
