/**
 * Reads, validates and freezes the configuration. Errors name the key path
 * (`route.auth_http.url: Invalid URL`) so `postern check-config` reads like `nginx -t`.
 */
import { readFileSync } from 'node:fs';
import { parseDocument } from 'yaml';
import type { z } from 'zod';
import { configSchema, type Config } from './schema.js';

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
  const problems = crossCheck(result.data);
  if (problems.length > 0) throw new ConfigError(file, problems);
  return deepFreeze(result.data);
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

/** Rules that involve more than one key. */
function crossCheck(c: Config): string[] {
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
  if ((c.tls.verify_client === 'on' || c.tls.verify_client === 'optional') && !c.tls.client_ca) {
    problems.push(`tls.client_ca: verify_client ${c.tls.verify_client} needs a CA bundle to verify against`);
  }
  c.listen.forEach((l, i) => {
    const auth = l.smtp_auth.some((m) => m !== 'none');
    if (auth && !('auth_http' in c.route)) {
      problems.push(`listen.${i}.smtp_auth: AUTH needs route.auth_http to check credentials (the static route cannot)`);
    }
    if (auth && l.auth_plaintext && l.starttls === 'only') {
      problems.push(`listen.${i}.auth_plaintext: contradicts starttls: only, which refuses AUTH before TLS`);
    }
    if (auth && !l.smtp_auth.includes('none') && !l.auth_plaintext && l.starttls === 'off' && !l.implicit_tls) {
      problems.push(`listen.${i}.smtp_auth: AUTH is required but can never be used here (no TLS and no auth_plaintext): every MAIL would get 530`);
    }
  });
  const seen = new Set<string>();
  c.listen.forEach((l, i) => {
    const key = `${l.address.host}:${l.address.port}`;
    if (l.address.port !== 0 && seen.has(key)) problems.push(`listen.${i}: ${key} is listed twice`);
    seen.add(key);
  });
  return problems;
}

function describeIssue(issue: z.core.$ZodIssue, prefix: PropertyKey[] = []): string {
  const at = [...prefix, ...issue.path];
  const path = at.length ? at.join('.') : '(top level)';
  if (issue.code === 'unrecognized_keys') return `${path}: unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => JSON.stringify(k)).join(', ')}`;
  if (issue.code === 'invalid_union') {
    // Explain the alternative the user most likely meant: the one that got furthest.
    const branch = bestBranch(issue.errors);
    if (branch) return branch.map((i) => describeIssue(i, at)).join('\n  ');
    if (path === 'route') return `route: expected exactly one of "static: host:port" or "auth_http: {url: ...}"`;
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
