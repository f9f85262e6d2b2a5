/**
 * A client of one Postfix policy server (`tcp:host:port`, `inet:host:port`, `host:port` or
 * `unix:/path`), keeping connections open as Postfix's smtpd does: one request in flight per
 * connection, a small pool of them, closed after `idleMs` unused or `ttlMs` old.
 *
 * `ask()` never rejects and never hangs: whatever happens (server down, slow, closing mid-reply,
 * answering garbage or too much), it resolves within `timeoutMs` (plus a timer tick) — with the
 * server's verdict, or with the configured default marked by `fallback`. A reused connection that
 * the server closed before answering is retried once on a new one, as Postfix retries.
 */
import net from 'node:net';
import {
  defaultVerdict, parsePolicyReply, policyRequest, PolicyReplyReader, replyTarget,
  type PolicyAttributes, type PolicyFallback, type PolicyVerdict, type ReplyTarget,
} from './protocol.js';

export type PolicyLogLevel = 'debug' | 'info' | 'warn' | 'error';
export type PolicyLogger = (level: PolicyLogLevel, message: string) => void;

export interface PolicyClientOptions {
  /** `tcp:host:port`, `inet:host:port`, `host:port`, `[v6]:port` or `unix:/path`. */
  server: string;
  /** What to answer when the server fails: `defer` = Postfix's `451 4.3.5 Server configuration problem`. */
  default: 'defer' | 'dunno';
  /** Bounds one ask, from the call to the verdict: queueing, connecting, retry (Postfix: 100 s). Default 10 s. */
  timeoutMs?: number;
  /** Connections open at once (each carries one request at a time). Default 4. */
  maxConnections?: number;
  /** An unused connection is closed after this long (Postfix smtpd_policy_service_max_idle: 300 s). Default 300 s. */
  idleMs?: number;
  /** A connection is not reused after this age (Postfix smtpd_policy_service_max_ttl: 1000 s). Default 1000 s. */
  ttlMs?: number;
  /** A connection is closed after this many requests; 0 = no limit (Postfix's default). */
  requestLimit?: number;
  /** The largest reply block accepted. Default 16 KiB. */
  maxReplyBytes?: number;
  log?: PolicyLogger;
}

type Endpoint = { path: string } | { host: string; port: number };

/** Parses a server address; throws on a malformed one (a configuration error). */
export function parsePolicyServer(server: string): Endpoint {
  if (server.startsWith('unix:')) {
    const path = server.slice(5);
    if (path === '') throw new Error(`policy server ${JSON.stringify(server)}: empty socket path`);
    return { path };
  }
  const rest = server.replace(/^(tcp|inet):/, '');
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(rest);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port < 1 || port > 65535) throw new Error(`policy server ${JSON.stringify(server)}: expected tcp:host:port or unix:/path`);
  return { host: (m[1] ?? m[2])!, port };
}

interface Job {
  request: Buffer;
  target: ReplyTarget;
  done: (v: PolicyVerdict) => void;
  settled: boolean;
  retried: boolean;
  deadline: NodeJS.Timeout | null;
  conn: Conn | null;
}

class Conn {
  readonly socket: net.Socket;
  readonly born = Date.now();
  reader: PolicyReplyReader | null = null;
  job: Job | null = null;
  requests = 0;
  received = false;
  gone = false;

  constructor(socket: net.Socket) {
    this.socket = socket;
  }
}

export class PolicyClient {
  readonly server: string;
  readonly #endpoint: Endpoint;
  readonly #default: 'defer' | 'dunno';
  readonly #timeoutMs: number;
  readonly #max: number;
  readonly #idleMs: number;
  readonly #ttlMs: number;
  readonly #requestLimit: number;
  readonly #maxReply: number;
  readonly #log: PolicyLogger;
  readonly #idle: Conn[] = [];
  readonly #queue: Job[] = [];
  readonly #all = new Set<Conn>();
  #closed = false;
  /** Connections opened so far (for tests and status). */
  connectionsOpened = 0;

  constructor(o: PolicyClientOptions) {
    this.server = o.server;
    this.#endpoint = parsePolicyServer(o.server);
    this.#default = o.default;
    this.#timeoutMs = o.timeoutMs ?? 10_000;
    this.#max = Math.max(1, o.maxConnections ?? 4);
    this.#idleMs = o.idleMs ?? 300_000;
    this.#ttlMs = o.ttlMs ?? 1_000_000;
    this.#requestLimit = o.requestLimit ?? 0;
    this.#maxReply = o.maxReplyBytes ?? 16_384;
    this.#log = o.log ?? (() => {});
  }

  /** Connections open now (busy or idle). */
  get openConnections(): number {
    return this.#all.size;
  }

  /**
   * Asks the server about one request. `target` names what a refusal is about; by default what
   * Postfix names at the request's `protocol_state` (at RCPT: the recipient).
   */
  ask(attrs: PolicyAttributes, target: ReplyTarget = replyTarget(attrs)): Promise<PolicyVerdict> {
    return new Promise<PolicyVerdict>((resolve) => {
      const job: Job = { request: policyRequest(attrs), target, done: resolve, settled: false, retried: false, deadline: null, conn: null };
      job.deadline = setTimeout(() => this.#timeout(job), this.#timeoutMs);
      try {
        this.#dispatch(job);
      } catch (err) {
        this.#fail(job, 'unavailable', (err as Error).message);
      }
    });
  }

  #settle(job: Job, v: PolicyVerdict): void {
    if (job.settled) return;
    job.settled = true;
    if (job.deadline) clearTimeout(job.deadline);
    job.deadline = null;
    job.done(v);
  }

