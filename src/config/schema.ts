/**
 * The one schema for Postern's YAML configuration: every setting, its default and its check.
 * docs/configuration.md documents each key; the output is normalised (durations in ms, sizes in
 * bytes, addresses split) and frozen by load.ts.
 */
import os from 'node:os';
import { z } from 'zod';
import { parseHostPort } from './units.js';
import { duration, hostPort, listenAddress, size } from './fields.js';
import { checks, rate, RATE_KEYS_OF, rateRule, resolver } from './schema-checks.js';
import { imapSettings, pop3Settings } from './schema-mailbox.js';

export { RATE_COUNTS, RATE_KEYS, RATE_KEYS_OF, type RateCount, type RateKey } from './schema-checks.js';
import { logSchema } from '../log/schema.js';

const starttls = z.enum(['off', 'on', 'only']);

/** A user or group: its name, or its numeric id (src/service/privileges.ts resolves it). */
const principal = z.union([
  z.int().min(0).max(4294967294),
  z.string().regex(/^[^\s:/]+$/, 'a user or group name (no spaces, colons or slashes), or a numeric id'),
]);

const listener = z.union([
  listenAddress.transform((address) => ({ address, starttls: 'off' as const, implicit_tls: false, smtp_auth: ['none' as const], auth_plaintext: false, proxy_protocol: false })),
  z.strictObject({
    address: listenAddress,
    /** STARTTLS (RFC 3207) like nginx's `starttls`; `only` refuses MAIL and RCPT before TLS (nginx does not). */
    starttls: starttls.default('off'),
    /** TLS from the first byte, the port-465 style (nginx `listen … ssl`). */
    implicit_tls: z.boolean().default(false),
    /** SMTP AUTH mechanisms (nginx `smtp_auth`); `none` allows unauthenticated mail (the MX case). */
    smtp_auth: z.array(z.enum(['none', 'plain', 'login', 'cram-md5', 'external', 'xoauth2', 'oauthbearer'])).min(1).default(['none'])
      .transform((list) => [...new Set(list)]),
    /** Offer and accept AUTH before TLS (off: AUTH only after STARTTLS or on implicit TLS). */
    auth_plaintext: z.boolean().default(false),
    /**
     * Every connection starts with a PROXY protocol header, v1 or v2 (nginx `listen … proxy_protocol`),
     * accepted only from the networks in `set_real_ip_from`; its source is the client everywhere.
     */
    proxy_protocol: z.boolean().default(false),
  }),
]);

const tlsVersion = z.enum(['TLSv1.2', 'TLSv1.3']);

const tls = z.strictObject({
  /** Certificate chains and keys (PEM files). The first is the default; the others are chosen by SNI from their names. */
  certificates: z.array(z.strictObject({ cert: z.string().min(1), key: z.string().min(1) })).default([]),
  /** Protocol floor (nginx `ssl_protocols`; TLS 1.0/1.1 are never offered). */
  min_version: tlsVersion.default('TLSv1.2'),
  /** OpenSSL cipher list for TLS 1.2 (nginx `ssl_ciphers`); TLS 1.3 suites are OpenSSL's defaults. */
  ciphers: z.string().min(1).optional(),
  /** Session resumption: ticket and cache lifetime (nginx `ssl_session_timeout`). */
  session_timeout: duration('5m'),
  /** Client certificates, as nginx's `ssl_verify_client`. */
  verify_client: z.enum(['off', 'on', 'optional', 'optional_no_ca']).default('off'),
  /** CA bundle for client certificates (nginx `ssl_client_certificate`). */
  client_ca: z.string().min(1).optional(),
  /** Longest accepted client chain below the CA (nginx `ssl_verify_depth`). */
  verify_depth: z.int().min(1).max(10).default(1),
  /** Send the client certificate to the auth service as Auth-SSL-Cert (nginx `auth_http_pass_client_cert`). */
  pass_client_cert: z.boolean().default(false),
  /** Passwords of encrypted keys, one a line, each tried in turn (nginx `ssl_password_file`). */
  password_file: z.string().min(1).optional(),
});

/** TLS from Postern to the back-end (nginx has none). */
const backendTls = z.strictObject({
  /** off; opportunistic: STARTTLS when offered; required: STARTTLS or 451; implicit: TLS from the first byte. */
  mode: z.enum(['off', 'opportunistic', 'required', 'implicit']).default('off'),
  /** CA bundle to verify the back-end's certificate (default: the system's). */
  ca: z.string().min(1).optional(),
  /** Verify the back-end's certificate and name; false is an explicit opt-out. */
  verify: z.boolean().default(true),
  /** Name expected in the back-end's certificate (default: the route's host). */
  server_name: z.string().regex(/^[A-Za-z0-9.-]+$/).optional(),
  min_version: tlsVersion.default('TLSv1.2'),
});

