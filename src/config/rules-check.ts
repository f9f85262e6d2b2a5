/**
 * check-config's checks of `route.rules` (the rule router, auth/rules.ts): what the schema alone
 * cannot see. A rule that can never match, a rule without exactly one action, an `auth_http`
 * hand-over without an auth service, a pool that does not exist, and a `to:` that would let AUTH
 * succeed without anyone checking the password.
 */
import { isIP } from 'node:net';
import type { ListenerConfig, RuleConfig, ServerConfig, StaticTarget } from './schema.js';
import { parseHostPort } from './units.js';

/**
 * The problems of one server's `route.rules` (none for another route), with key paths such as
 * `route.rules.rules.2: …` prefixed by `at` (`servers.1.` or '').
 */
export function checkRules(server: ServerConfig, poolNames: ReadonlySet<string>, at: string): string[] {
  if (!('rules' in server.route)) return [];
  const cfg = server.route.rules;
  const base = `${at}route.rules.`;
  const problems: string[] = [];
  const offersAuth = (l: ListenerConfig) => l.smtp_auth.some((m) => m !== 'none');
  const requiresAuth = (l: ListenerConfig) => !l.smtp_auth.includes('none');
  // Sessions are routed at AUTH on these listeners; a `to:` reached then accepts the credentials
  // unchecked, unless the back-end is given them (proxy_smtp_auth) and checks them itself.
  const authRouted = server.listen.some(offersAuth) && server.proxy_smtp_auth === 'off';
  const checkPool = (to: StaticTarget, path: string) => {
    if ('pool' in to && !poolNames.has(to.pool)) {
      const known = poolNames.size > 0 ? `pools has ${[...poolNames].map((n) => JSON.stringify(n)).join(', ')}` : 'no pools are configured';
      problems.push(`${path}: no pool named ${JSON.stringify(to.pool)} (${known})`);
    }
  };

  let catchAll = -1; // the first rule without conditions: every session stops there
  let authCaught = -1; // the first rule that every session routed at AUTH stops at
  cfg.rules.forEach((r, i) => {
    const p = `${base}rules.${i}`;
    if (catchAll >= 0) problems.push(`${p}: can never match: rule ${catchAll} before it has no conditions and matches every session`);

    const actions = [r.to !== undefined && 'to', r.auth_http === true && 'auth_http', r.reject !== undefined && 'reject'].filter((a) => a !== false);
    if (actions.length !== 1) {
      problems.push(`${p}: needs exactly one of to, auth_http or reject (${actions.length === 0 ? 'it has none' : `it has ${actions.join(' and ')}`})`);
    }
    if (r.auth_http === true && cfg.auth_http === undefined) problems.push(`${p}.auth_http: needs route.rules.auth_http, the auth service to hand over to`);
    if (r.to !== undefined) checkPool(r.to, `${p}.to`);

    r.client?.forEach((c, j) => {
      const n = parseNetwork(c);
      if (typeof n === 'string') problems.push(`${p}.client.${j}: ${n}`);
    });
    for (const key of ['rcpt_domain', 'sender_domain'] as const) {
      r[key]?.forEach((d, j) => {
        if (d === '') return; // sender_domain: the null sender
        const name = d.startsWith('*.') ? d.slice(2) : d;
        if (name.split('.').some((label) => label === '')) problems.push(`${p}.${key}.${j}: can never match: ${JSON.stringify(d)} is not a domain (an empty label)`);
      });
    }

    // The listeners the rule can see sessions of.
    let scope: readonly ListenerConfig[] = server.listen;
    if (r.listener !== undefined) {
      const matched = new Set<ListenerConfig>();
      r.listener.forEach((l, j) => {
        const hp = parseHostPort(l, true);
        if (!hp) return problems.push(`${p}.listener.${j}: can never match: expected host:port or [ipv6]:port, got ${JSON.stringify(l)}`);
        const found = server.listen.filter((s) => s.address.port === hp.port && s.address.host.toLowerCase() === hp.host.toLowerCase());
        if (found.length === 0) return problems.push(`${p}.listener.${j}: can never match: ${JSON.stringify(l)} is not in this server's listen`);
        found.forEach((s) => matched.add(s));
      });
      scope = [...matched];
    }
    if (scope.length > 0 && r.authenticated === true && !scope.some(offersAuth)) {
      problems.push(`${p}.authenticated: can never match: no listener ${r.listener ? 'of the rule ' : 'of this server '}offers AUTH (smtp_auth)`);
    }
    if (scope.length > 0 && r.authenticated === false && scope.every(requiresAuth)) {
      problems.push(`${p}.authenticated: can never match: every listener ${r.listener ? 'of the rule ' : 'of this server '}requires AUTH (smtp_auth without none)`);
    }

    // Can a session routed at AUTH (no sender or recipient yet) stop at this rule?
    const seesAuth = authRouted && catchAll < 0 && authCaught < 0 && r.rcpt_domain === undefined && r.sender_domain === undefined
      && r.authenticated !== false && scope.some(offersAuth);
    if (seesAuth && r.to !== undefined) {
      problems.push(`${p}.to: would let AUTH succeed with any password: the rule matches sessions routed at AUTH (it has no rcpt_domain or sender_domain) and only an auth service checks credentials; `
        + 'put an auth_http: true rule for authenticated: true before it, give it authenticated: false, or set proxy_smtp_auth so the back-end checks them');
    }
    if (seesAuth && r.client === undefined && r.listener === undefined) authCaught = i;
    if (catchAll < 0 && conditions(r) === 0) catchAll = i;
  });

  if ('to' in cfg.default) {
    checkPool(cfg.default.to, `${base}default.to`);
    if (authRouted && catchAll < 0 && authCaught < 0) {
      problems.push(`${base}default.to: would let AUTH succeed with any password: sessions routed at AUTH that match no rule go there, and only an auth service checks credentials; `
        + 'put an auth_http: true rule for authenticated: true before it, or set proxy_smtp_auth so the back-end checks them');
    }
  }
  return problems;
}

function conditions(r: RuleConfig): number {
  return [r.rcpt_domain, r.sender_domain, r.client, r.authenticated, r.listener].filter((c) => c !== undefined).length;
}

/** `192.0.2.0/24`, `2001:db8::/32`, or a bare address (/32, /128); a string says what is wrong. */
export function parseNetwork(v: string): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } | string {
  const slash = v.indexOf('/');
  const address = slash < 0 ? v : v.slice(0, slash);
  const kind = isIP(address);
  if (kind === 0) return `not an IPv4 or IPv6 address or network: ${JSON.stringify(v)}`;
  const family = kind === 4 ? 'ipv4' : 'ipv6';
  const bits = kind === 4 ? 32 : 128;
  if (slash < 0) return { address, prefix: bits, family };
  const p = v.slice(slash + 1);
  if (!/^\d{1,3}$/.test(p)) return `not an IPv4 or IPv6 address or network: ${JSON.stringify(v)}`;
  const prefix = Number(p);
  if (prefix > bits) return `can never match: ${JSON.stringify(v)} has a prefix longer than the ${bits} bits of an IPv${kind} address`;
  return { address, prefix, family };
}
