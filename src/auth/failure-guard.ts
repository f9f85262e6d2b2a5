/**
 * The AUTH brute-force guards as router layers (nginx has none; Postfix leaves it to its SASL
 * back-end). A login (routing at AUTH) whose counters are full is refused before the auth
 * service is asked, with `421 4.7.0 <server_name> Too many authentication failures`
 * (PST_AUTH_TOO_MANY), and the connection closes; a login the router refuses is counted. Refused
 * recipients are not counted, nor the guards' own refusals.
 *
 * - authFailureGuard: `auth.max_failures_per_client` within `auth.failure_window`, per client
 *   address and server block.
 * - authFailureRules: the `limits.rates` entries with `count: auth_failures`, per address
 *   (`client`), network (`client_net`: a client spreading its guesses over its /24 or /48) or
 *   tried user (`user`: one account guessed at from many addresses). A rule over its `max` (plus
 *   `burst`) refuses every login it keys until its window ends. Mind that a `user` rule lets
 *   anyone keep an account from logging in through Postern by failing on purpose.
 */
import type { RouteDecision, RouteRequest } from '../domain.js';
import { ERRORS } from '../errors.js';
import { thenMaybe as then, type Limiter, type MaybePromise } from '../limits/limiter.js';
import { ruleKey, subjectOf, type RateRule } from '../limits/rules.js';
import type { Router, RouterLayer } from './router.js';

interface Counter {
  limiter: Limiter;
  key: string;
}

export function authFailureGuard(limiter: Limiter): RouterLayer {
  return (inner: Router): Router => ({
    route(req: RouteRequest): RouteDecision | Promise<RouteDecision> {
      // Only a login (routing at AUTH, no envelope yet) is guarded and counted.
      if (!req.envelope.auth || req.envelope.mailLine !== '') return inner.route(req);
      return guarded(inner, req, [{ limiter, key: `auth-fail:${req.clientAddr}` }], () => ({
        kind: 'error',
        code: 'PST_AUTH_TOO_MANY',
        detail: `${req.clientAddr} is over auth.max_failures_per_client`,
      }));
    },
    close: () => inner.close(),
  });
}

/** The `auth_failures` rules of `limits.rates`, for a server block named `serverName` (its 421). */
export function authFailureRules(rules: readonly RateRule[], serverName: string): RouterLayer {
  const reply = ERRORS.PST_AUTH_TOO_MANY.reply.replace('{host}', serverName);
  return (inner: Router): Router => ({
    route(req: RouteRequest): RouteDecision | Promise<RouteDecision> {
      const auth = req.envelope.auth;
      if (!auth || req.envelope.mailLine !== '') return inner.route(req);
      const facts = { clientAddr: req.clientAddr, user: auth.user };
      const applying: RateRule[] = [];
      const counters: Counter[] = [];
      for (const r of rules) {
        const key = ruleKey(r.key, facts);
        if (key === null) continue;
        applying.push(r);
        counters.push({ limiter: r.limiter, key });
      }
      if (counters.length === 0) return inner.route(req);
      // A refusal (not an error): logged under its code and listed in the access record's checks.refused.
      return guarded(inner, req, counters, (i) => ({
        kind: 'reject',
        reply,
        waitMs: 0,
        code: 'PST_AUTH_TOO_MANY',
        reason: `${applying[i]!.name} (${applying[i]!.key} ${subjectOf(applying[i]!.key, facts)})`,
      }));
    },
    close: () => inner.close(),
  });
}

/** Refuses with `refuse(i)` when counter i is full; otherwise asks `inner` and counts its refusal in every counter. */
function guarded(inner: Router, req: RouteRequest, counters: readonly Counter[], refuse: (i: number) => RouteDecision): MaybePromise<RouteDecision> {
  return then(firstFull(counters, 0), (i) => {
    if (i >= 0) return refuse(i);
    return then(inner.route(req), (d) => (d.kind === 'reject' && d.code !== 'PST_AUTH_TOO_MANY' ? then(takeAll(counters), () => d) : d));
  });
}

/** The first counter that is full (its next failure would be over), or -1; a failing limiter is not full. */
function firstFull(counters: readonly Counter[], from: number): MaybePromise<number> {
  for (let i = from; i < counters.length; i++) {
    const v = counters[i]!.limiter.peek(counters[i]!.key);
    if (v instanceof Promise) {
      const at = i;
      return v.then((x) => (x.allowed ? firstFull(counters, at + 1) : at), () => firstFull(counters, at + 1));
    }
    if (!v.allowed) return i;
  }
  return -1;
}

/** Counts one refused login in every counter; settles when all have (a failing one is skipped). */
function takeAll(counters: readonly Counter[]): MaybePromise<void> {
  const pending: Promise<unknown>[] = [];
  for (const c of counters) {
    const v = c.limiter.take(c.key);
    if (v instanceof Promise) pending.push(v.catch(noop));
  }
  return pending.length === 0 ? undefined : Promise.all(pending).then(noop);
}

function noop(): void {}
