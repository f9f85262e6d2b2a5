/**
 * Back-end session reuse for SMTP (issue 13; `backend_reuse`): what the SMTP module adds to the
 * connection cache (../backend/cache.ts) — which connections may be kept, under which key, and
 * the RSET that makes one idle before it is parked, when its session left a transaction open.
 *
 * A connection is kept only when nothing of its session can leak into the next one: no AUTH to
 * the back-end (an AUTH cannot be undone) and no XCLIENT LOGIN= (Postfix keeps an attribute a
 * later XCLIENT leaves out). Its next session sends XCLIENT with its own client, which Postfix
 * treats as a new session (XCLIENT_README); without XCLIENT the back-end sees Postern either way.
 */
import type { Socket } from 'node:net';
import { BackendCache } from '../backend/cache.js';
import type { BackendTlsOptions } from '../backend/connect.js';
import type { Logger } from '../log/logger.js';
import { ReplyError, ReplyReader } from '../smtp/reply-reader.js';

export interface ReuseConfig {
  enabled: boolean;
  idle: number;
  max_sessions: number;
  max_age: number;
  per_backend: number;
}

interface Meta {
  key: string;
  capabilities: ReadonlyMap<string, string>;
  tls: string | null;
  name: string;
  sessions: number;
  since: number;
}

const RSET = Buffer.from('RSET\r\n', 'latin1');
/** How long a back-end may take to answer the RSET before the connection is given up. */
const RSET_TIMEOUT_MS = 2000;

export class SmtpReuse {
  readonly #cache: BackendCache;
  readonly #meta = new WeakMap<Socket, Meta>();
  readonly #logger: Logger;

  constructor(c: ReuseConfig, logger: Logger) {
    this.#logger = logger;
    this.#cache = new BackendCache({ idleMs: c.idle, maxSessions: c.max_sessions, maxAgeMs: c.max_age, maxPerKey: c.per_backend });
  }

  get stats(): BackendCache['stats'] {
    return this.#cache.stats;
  }

  /** Connections set up the same way share a key: the server, how TLS was asked for, and to what name. */
  key(host: string, port: number, tls: BackendTlsOptions): string {
    return `${host}|${port}|${tls.mode}|${tls.serverName ?? ''}|${tls.verify}`;
  }

  /**
   * A pool server was taken out of rotation (its health checks failed, or passive detection):
   * the connections kept to it are closed now rather than at their idle time, so a server being
   * drained or repaired sees them go with its checks. No session would take them meanwhile
   * anyway: a kept connection is used only after the pool has picked its server.
   */
  serverOut(host: string, port: number, pool: string): void {
    const n = this.#cache.closeWhere(`${host}|${port}|`);
    if (n > 0) this.#logger.info({ pool, server: `${host}:${port}`, closed: n }, 'kept back-end connections closed: their server is out of rotation');
  }

  take(key: string): { socket: Socket; capabilities: ReadonlyMap<string, string>; secure: boolean; sessions: number; since: number } | null {
    const p = this.#cache.take(key);
    return p ? { socket: p.socket, capabilities: p.capabilities, secure: p.tls !== null, sessions: p.sessions, since: p.since } : null;
  }

  /** A session was set up on `socket`; `keepable` when nothing of it may leak into another (see above). */
  remember(socket: Socket, m: Meta, keepable: boolean): void {
    if (keepable) this.#meta.set(socket, m);
  }

  /**
   * The session is over and its link owes nothing: parked at once when no transaction is open
   * (`clean`), else after an RSET and its 250. False: not kept. Skipping the RSET saves a round
   * trip per session; a kept connection that died meanwhile is caught when it is taken (the
   * failed warm start falls back to a new connection before the client sees a byte).
   */
  release(socket: Socket, clean: boolean): boolean {
    const m = this.#meta.get(socket);
    if (!m || socket.destroyed) return false;
    this.#meta.delete(socket);
    if (clean) {
      socket.pause();
      this.#cache.park(m.key, { socket, capabilities: m.capabilities, tls: m.tls, name: m.name, sessions: m.sessions, since: m.since });
      return true;
    }
    const reader = new ReplyReader();
    const done = (ok: boolean, why?: string): void => {
      clearTimeout(timer);
      socket.removeListener('data', onData);
      socket.removeListener('error', onGone);
      socket.removeListener('end', onGone);
      if (!ok) {
        this.#logger.debug({ backend: m.name, detail: why }, 'back-end connection not kept');
        if (!socket.destroyed) socket.destroy();
        return;
      }
      socket.pause();
      this.#cache.park(m.key, { socket, capabilities: m.capabilities, tls: m.tls, name: m.name, sessions: m.sessions, since: m.since });
    };
    const onData = (chunk: Buffer): void => {
      reader.push(chunk);
      const r = reader.next();
      if (r === null) return;
      if (r instanceof ReplyError) return done(false, r.reason);
      // The 250 must be the last byte: anything after it would be read by the next session.
      if (r.code !== 250 || reader.rest().length > 0) return done(false, `RSET: ${r.code}`);
      done(true);
    };
    const onGone = (): void => done(false, 'closed');
    const timer = setTimeout(() => done(false, 'no reply to RSET'), RSET_TIMEOUT_MS);
    socket.on('data', onData);
    socket.on('error', onGone);
    socket.on('end', onGone);
    socket.write(RSET);
    socket.resume();
    return true;
  }

  close(): void {
    this.#cache.close();
  }
}
