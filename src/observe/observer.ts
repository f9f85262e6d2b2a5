/**
 * The observer seam: what a session did, reported once per message and once per session, to
 * whoever listens (the access log, the metrics). Observers never change a session.
 */
import type { ErrorCode } from '../errors.js';
import type { MessageRecord, SessionSummary } from '../protocol.js';

export interface SessionRecord extends SessionSummary {
  client: string;
  backend?: string;
  /** The client's TLS protocol, if any. */
  tls?: string;
  backend_tls?: string;
  /** The session went on a kept back-end connection (backend_reuse): its session number on it. */
  backend_session?: number;
  /** The id the back-end was told (IMAP ID x-session-id, POP3 XCLIENT SESSION=): Dovecot logs it as `session=<…>`. */
  backend_session_id?: string;
  bytes_in: number;
  bytes_out: number;
  duration_ms: number;
  /** `quit`, `relayed`, `client-eof`, `client-closed`, or the error code that ended the session. */
  outcome: string;
  /** The last reply code the client was sent. */
  code?: number;
  /** The verified reverse name (checks.reverse_dns), when there is one. */
  client_name?: string;
  /** What the checks found; `refused`: `CODE: reply code` for each refusal of a check or limit. */
  checks?: { refused?: readonly string[]; [key: string]: unknown };
}

export interface MessageEvent extends MessageRecord {
  client: string;
}

export interface SessionObserver {
  message?(event: MessageEvent): void;
  sessionEnd?(record: SessionRecord): void;
  /** A connection refused at accept by a cap or a rate (no session, no record; already logged). */
  connectionRefused?(code: ErrorCode): void;
}
