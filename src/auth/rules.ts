/**
 * `route: { rules: … }`: the built-in rule router. An ordered list of rules, each a set of
 * conditions and one action; the first rule whose every condition holds decides, and a session
 * that matches none gets `rules.default`. Rules are compiled once, at construction (a BlockList
 * per rule, domain sets, listener sets, frozen decisions), so route() only compares.
 *
 * Conditions (a rule may have any of them; all it has must hold):
 *  - `rcpt_domain`: the domain of the recipient being routed (envelope.rcptTo, after the last
 *    `@`, lower-cased). `example.com` matches exactly that domain; `*.example.com` matches any
 *    subdomain (`a.example.com`, `b.a.example.com`) but not `example.com` itself — list both for
 *    both. A recipient without `@` (`postmaster`) or with an address literal (`u@[192.0.2.1]`)
 *    matches no domain.
 *  - `sender_domain`: the same for the sender (envelope.mailFrom); `""` matches the null sender
 *    `<>` and nothing else. A non-null sender without `@` matches no domain.
 *  - `client`: the client address is in one of the networks (CIDR, or a bare address for /32 or
 *    /128). IPv4 and IPv6; an IPv4-mapped IPv6 client (`::ffff:192.0.2.1`) matches IPv4 networks,
 *    and an IPv4 client matches `::ffff:…` networks (node:net BlockList). A client address that
 *    is not an IP address matches no network.
 *  - `authenticated`: true holds when the session has authenticated (envelope.auth is set),
 *    false when it has not.
 *  - `listener`: the session came in on one of these listeners (RouteRequest.listener, compared
 *    with each entry as written, as `host:port` and, for IPv6, as `[host]:port`).
 *
 * A session routed at AUTH (envelope.auth set, mailLine '') has no sender or recipient yet: a
 * rule with `rcpt_domain` or `sender_domain` never matches it (not even `sender_domain: [""]`).
 *
 * Actions: `to: host:port` or `to: <pool>` (a pool decision has host '' and port 0), `reject:
 * "550 5.7.1 …"` (reason `rule N`, N counted from 0 as in `route.rules.rules.N`), or
 * `auth_http: true`, which hands the request to the auth_http router given to the constructor
 * (the only case where route() returns a Promise). check-config's checks are in
 * config/rules-check.ts.
 */
import { BlockList, isIP } from 'node:net';
import type { RulesConfig, RuleConfig, StaticTarget } from '../config/schema.js';
import { parseNetwork } from '../config/rules-check.js';
import { parseHostPort } from '../config/units.js';
import type { RouteDecision, RouteRequest, Router } from './router.js';

/** The domains of one `rcpt_domain` or `sender_domain` list. */
interface DomainMatcher {
  exact: ReadonlySet<string>;
  /** `*.example.com` stored as `.example.com`. */
  suffixes: readonly string[];
}

interface CompiledRule {
  authenticated: boolean | undefined;
  listeners: ReadonlySet<string> | null;
  rcpt: DomainMatcher | null;
  sender: DomainMatcher | null;
  client: BlockList | null;
  /** The decision, or null for `auth_http: true`. */
  decision: RouteDecision | null;
}

export class RuleRouter implements Router {
  readonly #rules: readonly CompiledRule[];
  readonly #default: RouteDecision;
  readonly #authHttp: Router | null;

  /**
   * @param authHttp the router `auth_http: true` hands over to, built by the caller from
   *   `rules.auth_http`; null when there is none (then no rule may say `auth_http: true`).
   * @throws Error on a rule that check-config refuses and that cannot be compiled (no action or
   *   more than one, `auth_http: true` without a router, a malformed network).
   */
  constructor(cfg: RulesConfig, authHttp: Router | null) {
    this.#authHttp = authHttp;
    this.#rules = cfg.rules.map((r, i) => compileRule(r, i, authHttp !== null));
    this.#default = 'to' in cfg.default ? targetDecision(cfg.default.to) : rejectDecision(cfg.default.reject, 'default');
  }

