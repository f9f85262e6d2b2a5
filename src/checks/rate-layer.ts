/**
 * Recipients per client address per period (limits.recipient_rate) as a router layer: over it,
 * that recipient gets `452 4.7.1` (Postfix anvil's wording) and the session goes on.
 */
import type { RouterLayer } from '../auth/router.js';
import type { RouteDecision, RouteRequest } from '../domain.js';
import { thenMaybe, type Limiter, type LimitVerdict } from '../limits/limiter.js';
import { clientKey } from '../limits/setup.js';

/** Recipients per client per period: over it, `452 4.7.1` for that recipient (the session goes on). */
export function recipientRateLayer(limiter: Limiter): RouterLayer {
  return (inner) => ({
    route(req: RouteRequest): RouteDecision | Promise<RouteDecision> {
      if (req.envelope.mailLine === '') return inner.route(req);
      const over = (v: LimitVerdict): RouteDecision | Promise<RouteDecision> => (v.allowed
        ? inner.route(req)
        : { kind: 'reject', reply: `452 4.7.1 Error: too many recipients from ${req.clientAddr}`, waitMs: 0, reason: 'limits.recipient_rate', keepOpen: true, code: 'PST_RATE_RECIPIENTS' });
      return thenMaybe(limiter.take(clientKey(req.clientAddr)), over);
    },
    close: () => inner.close(),
  });
}
