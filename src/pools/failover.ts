/**
 * Failover the client never sees: a back-end session is set up on one candidate after another
 * (the servers of a pool in the balancer's order, or the addresses a host name resolves to)
 * until one succeeds, a failure is the back-end's verdict rather than a fault, or the budget —
 * distinct tries and one deadline — is spent. It all happens before the client has seen a byte
 * from any back-end, so nothing it was told can be contradicted (docs/lifecycle.md, "connect +
 * replay"). Protocol-agnostic: the protocol module says how to attempt and what may be retried.
 */
import { PosternError } from '../errors.js';

export interface Candidate {
  /** `host:port`, for the log. */
  id: string;
  host: string;
  port: number;
  /** Called once the attempt has failed (passive health). */
  failed?(err: PosternError): void;
  /** Called once the attempt has succeeded. */
  succeeded?(): void;
}

export interface FailoverOptions {
  /** Distinct candidates at most. */
  maxTries: number;
  /** Absolute time (ms since the epoch) after which no attempt starts and the current one is cut. */
  deadline: number;
  /** The longest one attempt may take (it is also cut at the deadline). */
  attemptTimeout: number;
  /** On exhaustion: the code for the client (PST_POOL_EXHAUSTED for a pool); null keeps the last failure's own code. */
  exhausted: 'PST_POOL_EXHAUSTED' | null;
  /** Why nothing could be tried at all (a pool: each server's state). */
  describe?: () => string;
  now?: () => number;
}

export type Attempt<T> = (c: Candidate, timeoutMs: number, done: (err: PosternError | null, result?: T) => void) => () => void;

/**
 * Runs attempts until one succeeds. `next()` gives the next candidate (null: none left);
 * `retryable(err)` tells a fault (try the next) from a verdict (stop and report it). `done` is
 * called exactly once; the returned function aborts.
 */
export function failover<T>(
  next: () => Candidate | null,
  o: FailoverOptions,
  attempt: Attempt<T>,
  retryable: (err: PosternError) => boolean,
  done: (err: PosternError | null, result?: T) => void,
): () => void {
  const now = o.now ?? Date.now;
  const tried: string[] = [];
  let last: PosternError | null = null;
  let abort: (() => void) | null = null;
  let finished = false;
  const finish = (err: PosternError | null, result?: T): void => {
    if (finished) return;
    finished = true;
    abort = null;
    done(err, result);
  };
  const exhaust = (): void => {
    const detail = tried.length === 0 ? `no usable server${o.describe ? `: ${o.describe()}` : ''}` : tried.join('; ');
    if (o.exhausted !== null) return finish(new PosternError(o.exhausted, detail));
    // A single back-end (or the addresses of one name) keeps the last failure's own code.
    finish(last ? (tried.length > 1 ? new PosternError(last.code, detail, last.reply) : last) : new PosternError('PST_BACKEND_UNREACHABLE', detail));
  };
  const step = (): void => {
    if (finished) return;
    const left = o.deadline - now();
    if (tried.length >= o.maxTries || left <= 0) return exhaust();
    const c = next();
    if (c === null) return exhaust();
    abort = attempt(c, Math.min(o.attemptTimeout, left), (err, result) => {
      abort = null;
      if (!err) {
        c.succeeded?.();
        return finish(null, result);
      }
      // The client going away is nobody's fault: it counts against no server.
      if (err.code === 'PST_CLIENT_LOST') return finish(err);
      c.failed?.(err);
      tried.push(`${c.id} ${err.code}${err.detail ? ` (${err.detail})` : ''}`);
      last = err;
      if (!retryable(err)) return finish(err);
      step();
    });
  };
  step();
  return () => {
    if (finished) return;
    const a = abort;
    abort = null;
    a?.();
    finish(new PosternError('PST_CLIENT_LOST', 'aborted'));
  };
}
