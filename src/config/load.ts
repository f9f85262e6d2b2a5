/**
 * Reads, validates and freezes the configuration. Errors name the key path
 * (`route.auth_http.url: Invalid URL`) so `postern check-config` reads like `nginx -t`.
 */
import { readFileSync } from 'node:fs';
import { parseDocument } from 'yaml';
import type { z } from 'zod';
import { checkRules, parseNetwork } from './rules-check.js';
import { configSchema, SERVER_KEYS, serverSchema, type Config, type ServerConfig } from './schema.js';

export class ConfigError extends Error {
  constructor(readonly file: string, readonly problems: string[]) {
    super(`${file}: ${problems.length} problem${problems.length === 1 ? '' : 's'}\n  ${problems.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}

/** Parses YAML text into a frozen, normalised Config, or throws ConfigError listing every problem. */
export function parseConfig(text: string, file = '<config>'): Readonly<Config> {
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(file, doc.errors.map((e) => `YAML: ${e.message.split('\n')[0]}`));
  }
  const raw: unknown = doc.toJS() ?? {};
  const result = configSchema.safeParse(raw);
  if (!result.success) throw new ConfigError(file, result.error.issues.map((i) => describeIssue(i)));
  const { servers: blocks, ...top } = result.data;
  const problems: string[] = [];
  let servers: ServerConfig[];
  if (blocks === undefined) {
    servers = [pickServer(top)];
    problems.push(...crossCheck(servers[0]!, ''));
  } else {
    if (isRecord(raw) && 'listen' in raw) problems.push('listen: with servers, every server has its own listen (a top-level listen would be ignored)');
    servers = resolveServers(isRecord(raw) ? raw : {}, blocks, problems);
    servers.forEach((srv, i) => problems.push(...crossCheck(srv, `servers.${i}.`)));
  }
  problems.push(...listenersUnique(servers, blocks === undefined), ...poolProblems(top.pools));
  const poolNames = new Set(Object.keys(top.pools));
  servers.forEach((srv, i) => problems.push(...routeProblems(srv, poolNames, blocks === undefined ? '' : `servers.${i}.`)));
  servers.forEach((srv, i) => problems.push(...checkProtocolProblems(srv, top.pools, blocks === undefined ? '' : `servers.${i}.`)));
  if (problems.length > 0) throw new ConfigError(file, [...new Set(problems)]);
  return deepFreeze({ ...top, servers, serverBlocks: blocks !== undefined });
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Settings whose value is an object: a server block's keys are merged over the top level's, one level deep. */
const MERGED = new Set(['auth', 'tls', 'backend_tls', 'timeouts']);

function pickServer(top: Record<string, unknown>): ServerConfig {
  const out: Record<string, unknown> = {};
  for (const k of SERVER_KEYS) if (top[k] !== undefined) out[k] = top[k];
  return out as ServerConfig;
}

/**
 * Each server block inherits what it does not set from the top level, as nginx's `server {}`
 * inherits from `mail {}`. Problems in a block's own keys are named inside it
 * (`servers.1.route.auth_http.url`); inherited ones were already reported at the top level.
 */
function resolveServers(raw: Record<string, unknown>, blocks: Record<string, unknown>[], problems: string[]): ServerConfig[] {
  const defaults: Record<string, unknown> = {};
  for (const k of SERVER_KEYS) if (k in raw && k !== 'listen') defaults[k] = raw[k];
  return blocks.map((block, i) => {
    const merged: Record<string, unknown> = { ...defaults };
    for (const [k, v] of Object.entries(block)) {
      merged[k] = MERGED.has(k) && isRecord(v) && isRecord(defaults[k]) ? { ...defaults[k], ...v } : v;
    }
    if (!('listen' in block)) problems.push(`servers.${i}.listen: a server needs its own listen`);
    const r = serverSchema.safeParse(merged);
    if (r.success) return r.data;
    for (const issue of r.error.issues) {
      const own = issue.path.length === 0 || String(issue.path[0]) in block;
      problems.push(describeIssue(issue, own ? ['servers', i] : []));
    }
    return serverSchema.parse({ listen: ['127.0.0.1:0'] });
  });
}

export function loadConfig(file: string): Readonly<Config> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(file, [`cannot read: ${(err as Error).message}`]);
  }
  return parseConfig(text, file);
}

/** A pool's servers are distinct, and it has a primary to prefer over its backups. */
function poolProblems(pools: Config['pools']): string[] {
  const problems: string[] = [];
  for (const [name, p] of Object.entries(pools)) {
    const seen = new Set<string>();
    p.servers.forEach((s, i) => {
      const key = `${s.address.host}:${s.address.port}`;
      if (seen.has(key)) problems.push(`pools.${name}.servers.${i}: ${key} is listed twice`);
      seen.add(key);
    });
    if (p.servers.every((s) => s.backup)) problems.push(`pools.${name}.servers: every server is a backup; backups are used only when no primary is usable`);
    if (p.hash !== undefined && p.balance !== 'hash') problems.push(`pools.${name}.hash: only used with balance: hash`);
    if (p.health.starttls && p.health.protocol !== 'smtp') problems.push(`pools.${name}.health.starttls: the ${p.health.protocol} check has no STARTTLS; reach the servers with backend_tls.mode: implicit to check them over TLS`);
  }
  return problems;
}

/**
 * A pool reached by a static route is checked in the protocol of the server that routes to it:
 * SMTP checks would mark a pool of IMAP or POP3 servers down (and the reverse). Pools named by
 * the auth service are not known here (docs/configuration.md, "health.protocol").
 */
function checkProtocolProblems(srv: ServerConfig, pools: Config['pools'], at: string): string[] {
  const r = srv.route;
  if (!('static' in r) || !('pool' in r.static)) return [];
  const p = pools[r.static.pool];
  if (!p || !p.health.enabled || p.health.protocol === srv.protocol) return [];
  return [`${at}route.static: pool ${JSON.stringify(r.static.pool)} is checked with ${p.health.protocol} (health.protocol) but this server speaks ${srv.protocol}: set pools.${r.static.pool}.health.protocol: ${srv.protocol}`];
}

/** A route that names a pool names one that exists. */
function routeProblems(srv: ServerConfig, pools: ReadonlySet<string>, at: string): string[] {
  const r = srv.route;
  if ('rules' in r) return checkRules(srv, pools, at);
  if ('static' in r && 'pool' in r.static && !pools.has(r.static.pool)) return [`${at}route.static: no pool named ${JSON.stringify(r.static.pool)} (a back-end is host:port; a pool is defined under pools)`];
  return [];
}

/** The same address may not be bound twice, in one server or across servers. */
function listenersUnique(servers: readonly ServerConfig[], implicit: boolean): string[] {
  const problems: string[] = [];
  const seen = new Set<string>();
  servers.forEach((srv, s) => srv.listen.forEach((l, i) => {
    const key = `${l.address.host}:${l.address.port}`;
    if (l.address.port !== 0 && seen.has(key)) problems.push(`${implicit ? '' : `servers.${s}.`}listen.${i}: ${key} is listed twice`);
    seen.add(key);
  }));
  return problems;
}

/** Rules that involve more than one key of one server; `at` prefixes the key paths. */
function crossCheck(c: ServerConfig, at: string): string[] {
  const problems: string[] = [];
  if (c.greeting_delay >= c.timeouts.idle) {
    problems.push(`greeting_delay: must be shorter than timeouts.idle (${c.timeouts.idle} ms), or every client times out before the greeting`);
  }
  const tlsListeners = c.listen.filter((l) => l.starttls !== 'off' || l.implicit_tls);
  if (tlsListeners.length > 0 && c.tls.certificates.length === 0) {
    problems.push('tls.certificates: a listener uses STARTTLS or implicit TLS, so at least one certificate is needed');
  }
  c.listen.forEach((l, i) => {
    if (l.implicit_tls && l.starttls !== 'off') problems.push(`listen.${i}: starttls makes no sense on an implicit_tls listener`);
  });
  if ((c.checks.reverse_dns || c.checks.dnsbl) && !c.resolver) {
    problems.push(`checks: ${c.checks.reverse_dns ? 'reverse_dns' : 'dnsbl'} needs resolver.servers, the DNS servers to ask (the system's are never used)`);
  }
  c.listen.forEach((l, i) => {
    // An open PROXY listener would let any client claim any address (beyond-nginx.md §3.3, AWS NLB).
    if (l.proxy_protocol && c.set_real_ip_from.length === 0) problems.push(`listen.${i}.proxy_protocol: needs set_real_ip_from, the load balancers allowed to send the header`);
  });
  if (c.protocol !== 'smtp') {
    // IMAP and POP3 are proxied as nginx does: one login, one back-end, then the byte relay.
    if (c.proxy_mode === 'transaction') problems.push("proxy_mode: transaction is SMTP's (every recipient routed); IMAP and POP3 sessions are relayed after their login");
    c.checks.policy.forEach((p, i) => {
      const smtpOnly = p.stages.filter((st) => st !== 'connect');
      if (smtpOnly.length) problems.push(`checks.policy.${i}.stages: ${smtpOnly.join(', ')} ${smtpOnly.length === 1 ? 'is an SMTP stage' : 'are SMTP stages'}; IMAP and POP3 servers ask policy servers at connect only`);
    });
  }
  if (c.backend_reuse.enabled && c.proxy_mode !== 'transaction') problems.push('backend_reuse.enabled: needs proxy_mode: transaction (in session mode the client\'s own QUIT ends the back-end connection)');
  c.set_real_ip_from.forEach((n, i) => {
    const parsed = parseNetwork(n);
    if (typeof parsed === 'string') problems.push(`set_real_ip_from.${i}: ${parsed}`);
  });
  c.checks.policy.forEach((p, i) => {
    // In session mode the bytes after the first RCPT go to the back-end blind: no DATA to hold, no message to change.
    if (c.proxy_mode !== 'transaction' && p.stages.includes('data')) problems.push(`checks.policy.${i}.stages: data needs proxy_mode: transaction (in session mode DATA goes to the back-end unseen)`);
    if (c.proxy_mode !== 'transaction' && p.prepend) problems.push(`checks.policy.${i}.prepend: adding headers needs proxy_mode: transaction (in session mode the message is relayed unseen)`);
  });
  if ((c.tls.verify_client === 'on' || c.tls.verify_client === 'optional') && !c.tls.client_ca) {
    problems.push(`tls.client_ca: verify_client ${c.tls.verify_client} needs a CA bundle to verify against`);
  }
  c.listen.forEach((l, i) => {
    const auth = l.smtp_auth.some((m) => m !== 'none');
    if (auth && 'static' in c.route) {
      problems.push(`listen.${i}.smtp_auth: AUTH needs route.auth_http (or route.rules handing AUTH to an auth service) to check credentials (the static route cannot)`);
    }
    if (auth && l.auth_plaintext && l.starttls === 'only') {
      problems.push(`listen.${i}.auth_plaintext: contradicts starttls: only, which refuses AUTH before TLS`);
    }
    if (auth && !l.smtp_auth.includes('none') && !l.auth_plaintext && l.starttls === 'off' && !l.implicit_tls) {
      problems.push(`listen.${i}.smtp_auth: AUTH is required but can never be used here (no TLS and no auth_plaintext): every MAIL would get 530`);
    }
  });
  return problems.map((p) => at + p);
}

function describeIssue(issue: z.core.$ZodIssue, prefix: PropertyKey[] = []): string {
  const at = [...prefix, ...issue.path];
  const path = at.length ? at.join('.') : '(top level)';
  if (issue.code === 'unrecognized_keys') return `${path}: unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => JSON.stringify(k)).join(', ')}`;
  if (issue.code === 'invalid_union') {
    // Explain the alternative the user most likely meant: the one that got furthest.
    const branch = bestBranch(issue.errors);
    if (branch) return branch.map((i) => describeIssue(i, at)).join('\n  ');
    if (path === 'route') return `route: expected exactly one of "static: host:port" (or a pool name), "auth_http: {url: ...}" or "rules: {rules: [...]}"`;
  }
  return `${path}: ${issue.message}`;
}

/** The union branch whose errors are not just "wrong type here" or "this key is not mine". */
function bestBranch(branches: z.core.$ZodIssue[][]): z.core.$ZodIssue[] | undefined {
  const plausible = branches.filter(
    (b) => b.length > 0 && !b.some((i) => i.path.length === 0 && (i.code === 'invalid_type' || i.code === 'unrecognized_keys')),
  );
  return plausible.length === 1 ? plausible[0] : undefined;
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object' && !Object.isFrozen(o)) {
    Object.freeze(o);
    for (const v of Object.values(o)) deepFreeze(v);
  }
  return o;
}