/** Extensions that need Postern's own support before the hand-off, so may not be listed verbatim. */
const RESERVED_CAPS = ['CHUNKING', 'STARTTLS', 'AUTH', 'XCLIENT', 'XFORWARD', 'BDAT'];

const capability = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9-]*( [\x21-\x7e]+)*$/, 'an EHLO keyword with optional parameters').refine(
  (c) => !RESERVED_CAPS.includes(c.split(' ')[0]!.toUpperCase()),
  { message: `${RESERVED_CAPS.join(', ')} cannot be listed: Postern cannot honour them before the hand-off (clients of nginx lost mail this way, Mailu #1766)` },
);

const headerName = z.string().regex(/^[A-Za-z0-9-]+$/, 'header names may contain only letters, digits and "-"');
const headerValue = z.string().regex(/^[\t\x20-\x7e\x80-\xff]*$/, 'header values may not contain control characters');

const authHttp = z.strictObject({
  url: z.url({ protocol: /^https?$/ }),
  /** Extra headers on every request (nginx `auth_http_header`), e.g. a shared secret. */
  headers: z.record(headerName, headerValue).default({}),
  /** Keep-alive connections to the auth service per worker. */
  max_connections: z.int().min(1).max(1024).default(64),
  /** How many `Auth-Status: WAIT` answers are followed with a new request before giving up. */
  max_wait_retries: z.int().min(0).max(100).default(10),
  /**
   * Authenticated sessions too: Auth-SMTP-Helo at AUTH, then a second request at the first RCPT
   * with Auth-SMTP-From/To, whose answer routes the mail (nginx asks once, at AUTH, and never
   * shows the envelope of authenticated sessions).
   */
  envelope_after_auth: z.boolean().default(false),
  /** Largest response header block accepted (nginx: a fixed 1024 bytes). */
  max_header_size: size('16k', 1024),
});

/** A pool name: letters, digits, `-`, `_`, `.`; never holds a colon, so it cannot be mistaken for host:port. */
const poolName = z.string().regex(/^[A-Za-z][A-Za-z0-9._-]*$/, 'a pool name (a letter, then letters, digits, ".", "_", "-")');

/** `static: host:port`, or `static: <pool name>` (a value without a colon names a pool). */
const staticTarget = z.string().transform((v, ctx) => {
  if (!v.includes(':') && /^[A-Za-z][A-Za-z0-9._-]*$/.test(v)) return { pool: v };
  const hp = parseHostPort(v, false);
  if (!hp) {
    ctx.addIssue({ code: 'custom', message: `expected host:port or [ipv6]:port, got ${JSON.stringify(v)}` });
    return z.NEVER;
  }
  return hp;
});

const domainPattern = z.string().regex(/^(\*\.)?[A-Za-z0-9.-]+$/, 'a domain, or *.domain for its subdomains').transform((d) => d.toLowerCase());
const cidr = z.string().regex(/^[0-9A-Fa-f.:]+(\/\d{1,3})?$/, 'an address or network, e.g. 192.0.2.0/24 or 2001:db8::/32');

/** One rule of the built-in router: every condition given must hold; the first matching rule decides. */
const rule = z.strictObject({
  /** Recipient domains (exact, or `*.example.com` for the subdomains). */
  rcpt_domain: z.array(domainPattern).min(1).optional(),
  /** Sender domains, as rcpt_domain; `<>` (the null sender) is matched by "". */
  sender_domain: z.array(z.union([domainPattern, z.literal('')])).min(1).optional(),
  /** Client networks (CIDR). */
  client: z.array(cidr).min(1).optional(),
  /** The session has (true) or has not (false) authenticated. */
  authenticated: z.boolean().optional(),
  /** Listener addresses (host:port as in `listen`) the session came in on. */
  listener: z.array(z.string()).min(1).optional(),
  /** Where the mail goes: a pool or host:port (as `static`) … */
  to: staticTarget.optional(),
  /** … or ask the auth service (route.rules.auth_http) … */
  auth_http: z.literal(true).optional(),
  /** … or refuse with this reply, e.g. "550 5.7.1 Relaying denied". */
  reject: z.string().regex(/^[45]\d\d [\x20-\x7e]+$/, 'an SMTP reply: a 4xx or 5xx code and printable text').optional(),
});

