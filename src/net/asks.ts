/**
 * What a connection asks on its session's behalf — the router (a `route` action) and the stage
 * checks (a `check` action) — and how their answers go back to the session: always on a later
 * tick, so a synchronous answer cannot nest one batch of actions in another; never after the
 * client is gone. Refusals are logged once, at their code's level, and kept for the access
 * record's `checks.refused`.
 */
import type { CheckRequest, CheckVerdict, RouteDecision, RouteRequest } from '../domain.js';
import { ERRORS, type ErrorCode, type WarningCode } from '../errors.js';
import type { Action, ProtocolSession } from '../protocol.js';
import type { ServerContext } from './context.js';

const PASS: CheckVerdict = Object.freeze({ kind: 'pass' });

export interface AskOwner {
  readonly session: ProtocolSession;
  readonly clientAddr: string;
  /** False once the client's socket is gone: late answers are dropped. */
  alive(): boolean;
  run(actions: Action[]): void;
  log(code: ErrorCode | WarningCode, detail?: string): void;
}

export class Asks {
  /** `CODE: reply code` for each refusal, for the access record. */
  refusals: string[] | null = null;
  readonly #ctx: ServerContext;
  readonly #owner: AskOwner;

  constructor(ctx: ServerContext, owner: AskOwner) {
    this.#ctx = ctx;
    this.#owner = owner;
  }

  route(req: RouteRequest): void {
    const decision = this.#ctx.router.route(req);
    if (decision instanceof Promise) {
      decision.then(
        (d) => this.#routed(d),
        (err: Error) => this.#routed({ kind: 'error', code: 'PST_AUTH_HTTP_UNAVAILABLE', detail: err.message }),
      );
    } else queueMicrotask(() => this.#routed(decision));
  }

  check(req: CheckRequest): void {
    const v = this.#ctx.stageChecks.check(req);
    // A check that throws is a bug of ours: the command goes on, and the log says so.
    const failed = (err: Error): CheckVerdict => (this.#owner.log('PSW_CHECK_FAILED', `${req.stage}: ${err.message}`), PASS);
    if (v instanceof Promise) v.then((x) => this.#checked(x), (err: Error) => this.#checked(failed(err)));
    else queueMicrotask(() => this.#checked(v));
  }

  #routed(d: RouteDecision): void {
    if (!this.#owner.alive()) return;
    if (d.kind === 'reject') this.#refused(d.code ?? 'PST_AUTH_REJECTED', d.reason, d.reply, d.waitMs);
    // The AUTH brute-force guard refuses as an error (the session closes); it is a check's refusal all the same.
    else if (d.kind === 'error' && d.code === 'PST_AUTH_TOO_MANY') this.recordRefusal(d.code, ERRORS[d.code].reply ?? '421');
    this.#owner.run(this.#owner.session.routed(d));
  }

  #checked(v: CheckVerdict): void {
    if (!this.#owner.alive()) return;
    if (v.kind === 'reject') this.#refused(v.code, v.reason, v.reply);
    this.#owner.run(this.#owner.session.checked(v));
  }

  /** A refusal logged elsewhere (the connect checks'), for the access record only. */
  recordRefusal(code: ErrorCode, reply: string): void {
    (this.refusals ??= []).push(`${code}: ${reply.slice(0, 3)}`);
  }

  #refused(code: ErrorCode, reason: string, reply: string, waitMs?: number): void {
    const o = this.#owner;
    this.#ctx.logger[ERRORS[code].level]({ code, client: o.clientAddr, user: o.session.summary().user, detail: reason, ...(waitMs !== undefined ? { wait_ms: waitMs } : {}), reply }, ERRORS[code].message);
    (this.refusals ??= []).push(`${code}: ${reply.slice(0, 3)}`);
  }
}
