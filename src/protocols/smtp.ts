/**
 * The SMTP protocol module (nginx's ngx_mail_smtp_module with the SMTP half of its proxy
 * module): per listener, the pre-built replies and the limits of the session machine
 * (src/session/); per back-end, connect and replay (src/backend/). Everything SMTP-specific that
 * the connection driver must not know lives here or below.
 */
import { randomInt } from 'node:crypto';
import type { Socket } from 'node:net';
import type { BackendTlsOptions } from '../backend/connect.js';
import { connectBackend } from '../backend/connect.js';
import { backendAuthFor, backendTlsOptions, candidateTls } from '../backend/route-options.js';
import type { ListenerConfig, ServerConfig } from '../config/schema.js';
import { proxyV1, proxyV2 } from '../proxy/writer.js';
import { SmtpReuse } from './smtp-reuse.js';
import type { CheckStage, ClientIdentity, Envelope, RouteTarget } from '../domain.js';
import { PosternError, WARNINGS, type ErrorCode } from '../errors.js';
import type { Logger } from '../log/logger.js';
import type { Attempt, Candidate } from '../pools/failover.js';
import { hashKeyOf } from '../pools/layer.js';
import type { Pool, PoolRegistry } from '../pools/pool.js';
import { lookupAll, tryTarget, type Lookup } from '../pools/targets.js';
import type { BackendDone, BackendSession, ProtocolModule, ProtocolSession } from '../protocol.js';
import { Session, type BackendReadyInfo } from '../session/session.js';
import type { SessionLimits } from '../session/limits.js';
import { lastReplyCode, ReplyBook } from '../smtp/replies.js';
import { cramChallenge, type Mechanism } from '../smtp/sasl.js';

function mechanisms(l: ListenerConfig): Mechanism[] {
  return l.smtp_auth.filter((m) => m !== 'none').map((m) => m.toUpperCase() as Mechanism);
}


export type { Lookup } from '../pools/targets.js';

export class SmtpProtocol implements ProtocolModule<BackendReadyInfo> {
  readonly name = 'smtp' as const;
  readonly #config: ServerConfig;
  readonly #logger: Logger;
  readonly #backendTls: BackendTlsOptions;
  readonly #capabilities: string[];
  readonly #refusals: ReplyBook;
  /** Back-end warnings already logged ("<kind> <host:port>"): each is logged once, not per session. */
  readonly #warned = new Set<string>();

  readonly #pools: PoolRegistry | null;
  readonly #lookup: Lookup;
  /** Kept back-end connections (backend_reuse), or null. */
  readonly #reuse: SmtpReuse | null;
  /** A pool member's connection count to give back when its connection is kept instead of closed. */
  readonly #poolCount = new WeakMap<Socket, () => void>();