const rules = z.strictObject({
  /** Ordered: the first rule whose conditions all hold decides. */
  rules: z.array(rule).min(1),
  /** The auth service that `auth_http: true` rules hand over to. */
  auth_http: authHttp.optional(),
  /** What a session that matches no rule gets (default: refused, 550 5.7.1). */
  default: z.union([z.strictObject({ to: staticTarget }), z.strictObject({ reject: z.string().regex(/^[45]\d\d [\x20-\x7e]+$/) })]).default({ reject: '550 5.7.1 Relaying denied' }),
});

const route = z.union([
  z.strictObject({ static: staticTarget }),
  z.strictObject({ auth_http: authHttp }),
  z.strictObject({ rules }),
]);

const poolServer = z.union([
  hostPort.transform((address) => ({ address, weight: 1, backup: false, max_connections: 0 })),
  z.strictObject({
    address: hostPort,
    /** Relative share of the sessions (nginx `weight`). */
    weight: z.int().min(1).max(1000).default(1),
    /** Used only when no primary server is usable. */
    backup: z.boolean().default(false),
    /** Most back-end connections at once per worker (0: no limit; nginx `max_conns`). */
    max_connections: z.int().min(0).default(0),
  }),
]);

/** A named pool of back-ends (process-wide: every server block may send to it). */
const pool = z.strictObject({
  servers: z.array(poolServer).min(1),
  /** nginx's smooth weighted round robin, least connections, or a consistent (ketama) hash. */
  balance: z.enum(['round_robin', 'least_conn', 'hash']).default('round_robin'),
  /** With balance: hash, what the ring is keyed on. */
  hash: z.enum(['rcpt_domain', 'sender_domain', 'client', 'user']).optional(),
  /** Active checks: connect, 220, EHLO, QUIT (STARTTLS too with starttls: true), run once per instance. */
  health: z.strictObject({
    enabled: z.boolean().default(true),
    /** Between checks of one server (HAProxy `inter` 2s; a mail back-end needs less). */
    interval: duration('10s'),
    /** One whole check, connect to the reply to QUIT. */
    timeout: duration('5s'),
    /** Good checks in a row that bring a down server back (HAProxy `rise`). */
    rise: z.int().min(1).max(100).default(2),
    /** Failed checks in a row that take a server down (HAProxy `fall`). */
    fall: z.int().min(1).max(100).default(3),
    /** Also STARTTLS and verify the certificate as backend_tls would (SMTP checks only). */
    starttls: z.boolean().default(false),
    /**
     * What the check speaks: `smtp` (connect, EHLO, QUIT), or for a pool of IMAP or POP3 servers
     * `imap` (greeting, LOGOUT) or `pop3` (greeting, QUIT).
     */
    protocol: z.enum(['smtp', 'imap', 'pop3']).default('smtp'),
  }).prefault({}),
  /** Failed sessions within fail_timeout that take a server out for fail_timeout (nginx `max_fails`, `fail_timeout`). */
  max_fails: z.int().min(0).max(1000).default(1),
  fail_timeout: duration('10s'),
  /** Distinct servers one session may try before the client gets 451 (0: every server). */
  max_tries: z.int().min(0).max(100).default(3),
  /** All tries of one session together, well under the client's 5-minute RCPT wait (RFC 5321 §4.5.3.2.3). */
  try_timeout: duration('60s'),
});

const timeouts = z.strictObject({
  /** Client idle before the hand-off (nginx `timeout`; RFC 5321 §4.5.3.2.7 asks for ≥ 5 min). */
  idle: duration('5m'),
  /** One auth_http request, connect to last header (nginx `auth_http_timeout`). */
  auth: duration('30s'),
  /** Back-end connect plus the whole replay (nginx covers this with `timeout`). */
  backend: duration('30s'),
  /** The client's TLS handshake (nginx covers it with `timeout`); the back-end's falls under `backend`. */
  handshake: duration('30s'),
  /** No bytes either way after the hand-off (nginx `proxy_timeout`; RFC 5321 §4.5.3.2.6 DATA termination is 10 min). */
  relay_idle: duration('10m'),
  /** How long SIGTERM waits for sessions to finish before closing them. */
  shutdown: duration('30s', 0),
  /** A PROXY protocol header must have arrived whole within this (Postfix and HAProxy: 5 s). */
  proxy_protocol: duration('5s'),
});

