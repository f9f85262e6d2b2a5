/**
 * The health of one pool server, pure and on an injected clock: what the active checks say
 * (HAProxy's rise/fall) and what failed sessions say (nginx's max_fails/fail_timeout), combined
 * into the one question the balancer asks, {@link ServerHealth.usable}.
 *
 * Every method that can change the answer returns a {@link HealthTransition} when it did (and
 * null when it did not), so the caller logs exactly one line per state change, with its reason.
 * Transitions are reported against the last reported state: a change that is undone before
 * anyone looks (see {@link ServerHealth.refresh}) is no change.
 */

export interface HealthOptions {
  /** Good checks in a row that bring a down server back (HAProxy `rise`), ≥ 1. */
  rise: number;
  /** Failed checks in a row that take an up server down (HAProxy `fall`), ≥ 1. */
  fall: number;
  /** Failed sessions within failTimeout that take the server out (nginx `max_fails`); 0: never. */
  maxFails: number;
  /** The window for maxFails, and how long the server then stays out (nginx `fail_timeout`), ms. */
  failTimeout: number;
}

/** A change of {@link ServerHealth.usable}: the fields of a HealthChange a server knows itself. */
export interface HealthTransition {
  /** Usable after the change. */
  up: boolean;
  /** Why: `check failed 3 times: greeting 421 4.3.2 busy`, `recovered: check passed 2 times`, … */
  reason: string;
  /** What caused it: an active check (or a check result received from the primary), or passive detection. */
  source: 'check' | 'passive';
  /** A trial's start (fail_timeout passed) or a failed trial: routine for a server that stays dead, logged quietly. */
  trial?: boolean;
}

/** Reasons spelled out only when a transition happens. */
const TRIAL = Symbol('on trial');
const TRIAL_OK = Symbol('trial succeeded');

const times = (n: number): string => `${n} time${n === 1 ? '' : 's'}`;

export class ServerHealth {
  readonly #opts: HealthOptions;
  readonly #now: () => number;

  // Active checks. A server starts up (as in HAProxy: `fall` failures are needed to take it down).
  #activeUp = true;
  /** Consecutive results against the current active state: failures while up, successes while down. */
  #streak = 0;

  // Passive detection.
  /** Failed sessions counted in the current window. */
  #fails = 0;
  /** When the first failure of the current window happened. */
  #windowStart = 0;
  /** When the last failure happened. */
  #lastFail = 0;
  /** max_fails was reached: out until #lastFail + failTimeout, then usable for a trial. */
  #held = false;

  /** What was last reported (the state the caller's log shows). */
  #reported = true;
  #since: number;

  constructor(opts: HealthOptions, now: () => number) {
    this.#opts = opts;
    this.#now = now;
    this.#since = now();
  }

  /** Whether sessions may go to this server: up by active check and not taken out by failed sessions. */
  usable(): boolean {
    return this.#activeUp && !this.#passivelyOut(this.#now());
  }

  /** The active-check verdict alone. */
  get activeUp(): boolean {
    return this.#activeUp;
  }

  /** Taken out by failed sessions right now (fail_timeout not yet passed since the last one). */
  get passivelyOut(): boolean {
    return this.#passivelyOut(this.#now());
  }

  /** Taken out by failed sessions earlier, fail_timeout has passed, and no session has got through yet. */
  get onTrial(): boolean {
    return this.#held && !this.#passivelyOut(this.#now());
  }

  /** When the last reported change happened (construction time before any). */
  get since(): number {
    return this.#since;
  }

  /**
   * When {@link usable} may change by itself, with time only (the end of a passive hold), or null.
   * A caller that wants the "on trial" line when it happens sets a timer for it and calls
   * {@link refresh}; one that only calls refresh() before picking gets it then.
   */
  nextChangeAt(): number | null {
    if (!this.#held) return null;
    const at = this.#lastFail + this.#opts.failTimeout;
    return at > this.#now() ? at : null;
  }

  /** Reports a change that time alone brought about: fail_timeout has passed, the server is on trial. */
  refresh(): HealthTransition | null {
    return this.#report(TRIAL, 'passive');
  }

  /** One active check's result; `reason` says why it failed (or is a short success note). */
  checked(ok: boolean, reason: string): HealthTransition | null {
    if (ok === this.#activeUp) {
      // Agrees with the current state: a pending streak towards the other state is broken.
      this.#streak = 0;
      return this.#report(TRIAL, 'passive');
    }
    this.#streak++;
    const needed = ok ? this.#opts.rise : this.#opts.fall;
    if (this.#streak < needed) return this.#report(TRIAL, 'passive');
    this.#activeUp = ok;
    this.#streak = 0;
    return this.#report(ok ? `recovered: check passed ${times(needed)}` : `check failed ${times(needed)}: ${reason}`, 'check');
  }

  /**
   * The active state as decided elsewhere: a worker applies what the primary's checker found
   * (its HealthChange, or an entry of its snapshot). Idempotent; resets the rise/fall streak.
   */
  setActive(up: boolean, reason: string): HealthTransition | null {
    const changed = up !== this.#activeUp;
    this.#activeUp = up;
    this.#streak = 0;
    return changed ? this.#report(reason, 'check') : this.#report(TRIAL, 'passive');
  }

  /** A session to this server failed before the client saw a back-end byte (nginx's "failed peer"). */
  failed(reason: string): HealthTransition | null {
    const { maxFails, failTimeout } = this.#opts;
    const t = this.#now();
    if (this.#held) {
      // During the hold (a session that started before it) or on trial: out again for fail_timeout.
      const trial = !this.#passivelyOut(t);
      this.#lastFail = t;
      this.#fails++;
      return this.#report(`${trial ? 'trial failed' : 'failed again'}: ${reason}; out for ${failTimeout} ms`, 'passive', true);
    }
    if (this.#fails > 0 && t - this.#windowStart > failTimeout) this.#fails = 0;
    if (this.#fails === 0) this.#windowStart = t;
    this.#fails++;
    this.#lastFail = t;
    if (maxFails > 0 && this.#fails >= maxFails) {
      this.#held = true;
      return this.#report(`${this.#fails} failed session${this.#fails === 1 ? '' : 's'} within ${failTimeout} ms: ${reason}; out for ${failTimeout} ms`, 'passive');
    }
    return this.#report(TRIAL, 'passive');
  }

  /**
   * A session to this server got through. Clears the failure count, and ends a trial; a success
   * reported while the server is still held out (a session that began before the hold) does not
   * lift the hold, as in nginx.
   */
  succeeded(): HealthTransition | null {
    const t = this.#now();
    if (!this.#held || !this.#passivelyOut(t)) {
      this.#fails = 0;
      this.#held = false;
    }
    return this.#report(TRIAL_OK, 'passive');
  }


  #passivelyOut(t: number): boolean {
    return this.#held && t - this.#lastFail < this.#opts.failTimeout;
  }

  /**
   * A transition if usable() differs from what was last reported; `reason` is why, if it does.
   * The common reasons are built only then (this runs on every pick: no string per session).
   */
  #report(reason: string | typeof TRIAL | typeof TRIAL_OK, source: HealthTransition['source'], trial = reason === TRIAL): HealthTransition | null {
    const up = this.usable();
    if (up === this.#reported) return null;
    this.#reported = up;
    this.#since = this.#now();
    const text = reason === TRIAL ? `fail_timeout of ${this.#opts.failTimeout} ms passed: on trial`
      : reason === TRIAL_OK ? `fail_timeout of ${this.#opts.failTimeout} ms passed: trial succeeded` : reason;
    return trial ? { up, reason: text, source, trial } : { up, reason: text, source };
  }
}
