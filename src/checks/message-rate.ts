/**
 * Messages per period (the `limits.rates` entries with `count: messages`) as a stage check at
 * MAIL FROM, asked before the policy servers. Postfix's smtpd_client_message_rate_limit counts
 * MAIL FROM requests and refuses the one over the limit with
 * `450 4.7.1 Error: too much mail from <addr>`; the same text here, naming the client address
 * for `client` and `client_net` rules, the sender (`<s@example.org>`, `<>`), its domain, or the
 * AUTH user for the others. The MAIL is refused, the session goes on (RFC 5321 §4.2.5: a 4yz to
 * MAIL leaves the client free to try again later or with another sender).
 *
 * Only the MAILs Postern answers itself are counted: every one in transaction mode or with
 * `envelope_after_auth`, the first of the session in session mode (after the hand-off the
 * back-end sees the rest).
 */
import type { CheckRequest, CheckVerdict } from '../domain.js';
import { thenMaybe, type MaybePromise } from '../limits/limiter.js';
import { firstOver, overDetail, type RateRule } from '../limits/rules.js';
import type { StageCheck } from './stage.js';

const PASS: CheckVerdict = Object.freeze({ kind: 'pass' });

export function messageRateCheck(rules: readonly RateRule[]): StageCheck {
  return {
    name: 'limits.rates (messages)',
    stages: ['mail'],
    check(req: CheckRequest): MaybePromise<CheckVerdict> {
      if (req.stage !== 'mail') return PASS;
      const facts = { clientAddr: req.clientAddr, user: req.envelope.auth?.user, sender: req.envelope.mailFrom };
      return thenMaybe(firstOver(rules, facts), (o): CheckVerdict => (o
        ? { kind: 'reject', reply: `450 4.7.1 Error: too much mail from ${o.subject}`, code: 'PST_RATE_MESSAGES', reason: overDetail(o) }
        : PASS));
    },
  };
}