/** Every setting a server block may override; at top level they are the defaults of every server. */
const serverShape = {
  /**
   * What the server's listeners speak (nginx's `protocol` in a mail `server {}`): `smtp`, or a
   * mailbox protocol — `imap` or `pop3` — proxied to the user's back-end after login.
   */
  protocol: z.enum(['smtp', 'imap', 'pop3']).default('smtp'),
  /** IMAP settings (protocol: imap). */
  imap: imapSettings,
  /** POP3 settings (protocol: pop3). */
  pop3: pop3Settings,
  /** Name in the greeting, the HELO/EHLO reply and Postern's own EHLO to the back-end (nginx `server_name`). */
  server_name: z.string().regex(/^[A-Za-z0-9.-]+$/, 'a host name').default(() => os.hostname().replace(/[^A-Za-z0-9.-]/g, '') || 'localhost'),
  /**
   * Tell the back-end who the client is: SMTP with Postfix's XCLIENT (ADDR, PORT, NAME, HELO, PROTO
   * as advertised); IMAP with `ID ("x-originating-ip" …)`; POP3 with XCLIENT where the greeting
   * offers it (Dovecot, to peers in its login_trusted_networks).
   */
  xclient: z.boolean().default(true),
  /** Authenticate to the back-end with the session's credentials instead of XCLIENT LOGIN= (nginx `proxy_smtp_auth`, which can only send PLAIN; Exchange needs LOGIN). */
  proxy_smtp_auth: z.enum(['off', 'plain', 'login']).default('off'),
  /**
   * Keep back-end connections between sessions (transaction mode): a finished session's connection
   * is reset and the next session to that back-end goes on with it (XCLIENT for its client), as
   * Postfix's smtp_connection_cache_on_demand; bounds as Postfix's smtp_connection_cache_time_limit,
   * smtp_connection_reuse_count_limit and smtp_connection_reuse_time_limit.
   */
  backend_reuse: z.strictObject({
    enabled: z.boolean().default(false),
    /** An idle kept connection is closed after this. */
    idle: duration('2s'),
    /** Sessions one connection carries at most. */
    max_sessions: z.int().min(1).max(100_000).default(100),
    /** A connection older than this is not kept again. */
    max_age: duration('300s'),
    /** Kept connections per back-end server and worker. */
    per_backend: z.int().min(1).max(10_000).default(64),
  }).prefault({}),
  /** Peers allowed to send a PROXY protocol header on `proxy_protocol` listeners (nginx `set_real_ip_from`; CIDR or address). */
  set_real_ip_from: z.array(cidr).default([]),
  /** Send a PROXY protocol header to the back-end first (nginx `proxy_protocol on|v2`), for Postfix's `smtpd_upstream_proxy_protocol = haproxy` or postscreen. */
  proxy_protocol: z.enum(['off', 'v1', 'v2']).default('off'),
  /** Show the back-end's own reply text when it refuses a replay step (nginx `proxy_pass_error_message`). */
  proxy_pass_error_message: z.boolean().default(false),
  /** EHLO keywords advertised before the hand-off; `SIZE` gets max_message_size appended. */
  capabilities: z.array(capability).default(['PIPELINING', '8BITMIME', 'SIZE', 'ENHANCEDSTATUSCODES']),
  /** Largest SIZE= accepted at MAIL (RFC 1870); 0 = no limit. The back-end enforces the real size. */
  max_message_size: size('10MiB'),
  /** Longest command line before the hand-off, CRLF included (nginx `smtp_client_buffer`; RFC 5321 minimum 512). */
  max_line_length: size(4096, 512),
  /** Error replies before the session is closed (nginx `max_errors`); 0 = unlimited. */
  max_errors: z.int().min(0).default(10),
  /** Refuse MAIL until the client has sent HELO/EHLO (RFC 5321 §4.1.4). */
  require_helo: z.boolean().default(true),
  /** Hold the greeting this long and reject clients that talk first (nginx `smtp_greeting_delay`). */
  greeting_delay: duration('0s', 0),
  /** Limits on SMTP AUTH (nginx has none: a brute-force guard). */
  auth: z.strictObject({
    /** Failed AUTH attempts in one session before it is closed. */
    max_attempts: z.int().min(1).max(100).default(3),
    /** Failed AUTH attempts from one client address within failure_window (per worker) before AUTH is refused. */
    max_failures_per_client: z.int().min(1).default(20),
    failure_window: duration('10m'),
  }).prefault({}),
  listen: z.array(listener).min(1).prefault(['127.0.0.1:2525']),
  route: route.default({ static: { host: '127.0.0.1', port: 25 } }),
  tls: tls.prefault({}),
  backend_tls: backendTls.prefault({}),
  timeouts: timeouts.prefault({}),
  /**
   * `session`: nginx's blind relay after the first route (the default: an nginx auth service sees exactly
   * nginx's requests). `transaction`: every RCPT is routed and every message of the session may go to
   * another back-end (docs/configuration.md, "proxy_mode").
   */
  proxy_mode: z.enum(['session', 'transaction']).default('session'),
  /** DNS servers for reverse names and blocklists (nginx `resolver`); needed by checks.reverse_dns and checks.dnsbl. */
  resolver: resolver.optional(),
  /** Checks before the back-end: reverse DNS and blocklists at connect. */
  checks: checks.prefault({}),
};

