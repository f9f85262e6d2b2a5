/**
 * The SMTP dialog's state and the few steps every command shares — reading lines in order,
 * failing a command, ending the session, going on after a wait — as the base of ./dialog.ts
 * (the commands) and ./session.ts (the events). Only these classes write the session's state.
 */
import type { Credentials, Envelope } from '../domain.js';
import { ERRORS, type ErrorCode } from '../errors.js';
import type { Action } from '../protocol.js';
import { LINE_TOO_LONG, LineReader } from '../smtp/line-reader.js';
import type { ReplyBook } from '../smtp/replies.js';
import type { Reply } from '../smtp/reply-reader.js';
import type { SessionLimits } from './limits.js';
import type { SaslExchange } from './sasl-exchange.js';
import type { MessageDraft, TransactionProxy } from './transaction.js';

export type Phase =
  | 'tls-handshake'
  | 'greeting'
  | 'command'
  /** Waiting for the stage checks' verdict on HELO/EHLO, MAIL or DATA. */
  | 'checking'
  /** Waiting for the router, then for the back-end's connect and replay. */
  | 'routing'
  /** A refusal with Auth-Wait: the reply goes out when the wait is over. */
  | 'auth-wait'
  /** Transaction mode: a command is with the back-end and its reply is owed to the client. */
  | 'backend-wait'
  /** Transaction mode: the message body flows to the back-end. */
  | 'data'
  | 'handed-off'
  | 'closed';

/** What the back-end connection reports once connect and replay are done. */
export interface BackendReadyInfo {
  /** The back-end's reply to the replayed RCPT; null after AUTH (no RCPT replayed). */
  reply: Reply | null;
  /** The back-end offers PIPELINING (MAIL and RCPT can leave together). */
  pipelining: boolean;
  /** The server that took the session (for a pool: which member), for the per-message records. */
  server?: string;
}

export interface HeldMail {
  line: string;
  from: string;
}

/** The command a stage check is deciding on, carried out when it passes. */
export type PendingCheck =
  | { stage: 'helo'; verb: 'EHLO' | 'HELO'; arg: string }
  | { stage: 'mail'; line: string; from: string }
  | { stage: 'data' };

export abstract class DialogState {
  protected stage: Phase = 'greeting';
  helo = '';
  esmtp = false;
  errors = 0;
  attempts = 0;
  /** TLS is active (implicit, or after STARTTLS). */
  secure = false;
  /** Credentials the router accepted, when the session stays with Postern until RCPT (envelope_after_auth). */
  authenticated: Credentials | null = null;
  /** AUTH attempts the router refused. */
  authFailures = 0;
  /** The envelope of the first route (for the session's access record). */
  firstEnvelope: Envelope | null = null;
  /** Messages relayed in transaction mode. */
  messages = 0;
  /** MAIL commands that passed their syntax checks, refused by a check or not (Envelope.transaction). */
  transactions = 0;
  protected mail: HeldMail | null = null;
  protected sasl: SaslExchange | null = null;
  protected authRouting = false;
  protected draining = false;
  protected ended = false;
  /** The envelope being routed, and for a recipient of a transaction mode session, its path. */
  protected routing: Envelope | null = null;
  /** An Auth-Wait refusal waiting for its timer. */
  protected waiting: { reply: Action; keepOpen: boolean } | null = null;
  /** Transaction mode: the back-end link, once the first route has connected. */
  protected tx: TransactionProxy | null = null;
  /** The command the stage checks are deciding on. */
  protected pendingCheck: PendingCheck | null = null;
  /** Header lines for every message of the session: the connect checks' PREPEND, and the last accepted HELO's. */
  protected connectPrepend: readonly string[] = [];
  protected heloPrepend: readonly string[] = [];
  protected draft: MessageDraft | null = null;
  protected readonly reader: LineReader;
  protected readonly book: ReplyBook;
  protected readonly limits: SessionLimits;

  constructor(book: ReplyBook, limits: SessionLimits) {
    this.book = book;
    this.limits = limits;
    this.reader = new LineReader(limits.maxLineLength);
  }

  get phase(): Phase {
    return this.stage;
  }

  /** Whether the driver should read from the client now (it pauses the socket otherwise). */
  get reading(): boolean {
    const p = this.stage;
    return p !== 'routing' && p !== 'checking' && p !== 'auth-wait' && p !== 'backend-wait' && p !== 'handed-off';
  }

  /** The catalogue's reply bytes for `code` ({host} filled in). */
  errorReply(code: ErrorCode): Buffer {
    return this.book.error(code);
  }

  protected body(chunk: Buffer, out: Action[]): void {
    const s = this.tx!.body(chunk, out);
    if (s.kind === 'more') return;
    if (s.kind === 'smuggling') {
      this.stage = 'closed';
      this.tx = null;
      out.push({ type: 'backend-close', abort: true }, { type: 'error', code: 'PST_DATA_BARE_LF' });
      return;
    }
    this.draft = null;
    this.mail = null;
    this.stage = 'backend-wait';
    if (s.rest.length > 0) this.reader.push(s.rest);
  }

  /** Back in the command phase: go on with pipelined commands, then honour EOF and stop requests. */
  protected resume(out: Action[]): void {
    this.drain(out);
    if (this.stage !== 'command') return;
    if (this.draining) this.end(out, 'PST_SHUTDOWN');
    else if (this.ended) this.end(out, 'PST_CLIENT_EOF');
  }

  /** Ends an idle session: 421 for a stop, a quiet close for EOF; the back-end gets its QUIT. */
  protected end(out: Action[], code: 'PST_SHUTDOWN' | 'PST_CLIENT_EOF'): void {
    this.stage = 'closed';
    // Idle between commands: the link owes nothing, so it may be kept for another session (not when stopping).
    if (this.tx) out.push({ type: 'backend-close', abort: false, reuse: code === 'PST_CLIENT_EOF', clean: this.tx.idle });
    this.tx = null;
    if (code === 'PST_SHUTDOWN') out.push({ type: 'error', code });
    else out.push({ type: 'log', code }, { type: 'close' });
  }

  protected drain(out: Action[]): void {
    while (this.stage === 'command') {
      const line = this.reader.next();
      if (line === null) return;
      if (line === LINE_TOO_LONG) {
        this.reader.rest();
        this.fail(out, 'PST_LINE_TOO_LONG');
        return;
      }
      if (this.draining) {
        this.end(out, 'PST_SHUTDOWN');
        return;
      }
      if (this.sasl) this.saslResponse(line, out);
      else this.command(line, out);
    }
  }

  protected abstract command(line: Buffer, out: Action[]): void;
  protected abstract saslResponse(line: Buffer, out: Action[]): void;

  protected fail(out: Action[], code: ErrorCode, detail?: string): void {
    out.push(detail === undefined ? { type: 'error', code } : { type: 'error', code, detail });
    if (ERRORS[code].close) {
      this.stage = 'closed';
      if (this.tx) out.push({ type: 'backend-close', abort: false });
      this.tx = null;
      return;
    }
    this.errors++;
    if (this.limits.maxErrors > 0 && this.errors >= this.limits.maxErrors) {
      this.stage = 'closed';
      if (this.tx) out.push({ type: 'backend-close', abort: false });
      this.tx = null;
      out.push({ type: 'error', code: 'PST_TOO_MANY_ERRORS' });
    }
  }
}

/** A log-safe rendering of client bytes: control and 8-bit bytes escaped, length capped. */
export function printable(buf: Buffer): string {
  const s = buf.subarray(0, 128).toString('latin1');
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\x00-\x1f\x7f-\xff]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}
