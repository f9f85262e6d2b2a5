/**
 * The schema of the checks before the back-end (resolver, checks: reverse DNS, blocklists, policy
 * servers) and of the rate rules (limits.rates), part of ./schema.ts.
 */
import { z } from 'zod';
import { duration } from './fields.js';

/** A rate: `max` events per `per`, with `burst` more allowed once per period of that length. */
export const rate = z.strictObject({
  max: z.int().min(1),
  per: duration('1m', 1000).refine((ms) => ms % 1000 === 0, 'a whole number of seconds'),
  burst: z.int().min(0).default(0),
});

/** What a `limits.rates` entry counts, and what it counts per (docs/configuration.md, "limits"). */
export const RATE_COUNTS = ['connections', 'messages', 'recipients', 'auth_failures'] as const;
export const RATE_KEYS = ['client', 'client_net', 'user', 'sender', 'sender_domain', 'rcpt_domain'] as const;
export type RateCount = (typeof RATE_COUNTS)[number];
export type RateKey = (typeof RATE_KEYS)[number];

/**
 * The keys each count can be kept per: what is known where it is counted. At accept only the
 * address; at MAIL also the user and the sender; at RCPT the recipient too; a refused AUTH has
 * an address and the user it tried (Postfix anvil counts connections, messages and recipients
 * per client address only).
 */
export const RATE_KEYS_OF: Readonly<Record<RateCount, readonly RateKey[]>> = {
  connections: ['client', 'client_net'],
  messages: ['client', 'client_net', 'user', 'sender', 'sender_domain'],
  recipients: RATE_KEYS,
  auth_failures: ['client', 'client_net', 'user'],
};

/** One `limits.rates` entry: `max` of `count` per `per` and per `key`, with `burst`. */
export const rateRule = z.strictObject({
  count: z.enum(RATE_COUNTS),
  key: z.enum(RATE_KEYS),
  ...rate.shape,
});

/** nginx's `resolver`: the DNS servers for client names and blocklists (never the system's). */
export const resolver = z.strictObject({
  servers: z.array(z.string().regex(/^(\[[0-9A-Fa-f:.]+\]:\d{1,5}|[0-9A-Fa-f:.]+)$/, 'ip, ip:port or [ipv6]:port')).min(1),
  /** One try of one query (c-ares). */
  timeout: duration('1s'),
  /** One whole lookup (a client's name, or all blocklists), tries included (nginx `resolver_timeout`). */
  deadline: duration('5s'),
});

const dnsblList = z.strictObject({
  zone: z.string().regex(/^[A-Za-z0-9.-]+$/, 'a DNS zone'),
  /** Added to the score when the zone lists the client (postscreen_dnsbl_sites `*weight`); negative for allowlists. */
  weight: z.int().min(-100).max(100).default(1),
  /** An allowlist: a client it lists skips the blocklists. */
  allow: z.boolean().default(false),
  /** Answers that count, e.g. 127.0.0.2 or postscreen's 127.0.0.[2..11]; default: any 127/8 but 127.255.255.x. */
  match: z.array(z.string().min(1)).min(1).optional(),
});

export const checks = z.strictObject({
  /** Forward-confirmed reverse DNS (as Postfix): Client-Host, XCLIENT NAME and the access record get the name. */
  reverse_dns: z.boolean().default(false),
  /** DNS blocklists and allowlists, asked at connect, in parallel, scored as postscreen does. */
  dnsbl: z.strictObject({
    lists: z.array(dnsblList).min(1),
    /** Blocked at this score or more (postscreen_dnsbl_threshold). */
    threshold: z.int().min(1).max(1000).default(1),
  }).optional(),
  /** Postfix policy servers (check_policy_service), asked in order at each of their stages. */
  policy: z.array(z.strictObject({
    /** `tcp:host:port`, `host:port` or `unix:/path`. */
    server: z.string().regex(/^(tcp:|inet:|unix:\/)?[\x21-\x7e]+$/, 'tcp:host:port, host:port or unix:/path'),
    /** When the server is down, slow or answers garbage: `defer` (Postfix's 451 4.3.5) or `dunno` (go on). */
    default: z.enum(['defer', 'dunno']).default('defer'),
    /** One request, connect to reply (Postfix smtpd_policy_service_timeout is 100 s). */
    timeout: duration('10s'),
    /** Connections kept open to it per worker, one request at a time each (Postfix: one per smtpd process). */
    connections: z.int().min(1).max(1000).default(16),
    /**
     * Where it is asked (Postfix's protocol_state): at connect, HELO/EHLO, MAIL, RCPT, DATA.
     * `data` needs proxy_mode: transaction (in session mode DATA goes to the back-end blind).
     */
    stages: z.array(z.enum(['connect', 'helo', 'mail', 'rcpt', 'data'])).min(1).default(['rcpt']).transform((a) => [...new Set(a)]),
    /** What HOLD, FILTER, REDIRECT, DISCARD, BCC… count as, which a proxy cannot carry out: go on, or refuse (4xx / 5xx). */
    unsupported: z.enum(['dunno', 'defer', 'reject']).default('dunno'),
    /** Add the header lines of its PREPEND answers to the message (transaction mode only): the one change Postern makes to a message. */
    prepend: z.boolean().default(false),
  })).default([]),
});