/** One `servers:` entry after the top-level defaults are merged in (nginx's `server {}` inheriting from `mail {}`). */
export const serverSchema = z.strictObject(serverShape);

/** The keys of a server block, for load.ts to merge defaults and to report paths. */
export const SERVER_KEYS: readonly string[] = Object.keys(serverShape);

export const configSchema = z.strictObject({
  ...serverShape,
  /** Worker processes (nginx `worker_processes`): a number, or `auto` for one per CPU core. */
  workers: z.union([z.int().min(1).max(256), z.literal('auto')]).default(1),
  /** Run as this user once the ports are bound and the keys read, when started as root (nginx `user`); a name or a uid. */
  user: principal.optional(),
  /** …and this group (nginx `user`'s second word); default: the user's primary group. */
  group: principal.optional(),
  /** Connection caps (nginx: worker_connections; per-address caps need a stream{} limit_conn in nginx). */
  limits: z.strictObject({
    /** Open client connections per worker; more are told 421 and closed (0: no limit). */
    max_connections: z.int().min(0).default(20_000),
    /** Open connections from one client address (0: no limit); bounds slowloris-style holding. Counted in `store`. */
    max_connections_per_client: z.int().min(0).default(0),
    /**
     * Where per-client counters live: `memory` (each worker its own), `cluster` (shared by the
     * workers of this instance), or `{ redis: host:port }` (shared by every instance; if Redis is
     * down or slow, each process limits in memory meanwhile and says so once).
     */
    store: z.union([z.literal('memory'), z.literal('cluster'), z.strictObject({ redis: hostPort })]).default('memory'),
    /** New connections per client address per period; more are told 421 4.7.0 and closed. */
    connection_rate: rate.optional(),
    /** Recipients per client address per period; more get 452 4.7.1 (Postfix's anvil wording). */
    recipient_rate: rate.optional(),
    /** Rates per client address, network, user, sender or recipient domain (src/limits/rules.ts). */
    rates: z.array(rateRule).optional(),
  }).superRefine((l, ctx) => {
    for (const [i, r] of (l.rates ?? []).entries()) {
      const keys = RATE_KEYS_OF[r.count];
      if (!keys.includes(r.key)) ctx.addIssue({ code: 'custom', path: ['rates', i, 'key'], message: `${r.count} are not counted per ${r.key} (one of: ${keys.join(', ')})` });
    }
  }).prefault({}),
  log: logSchema,
  /** The primary's (or the single process's) pid, written at start and removed at stop. */
  pid_file: z.string().min(1).optional(),
  /** Named pools of back-ends, for `route.static`, the rules and the auth service's `X-Postern-Pool`. */
  pools: z.record(poolName, pool).default({}),
  /** Prometheus metrics, health endpoints and the status page on their own listener (absent: none). */
  metrics: z.strictObject({ listen: listenAddress.prefault('127.0.0.1:9325') }).optional(),
  /**
   * nginx-style server blocks: each with its own listeners and any of the settings above; what a
   * block leaves out it takes from the top level. Absent: the top level is the one server.
   */
  servers: z.array(z.record(z.string(), z.unknown())).min(1).optional(),
});

export type ServerConfig = z.output<typeof serverSchema>;
/** The whole file: the top-level settings, and `servers` resolved by load.ts (always at least one). */
export type Config = Omit<z.output<typeof configSchema>, 'servers'> & {
  servers: readonly ServerConfig[];
  /** The file has `servers:` (key paths of a server's problems then start with `servers.N.`). */
  serverBlocks: boolean;
};

export type AuthHttpConfig = z.output<typeof authHttp>;
export type TlsConfig = z.output<typeof tls>;
export type BackendTlsConfig = z.output<typeof backendTls>;
export type ListenerConfig = z.output<typeof listener>;
export type PoolConfig = z.output<typeof pool>;
export type RulesConfig = z.output<typeof rules>;
export type RuleConfig = z.output<typeof rule>;
export type StaticTarget = z.output<typeof staticTarget>;
export type ResolverConfig = z.output<typeof resolver>;
export type ChecksConfig = z.output<typeof checks>;
