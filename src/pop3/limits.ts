/** The per-listener settings a POP3 session machine runs with (built from the server's config by src/protocols/pop3.ts). */
import type { Pop3Mechanism } from './replies.js';

export interface Pop3Limits {
  /** Longest command line in bytes, CRLF included (max_line_length). */
  maxLineLength: number;
  /** Error replies after which the session is closed (nginx `max_errors`); 0 disables. */
  maxErrors: number;
  /** STLS on this listener (RFC 2595 §4); `only` refuses every login before TLS, as nginx. */
  starttls: 'off' | 'on' | 'only';
  /** TLS from the first byte (port 995 style): the greeting follows the handshake. */
  implicitTls: boolean;
  /** `plain` in pop3.auth: USER/PASS (and AUTH PLAIN/LOGIN, in `mechanisms`). */
  userPass: boolean;
  /** `apop` in pop3.auth: the APOP command (RFC 1939 §7). */
  apop: boolean;
  /** The SASL mechanisms AUTH accepts (RFC 5034), in the order CAPA lists them. */
  mechanisms: readonly Pop3Mechanism[];
  /** Refused logins before the session is closed (auth.max_attempts). */
  maxAttempts: number;
  /**
   * A fresh greeting timestamp `<random.time@server_name>` (nginx's ngx_mail_salt), or null when
   * neither APOP nor CRAM-MD5 is on (then the greeting has none). Injected: the machine has no clock.
   */
  timestamp: (() => string) | null;
  /** Show a back-end's own `-ERR` line when it refuses the login (nginx `proxy_pass_error_message`). */
  passErrorMessage: boolean;
}
