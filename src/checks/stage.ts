/**
 * The stage-check seam: checks that answer a command before Postern acts on it — HELO/EHLO, MAIL
 * and DATA (Postfix's smtpd_helo_restrictions, smtpd_sender_restrictions and
 * smtpd_data_restrictions). RCPT checks are router layers (./policy-checks.ts, ./rate-layer.ts) and
 * connect checks ./connect.ts. The session machine asks (a `check` action) only at the stages some
 * check has registered for, so a server without them pays nothing per command.
 *
 * Checks run in the order given — the cheap in-memory ones (limits) before the ones that cost a
 * round trip (policy servers) — and the first refusal wins; what passes may carry header lines to
 * prepend (a policy server's PREPEND).
 */
import type { CheckRequest, CheckStage, CheckVerdict } from '../domain.js';

export interface StageCheck {
  /** For logs: `policy tcp:127.0.0.1:10023`, `limits.rates.0`. */
  readonly name: string;
  readonly stages: readonly CheckStage[];
  /** Never rejects; answers within the check's own deadline. */
  check(req: CheckRequest): CheckVerdict | Promise<CheckVerdict>;
  close?(): void | Promise<void>;
}

const PASS: CheckVerdict = Object.freeze({ kind: 'pass' });

export class StageChecks {
  readonly stages: ReadonlySet<CheckStage>;
  readonly #checks: readonly StageCheck[];

  constructor(checks: readonly StageCheck[]) {
    this.#checks = checks;
    this.stages = new Set(checks.flatMap((c) => c.stages));
  }

  /** Runs the checks registered for `req.stage`, in order; synchronous while they all are. */
  check(req: CheckRequest): CheckVerdict | Promise<CheckVerdict> {
    return this.#from(0, req, undefined);
  }

  #from(i: number, req: CheckRequest, prepend: string[] | undefined): CheckVerdict | Promise<CheckVerdict> {
    for (; i < this.#checks.length; i++) {
      const c = this.#checks[i]!;
      if (!c.stages.includes(req.stage)) continue;
      const v = c.check(req);
      if (v instanceof Promise) {
        const next = i + 1;
        return v.then((x) => (x.kind === 'reject' ? x : this.#from(next, req, merge(prepend, x))));
      }
      if (v.kind === 'reject') return v;
      prepend = merge(prepend, v);
    }
    return prepend ? { kind: 'pass', prepend } : PASS;
  }

  async close(): Promise<void> {
    await Promise.all(this.#checks.map((c) => c.close?.()));
  }
}

function merge(acc: string[] | undefined, v: CheckVerdict): string[] | undefined {
  if (v.kind !== 'pass' || !v.prepend?.length) return acc;
  return acc ? [...acc, ...v.prepend] : [...v.prepend];
}

export const NO_STAGE_CHECKS = new StageChecks([]);