  route(req: RouteRequest): RouteDecision | Promise<RouteDecision> {
    const env = req.envelope;
    const authenticated = env.auth !== undefined;
    const noEnvelope = authenticated && env.mailLine === '';
    // Worked out at most once per request, and only when a rule asks.
    let rcpt: string | null | undefined;
    let sender: string | null | undefined;
    let family = -1;
    for (const rule of this.#rules) {
      if (rule.authenticated !== undefined && rule.authenticated !== authenticated) continue;
      if (rule.listeners !== null && (req.listener === undefined || !rule.listeners.has(req.listener))) continue;
      if (rule.rcpt !== null) {
        if (noEnvelope) continue;
        if (rcpt === undefined) rcpt = domainOf(env.rcptTo);
        if (rcpt === null || !domainMatches(rule.rcpt, rcpt)) continue;
      }
      if (rule.sender !== null) {
        if (noEnvelope) continue;
        if (sender === undefined) sender = env.mailFrom === '' ? '' : domainOf(env.mailFrom);
        if (sender === null || !domainMatches(rule.sender, sender)) continue;
      }
      if (rule.client !== null) {
        if (family === -1) family = isIP(req.clientAddr);
        if (family === 0 || !rule.client.check(req.clientAddr, family === 4 ? 'ipv4' : 'ipv6')) continue;
      }
      return rule.decision ?? this.#authHttp!.route(req);
    }
    return this.#default;
  }

  async close(): Promise<void> {
    await this.#authHttp?.close();
  }
}

function compileRule(r: RuleConfig, index: number, haveAuthHttp: boolean): CompiledRule {
  const actions = (r.to !== undefined ? 1 : 0) + (r.auth_http === true ? 1 : 0) + (r.reject !== undefined ? 1 : 0);
  if (actions !== 1) throw new Error(`route.rules.rules.${index}: needs exactly one of to, auth_http or reject`);
  if (r.auth_http === true && !haveAuthHttp) throw new Error(`route.rules.rules.${index}: auth_http: true needs route.rules.auth_http`);
  let client: BlockList | null = null;
  if (r.client !== undefined) {
    client = new BlockList();
    for (const net of r.client) {
      const n = parseNetwork(net);
      if (typeof n === 'string') throw new Error(`route.rules.rules.${index}.client: ${n}`);
      client.addSubnet(n.address, n.prefix, n.family);
    }
  }
  return {
    authenticated: r.authenticated,
    listeners: r.listener === undefined ? null : listenerSet(r.listener),
    rcpt: r.rcpt_domain === undefined ? null : domainMatcher(r.rcpt_domain),
    sender: r.sender_domain === undefined ? null : domainMatcher(r.sender_domain),
    client,
    decision: r.to !== undefined ? targetDecision(r.to) : r.reject !== undefined ? rejectDecision(r.reject, `rule ${index}`) : null,
  };
}

function targetDecision(to: StaticTarget): RouteDecision {
  return Object.freeze('pool' in to ? { kind: 'ok', host: '', port: 0, pool: to.pool } : { kind: 'ok', host: to.host, port: to.port });
}

function rejectDecision(reply: string, reason: string): RouteDecision {
  return Object.freeze({ kind: 'reject', reply, waitMs: 0, reason });
}

function domainMatcher(list: readonly string[]): DomainMatcher {
  const exact = new Set<string>();
  const suffixes: string[] = [];
  for (const d of list) {
    const lower = d.toLowerCase();
    if (lower.startsWith('*.')) suffixes.push(lower.slice(1));
    else exact.add(lower);
  }
  return { exact, suffixes: [...new Set(suffixes)] };
}

function domainMatches(m: DomainMatcher, domain: string): boolean {
  if (m.exact.has(domain)) return true;
  for (const s of m.suffixes) if (domain.length > s.length && domain.endsWith(s)) return true;
  return false;
}

/** The lower-cased domain of an address (after its last `@`), or null when it has none. */
export function domainOf(address: string): string | null {
  const at = address.lastIndexOf('@');
  if (at < 0 || at === address.length - 1) return null;
  return address.slice(at + 1).toLowerCase();
}

/** Each listener as written, as `host:port` and, for IPv6, as `[host]:port` (host lower-cased too). */
function listenerSet(list: readonly string[]): ReadonlySet<string> {
  const set = new Set<string>();
  for (const l of list) {
    set.add(l);
    set.add(l.trim());
    const hp = parseHostPort(l, true);
    if (!hp) continue;
    for (const host of new Set([hp.host, hp.host.toLowerCase()])) {
      set.add(`${host}:${hp.port}`);
      if (host.includes(':')) set.add(`[${host}]:${hp.port}`);
    }
  }
  return set;
}
