/**
 * DNS block and allow lists, scored as Postfix's postscreen scores them (postscreen_dnsbl_sites,
 * postscreen_dnsbl_threshold): every configured list entry whose zone lists the client (an A answer
 * that passes the entry's filter) adds its weight; the client is blocked when the sum reaches the
 * threshold. Allowlists have negative weights (`list.dnswl.org*-5`) and `allow: true`: a client that one
 * of them lists is never blocked (it "skips the block"), whatever the sum.
 *
 * - All zones are queried in parallel through the ClientResolver (its servers, timeouts and cache). Two
 *   entries with the same zone share one query; each entry is still scored on its own (postscreen does so).
 * - Query names: reversed octets for IPv4 (`4.3.2.1.zone`), 32 reversed nibbles for IPv6; an
 *   IPv4-mapped IPv6 client is queried as IPv4.
 * - Filters (`match`): exact IPv4 answers (`127.0.0.2`) or postscreen's octet patterns, `127.0.0.[2..11]`
 *   (range) and `127.0.0.[2;4;8]` (list). Without `match`, an answer counts when it is in 127.0.0.0/8, except
 *   127.255.255.0/24, which lists such as Spamhaus use for "query refused / over quota" answers; an answer
 *   that does not count is not a listing, and one outside 127/8 is reported in `errors`.
 * - A list that times out, SERVFAILs or misses the deadline counts as not listing the client and is
 *   reported in `errors` as `zone: CODE`.
 *
 * check() never rejects and resolves by the deadline (default: the resolver's deadlineMs).
 */
import type { ClientResolver } from './resolver.js';
import { dnsblName, normalizeZone, parseAddress } from './names.js';

export interface DnsblList {
  zone: string;
  /** Added to the score when the zone lists the client; negative for allowlists. Default 1. */
  weight?: number;
  /** An allowlist: a client it lists is never blocked. */
  allow?: boolean;
  /** Answers that count (exact, or postscreen's `[a..b]` / `[a;b]` octet patterns); default: see above. */
  match?: string[];
}

export interface DnsblOptions {
  lists: DnsblList[];
  /** Blocked at this score or more (postscreen_dnsbl_threshold). Default 1. */
  threshold?: number;
  /** Bound on one check(). Default: the resolver's deadlineMs. */
  deadlineMs?: number;
}

export interface DnsblHit {
  zone: string;
  /** The first answer that counted. */
  answer: string;
  weight: number;
  allow: boolean;
}

export interface DnsblResult {
  /** Blocked: score ≥ threshold and no allowlist lists the client. */
  listed: boolean;
  /** An allowlist listed the client. */
  allowlisted: boolean;
  score: number;
  hits: DnsblHit[];
  errors: string[];
}

type OctetMatcher = (n: number) => boolean;

/** A filter pattern as a matcher of dotted IPv4 answers; throws on a malformed pattern (configuration). */
export function compileMatch(pattern: string): (answer: string) => boolean {
  // Split on the dots between octets, not the `..` of a range.
  const parts = typeof pattern === 'string' ? pattern.match(/\[[^\]]*\]|[^.[\]]+|(?<=^|\.)(?=\.|$)/g) ?? [] : [];
  if (parts.length !== 4 || parts.join('.') !== pattern) throw new Error(`bad DNSBL filter ${JSON.stringify(pattern)}`);
  const octet = (s: string): number => {
    if (!/^\d{1,3}$/.test(s) || Number(s) > 255) throw new Error(`bad DNSBL filter ${JSON.stringify(pattern)}`);
    return Number(s);
  };
  const matchers: OctetMatcher[] = parts.map((p) => {
    let m = /^\[(\d{1,3})\.\.(\d{1,3})\]$/.exec(p);
    if (m) {
      const lo = octet(m[1]!), hi = octet(m[2]!);
      return (n) => n >= lo && n <= hi;
    }
    m = /^\[([\d;]+)\]$/.exec(p);
    if (m) {
      const set = new Set(m[1]!.split(';').map(octet));
      return (n) => set.has(n);
    }
    const v = octet(p);
    return (n) => n === v;
  });
  return (answer) => {
    const o = answer.split('.');
    return o.length === 4 && o.every((s, i) => /^\d{1,3}$/.test(s) && matchers[i]!(Number(s)));
  };
}

