/**
 * The POP3 protocol module (nginx's ngx_mail_pop3_module with the POP3 half of its proxy
 * module): per listener, the replies and limits of the session machine (src/pop3/session.ts);
 * per login, connect and log in to the routed back-end (src/pop3/connect.ts), failing over
 * within a pool or a host name's addresses while the client has seen no back-end byte.
 */
import { randomBytes, randomInt } from 'node:crypto';
import type { BackendTlsOptions } from '../backend/connect.js';
import { backendTlsOptions, candidateTls } from '../backend/route-options.js';
import type { ListenerConfig, ServerConfig } from '../config/schema.js';
import type { ClientIdentity, Envelope, RouteTarget } from '../domain.js';
import { PosternError, WARNINGS, type ErrorCode } from '../errors.js';
import type { Logger } from '../log/logger.js';
import type { Attempt, Candidate } from '../pools/failover.js';
import { hashKeyOf } from '../pools/layer.js';
import type { Pool, PoolRegistry } from '../pools/pool.js';
import { lookupAll, tryTarget, type Lookup } from '../pools/targets.js';
import { connectPop3 } from '../pop3/connect.js';
import type { Pop3Limits } from '../pop3/limits.js';
import { pop3Retryable } from '../pop3/login.js';
import { Pop3Book, pop3Mechanisms } from '../pop3/replies.js';
import { Pop3Session, type Pop3Ready } from '../pop3/session.js';
import type { BackendDone, BackendSession, ProtocolModule, ProtocolSession } from '../protocol.js';
import { cramChallenge } from '../smtp/sasl.js';
import { proxyHeaderFor } from './smtp.js';

/** Dovecot's proxy loop guard starts at 5 hops (LOGIN_PROXY_TTL); Postern is the first. */
const XCLIENT_TTL = 5;


export class Pop3Protocol implements ProtocolModule<Pop3Ready> {
  readonly name = 'pop3' as const;
  readonly #config: ServerConfig;
  readonly #logger: Logger;
  readonly #pools: PoolRegistry | null;
  readonly #lookup: Lookup;
  readonly #backendTls: BackendTlsOptions;
  readonly #refusals: Pop3Book;
  /** Back-ends already warned about (no XCLIENT while xclient is on): once each, not per session. */
  readonly #warned = new Set<string>();

  constructor(config: ServerConfig, logger: Logger, pools: PoolRegistry | null = null, lookup: Lookup = lookupAll) {
    this.#config = config;
    this.#logger = logger;
    this.#pools = pools;
    this.#lookup = lookup;
    this.#backendTls = backendTlsOptions(config);
    this.#refusals = new Pop3Book({ capabilities: [], mechanisms: [] });
  }

  sessions(l: ListenerConfig): () => ProtocolSession<Pop3Ready> {
    const c = this.#config;
    const p = c.pop3;
    const mechanisms = pop3Mechanisms(p.auth);
    const book = new Pop3Book({ capabilities: p.capabilities, mechanisms });
    const stamped = p.auth.includes('apop') || p.auth.includes('cram-md5');
    const limits: Pop3Limits = {
      maxLineLength: c.max_line_length,
      maxErrors: c.max_errors,
      starttls: l.starttls,
      implicitTls: l.implicit_tls,
      userPass: p.auth.includes('plain'),
      apop: p.auth.includes('apop'),
      mechanisms,
      maxAttempts: c.auth.max_attempts,
      // nginx's salt: <random.unixtime@server_name> (ngx_mail_salt)
      timestamp: stamped ? () => cramChallenge(randomInt(1e9), Math.floor(Date.now() / 1000), c.server_name) : null,
      passErrorMessage: c.proxy_pass_error_message,
    };
    return () => new Pop3Session(book, limits);
  }

  /** POP3 replies carry no numeric code. */
  replyCode(_data: Buffer): number {
    return 0;
  }

  refusal(code: ErrorCode): Buffer {
    return this.#refusals.error(code);
  }

  /** Logs in on `target`: a pool's servers in the balancer's order, a name's addresses one by one, or the one address. */
  connect(client: ClientIdentity, target: RouteTarget, envelope: Envelope, done: BackendDone<Pop3Ready>): () => void {
    // One session id for every try: the back-ends' logs of one client session agree.
    const session = randomBytes(9).toString('base64url');
    const attempt: Attempt<BackendSession<Pop3Ready>> = (cand, ms, cb) => this.#attempt(client, target, envelope, session, cand, ms, cb);
    // A refused login is the user's problem, not the server's (pop3Retryable).
    const o = { target, pools: this.#pools, lookup: this.#lookup, timeoutMs: this.#config.timeouts.backend, logger: this.#logger, retryable: pop3Retryable, hashKey: (pool: Pool) => hashKeyOf(pool.hashKey!, envelope, client.addr) };
    return tryTarget(o, attempt, done);
  }

  /** One connect-and-login on one candidate. */
  #attempt(client: ClientIdentity, target: RouteTarget, envelope: Envelope, session: string, cand: Candidate & { release?(): void }, timeoutMs: number, cb: (err: PosternError | null, r?: BackendSession<Pop3Ready>) => void): () => void {
    const c = this.#config;
    const creds = envelope.auth;
    // nginx: Auth-User and Auth-Pass from the auth service replace what the client gave; a digest is no password.
    const user = target.user ?? creds?.user ?? '';
    const pass = target.pass ?? (creds?.method === 'plain' ? creds.pass : undefined);
    if (pass === undefined) {
      cand.release?.();
      queueMicrotask(() => cb(new PosternError('PST_BACKEND_AUTH_FAILED', `no password available for ${creds?.method ?? 'no login'}`)));
      return () => {};
    }
    const tls = candidateTls(this.#backendTls, target, cand.host);
    return connectPop3(
      {
        host: cand.host,
        port: cand.port,
        login: { user, pass, login: c.pop3.backend_login, xclient: c.xclient ? { addr: client.addr, port: client.port, session, ttl: XCLIENT_TTL } : null },
        tls,
        ...(c.proxy_protocol !== 'off' ? { proxyHeader: proxyHeaderFor(c.proxy_protocol, client) } : {}),
        timeoutMs,
      },
      (err, r) => {
        if (err) {
          cand.release?.();
          return cb(err);
        }
        const ready = r!;
        // A pool counts the connection until it closes.
        if (cand.release) ready.socket.once('close', cand.release);
        if (c.xclient && !ready.offersXclient) this.#warnOnce(cand.id);
        this.#logger.debug({ backend: cand.id, xclient: ready.xclient, session }, 'POP3 back-end login accepted');
        cb(null, { socket: ready.socket, tls: ready.tls, name: cand.id, ...(ready.xclient ? { sessionId: session } : {}), ready: { final: ready.final } });
      },
    );
  }

  /** Dovecot offers XCLIENT only to login_trusted_networks: without it the back-end sees Postern as the client. */
  #warnOnce(backend: string): void {
    if (this.#warned.has(backend)) return;
    this.#warned.add(backend);
    this.#logger[WARNINGS.PSW_NO_XCLIENT.level]({ code: 'PSW_NO_XCLIENT', backend }, 'xclient is on but the POP3 back-end\'s greeting has no [XCLIENT]: it sees Postern as the client (add Postern to Dovecot\'s login_trusted_networks); logged once per back-end');
  }
}