  /** `lookup` resolves a back-end's host name to every address (tests give their own). */
  constructor(config: ServerConfig, logger: Logger, pools: PoolRegistry | null = null, lookup: Lookup = lookupAll) {
    this.#config = config;
    this.#logger = logger;
    this.#pools = pools;
    this.#lookup = lookup;
    this.#reuse = config.backend_reuse.enabled && config.proxy_mode === 'transaction' ? new SmtpReuse(config.backend_reuse, logger) : null;
    const reuse = this.#reuse;
    if (reuse && pools) for (const pool of pools.all()) pool.onOut((s) => reuse.serverOut(s.host, s.port, pool.name));
    this.#backendTls = backendTlsOptions(config);
    this.#capabilities = config.capabilities.map((c) =>
      c.toUpperCase() === 'SIZE' && config.max_message_size > 0 ? `SIZE ${config.max_message_size}` : c,
    );
    this.#refusals = new ReplyBook({ serverName: config.server_name, capabilities: [] });
  }

  sessions(l: ListenerConfig, checkStages?: ReadonlySet<CheckStage>): () => ProtocolSession<BackendReadyInfo> {
    const c = this.#config;
    const book = new ReplyBook({ serverName: c.server_name, capabilities: this.#capabilities, starttls: l.starttls !== 'off', auth: mechanisms(l) });
    const limits: SessionLimits = {
      maxLineLength: c.max_line_length,
      maxErrors: c.max_errors,
      maxMessageSize: c.max_message_size,
      requireHelo: c.require_helo,
      greetingDelay: c.greeting_delay > 0,
      greetingDelayMs: c.greeting_delay,
      starttls: l.starttls,
      implicitTls: l.implicit_tls,
      proxyMode: c.proxy_mode,
      envelopeAfterAuth: 'auth_http' in c.route ? c.route.auth_http.envelope_after_auth : 'rules' in c.route && (c.route.rules.auth_http?.envelope_after_auth ?? false),
      passErrorMessage: c.proxy_pass_error_message,
      ...(checkStages && checkStages.size > 0 ? { checkStages } : {}),
      auth: {
        mechanisms: mechanisms(l),
        allowNone: l.smtp_auth.includes('none'),
        plaintext: l.auth_plaintext,
        maxAttempts: c.auth.max_attempts,
        // nginx's salt: <random.unixtime@server_name>
        challenge: () => cramChallenge(randomInt(1e9), Math.floor(Date.now() / 1000), c.server_name),
      },
    };
    return () => new Session(book, limits);
  }

  readonly replyCode = lastReplyCode;

  refusal(code: ErrorCode): Buffer {
    return this.#refusals.error(code);
  }

  /**
   * Sets up the back-end session for `target`: a pool's servers in the balancer's order, the
   * addresses of a host name one by one, or the one address — failing over on every fault before
   * the client has seen a back-end byte (src/pools/failover.ts; `smtpRetryable` says which).
   */
  connect(client: ClientIdentity, target: RouteTarget, envelope: Envelope, done: BackendDone<BackendReadyInfo>): () => void {
    const attempt: Attempt<BackendSession<BackendReadyInfo>> = (cand, timeoutMs, cb) => this.#attempt(client, target, envelope, cand, timeoutMs, cb);
    // A verdict (a 5xx to MAIL, credentials refused) is the mail's or the user's problem, not the server's (smtpRetryable).
    const o = { target, pools: this.#pools, lookup: this.#lookup, timeoutMs: this.#config.timeouts.backend, logger: this.#logger, retryable: smtpRetryable, hashKey: (pool: Pool) => hashKeyOf(pool.hashKey!, envelope, client.addr) };
    return tryTarget(o, attempt, (err, r) => {
      // A single back-end's 5xx to MAIL keeps nginx's 451 (proxy_pass_error_message shows its text); a pool's is passed on.
      if (target.pool === undefined && err?.code === 'PST_BACKEND_SENDER_REFUSED') return done(new PosternError('PST_BACKEND_REJECTED', err.detail, err.reply));
      done(err, r);
    });
  }

  /** A kept connection the driver hands back: parked for the next session, if the module keeps it. */
  release(socket: Socket, clean: boolean): boolean {
    if (!this.#reuse?.release(socket, clean)) return false;
    // Kept, it is nobody's connection: the pool's count for it goes back until a session takes it again.
    const giveBack = this.#poolCount.get(socket);
    if (giveBack) {
      this.#poolCount.delete(socket);
      socket.removeListener('close', giveBack);
      giveBack();
    }
    return true;
  }

  close(): void {
    this.#reuse?.close();
  }

  /** One connect-and-replay on one candidate: on a kept connection when there is one, else a new one. */
  #attempt(client: ClientIdentity, target: RouteTarget, envelope: Envelope, cand: Candidate & { release?(): void }, timeoutMs: number, cb: (err: PosternError | null, r?: BackendSession<BackendReadyInfo>) => void): () => void {
    const c = this.#config;
    const auth = envelope.auth;
    const tlsOptions = candidateTls(this.#backendTls, target, cand.host);
    const backendAuth = backendAuthFor(auth, target, c.proxy_smtp_auth);
    const login = auth ? target.user ?? auth.user : undefined;
    const key = this.#reuse?.key(cand.host, cand.port, tlsOptions);
    const warm = key !== undefined ? this.#reuse!.take(key) : null;
    let abort = (): void => {};
    const go = (kept: typeof warm): void => {
      abort = connectBackend(
        cand.host,
        cand.port,
        {
          serverName: c.server_name,
          envelope,
          client,
          xclient: c.xclient,
          // nginx: Auth-User in the answer replaces the login the client gave.
          ...(login !== undefined ? { login } : {}),
          ...backendAuth,
          ...(c.proxy_protocol !== 'off' && !kept ? { proxyHeader: proxyHeaderFor(c.proxy_protocol, client) } : {}),
        },
        tlsOptions,
        timeoutMs,
        (err, ready) => {
          // A kept connection that failed before its client saw a byte: a new connection instead, unseen.
          if (err && kept && smtpRetryable(err)) return go(null);
          if (err) {
            cand.release?.();
            return cb(err);
          }
          const r = ready!;
          // RFC 5321 §3.8: a 421 to the replayed RCPT means the back-end is going away; nothing was accepted.
          if (r.reply?.code === 421 && target.pool !== undefined) {
            cand.release?.();
            r.socket.destroy();
            return cb(new PosternError('PST_BACKEND_REJECTED', `${cand.id} rcpt: 421 ${r.reply.lines.join(' / ')}`));
          }
          // A pool counts the connection while a session holds it: until it closes, or until it is kept (release).
          if (cand.release) {
            r.socket.once('close', cand.release);
            this.#poolCount.set(r.socket, cand.release);
          }
          if (key !== undefined) {
            // An AUTH to the back-end, or a LOGIN= in XCLIENT, would outlive the session: such a connection is not kept.
            // With xclient on, the next session must be able to say who its client is (Postfix advertises XCLIENT
            // again after an XCLIENT only to a proxy it still trusts); otherwise it would inherit this client.
            const keepable = !('backendAuth' in backendAuth) && !(login !== undefined && r.xclient) && (!c.xclient || r.capabilities.has('XCLIENT'));
            this.#reuse!.remember(r.socket, { key, capabilities: r.capabilities, tls: r.tls, name: cand.id, sessions: kept?.sessions ?? 1, since: kept?.since ?? Date.now() }, keepable);
            if (!keepable) this.#logger.debug({ backend: cand.id, xclient: r.xclient, offers_xclient: r.capabilities.has('XCLIENT') }, 'back-end connection not kept: its session would leak into the next');
          }
          this.#warnings(cand.id, r.xclient, r.loginDropped);
          cb(null, { socket: r.socket, tls: r.tls, name: cand.id, ...(kept ? { session: kept.sessions } : {}), ready: { reply: r.reply, pipelining: r.pipelining, server: cand.id } });
        },
        kept ? { socket: kept.socket, capabilities: kept.capabilities, secure: kept.secure } : undefined,
      );
    };
    go(warm);
    return () => abort();
  }


  #warnings(backend: string, xclient: boolean, loginDropped: boolean): void {
    if (this.#config.xclient && !xclient) {
      // Postfix offers XCLIENT only to smtpd_authorized_xclient_hosts: without it every session
      // looks as if it came from Postern, which matters if Postern is in the back-end's mynetworks.
      this.#warnOnce('PSW_NO_XCLIENT', backend);
    }
    if (loginDropped) {
      this.#warnOnce('PSW_NO_XCLIENT_LOGIN', backend);
    }
  }

  /** A back-end misconfiguration is logged once per back-end, not once per session. */
  #warnOnce(code: 'PSW_NO_XCLIENT' | 'PSW_NO_XCLIENT_LOGIN', backend: string): void {
    const key = `${code} ${backend}`;
    if (this.#warned.has(key)) return;
    this.#warned.add(key);
    this.#logger[WARNINGS[code].level]({ code, backend }, WARNINGS[code].message);
  }
}

/**
 * Which failures of a connect-and-replay may be retried on another server: every fault before
 * the client saw a back-end byte (connect, TLS, a greeting that is not 220, EHLO, XCLIENT,
 * STARTTLS refused, a 4xx to AUTH or MAIL, a 421 to RCPT, a dropped or stalled connection,
 * garbage). Not a 5xx to MAIL (the back-end's verdict on the mail), nor refused credentials.
 */
export function smtpRetryable(err: PosternError): boolean {
  if (err.code === 'PST_BACKEND_SENDER_REFUSED' || err.code === 'PST_CLIENT_LOST') return false;
  // Back-end AUTH: a 4xx is the server's trouble; refused credentials (535) or no password at all
  // would fail on every server, and retrying them would let a bad password take servers out.
  if (err.code === 'PST_BACKEND_AUTH_FAILED') return err.reply?.startsWith('4') ?? false;
  return true;
}

/**
 * The PROXY header for the back-end (nginx `proxy_protocol on|v2`): the client as Postern knows it
 * (after an inbound header, the load balancer's client) and the address it connected to. No TLVs:
 * Postfix reads at most 536 bytes and ignores them (beyond-nginx.md §3.4).
 */
export function proxyHeaderFor(version: 'v1' | 'v2', client: ClientIdentity): Buffer {
  const src = { address: client.addr, port: client.port };
  const dst = client.serverAddr ? { address: client.serverAddr, port: client.serverPort ?? 0 } : undefined;
  return version === 'v1' ? proxyV1(src, dst) : proxyV2(src, dst);
}
