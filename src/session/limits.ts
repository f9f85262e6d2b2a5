/** The per-listener settings an SMTP session machine runs with (built from the server's config). */
import type { Mechanism } from '../smtp/sasl.js';

export interface SessionLimits {
  /** Longest command line in bytes, CRLF included (nginx `smtp_client_buffer`). */
  maxLineLength: number;
  /** Error replies after which the session is closed (nginx `max_errors`); 0 disables. */
  maxErrors: number;
  /** Largest SIZE= accepted at MAIL (RFC 1870); 0 means no limit. */
  maxMessageSize: number;
  /** Refuse MAIL before HELO/EHLO (RFC 5321 §4.1.4). */
  requireHelo: boolean;
  /** Hold the greeting (nginx `smtp_greeting_delay`) until {@link Session.greetingDue}; input before it is an early talker. */
  greetingDelay: boolean;
  /** How long: the session asks the driver for a timer of this length (without it, the caller calls greetingDue). */
  greetingDelayMs?: number;
  /** STARTTLS on this listener: `only` refuses MAIL and RCPT before TLS. */
  starttls: 'off' | 'on' | 'only';
  /** TLS from the first byte: the greeting follows the handshake. */
  implicitTls: boolean;
  /** SMTP AUTH on this listener. */
  auth: AuthLimits;
  /** nginx's blind relay after the first route (`session`, the default), or transaction-aware proxying. */
  proxyMode?: 'session' | 'transaction';
  /** After a good AUTH, route at each RCPT instead (auth_http `envelope_after_auth`). */
  envelopeAfterAuth?: boolean;
  /** Stages where stage checks are registered (src/checks/stage.ts): the session asks there. */
  checkStages?: ReadonlySet<import('../domain.js').CheckStage>;
  /** Show the back-end's own refusal text when a replay step fails (nginx `proxy_pass_error_message`). */
  passErrorMessage?: boolean;
}

export interface AuthLimits {
  mechanisms: readonly Mechanism[];
  /** `none` listed: unauthenticated MAIL/RCPT are allowed (routing at RCPT). */
  allowNone: boolean;
  /** AUTH before TLS is allowed. */
  plaintext: boolean;
  /** Refused AUTH attempts before the session is closed. */
  maxAttempts: number;
  /** A fresh CRAM-MD5 challenge, `<random.time@server_name>` (injected: the machine has no clock). */
  challenge: () => string;
}

/** A listener without AUTH. */
export const NO_AUTH: AuthLimits = Object.freeze({ mechanisms: [], allowNone: true, plaintext: false, maxAttempts: 3, challenge: () => '' });
