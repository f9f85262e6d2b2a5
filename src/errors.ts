/**
 * The error catalogue: every failure Postern reports has one stable code, the SMTP reply the
 * client gets (RFC 5321 §4.2, enhanced codes per RFC 3463), whether the session then closes,
 * and the log level. `docs/errors.md` documents each entry; a test keeps the two in step.
 *
 * `{host}` in a reply is replaced by `server_name` (RFC 5321 §4.2: 421 replies name the host).
 * Reply texts follow nginx's mail module where it has one, so clients and monitoring see the
 * same strings after a switch.
 */

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export interface ErrorSpec {
  /** SMTP reply line without CRLF; null when the session ends without a reply. */
  reply: string | null;
  /** Close the connection after the reply. */
  close: boolean;
  level: LogLevel;
  /** Human description for the log and docs. */
  message: string;
}

export const ERRORS = {
  // Client protocol errors (before the hand-off).
  PST_LINE_TOO_LONG: { reply: '500 5.5.2 Line too long', close: true, level: 'info', message: 'client sent a line over max_line_length' },
  PST_BAD_BYTES: { reply: '500 5.5.2 Invalid character in command', close: false, level: 'info', message: 'client sent NUL, a bare CR or another control character in a command' },
  PST_UNKNOWN_COMMAND: { reply: '500 5.5.1 Invalid command', close: false, level: 'info', message: 'client sent an unknown or unsupported command' },
  PST_NOT_IMPLEMENTED: { reply: '502 5.5.1 Command not implemented', close: false, level: 'info', message: 'client sent a command Postern recognises but does not offer here' },
  PST_HTTP_REQUEST: { reply: '554 5.7.0 HTTP requests are not accepted here', close: true, level: 'info', message: 'client sent an HTTP request to the SMTP port' },
  PST_EARLY_TALKER: { reply: '503 5.5.0 Improper use of SMTP command pipelining', close: true, level: 'info', message: 'client sent data before the greeting' },
  PST_TOO_MANY_ERRORS: { reply: '421 4.7.0 {host} Too many errors, closing connection', close: true, level: 'info', message: 'client reached max_errors' },
  PST_NEED_HELO: { reply: '503 5.5.1 Send HELO/EHLO first', close: false, level: 'info', message: 'MAIL before HELO/EHLO' },
  PST_NESTED_MAIL: { reply: '503 5.5.1 Nested MAIL command', close: false, level: 'info', message: 'MAIL inside a transaction' },
  PST_NEED_MAIL: { reply: '503 5.5.1 Need MAIL command', close: false, level: 'info', message: 'RCPT or DATA before MAIL' },
  PST_NEED_RCPT: { reply: '503 5.5.1 Need RCPT command', close: false, level: 'info', message: 'DATA or BDAT before any recipient' },
  PST_INVALID_ARGUMENT: { reply: '501 5.5.4 Invalid argument', close: false, level: 'info', message: 'a command argument is missing or malformed' },
  PST_BAD_SENDER: { reply: '501 5.1.7 Bad sender address syntax', close: false, level: 'info', message: 'MAIL FROM path is malformed' },
  PST_BAD_RECIPIENT: { reply: '501 5.1.3 Bad recipient address syntax', close: false, level: 'info', message: 'RCPT TO path is malformed' },
  PST_MESSAGE_TOO_BIG: { reply: '552 5.3.4 Message size exceeds fixed limit', close: false, level: 'info', message: 'MAIL SIZE= is above max_message_size' },
  PST_NOT_PERMITTED: { reply: '550 5.7.0 Command not permitted', close: false, level: 'warn', message: 'client sent XCLIENT or XFORWARD; never forwarded' },
  PST_TLS_REQUIRED: { reply: '530 5.7.0 Must issue a STARTTLS command first', close: false, level: 'info', message: 'MAIL or RCPT before STARTTLS on a starttls: only listener' },
  PST_TLS_ACTIVE: { reply: '503 5.5.1 TLS already active', close: false, level: 'info', message: 'STARTTLS inside a TLS session' },
  PST_PROXY_UNTRUSTED: { reply: null, close: true, level: 'warn', message: 'a connection to a proxy_protocol listener from a peer not in set_real_ip_from: closed before anything is read' },
  PST_PROXY_INVALID: { reply: null, close: true, level: 'warn', message: 'a proxy_protocol listener got no valid PROXY header (v1 or v2) first: closed without a reply' },
  PST_PROXY_TIMEOUT: { reply: null, close: true, level: 'warn', message: 'a proxy_protocol listener got no whole PROXY header within timeouts.proxy_protocol: closed without a reply' },
  PST_TLS_HANDSHAKE: { reply: null, close: true, level: 'info', message: 'the client TLS handshake failed (garbage, plaintext on an implicit-TLS port, no shared protocol or cipher)' },
  PST_TLS_HANDSHAKE_TIMEOUT: { reply: null, close: true, level: 'info', message: 'the client did not finish its TLS handshake within timeouts.handshake' },
  PST_TLS_CLIENT_CERT_MISSING: { reply: '421 4.7.1 No required SSL certificate', close: true, level: 'info', message: 'verify_client on and the client sent no certificate' },
  PST_TLS_CLIENT_CERT_INVALID: { reply: '421 4.7.1 SSL certificate error', close: true, level: 'info', message: 'the client certificate did not verify (expired, unknown CA, self-signed, chain too deep)' },
  PST_AUTH_REQUIRED: { reply: '530 5.7.1 Authentication required', close: false, level: 'info', message: 'MAIL or RCPT before AUTH on a listener without smtp_auth none' },
  PST_AUTH_MECHANISM: { reply: '504 5.5.4 Unrecognized authentication type', close: false, level: 'info', message: 'AUTH with a mechanism this listener does not offer' },
  PST_AUTH_NEEDS_TLS: { reply: '538 5.7.11 Encryption required for requested authentication mechanism', close: false, level: 'info', message: 'AUTH before TLS on a listener without auth_plaintext' },
  PST_AUTH_IN_TRANSACTION: { reply: '503 5.5.1 AUTH not permitted during a mail transaction', close: false, level: 'info', message: 'AUTH after MAIL (RFC 4954 §4)' },
  PST_AUTH_CANCELLED: { reply: '501 5.7.0 Authentication cancelled', close: false, level: 'info', message: 'the client answered a 334 challenge with "*"' },
  PST_AUTH_BAD_RESPONSE: { reply: '501 5.5.2 Cannot decode response', close: false, level: 'info', message: 'a SASL response that is not base64 or not of the mechanism\'s shape' },
  PST_AUTH_ALREADY: { reply: '503 5.5.1 Already authenticated', close: false, level: 'info', message: 'AUTH in a session that has authenticated (RFC 4954 §4)' },
  PST_AUTH_TOO_MANY: { reply: '421 4.7.0 {host} Too many authentication failures', close: true, level: 'warn', message: 'auth.max_attempts reached in this session, or auth.max_failures_per_client for this address, or a limits.rates auth_failures rule for this address, network or user' },
  PST_DNSBL_LISTED: { reply: '554 5.7.1 Service unavailable; client host blocked by a DNS blocklist', close: true, level: 'info', message: 'the client\'s address is listed by the configured DNS blocklists above their threshold (postscreen\'s scoring); the detail names the lists' },
  PST_TOO_MANY_CONNECTIONS: { reply: '421 4.7.0 {host} Too many connections, try again later', close: true, level: 'warn', message: 'limits.max_connections reached (per worker)' },
  PST_CLIENT_CONNECTIONS: { reply: '421 4.7.0 {host} Too many connections from your address', close: true, level: 'info', message: 'limits.max_connections_per_client reached for this address (per worker)' },
  PST_RATE_CONNECTIONS: { reply: '421 4.7.0 {host} Error: too many connections', close: true, level: 'info', message: 'limits.connection_rate, or a limits.rates connections rule, reached for this client address or network (counted in limits.store); the reply names the address' },
  PST_IDLE_TIMEOUT: { reply: '421 4.4.2 {host} Error: timeout exceeded', close: true, level: 'info', message: 'client idle for timeouts.idle' },
  PST_SHUTDOWN: { reply: '421 4.3.2 {host} Service shutting down, try again later', close: true, level: 'info', message: 'Postern is stopping' },
  PST_CLIENT_EOF: { reply: null, close: true, level: 'debug', message: 'the client closed its side before the hand-off; commands it sent before are answered first' },
  PST_DATA_BARE_LF: { reply: '554 5.5.2 Bare <LF> in the end-of-data sequence: message refused', close: true, level: 'warn', message: 'transaction mode: a dot line framed by a bare LF (SMTP smuggling); the back-end never saw the sequence and the message was abandoned' },
  PST_NO_VALID_RECIPIENTS: { reply: '554 5.5.1 Error: no valid recipients', close: false, level: 'info', message: 'transaction mode: DATA after recipients that were all refused or deferred' },

  // Routing (auth_http or the built-in router).
  PST_AUTH_HTTP_UNAVAILABLE: { reply: '451 4.3.2 Internal server error', close: true, level: 'warn', message: 'auth service refused the connection or failed mid-request' },
  PST_AUTH_HTTP_TIMEOUT: { reply: '451 4.3.2 Internal server error', close: true, level: 'warn', message: 'auth service did not answer within timeouts.auth' },
  PST_AUTH_HTTP_INVALID: { reply: '451 4.3.2 Internal server error', close: true, level: 'warn', message: 'auth service answered garbage, an oversized header block, or no usable Auth-Server/Auth-Port' },
  PST_AUTH_REJECTED: { reply: '535 5.7.0 Authentication failed', close: true, level: 'info', message: 'auth service refused the session (Auth-Status text, Auth-Error-Code)' },
  PST_RCPT_OTHER_BACKEND: { reply: '452 4.5.3 Too many recipients for this transaction, send the rest separately', close: false, level: 'info', message: 'transaction mode: this recipient routes to another back-end than the transaction (RFC 5321 §4.5.3.1.10, RFC 3463 X.5.3); the client sends it in a later transaction' },
  PST_RCPT_ROUTE_FAILED: { reply: '451 4.3.2 Internal server error', close: false, level: 'warn', message: 'transaction mode: routing a later recipient failed (auth service down, slow or answering garbage); that recipient is deferred, the transaction goes on' },
  PST_POLICY_REFUSED: { reply: '554 5.7.1 Access denied', close: false, level: 'info', message: 'a policy server (checks.policy) refused a command (HELO/EHLO, MAIL, RCPT or DATA): REJECT, DEFER, DEFER_IF_PERMIT or 4NN/5NN; the reply is the one Postfix gives, the session goes on' },
  PST_POLICY_CONNECT_REFUSED: { reply: '554 5.7.1 Access denied', close: true, level: 'info', message: 'a policy server (checks.policy at connect) refused the client: its reply instead of the greeting (a 4NN said as 421), then close' },
  PST_RATE_RECIPIENTS: { reply: '452 4.7.1 Error: too many recipients', close: false, level: 'info', message: 'limits.recipient_rate, or a limits.rates recipients rule, reached: this recipient is deferred, the session goes on' },
  PST_RATE_MESSAGES: { reply: '450 4.7.1 Error: too much mail', close: false, level: 'info', message: 'a limits.rates messages rule reached for this client address, network, user, sender or sender domain: this MAIL is refused, the session goes on' },
  PST_ROUTE_UNKNOWN_POOL: { reply: '451 4.3.2 Internal server error', close: true, level: 'warn', message: 'the auth service (X-Postern-Pool) named a pool that is not configured' },
  PST_POOL_EXHAUSTED: { reply: '451 4.3.2 No back-end available, try again later', close: true, level: 'warn', message: 'every server of the pool that could be tried failed before the client saw a back-end byte (or none was usable); the detail lists each server tried and why' },
  PST_BACKEND_SENDER_REFUSED: { reply: '550 5.7.1 Sender refused', close: false, level: 'info', message: 'a pool\'s back-end answered the replayed MAIL with 5xx: its verdict on the mail, passed to the client as it is (instead of failing over)' },
  PST_ROUTE_RESOLVE: { reply: '451 4.3.2 Internal server error', close: true, level: 'warn', message: 'the back-end host name did not resolve' },

  // Back-end connect and replay.
  PST_BACKEND_UNREACHABLE: { reply: '451 4.3.2 Internal server error', close: true, level: 'warn', message: 'connecting to the back-end failed' },
  PST_BACKEND_TIMEOUT: { reply: '451 4.3.2 Internal server error', close: true, level: 'warn', message: 'the back-end did not complete the replay within timeouts.backend' },
  PST_BACKEND_REJECTED: { reply: '451 4.3.2 Internal server error', close: true, level: 'warn', message: 'the back-end refused a replay step (greeting, EHLO/HELO, XCLIENT or MAIL)' },
  PST_BACKEND_INVALID_REPLY: { reply: '451 4.3.2 Internal server error', close: true, level: 'warn', message: 'the back-end sent a malformed or oversized reply' },
  PST_BACKEND_TLS_REQUIRED: { reply: '451 4.3.2 Internal server error', close: true, level: 'warn', message: 'backend_tls required but the back-end did not offer or accept STARTTLS' },
  PST_BACKEND_TLS_FAILED: { reply: '451 4.3.2 Internal server error', close: true, level: 'warn', message: 'the TLS handshake with the back-end failed or its certificate did not verify' },
  PST_BACKEND_AUTH_FAILED: { reply: '451 4.3.2 Internal server error', close: true, level: 'warn', message: 'proxy_smtp_auth: the back-end refused AUTH, or no password was available for it' },
  PST_BACKEND_CLOSED: { reply: '451 4.3.2 Internal server error', close: true, level: 'warn', message: 'the back-end closed the connection during the replay' },

  // Relay phase: no reply of Postern's own may be injected into the relayed stream.
  PST_RELAY_IDLE_TIMEOUT: { reply: null, close: true, level: 'info', message: 'no bytes either way for timeouts.relay_idle' },
  PST_BACKEND_LOST: { reply: null, close: true, level: 'warn', message: 'the back-end connection failed while relaying; the client connection is closed so it cannot take silence for acceptance' },
  PST_BACKEND_LOST_REPLY: { reply: '451 4.3.2 Internal server error', close: true, level: 'warn', message: 'transaction mode: the back-end connection failed while a command waited for its reply, or with a transaction open' },
  PST_CLIENT_LOST: { reply: null, close: true, level: 'info', message: 'the client connection failed or was reset' },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERRORS;

/**
 * Warnings: events worth a log line with a stable code that end nothing and send no reply.
 * `docs/errors.md` ("Warnings") documents each; the same test keeps them in step.
 */
export const WARNINGS = {
  PSW_BACKEND_IDLE_CLOSED: { level: 'info', message: 'transaction mode: the back-end closed an idle connection between transactions; the next recipient connects again' },
  PSW_STARTTLS_DISCARDED: { level: 'info', message: 'discarded bytes pipelined after STARTTLS (RFC 3207 §4.2)' },
  PSW_NO_XCLIENT: { level: 'warn', message: 'xclient is on but the back-end does not offer XCLIENT: it sees Postern as the client (add Postern to smtpd_authorized_xclient_hosts); logged once per back-end' },
  PSW_POOL_SERVER_DOWN: { level: 'warn', message: 'a pool server failed max_fails sessions within fail_timeout: it is skipped until fail_timeout has passed (nginx max_fails)' },
  PSW_POOL_SERVER_UP: { level: 'info', message: 'a pool server that passive detection had taken out carried its trial session after fail_timeout: back in rotation' },
  PSW_POLICY_FAILED: { level: 'warn', message: 'a policy server was down, slow or answered garbage: its configured default (defer: 451 4.3.5, or dunno) applied' },
  PSW_POLICY_UNSUPPORTED: { level: 'warn', message: 'a policy server answered an action a proxy cannot honour (HOLD, FILTER, REDIRECT, DISCARD, BCC, …): treated as its `unsupported` setting says (dunno, defer or reject)' },
  PSW_RELOADED: { level: 'info', message: 'reload (SIGHUP): the new configuration is in use; sessions that began under the old one finish under it' },
  PSW_RELOAD_REFUSED: { level: 'error', message: 'reload (SIGHUP): the configuration has errors, or a new listener cannot be bound; the running configuration stays (problems name the key paths)' },
  PSW_RELOAD_PARTIAL: { level: 'warn', message: 'reload (SIGHUP): a change of `workers` between one and several processes, or of log (but its level), pid_file, metrics, user or group, needs a restart; the rest of the configuration is applied' },
  PSW_CHECK_FAILED: { level: 'error', message: 'a stage check failed unexpectedly (a bug): the command went on unchecked' },
  PSW_POLICY_PREPEND: { level: 'info', message: 'a policy server asked to PREPEND a header where Postern may not change the message (session mode, or prepend not allowed for it): not added' },
  PSW_LIMITS_STORE_DOWN: { level: 'warn', message: 'the limits store (cluster or Redis) failed or was slow: this process counts in memory until it answers again' },
  PSW_LIMITS_STORE_UP: { level: 'info', message: 'the limits store answers again: counts are shared again' },
  PSW_POOL_CHECK_DOWN: { level: 'warn', message: 'active checks: a pool server failed `fall` checks in a row and is taken out of every worker\'s rotation' },
  PSW_POOL_CHECK_UP: { level: 'info', message: 'active checks: a pool server that was down passed `rise` checks in a row and is back in rotation' },
  PSW_POOL_FAILOVER: { level: 'info', message: 'a pool server failed before the client saw a back-end byte; the next usable server, if any is left within max_tries and try_timeout, is tried' },
  PSW_NO_XCLIENT_LOGIN: { level: 'warn', message: 'the back-end\'s XCLIENT has no LOGIN attribute: it does not learn who authenticated (Postfix < 2.9, or use proxy_smtp_auth); logged once per back-end' },
} as const satisfies Record<string, { level: LogLevel; message: string }>;

export type WarningCode = keyof typeof WARNINGS;

/** An error carrying a catalogue code; `detail` goes to the log, never to the client. */
export class PosternError extends Error {
  readonly code: ErrorCode;
  readonly detail: string | undefined;
  /** A reply that replaces the catalogue's (auth service text, or a back-end's with proxy_pass_error_message). */
  readonly reply: string | undefined;

  constructor(code: ErrorCode, detail?: string, reply?: string) {
    super(detail ? `${ERRORS[code].message}: ${detail}` : ERRORS[code].message);
    this.name = 'PosternError';
    this.code = code;
    this.detail = detail;
    this.reply = reply;
  }
}
