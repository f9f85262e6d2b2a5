/**
 * Recipients per period (limits.recipient_rate, and the `limits.rates` entries that count
 * recipients) as a router layer, before the policy servers and the router: over one, that
 * recipient gets Postfix anvil's `452 4.7.1 Error: too many recipients from <addr>`
 * (smtpd_client_recipient_rate_limit; RFC 5321 §4.5.3.1.10 lets a client send the rest later),
 * or `… to <domain>` for a rule per recipient domain, and the session goes on. Only the RCPTs
 * Postern routes are counted: in session mode the first, in transaction mode every one.
 */
import type { RouterLayer } from '../auth/router.js';
import type { RouteDecision, RouteRequest } from '../domain.js';
import { thenMaybe } from '../limits/limiter.js';
import { firstOver, overDetail, type Over, type RateRule } from '../limits/rules.js';

/** Each rule in order; the first over its limit refuses the recipient with `452 4.7.1` (the session goes on). */
export function recipientRateLayer(rules: readonly RateRule[]): RouterLayer {
  return (inner) => ({
    route(req: RouteRequest): RouteDecision | Promise<RouteDecision> {
      // Routing at AUTH has no recipient.
      if (req.envelope.mailLine === '' || rules.length === 0) return inner.route(req);
      const e = req.envelope;
      const facts = { clientAddr: req.clientAddr, user: e.auth?.user, sender: e.mailFrom, rcpt: e.rcptTo };
      return thenMaybe(firstOver(rules, facts), (o) => (o ? refusal(o) : inner.route(req)));
    },
    close: () => inner.close(),
  });
}

function refusal(o: Over): RouteDecision {
  const reply = o.rule.key === 'rcpt_domain' ? `452 4.7.1 Error: too many recipients to ${o.subject}` : `452 4.7.1 Error: too many recipients from ${o.subject}`;
  return { kind: 'reject', reply, waitMs: 0, reason: overDetail(o), keepOpen: true, code: 'PST_RATE_RECIPIENTS' };
}
