/**
 * The IMAP protocol module (nginx's ngx_mail_imap_module with the IMAP half of its proxy
 * module): per listener, the replies and limits of the session machine (src/imap/session.ts);
 * per login, connect and log in to the routed back-end (src/imap/connect.ts), failing over
 * within a pool or a host name's addresses while the client has seen no back-end byte.
 */
import { randomBytes, randomInt } from 'node:crypto';
import type { BackendTlsOptions } from '../backend/connect.js';
import { backendTlsOptions, candidateTls } from '../backend/route-options.js';
import type { ListenerConfig, ServerConfig } from '../config/schema.js';
import type { ClientIdentity, Envelope, RouteTarget } from '../domain.js';
import { PosternError, WARNINGS, type ErrorCode } from '../errors.js';
import { connectImap } from '../imap/connect.js';
import { idValue } from '../imap/login.js';
import { ImapBook, imapMechanisms, type ImapMechanism } from '../imap/replies.js';
import { ImapSession, type ImapLimits, type ImapReady } from '../imap/session.js';
import type { Logger } from '../log/logger.js';
import type { Attempt, Candidate } from '../pools/failover.js';
import { hashKeyOf } from '../pools/layer.js';
import type { Pool, PoolRegistry } from '../pools/pool.js';
import { lookupAll, tryTarget, type Lookup } from '../pools/targets.js';
import type { BackendDone, BackendSession, ProtocolModule, ProtocolSession } from '../protocol.js';
import { cramChallenge } from '../smtp/sasl.js';
import { proxyHeaderFor } from './smtp.js';

export class ImapProtocol implements ProtocolModule<ImapReady> {
  readonly name = 'imap' as const;
  readonly #config: ServerConfig;
  readonly #logger: Logger;
  readonly #pools: PoolRegistry | null;
  readonly #lookup: Lookup;
  readonly #backendTls: BackendTlsOptions;
  readonly #refusals = new ImapBook({ capabilities: [], mechanisms: [], starttls: 'off' });
  /** Back-ends already warned about (ID not taken while xclient is on): once each. */
  readonly #warned = new Set<string>();

  constructor(config: ServerConfig, logger: Logger, pools: PoolRegistry | null = null, lookup: Lookup = lookupAll) {
    this.#config = config;
    this.#logger = logger;
    this.#pools = pools;
    this.#lookup = lookup;
    this.#backendTls = backendTlsOptions(config);
  }

  sessions(l: ListenerConfig): () => ProtocolSession<ImapReady> {
    const c = this.#config;
    const offered = imapMechanisms(c.imap.auth);
    const book = new ImapBook({ capabilities: c.imap.capabilities, mechanisms: offered, starttls: l.starttls });
    // nginx takes AUTHENTICATE PLAIN and LOGIN whatever imap_auth says; the others only when listed.
    const accepted: ImapMechanism[] = [...new Set<ImapMechanism>(['PLAIN', 'LOGIN', ...offered])];
    const limits: ImapLimits = {
      maxLineLength: c.max_line_length,
      maxErrors: c.max_errors,
      starttls: l.starttls,
      implicitTls: l.implicit_tls,
      mechanisms: accepted,
      maxAttempts: c.auth.max_attempts,
      // nginx's salt: <random.unixtime@server_name> (ngx_mail_salt)
      salt: () => cramChallenge(randomInt(1e9), Math.floor(Date.now() / 1000), c.server_name),
      passErrorMessage: c.proxy_pass_error_message,
    };
    return () => new ImapSession(book, limits);
  }

  /** IMAP replies carry no numeric code. */
  replyCode(): number {
    return 0;
  }

  refusal(code: ErrorCode): Buffer {
    return this.#refusals.refusal(code);
  }