  #fail(job: Job, reason: PolicyFallback['reason'], detail: string): void {
    if (job.settled) return;
    this.#log(reason === 'closed' ? 'debug' : 'warn', `policy server ${this.server}: ${detail}; answering ${this.#default}`);
    this.#settle(job, defaultVerdict(this.#default, job.target, { reason, detail }));
  }

  #timeout(job: Job): void {
    job.deadline = null;
    const i = this.#queue.indexOf(job);
    if (i !== -1) this.#queue.splice(i, 1);
    const conn = job.conn;
    this.#fail(job, 'timeout', `no answer within ${this.#timeoutMs} ms`);
    // A late reply would be taken for the next request's: the connection is done for.
    if (conn && conn.job === job) this.#drop(conn);
  }

  #dispatch(job: Job): void {
    if (job.settled) return;
    if (this.#closed) return this.#fail(job, 'closed', 'client closed');
    let conn: Conn | undefined;
    while ((conn = this.#idle.pop())) {
      if (Date.now() - conn.born < this.#ttlMs && !conn.socket.destroyed) break;
      this.#drop(conn);
    }
    if (!conn && this.#all.size < this.#max) conn = this.#open();
    if (!conn) {
      this.#queue.push(job);
      return;
    }
    this.#start(conn, job);
  }

  #open(): Conn {
    const e = this.#endpoint;
    const socket = 'path' in e ? net.connect({ path: e.path }) : net.connect({ host: e.host, port: e.port, noDelay: true });
    const conn = new Conn(socket);
    this.#all.add(conn);
    this.connectionsOpened++;
    socket.on('data', (chunk: Buffer) => this.#onData(conn, chunk));
    socket.on('error', (err: NodeJS.ErrnoException) => this.#onGone(conn, err.code ?? err.message));
    socket.on('close', () => this.#onGone(conn, 'connection closed'));
    socket.on('end', () => socket.end());
    socket.on('timeout', () => {
      this.#log('debug', `policy server ${this.server}: idle connection closed after ${this.#idleMs} ms`);
      this.#drop(conn);
    });
    return conn;
  }

  #start(conn: Conn, job: Job): void {
    conn.job = job;
    job.conn = conn;
    conn.reader = new PolicyReplyReader(this.#maxReply);
    conn.received = false;
    conn.requests++;
    conn.socket.setTimeout(0);
    conn.socket.write(job.request);
  }

  #onData(conn: Conn, chunk: Buffer): void {
    const job = conn.job;
    const r = conn.reader;
    if (!job || !r) {
      this.#log('warn', `policy server ${this.server}: ${chunk.length} bytes nobody asked for; connection closed`);
      this.#drop(conn);
      return;
    }
    conn.received = true;
    r.feed(chunk);
    if (r.error) {
      this.#fail(job, 'invalid', r.error);
      this.#drop(conn);
      return;
    }
    if (!r.block) return;
    const verdict = parsePolicyReply(r.block, job.target);
    conn.job = null;
    conn.reader = null;
    job.conn = null;
    if (verdict.kind === 'invalid') {
      this.#fail(job, 'invalid', verdict.detail);
    } else {
      this.#settle(job, verdict);
    }
    const reusable = !r.extra && verdict.kind !== 'invalid' && !this.#closed
      && (this.#requestLimit === 0 || conn.requests < this.#requestLimit) && Date.now() - conn.born < this.#ttlMs;
    if (r.extra) this.#log('warn', `policy server ${this.server}: bytes after the reply; connection closed`);
    if (!reusable) {
      this.#drop(conn);
      return;
    }
    const next = this.#queue.shift();
    if (next) return this.#start(conn, next);
    conn.socket.setTimeout(this.#idleMs);
    this.#idle.push(conn);
  }

  #onGone(conn: Conn, why: string): void {
    const job = conn.job;
    const received = conn.received;
    const reused = conn.requests > 1;
    this.#drop(conn);
    if (!job || job.settled) return;
    // Closed just as we reused it (the server's idle timeout): once more on a new connection.
    if (reused && !received && !job.retried) {
      job.retried = true;
      this.#log('debug', `policy server ${this.server}: reused connection closed (${why}); retrying on a new one`);
      return this.#dispatch(job);
    }
    this.#fail(job, 'unavailable', received ? `${why} in the middle of a reply` : why);
  }

  /**
   * Takes a connection out of the pool for good (idempotent); a queued request gets its slot.
   * The request it carried, if any, is the caller's to answer.
   */
  #drop(conn: Conn): void {
    if (!conn.socket.destroyed) conn.socket.destroy();
    const job = conn.job;
    conn.job = null;
    conn.reader = null;
    if (job) job.conn = null;
    if (conn.gone) return;
    conn.gone = true;
    this.#all.delete(conn);
    const i = this.#idle.indexOf(conn);
    if (i !== -1) this.#idle.splice(i, 1);
    const next = this.#queue.shift();
    if (next) this.#dispatch(next);
  }

  /** Closes every connection; requests still waiting get the default (`fallback.reason` `closed`). */
  async close(): Promise<void> {
    this.#closed = true;
    for (const job of this.#queue.splice(0)) this.#fail(job, 'closed', 'client closed');
    for (const c of [...this.#all]) {
      const job = c.job;
      this.#drop(c);
      if (job) this.#fail(job, 'closed', 'client closed');
    }
  }
}
