/**
 * One client connection: carries out the session's actions on the socket, asks the router,
 * connects the back-end and hands the socket over to the relay. The phases and their failure
 * replies are those of docs/lifecycle.md.
 */
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import type { RouteDecision } from '../auth/router.js';
import { connectBackend, type BackendReady } from '../backend/connect.js';
import { backendAuthFor, backendTlsFor } from '../backend/route-options.js';
import { relay, type RelayStats } from '../backend/relay.js';
import { ERRORS, type ErrorCode, PosternError } from '../errors.js';
import { Session, type Action, type Envelope } from '../session/session.js';
import { lineReply } from '../smtp/replies.js';
import { inspectClientTls, type TlsInfo } from '../tls/client-cert.js';
import type { ListenerContext, ServerContext } from './context.js';

/** Grace period for the client to close after our final reply, before the socket is destroyed. */
const LINGER_MS = 2000;

export class Connection {
  /** The client socket: the TCP socket, or the TLS socket over it once TLS has started. */
  socket: Socket;
  readonly session: Session;
  readonly #ctx: ServerContext;
  /** The TCP socket, for byte counts on the wire. */
  readonly #raw: Socket;
  #tls: TlsInfo | null = null;
  #backendTls: string | null = null;
  readonly #book: ListenerContext['book'];
  readonly #started = Date.now();
  readonly clientAddr: string;
  readonly clientPort: number;
  #envelope: Envelope | null = null;
  #backend: string | null = null;
  #backendSocket: Socket | null = null;
  #abortBackend: (() => void) | null = null;
  #greetTimer: NodeJS.Timeout | null = null;
  #clientEnded = false;
  /** Last reply code the client was sent, by Postern or the back-end. */
  #lastCode = 0;
  #outcome: string | null = null;
  #relayStats: RelayStats | null = null;
  #onClosed: (c: Connection) => void;

  constructor(socket: Socket, ctx: ServerContext, listener: ListenerContext, onClosed: (c: Connection) => void) {
    this.socket = socket;
    this.#raw = socket;
    this.#ctx = ctx;
    this.#onClosed = onClosed;
    this.clientAddr = unmapIPv4(socket.remoteAddress ?? '');
    this.clientPort = socket.remotePort ?? 0;
    this.#book = listener.book;
    this.session = new Session(listener.book, listener.limits);
    socket.setNoDelay(true);
    socket.setTimeout(ctx.config.timeouts.idle);
    attach(socket, this);
    this.#run(this.session.start());
    if (listener.limits.implicitTls) this.#startTls();
    else this.#armGreetingDelay();
  }

