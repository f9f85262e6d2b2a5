/**
 * The value shapes the configuration schema is built from: durations (in ms), sizes (in bytes)
 * and host:port addresses, each with its defaults and its error text (./units.ts parses them).
 */
import { z } from 'zod';
import { parseDuration, parseHostPort, parseSize } from './units.js';

export const duration = (def: string, min = 1) =>
  z.union([z.string(), z.number()]).default(def).transform((v, ctx) => {
    const ms = parseDuration(v);
    if (ms === null || ms < min) {
      const what = ms === null ? 'not a duration' : 'must be above zero';
      ctx.addIssue({ code: 'custom', message: `${what}: ${JSON.stringify(v)} (use e.g. 250ms, 30s, 5m, 1h)` });
      return z.NEVER;
    }
    return ms;
  });

export const size = (def: string | number, min = 0) =>
  z.union([z.string(), z.number()]).default(def).transform((v, ctx) => {
    const n = parseSize(v);
    if (n === null || n < min) {
      ctx.addIssue({ code: 'custom', message: `not a size${min ? ` of at least ${min} bytes` : ''}: ${JSON.stringify(v)} (use e.g. 4096, 64k, 10MiB)` });
      return z.NEVER;
    }
    return n;
  });

export const hostPortOf = (allowPortZero: boolean) =>
  z.string().transform((v, ctx) => {
    const hp = parseHostPort(v, allowPortZero);
    if (!hp) {
      ctx.addIssue({ code: 'custom', message: `expected host:port or [ipv6]:port, got ${JSON.stringify(v)}` });
      return z.NEVER;
    }
    return hp;
  });
export const hostPort = hostPortOf(false);
/** Port 0 asks the kernel for a free port (tests, smoke runs). */
export const listenAddress = hostPortOf(true);