  /** Logs in on `target`: a pool's servers in the balancer's order, a name's addresses one by one, or the one address. */
  connect(client: ClientIdentity, target: RouteTarget, envelope: Envelope, done: BackendDone<ImapReady>): () => void {
    // One session id for every try: the back-ends' logs of one client session agree.
    const session = randomBytes(9).toString('base64url');
    const attempt: Attempt<BackendSession<ImapReady>> = (cand, ms, cb) => this.#attempt(client, target, envelope, session, cand, ms, cb);
    // Refused credentials are the user's problem, not the server's (imapRetryable).
    const o = { target, pools: this.#pools, lookup: this.#lookup, timeoutMs: this.#config.timeouts.backend, logger: this.#logger, retryable: imapRetryable, hashKey: (pool: Pool) => hashKeyOf(pool.hashKey!, envelope, client.addr) };
    return tryTarget(o, attempt, done);
  }

  /** One connect-and-login on one candidate. */
  #attempt(client: ClientIdentity, target: RouteTarget, envelope: Envelope, session: string, cand: Candidate & { release?(): void }, timeoutMs: number, cb: (err: PosternError | null, r?: BackendSession<ImapReady>) => void): () => void {
    const c = this.#config;
    const creds = envelope.auth;
    // nginx: Auth-User and Auth-Pass from the auth service replace what the client gave; a digest is no password.
    const user = target.user ?? creds?.user ?? '';
    const pass = target.pass ?? (creds?.method === 'plain' ? creds.pass : undefined);
    if (pass === undefined || user === '') {
      cand.release?.();
      queueMicrotask(() => cb(new PosternError('PST_BACKEND_AUTH_FAILED', `no ${user === '' ? 'user' : 'password'} for the back-end's login (${creds?.method ?? 'no login'})`)));
      return () => {};
    }
    const tls = candidateTls(this.#backendTls, target, cand.host);
    return connectImap(
      {
        host: cand.host,
        port: cand.port,
        login: { user, pass, mode: c.imap.backend_login, id: c.xclient ? idFields(client, session, envelope.helo) : null },
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
        if (c.xclient && !ready.idAccepted) this.#warnOnce(cand.id);
        this.#logger.debug({ backend: cand.id, id: ready.idAccepted, session }, 'IMAP back-end login accepted');
        cb(null, { socket: ready.socket, tls: ready.tls, name: cand.id, ...(ready.idAccepted ? { sessionId: session } : {}), ready: { untagged: ready.untagged, status: ready.status } });
      },
    );
  }

  /** A back-end that refuses ID sees Postern as the client. */
  #warnOnce(backend: string): void {
    if (this.#warned.has(backend)) return;
    this.#warned.add(backend);
    this.#logger[WARNINGS.PSW_NO_XCLIENT.level]({ code: 'PSW_NO_XCLIENT', backend }, 'xclient is on but the IMAP back-end did not take Postern\'s ID: it may see Postern as the client (Dovecot: add Postern to login_trusted_networks); logged once per back-end');
  }
}

/**
 * Postern's ID fields (Dovecot's own proxy sends the same, imap-proxy.c): the client's address
 * and port, the address it connected to, the session id, then the client's own ID fields.
 */
export function idFields(client: ClientIdentity, session: string, clientId: string): string {
  const f: string[] = [`"x-originating-ip" ${idValue(client.addr)}`, `"x-originating-port" ${idValue(String(client.port))}`];
  if (client.serverAddr) f.push(`"x-connected-ip" ${idValue(client.serverAddr)}`);
  if (client.serverPort !== undefined) f.push(`"x-connected-port" ${idValue(String(client.serverPort))}`);
  f.push(`"x-session-id" ${idValue(session)}`);
  if (clientId !== '') f.push(clientId);
  return f.join(' ');
}

/**
 * Which failures may be retried on another server: every fault before the client saw a back-end
 * byte, but not refused credentials (they would fail everywhere, and a bad password would take
 * servers out) unless the refusal says the server is unavailable (RFC 5530 UNAVAILABLE).
 */
export function imapRetryable(err: PosternError): boolean {
  if (err.code === 'PST_CLIENT_LOST') return false;
  if (err.code === 'PST_BACKEND_AUTH_FAILED') return /\[UNAVAILABLE\]/i.test(err.reply ?? '');
  return true;
}
