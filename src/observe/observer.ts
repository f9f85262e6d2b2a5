/**
 * The observer seam: what a session did, reported once per message and once per session, to
 * whoever listens (the access log today, metrics later). Observers never change a session.
 */
import type { MessageRecord, SessionSummary } from '../protocol.js';

export interface SessionRecord extends SessionSummary {
  client: string;
  backend?: string;
  /** The client's TLS protocol, if any. */
  tls?: string;
  backend_tls?: string;
  bytes_in: number;
  bytes_out: number;
  duration_ms: number;
  /** `quit`, `relayed`, `client-eof`, `client-closed`, or the error code that ended the session. */
  outcome: string;
  /** The last reply code the client was sent. */
  code?: number;
}

export interface MessageEvent extends MessageRecord {
  client: string;
}

export interface SessionObserver {
  message?(event: MessageEvent): void;
  sessionEnd?(record: SessionRecord): void;
}
