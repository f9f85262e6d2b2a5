/**
 * The DNS checks at connect: the client's forward-confirmed name and the blocklists, asked in
 * parallel through the configured resolver (nginx's `resolver`; Postfix's smtpd and postscreen),
 * each within the resolver's deadline. What they find goes to the access record.
 */
import type { ChecksConfig, ResolverConfig } from '../config/schema.js';
import type { ConnectChecks, ConnectingClient, ConnectVerdict } from './connect.js';
import { DnsblChecker } from './dns/dnsbl.js';
import { ClientResolver, UNAVAILABLE } from './dns/resolver.js';

export function dnsConnectChecks(resolver: ResolverConfig, checks: ChecksConfig): ConnectChecks {
  const r = new ClientResolver({ servers: [...resolver.servers], timeoutMs: resolver.timeout, deadlineMs: resolver.deadline });
  const lists = checks.dnsbl
    ? new DnsblChecker(r, { lists: checks.dnsbl.lists.map((l) => ({ zone: l.zone, weight: l.weight, allow: l.allow, ...(l.match ? { match: [...l.match] } : {}) })), threshold: checks.dnsbl.threshold })
    : null;
  return {
    async check({ addr }: ConnectingClient): Promise<ConnectVerdict> {
      const [name, bl] = await Promise.all([checks.reverse_dns ? r.clientName(addr) : UNAVAILABLE, lists ? lists.check(addr) : null]);
      const record: Record<string, unknown> = {};
      if (bl) record.dnsbl = { score: bl.score, ...(bl.hits.length ? { hits: bl.hits.map((h) => `${h.zone}=${h.answer}`) } : {}), ...(bl.errors.length ? { errors: bl.errors } : {}) };
      if (bl?.listed) {
        return { name, record, refuse: { code: 'PST_DNSBL_LISTED', detail: `score ${bl.score}: ${bl.hits.filter((h) => !h.allow).map((h) => `${h.zone} (${h.answer})`).join(', ')}` } };
      }
      return bl ? { name, record } : { name };
    },
  };
}