function defaultMatch(answer: string): boolean {
  return answer.startsWith('127.') && !answer.startsWith('127.255.255.');
}

/** postscreen's site syntax, `zone[=filter]*weight` (e.g. `list.dnswl.org=127.0.[0..255].[1..3]*-5`), as a list entry. */
export function parseDnsblSite(site: string, allow?: boolean): DnsblList {
  const m = /^([^=*]+)(?:=([^*]+))?(?:\*(-?\d+))?$/.exec(site.trim());
  if (!m) throw new Error(`bad DNSBL site ${JSON.stringify(site)}`);
  const weight = m[3] === undefined ? 1 : Number(m[3]);
  const out: DnsblList = { zone: m[1]!, weight, allow: allow ?? weight < 0 };
  if (m[2] !== undefined) out.match = [m[2]];
  return out;
}

interface CompiledList {
  zone: string;
  weight: number;
  allow: boolean;
  match: (answer: string) => boolean;
}

/** Weight sum of the entries that listed the client, and the verdict (pure; see the module comment). */
export function score(hits: readonly DnsblHit[], threshold: number): { listed: boolean; allowlisted: boolean; score: number } {
  const total = hits.reduce((s, h) => s + h.weight, 0);
  const allowlisted = hits.some((h) => h.allow);
  return { listed: !allowlisted && total >= threshold, allowlisted, score: total };
}

export class DnsblChecker {
  readonly #resolver: ClientResolver;
  readonly #lists: CompiledList[];
  readonly #threshold: number;
  readonly #deadlineMs: number;

  /** Throws on a bad configuration (zone that is not a domain name, malformed filter). */
  constructor(resolver: ClientResolver, o: DnsblOptions) {
    this.#resolver = resolver;
    this.#threshold = o.threshold ?? 1;
    this.#deadlineMs = o.deadlineMs ?? resolver.deadlineMs;
    this.#lists = o.lists.map((l) => {
      const zone = normalizeZone(l.zone);
      if (zone === undefined) throw new Error(`bad DNSBL zone ${JSON.stringify(l.zone)}`);
      const weight = l.weight ?? 1;
      if (!Number.isFinite(weight)) throw new Error(`bad DNSBL weight for ${zone}`);
      const matchers = l.match?.map(compileMatch);
      return { zone, weight, allow: l.allow ?? false, match: matchers ? (a) => matchers.some((m) => m(a)) : defaultMatch };
    });
  }

  async check(addr: string): Promise<DnsblResult> {
    const errors: string[] = [];
    const hits: DnsblHit[] = [];
    try {
      const a = parseAddress(addr);
      if (!a) return { listed: false, allowlisted: false, score: 0, hits, errors: ['invalid client address'] };
      const deadline = Date.now() + this.#deadlineMs;
      const zones = [...new Set(this.#lists.map((l) => l.zone))];
      const answers = new Map(await Promise.all(zones.map(async (z) => [z, await this.#resolver.lookup('A', dnsblName(a, z), deadline)] as const)));
      const reported = new Set<string>();
      for (const l of this.#lists) {
        const r = answers.get(l.zone)!;
        if (r.kind === 'temp') {
          if (!reported.has(l.zone)) errors.push(`${l.zone}: ${r.code}`);
          reported.add(l.zone);
          continue;
        }
        if (r.kind === 'none') continue;
        const answer = r.values.find(l.match);
        if (answer !== undefined) hits.push({ zone: l.zone, answer, weight: l.weight, allow: l.allow });
        const odd = r.values.filter((v) => !v.startsWith('127.'));
        if (odd.length && !reported.has(l.zone)) {
          errors.push(`${l.zone}: unexpected answer ${odd.join(',')}`);
          reported.add(l.zone);
        }
      }
      return { ...score(hits, this.#threshold), hits, errors };
    } catch (err) {
      errors.push(`internal: ${(err as Error)?.message ?? String(err)}`);
      return { ...score(hits, this.#threshold), hits, errors };
    }
  }
}
