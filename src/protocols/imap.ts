/**
 * The IMAP protocol module (nginx's ngx_mail_imap_module with the IMAP half of its proxy
 * module): per listener, the replies and limits of the session machine (src/imap/session.ts);
 * per login, connect and log in to the routed back-end (src/imap/connect.ts), failing over
 * within a pool or a host name's addresses while the client has seen no back-end byte.
 */
import { randomBytes, randomInt } from 'node:crypto';
import dns from 'node:dns';
import net from 'node:net';
import type { BackendTlsOptions } from '../backend/connect.js';
import { backendTlsFor, backendTlsOptions } from '../backend/route-options.js';
import type { ListenerConfig, ServerConfig } from '../config/schema.js';
import { backendName, type ClientIdentity, type Envelope, type RouteTarget } from '../domain.js';
import { PosternError, WARNINGS, type ErrorCode } from '../errors.js';
import { connectImap } from '../imap/connect.js';
import { idValue } from '../imap/login.js';
import { ImapBook, imapMechanisms, type ImapMechanism } from '../imap/replies.js';
import { ImapSession, type ImapLimits, type ImapReady } from '../imap/session.js';
import type { Logger } from '../log/logger.js';
import { failover, type Attempt, type Candidate } from '../pools/failover.js';
import { hashKeyOf } from '../pools/layer.js';
import type { PoolRegistry } from '../pools/pool.js';
import type { BackendDone, BackendSession, ProtocolModule, ProtocolSession } from '../protocol.js';
import { cramChallenge } from '../smtp/sasl.js';
import { proxyHeaderFor, type Lookup } from './smtp.js';

const lookupAll: Lookup = (host, cb) => dns.lookup(host, { all: true }, (err, addrs) => cb(err, addrs ?? []));

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
    const pool = target.pool !== undefined ? this.#pools?.get(target.pool) : undefined;
    if (target.pool !== undefined && !pool) {
      queueMicrotask(() => done(new PosternError('PST_ROUTE_UNKNOWN_POOL', `no pool named ${JSON.stringify(target.pool)}`)));
      return () => {};
    }
    // One session id for every try: the back-ends' logs of one client session agree.
    const session = randomBytes(9).toString('base64url');
    const attempt: Attempt<BackendSession<ImapReady>> = (cand, ms, cb) => this.#attempt(client, target, envelope, session, cand, ms, cb);
    if (!pool) return this.#single(target, attempt, done);
    const tried = new Set<number>();
    const key = pool.hashKey === null ? null : hashKeyOf(pool.hashKey, envelope, client.addr);
    const next = (): Candidate | null => {
      const i = pool.pick(key, tried);
      if (i < 0) return null;
      tried.add(i);
      const srv = pool.servers[i]!;
      pool.acquire(i);
      return {
        id: srv.id,
        host: srv.host,
        port: srv.port,
        failed: (err) => {
          // Refused credentials are the user's problem, not the server's.
          if (!imapRetryable(err)) return;
          pool.failed(i, `${err.code}${err.detail ? ` ${err.detail}` : ''}`);
          this.#logger.info({ code: 'PSW_POOL_FAILOVER', pool: pool.name, server: srv.id, detail: err.detail, error: err.code }, WARNINGS.PSW_POOL_FAILOVER.message);
        },
        succeeded: () => pool.succeeded(i),
        release: () => pool.release(i),
      } as Candidate & { release(): void };
    };
    return failover(next, { maxTries: pool.maxTries, deadline: Date.now() + pool.tryTimeout, attemptTimeout: this.#config.timeouts.backend, exhausted: 'PST_POOL_EXHAUSTED', describe: () => pool.describe() }, attempt, imapRetryable, done);
  }

  /** A single back-end: an IP literal is one try, a host name's addresses are tried one by one. */
  #single(target: RouteTarget, attempt: Attempt<BackendSession<ImapReady>>, done: BackendDone<ImapReady>): () => void {
    const timeout = this.#config.timeouts.backend;
    let aborted = false;
    let abort: () => void = () => (aborted = true);
    const run = (list: Candidate[]): void => {
      let n = 0;
      abort = failover(() => list[n++] ?? null, { maxTries: list.length, deadline: Date.now() + timeout, attemptTimeout: timeout, exhausted: null }, attempt, imapRetryable, done);
    };
    if (net.isIP(target.host)) run([{ id: backendName(target), host: target.host, port: target.port }]);
    else {
      this.#lookup(target.host, (err, addrs) => {
        if (aborted) return;
        if (err || addrs.length === 0) return done(new PosternError('PST_ROUTE_RESOLVE', `${backendName(target)}: ${(err as NodeJS.ErrnoException | null)?.code ?? 'no address'}`));
        run(addrs.map((a) => ({ id: `${target.host}[${a.address}]:${target.port}`, host: a.address, port: target.port })));
      });
    }
    return () => abort();
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
    const baseTls = backendTlsFor(this.#backendTls, target.tls);
    // Connecting by address, the certificate is still checked against the route's name.
    const named = target.host !== '' && !net.isIP(target.host) && cand.host !== target.host;
    const tls = named && !baseTls.serverName ? { ...baseTls, serverName: target.host } : baseTls;
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
