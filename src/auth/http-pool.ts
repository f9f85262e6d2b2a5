/**
 * A keep-alive pool of HTTP/1.1 connections to one auth service origin (nginx opens a new
 * connection per request). Purpose-built for auth_http: one small GET out, one header block back.
 * It replaced undici after profiling: undici's generic request machinery cost about a fifth of
 * Postern's CPU per message (see bench/results.md).
 */
import net from 'node:net';
import tls from 'node:tls';
import { HttpResponseReader, type HttpHead } from './http-response.js';

export type HttpResult =
  | { ok: true; head: HttpHead }
  | { ok: false; reason: 'timeout' | 'unavailable' | 'invalid'; detail: string };

export interface HttpPoolOptions {
  maxConnections: number;
  /** Bounds connect plus the response header block of one request (nginx `auth_http_timeout`). */
  timeoutMs: number;
  maxHeaderSize: number;
  /** Idle keep-alive connections are closed after this long. */
  keepAliveMs: number;
}

interface Pending {
  request: Buffer;
  done: (r: HttpResult) => void;
  /** Already failed once on a reused connection that turned out to be closed. */
  retried: boolean;
}

/** One connection and the request it carries. */
class Conn {
  readonly socket: net.Socket;
  reader: HttpResponseReader | null = null;
  job: Pending | null = null;
  timer: NodeJS.Timeout | null = null;
  /** Carried a request before (a keep-alive connection the server may have closed meanwhile). */
  reused = false;
  received = false;
  answered = false;
  /** Closed and no longer counted in the pool. */
  gone = false;

  constructor(socket: net.Socket) {
    this.socket = socket;
  }
}

export class HttpPool {
  readonly #o: HttpPoolOptions;
  readonly #connect: () => net.Socket;
  readonly #idle: Conn[] = [];
  readonly #queue: Pending[] = [];
  #open = 0;
  #closed = false;

  constructor(url: URL, options: HttpPoolOptions) {
    this.#o = options;
    const host = url.hostname.replace(/^\[|\]$/g, '');
    const secure = url.protocol === 'https:';
    const port = Number(url.port) || (secure ? 443 : 80);
    this.#connect = secure
      ? () => tls.connect({ host, port, servername: net.isIP(host) ? undefined : host, noDelay: true } as tls.ConnectionOptions)
      : () => net.connect({ host, port, noDelay: true });
  }

  /** Sends a complete request (request line, headers, blank line) and resolves with the response head. */
  request(request: Buffer): Promise<HttpResult> {
    return new Promise((done) => this.#dispatch({ request, done, retried: false }));
  }

  #dispatch(job: Pending): void {
    if (this.#closed) return job.done({ ok: false, reason: 'unavailable', detail: 'pool closed' });
    const conn = this.#idle.pop() ?? (this.#open < this.#o.maxConnections ? this.#newConn() : null);
    if (!conn) {
      this.#queue.push(job);
      return;
    }
    this.#start(conn, job);
  }

  #newConn(): Conn {
    this.#open++;
    const conn = new Conn(this.#connect());
    const s = conn.socket;
    s.on('data', (chunk: Buffer) => this.#onData(conn, chunk));
    s.on('error', (err: NodeJS.ErrnoException) => this.#onGone(conn, err.code ?? err.message));
    s.on('close', () => this.#onGone(conn, 'connection closed'));
    // Idle keep-alive connections are dropped after keepAliveMs; a busy one has its own timer.
    s.on('timeout', () => s.destroy());
    return conn;
  }

  #start(conn: Conn, job: Pending): void {
    conn.job = job;
    conn.reader = new HttpResponseReader(this.#o.maxHeaderSize);
    conn.received = false;
    conn.answered = false;
    conn.socket.setTimeout(0);
    conn.timer = setTimeout(() => this.#finish(conn, { ok: false, reason: 'timeout', detail: `no answer within ${this.#o.timeoutMs} ms` }, false), this.#o.timeoutMs);
    conn.socket.write(job.request);
  }

  #onData(conn: Conn, chunk: Buffer): void {
    const r = conn.reader;
    if (!r || !conn.job) {
      conn.socket.destroy(); // bytes nobody asked for: the connection cannot be trusted any more
      return;
    }
    conn.received = true;
    r.feed(chunk);
    if (r.error) return this.#finish(conn, { ok: false, reason: 'invalid', detail: r.error }, false);
    if (r.head && !conn.answered) {
      // Answer at the end of the header block; the body (ignored, as nginx ignores it) may follow.
      conn.answered = true;
      conn.job.done({ ok: true, head: r.head });
    }
    if (r.complete) this.#finish(conn, null, r.head!.keepAlive);
    else if (r.head && !r.head.keepAlive) this.#finish(conn, null, false);
  }

  #onGone(conn: Conn, why: string): void {
    const job = conn.job;
    const answered = conn.answered;
    this.#forget(conn);
    if (!job || answered) return;
    // A keep-alive connection closed by the server just as we reused it: try once on a new one
    // (the request is an idempotent GET, RFC 9110 §9.2.2).
    if (conn.reused && !conn.received && !job.retried) {
      job.retried = true;
      this.#dispatch(job);
      return;
    }
    job.done({ ok: false, reason: 'unavailable', detail: why });
  }

  /** Ends the current request: reports `result` if given, then reuses or closes the connection. */
  #finish(conn: Conn, result: HttpResult | null, reuse: boolean): void {
    if (conn.timer) clearTimeout(conn.timer);
    conn.timer = null;
    const job = conn.job;
    conn.job = null;
    conn.reader = null;
    if (result && job && !conn.answered) job.done(result);
    if (!reuse || this.#closed) {
      this.#forget(conn);
      conn.socket.destroy();
      return;
    }
    conn.reused = true;
    const next = this.#queue.shift();
    if (next) return this.#start(conn, next);
    conn.socket.setTimeout(this.#o.keepAliveMs);
    this.#idle.push(conn);
  }

  /** Takes a connection out of the pool for good (idempotent) and lets a queued request have its slot. */
  #forget(conn: Conn): void {
    if (conn.timer) clearTimeout(conn.timer);
    conn.timer = null;
    conn.job = null;
    conn.reader = null;
    if (!conn.socket.destroyed) conn.socket.destroy();
    if (conn.gone) return;
    conn.gone = true;
    this.#open--;
    const i = this.#idle.indexOf(conn);
    if (i !== -1) this.#idle.splice(i, 1);
    const next = this.#queue.shift();
    if (next) this.#dispatch(next);
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const job of this.#queue.splice(0)) job.done({ ok: false, reason: 'unavailable', detail: 'pool closed' });
    for (const c of [...this.#idle]) this.#forget(c);
  }
}