  #armGreetingDelay(): void {
    const delay = this.#ctx.config.greeting_delay;
    if (delay > 0 && this.session.phase === 'greeting') {
      this.#greetTimer = setTimeout(() => this.#run(this.session.greetingDue()), delay);
    }
  }

  /**
   * Server side of a TLS handshake over the client's TCP socket (implicit TLS, or after the
   * STARTTLS reply has been written). Whatever the client sends now is TLS records: plaintext
   * pipelined after STARTTLS fails the handshake instead of being read as commands.
   */
  #startTls(): void {
    const tlsContexts = this.#ctx.tls!;
    const plain = this.socket;
    detach(plain);
    const secure = new TLSSocket(plain, {
      isServer: true,
      secureContext: tlsContexts.defaultContext,
      SNICallback: (name, cb) => cb(null, tlsContexts.contextFor(name)),
      requestCert: tlsContexts.requestCert,
      rejectUnauthorized: false, // verify_client is applied after the handshake, with nginx's replies
    });
    this.socket = secure;
    attach(secure, this);
    secure.once('secure', () => this.#onSecure(secure));
    secure.setTimeout(this.#ctx.config.timeouts.handshake);
  }

  #onSecure(secure: TLSSocket): void {
    const t = this.#ctx.config.tls;
    const { error, detail, info } = inspectClientTls(secure, t.verify_client, t.verify_depth, t.pass_client_cert);
    this.#tls = info;
    if (error) {
      this.session.phase = 'closed';
      this.#run([detail === undefined ? { type: 'error', code: error } : { type: 'error', code: error, detail }]);
      return;
    }
    secure.setTimeout(this.#ctx.config.timeouts.idle);
    this.#ctx.logger.debug({ client: this.clientAddr, protocol: info.protocol, cipher: info.cipher, verify: info.verify }, 'TLS established');
    this.#run(this.session.tlsStarted());
    this.#armGreetingDelay();
  }

  /** A client-side TLS failure (handshake, or a TLS error later before the hand-off). */
  onError(err: Error): void {
    if (this.session.phase === 'tls-handshake') {
      this.session.phase = 'closed';
      this.#outcome = 'PST_TLS_HANDSHAKE';
      this.#ctx.logger.info({ code: 'PST_TLS_HANDSHAKE', client: this.clientAddr, detail: (err as NodeJS.ErrnoException).code ?? err.message }, ERRORS.PST_TLS_HANDSHAKE.message);
    }
  }

  /** SIGTERM: tell an idle session at once; a session mid-command hears it at its next command. */
  shutdown(): void {
    // A session in its TLS handshake or waiting for a route hears it as soon as it can be told.
    if (this.session.phase !== 'handed-off' && this.session.phase !== 'closed') this.#run(this.session.shutdown());
  }

  /** Drain time is over: close whatever is left. */
  destroy(): void {
    this.#abortBackend?.();
    this.#backendSocket?.destroy();
    this.socket.destroy();
  }

  onData(chunk: Buffer): void {
    if (this.session.phase === 'handed-off') return; // the relay owns the socket now
    this.#run(this.session.receive(chunk));
  }

  onEnd(): void {
    this.#clientEnded = true;
    // Before the hand-off a client EOF ends the session, unless a routing decision is pending:
    // then the pipelined commands it already sent are still delivered, and EOF follows them.
    if (this.session.phase === 'command' || this.session.phase === 'greeting') {
      this.#outcome ??= 'client-eof';
      this.socket.end();
    } else if (this.session.phase === 'tls-handshake') {
      this.#outcome ??= 'PST_TLS_HANDSHAKE';
      this.socket.destroy();
    }
  }

  onTimeout(): void {
    if (this.session.phase === 'tls-handshake') {
      // No SMTP reply is possible in the middle of a handshake.
      this.session.phase = 'closed';
      this.#outcome = 'PST_TLS_HANDSHAKE_TIMEOUT';
      this.#ctx.logger.info({ code: 'PST_TLS_HANDSHAKE_TIMEOUT', client: this.clientAddr }, ERRORS.PST_TLS_HANDSHAKE_TIMEOUT.message);
      this.socket.destroy();
      return;
    }
    if (this.session.phase === 'closed') {
      this.socket.destroy(); // the client did not close after our last reply
      return;
    }
    if (this.session.phase === 'command' || this.session.phase === 'greeting') {
      this.session.phase = 'closed';
      this.#run([{ type: 'error', code: 'PST_IDLE_TIMEOUT' }]);
    }
  }

  onClose(): void {
    if (this.#greetTimer) clearTimeout(this.#greetTimer);
    this.#abortBackend?.();
    // Once relaying, the relay reports the end when both sides have closed.
    if (this.#relayStats === null) this.#finish();
  }

  #run(actions: Action[]): void {
    if (actions.length === 0) return;
    const s = this.socket;
    let startTls = false;
    s.cork();
    for (const a of actions) {
      switch (a.type) {
        case 'reply':
          this.#write(a.data);
          break;
        case 'error':
          this.#error(a.code, a.detail);
          break;
        case 'route':
          this.#route(a.envelope);
          break;
        case 'close':
          this.#close();
          break;
        case 'starttls':
          if (a.discarded > 0) {
            this.#ctx.logger.info({ client: this.clientAddr, bytes: a.discarded }, 'discarded bytes pipelined after STARTTLS (RFC 3207 §4.2)');
          }
          startTls = true;
          break;
      }
    }
    s.uncork();
    if (startTls) {
      this.#startTls();
      return;
    }
    // Backpressure: a client that pipelines without reading its replies is not read further
    // until it has taken what it was sent.
    if (s.writableNeedDrain && this.session.phase === 'command') {
      s.pause();
      s.once('drain', () => {
        if (this.session.phase === 'command') s.resume();
      });
    }
  }

  #write(data: Buffer): void {
    if (data.length === 0 || this.socket.destroyed || this.socket.writableEnded) return;
    this.#lastCode = (data[0]! - 0x30) * 100 + (data[1]! - 0x30) * 10 + (data[2]! - 0x30);
    this.socket.write(data);
  }

  #error(code: ErrorCode, detail?: string, reply?: Buffer): void {
    const spec = ERRORS[code];
    this.#ctx.logger[spec.level]({ code, client: this.clientAddr, detail }, spec.message);
    this.#write(reply ?? this.#book.error(code));
    if (spec.close) {
      this.#outcome ??= code;
      this.session.phase = 'closed';
      this.#close();
    }
  }

  #close(): void {
    this.#outcome ??= 'quit';
    this.socket.end();
    this.socket.setTimeout(LINGER_MS);
  }

  #route(envelope: Envelope): void {
    this.#envelope = envelope;
    if (envelope.auth && envelope.mailLine === '' && this.#ctx.authFailures.blocked(this.clientAddr)) {
      // Brute-force guard (nginx has none): this address has failed too often lately.
      this.#routeFailed({ type: 'error', code: 'PST_AUTH_TOO_MANY', detail: `${this.clientAddr} is over auth.max_failures_per_client` }, false);
      return;
    }
    // Nothing more is read from the client until the decision and the replay are done (nginx
    // does the same); the idle timer is replaced by the auth and back-end timers.
    this.socket.pause();
    this.socket.setTimeout(0);
    const decision = this.#ctx.router.route({
      envelope,
      clientAddr: this.clientAddr,
      clientPort: this.clientPort,
      clientHost: '[UNAVAILABLE]',
      ...(this.#tls ? { tls: this.#tls } : {}),
    });
    if (decision instanceof Promise) {
      decision.then(
        (d) => this.#routed(d),
        (err: Error) => this.#routed({ kind: 'error', code: 'PST_AUTH_HTTP_UNAVAILABLE', detail: err.message }),
      );
    } else {
      this.#routed(decision);
    }
  }

  #routed(d: RouteDecision): void {
    if (this.socket.destroyed) return;
    if (d.kind === 'error') {
      this.#routeFailed({ type: 'error', code: d.code, detail: d.detail }, false);
      return;
    }
    if (d.kind === 'reject') {
      const user = this.#envelope?.auth?.user;
      // Only a refused login counts towards the per-address cap, not a refused recipient.
      if (user !== undefined && this.#envelope!.mailLine === '') this.#ctx.authFailures.add(this.clientAddr);
      this.#ctx.logger.info({ code: 'PST_AUTH_REJECTED', client: this.clientAddr, user, detail: d.reason, wait_ms: d.waitMs }, ERRORS.PST_AUTH_REJECTED.message);
      const reply: Action = { type: 'reply', data: lineReply(d.reply) };
      this.#outcome = d.waitMs > 0 ? null : 'PST_AUTH_REJECTED';
      if (d.waitMs > 0) setTimeout(() => this.#routeFailed(reply, true), d.waitMs);
      else this.#routeFailed(reply, false);
      return;
    }
    const cfg = this.#ctx.config;
    const env = this.#envelope!;
    if (env.auth && env.mailLine === '' && 'auth_http' in cfg.route && cfg.route.auth_http.envelope_after_auth) {
      // envelope_after_auth: the login is good; where the mail goes is asked again at RCPT.
      this.socket.setTimeout(cfg.timeouts.idle);
      this.#run(this.session.authAccepted(env.auth));
      if (this.session.phase === 'command') this.socket.resume();
      return;
    }
    this.#backend = `${d.host}:${d.port}`;
    this.#abortBackend = connectBackend(
      d.host,
      d.port,
      {
        serverName: cfg.server_name,
        envelope: this.#envelope!,
        client: { addr: this.clientAddr, port: this.clientPort, name: '[UNAVAILABLE]' },
        xclient: cfg.xclient,
        // nginx: Auth-User in the answer replaces the login the client gave.
        ...(this.#envelope!.auth ? { login: d.user ?? this.#envelope!.auth.user } : {}),
        ...backendAuthFor(this.#envelope!.auth, d, cfg.proxy_smtp_auth),
      },
      backendTlsFor(this.#ctx.backendTls, d.tls),
      cfg.timeouts.backend,
      (err, ready) => {
        this.#abortBackend = null;
        if (err) this.#backendFailed(err);
        else this.#handOff(ready!);
      },
    );
  }

  #routeFailed(action: Action, keepOpen: boolean): void {
    if (this.socket.destroyed) return;
    if (keepOpen) this.socket.setTimeout(this.#ctx.config.timeouts.idle);
    this.#run(this.session.routeFailed(action, keepOpen && !this.#clientEnded));
    if (this.session.phase === 'command') {
      this.socket.resume();
      if (this.#clientEnded) this.socket.end();
    }
  }

  #backendFailed(err: PosternError): void {
    if (err.code === 'PST_CLIENT_LOST') return;
    // proxy_pass_error_message: the back-end's own refusal, else nginx's generic 451.
    const passText = this.#ctx.config.proxy_pass_error_message ? err.reply : undefined;
    const reply = passText ? Buffer.from(passText, 'latin1') : undefined;
    this.socket.cork();
    this.#error(err.code, err.detail, reply);
    this.socket.uncork();
  }

  #handOff({ socket: backend, reply, xclient, loginDropped, tls: backendTls }: BackendReady): void {
    this.#backendTls = backendTls;
    if (this.socket.destroyed) {
      backend.destroy();
      return;
    }
    if (this.#ctx.config.xclient && !xclient) {
      // Postfix offers XCLIENT only to smtpd_authorized_xclient_hosts: without it every session
      // looks as if it came from Postern, which matters if Postern is in the back-end's mynetworks.
      this.#warnOnce('no-xclient', 'xclient is on but the back-end does not offer XCLIENT: it sees Postern as the client (add Postern to smtpd_authorized_xclient_hosts)');
    }
    if (loginDropped) {
      this.#warnOnce('no-xclient-login', 'the back-end\'s XCLIENT has no LOGIN attribute: it does not learn who authenticated (Postfix < 2.9, or use proxy_smtp_auth)');
    }
    this.#backendSocket = backend;
    this.#outcome = 'relayed';
    this.socket.removeListener('data', clientOnData);
    // After RCPT the client gets the back-end's own reply; after AUTH, nginx's 235 (the back-end
    // has accepted the session, with XCLIENT LOGIN= naming the user).
    const first = reply ? reply.raw : this.#book.authOk;
    this.#lastCode = reply ? reply.code : 235;
    this.socket.write(first);
    // Commands the client pipelined after the RCPT or AUTH (RFC 2920) go to the back-end untouched.
    const rest = this.session.handOff();
    if (rest.length > 0) backend.write(rest);
    if (this.#clientEnded) backend.end();
    this.#relayStats = { lastCode: this.#lastCode, failure: null };
    relay(this.socket, backend, this.#ctx.config.timeouts.relay_idle, this.#relayStats, () => this.#finish());
  }

  /** A back-end misconfiguration is logged once per back-end, not once per session. */
  #warnOnce(kind: string, message: string): void {
    const key = `${kind} ${this.#backend}`;
    if (this.#ctx.warned.has(key)) return;
    this.#ctx.warned.add(key);
    this.#ctx.logger.warn({ backend: this.#backend }, message);
  }

  #finished = false;

  /** The access-log record: one per session, at its end (nginx has no equivalent). */
  #finish(): void {
    if (this.#finished) return;
    this.#finished = true;
    const rs = this.#relayStats;
    if (rs?.failure) {
      const spec = ERRORS[rs.failure];
      this.#ctx.logger[spec.level]({ code: rs.failure, client: this.clientAddr, backend: this.#backend }, spec.message);
    }
    if (this.#ctx.config.log.access) {
      const e = this.#envelope;
      this.#ctx.logger.info(
        {
          type: 'access',
          client: `${this.clientAddr}:${this.clientPort}`,
          helo: this.session.helo || undefined,
          user: e?.auth?.user,
          from: e?.mailFrom || undefined,
          to: e?.rcptTo || undefined,
          backend: this.#backend ?? undefined,
          tls: this.#tls?.protocol,
          backend_tls: this.#backendTls ?? undefined,
          bytes_in: this.#raw.bytesRead,
          bytes_out: this.#raw.bytesWritten,
          duration_ms: Date.now() - this.#started,
          outcome: rs?.failure ?? this.#outcome ?? 'client-closed',
          code: rs ? rs.lastCode : this.#lastCode || undefined,
        },
        'session',
      );
    }
    this.#onClosed(this);
  }
}

const kConn = Symbol('postern.connection');
interface OwnedSocket extends Socket {
  [kConn]: Connection;
}

// Module-level handlers (the ws style): no closures allocated per connection.
function clientOnData(this: OwnedSocket, chunk: Buffer): void {
  this[kConn].onData(chunk);
}
function clientOnEnd(this: OwnedSocket): void {
  this[kConn].onEnd();
}
function clientOnError(this: OwnedSocket, err: Error): void {
  // 'close' follows; a reset client is logged through the access record.
  this[kConn].onError(err);
}
function clientOnTimeout(this: OwnedSocket): void {
  this[kConn].onTimeout();
}
function clientOnClose(this: OwnedSocket): void {
  this[kConn].onClose();
}

function attach(socket: Socket, conn: Connection): void {
  (socket as OwnedSocket)[kConn] = conn;
  socket.on('data', clientOnData);
  socket.on('end', clientOnEnd);
  socket.on('error', clientOnError);
  socket.on('timeout', clientOnTimeout);
  socket.on('close', clientOnClose);
}

/** The TCP socket under a TLS socket is the TLS layer's now: Postern's handlers come off it. */
function detach(socket: Socket): void {
  socket.removeListener('data', clientOnData);
  socket.removeListener('end', clientOnEnd);
  socket.removeListener('timeout', clientOnTimeout);
  socket.removeListener('close', clientOnClose);
  socket.removeListener('error', clientOnError);
  socket.setTimeout(0);
}

function unmapIPv4(addr: string): string {
  return addr.startsWith('::ffff:') && addr.includes('.') ? addr.slice(7) : addr;
}
