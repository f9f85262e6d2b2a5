/**
 * The AUTH brute-force guard as a router layer (nginx has none): a client address that has had
 * `auth.max_failures_per_client` logins refused within `auth.failure_window` is refused at its
 * next AUTH before the auth service is asked (421 4.7.0, PST_AUTH_TOO_MANY). Refused logins are
 * counted; refused recipients are not.
 */
import type { RouteDecision, RouteRequest } from '../domain.js';
import { thenMaybe as then, type Limiter } from '../limits/limiter.js';
import type { Router, RouterLayer } from './router.js';

export function authFailureGuard(limiter: Limiter): RouterLayer {
  return (inner: Router): Router => ({
    route(req: RouteRequest): RouteDecision | Promise<RouteDecision> {
      // Only a login (routing at AUTH, no envelope yet) is guarded and counted.
      if (!req.envelope.auth || req.envelope.mailLine !== '') return inner.route(req);
      const key = `auth-fail:${req.clientAddr}`;
      return then(limiter.peek(key), (v) => {
        if (v.count >= v.limit) {
          return { kind: 'error', code: 'PST_AUTH_TOO_MANY', detail: `${req.clientAddr} is over auth.max_failures_per_client` };
        }
        return then(inner.route(req), (d) => (d.kind === 'reject' ? then(limiter.take(key), () => d) : d));
      });
    },
    close: () => inner.close(),
  });
}
