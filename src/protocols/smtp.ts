/**
 * The SMTP protocol module (nginx's ngx_mail_smtp_module with the SMTP half of its proxy
 * module): per listener, the pre-built replies and the limits of the session machine
 * (src/session/); per back-end, connect and replay (src/backend/). Everything SMTP-specific that
 * the connection driver must not know lives here or below.
 */
import { randomInt } from 'node:crypto';
import type { BackendTlsOptions } from '../backend/connect.js';
import { connectBackend } from '../backend/connect.js';
import { backendAuthFor, backendTlsFor } from '../backend/route-options.js';
import type { ListenerConfig, ServerConfig } from '../config/schema.js';
import { backendName, type ClientIdentity, type Envelope, type RouteTarget } from '../domain.js';
import { WARNINGS, type ErrorCode } from '../errors.js';
import type { Logger } from '../log/logger.js';
import type { BackendDone, ProtocolModule, ProtocolSession } from '../protocol.js';
import { Session, type BackendReadyInfo } from '../session/session.js';
import type { SessionLimits } from '../session/limits.js';
import { lastReplyCode, ReplyBook } from '../smtp/replies.js';
import { cramChallenge, type Mechanism } from '../smtp/sasl.js';
import { readBackendCa } from '../tls/contexts.js';

function mechanisms(l: ListenerConfig): Mechanism[] {
  return l.smtp_auth.filter((m) => m !== 'none').map((m) => m.toUpperCase() as Mechanism);
}

/** The configured back-end TLS (the auth service may override the mode and name per route). */
export function backendTlsOptions(config: ServerConfig): BackendTlsOptions {
  const b = config.backend_tls;
  const ca = b.ca ? readBackendCa(b.ca) : undefined;
  return {
    mode: b.mode,
    verify: b.verify,
    minVersion: b.min_version,
    ...(ca ? { ca } : {}),
    ...(b.server_name ? { serverName: b.server_name } : {}),
  };
}

export class SmtpProtocol implements ProtocolModule<BackendReadyInfo> {
  readonly name = 'smtp' as const;
  readonly #config: ServerConfig;
  readonly #logger: Logger;
  readonly #backendTls: BackendTlsOptions;
  readonly #capabilities: string[];
  readonly #refusals: ReplyBook;
  /** Back-end warnings already logged ("<kind> <host:port>"): each is logged once, not per session. */
  readonly #warned = new Set<string>();

  constructor(config: ServerConfig, logger: Logger) {
    this.#config = config;
    this.#logger = logger;
    this.#backendTls = backendTlsOptions(config);
    this.#capabilities = config.capabilities.map((c) =>
      c.toUpperCase() === 'SIZE' && config.max_message_size > 0 ? `SIZE ${config.max_message_size}` : c,
    );
    this.#refusals = new ReplyBook({ serverName: config.server_name, capabilities: [] });
  }

  sessions(l: ListenerConfig): () => ProtocolSession<BackendReadyInfo> {
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
      envelopeAfterAuth: 'auth_http' in c.route && c.route.auth_http.envelope_after_auth,
      passErrorMessage: c.proxy_pass_error_message,
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

  connect(client: ClientIdentity, target: RouteTarget, envelope: Envelope, done: BackendDone<BackendReadyInfo>): () => void {
    const c = this.#config;
    const auth = envelope.auth;
    return connectBackend(
      target.host,
      target.port,
      {
        serverName: c.server_name,
        envelope,
        client,
        xclient: c.xclient,
        // nginx: Auth-User in the answer replaces the login the client gave.
        ...(auth ? { login: target.user ?? auth.user } : {}),
        ...backendAuthFor(auth, target, c.proxy_smtp_auth),
      },
      backendTlsFor(this.#backendTls, target.tls),
      c.timeouts.backend,
      (err, ready) => {
        if (err) return done(err);
        const r = ready!;
        this.#warnings(backendName(target), r.xclient, r.loginDropped);
        done(null, { socket: r.socket, tls: r.tls, ready: { reply: r.reply, pipelining: r.pipelining } });
      },
    );
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
