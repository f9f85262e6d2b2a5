/**
 * Rate rules: `limits.rates` entries (and the `connection_rate` / `recipient_rate` shorthands),
 * each a rate limiter with the key it counts per. Where each count is taken, and what it answers:
 *
 *   connections    at accept (../net/server.ts)           421 4.7.0 … too many connections from <addr>
 *   messages       at MAIL, a stage check (../checks/message-rate.ts)   450 4.7.1 … too much mail from …
 *   recipients     at RCPT, a router layer (../checks/rate-layer.ts)    452 4.7.1 … too many recipients …
 *   auth_failures  refused logins, at AUTH (../auth/failure-guard.ts)   421 4.7.0 … Too many authentication failures
 *
 * The texts are Postfix anvil's (smtpd.c: smtpd_client_connection_rate_limit,
 * smtpd_client_message_rate_limit, smtpd_client_recipient_rate_limit): anvil counts per client
 * address only; here a rule may also count per network, AUTH user, sender or recipient domain.
 *
 * Keys (ruleKey): `client` is the address key of ./keys.ts (IPv4 /32, IPv6 /64), `client_net`
 * the network key (/24, /48); `user`, `sender`, `sender_domain`, `rcpt_domain` are lower-cased
 * (ASCII only, as Postfix's lowercase()), the null sender `<>` counts as `<>`, and a session with
 * no user is not counted by a `user` rule at all. A key that is long (over 200 bytes) or has
 * bytes outside printable ASCII is replaced by its SHA-256 (`sha256 <base64url>`: the space
 * never occurs in a key kept as it is, so the two kinds cannot collide). Every rule has a limiter
 * of its own (`rates.<index>`, the store's key prefix), so rules never share counters.
 *
 * Rules of one count are asked in order; the first over its limit answers, and the rules after it
 * are not counted for that event (cheapest first, and a refused client does not use up, say, a
 * recipient domain's allowance). A limiter that fails lets the event through, as a store that is
 * down does (./guard.ts).
 */
import { createHash } from 'node:crypto';
import type { RateCount, RateKey } from '../config/schema.js';
import { clientKeys, plainAddress } from './keys.js';
import type { Limiter, MaybePromise } from './limiter.js';

export interface RateRule {
  /** Where it is configured: `limits.rates.2`, `limits.connection_rate`, `limits.recipient_rate`. */
  readonly name: string;
  readonly count: RateCount;
  readonly key: RateKey;
  readonly limiter: Limiter;
}

/** What a key is made from; what is not known at that point is absent. */
export interface KeyFacts {
  clientAddr: string;
  /** The AUTH user; absent (or empty) when the session has not authenticated. */
  user?: string | undefined;
  /** The MAIL FROM address, `''` for the null sender. */
  sender?: string | undefined;
  /** The RCPT TO address. */
  rcpt?: string | undefined;
}

/** A rule over its limit, with the key it was over for and the name the reply gives it. */
export interface Over {
  rule: RateRule;
  key: string;
  /** `192.0.2.7`, `<s@example.org>`, `example.org`, `alice@example.com`. */
  subject: string;
}

export const MAX_KEY_BYTES = 200;
/** Longest name of a key in a reply or a log detail (a sender may be 4 KiB long). */
const MAX_SUBJECT = 100;
const NULL_SENDER = '<>';

/** ASCII letters only, as Postfix's lowercase(): bytes above 0x7f stay as they are. */
export function lowerAscii(s: string): string {
  return s.replace(/[A-Z]+/g, (m) => m.toLowerCase());
}

/** The domain after the last `@`; an address without one (`postmaster`) stands for itself. */
function domainPart(addr: string): string {
  const at = addr.lastIndexOf('@');
  return lowerAscii(at >= 0 && at < addr.length - 1 ? addr.slice(at + 1) : addr);
}

/** A key as the store gets it: itself when short and printable, else its SHA-256. */
export function boundedKey(s: string): string {
  if (s.length <= MAX_KEY_BYTES && /^[\x21-\x7e]*$/.test(s)) return s;
  // The strings are latin1-decoded command bytes: hash the bytes the client sent.
  return `sha256 ${createHash('sha256').update(Buffer.from(s, 'latin1')).digest('base64url')}`;
}

/** The raw (unbounded) value a rule counts under, or null when the rule does not apply. */
function rawKey(kind: RateKey, f: KeyFacts): string | null {
  switch (kind) {
    case 'client':
      return clientKeys(f.clientAddr)[0] ?? f.clientAddr;
    case 'client_net': {
      const k = clientKeys(f.clientAddr);
      return k[1] ?? k[0] ?? f.clientAddr;
    }
    case 'user':
      return f.user ? lowerAscii(f.user) : null;
    case 'sender':
      if (f.sender === undefined) return null;
      return f.sender === '' ? NULL_SENDER : lowerAscii(f.sender);
    case 'sender_domain':
      if (f.sender === undefined) return null;
      return f.sender === '' ? NULL_SENDER : domainPart(f.sender);
    case 'rcpt_domain':
      return f.rcpt === undefined || f.rcpt === '' ? null : domainPart(f.rcpt);
  }
}

/** The key a rule of kind `kind` counts this event under, or null when it does not apply (no user). */
export function ruleKey(kind: RateKey, f: KeyFacts): string | null {
  const k = rawKey(kind, f);
  return k === null ? null : boundedKey(k);
}

/** How a reply names the key: the address (as anvil does), the sender in brackets, the domain or the user. */
export function subjectOf(kind: RateKey, f: KeyFacts): string {
  let s: string;
  if (kind === 'client' || kind === 'client_net') s = plainAddress(f.clientAddr);
  else if (kind === 'sender') s = `<${f.sender ?? ''}>`;
  else s = rawKey(kind, f) ?? '';
  return s.length > MAX_SUBJECT ? `${s.slice(0, MAX_SUBJECT)}...` : s;
}

/**
 * Counts the event for each rule that applies, in order, and answers with the first over its
 * limit (null: none is). Synchronous while the limiters are.
 */
export function firstOver(rules: readonly RateRule[], f: KeyFacts, from = 0): MaybePromise<Over | null> {
  for (let i = from; i < rules.length; i++) {
    const rule = rules[i]!;
    const key = ruleKey(rule.key, f);
    if (key === null) continue;
    const v = rule.limiter.take(key);
    if (v instanceof Promise) {
      const next = i + 1;
      return v.then(
        (x) => (x.allowed ? firstOver(rules, f, next) : { rule, key, subject: subjectOf(rule.key, f) }),
        () => firstOver(rules, f, next),
      );
    }
    if (!v.allowed) return { rule, key, subject: subjectOf(rule.key, f) };
  }
  return null;
}

/** The rules' detail for a log line: `limits.rates.2 (sender <s@example.org>)`. */
export function overDetail(o: Over): string {
  return `${o.rule.name} (${o.rule.key} ${o.subject})`;
}
