/**
 * The seam between the connection driver and a mail protocol (nginx's `ngx_mail_protocol_t`).
 *
 * A protocol module (src/protocols/) makes one session machine per connection and knows how to
 * set up a back-end session (for SMTP: connect, greeting, EHLO, XCLIENT, MAIL, RCPT). The machine
 * decides everything; the driver (src/net/connection.ts) owns the sockets, carries out the
 * {@link Action}s in order and reports what happened as events — the methods of
 * {@link ProtocolSession} (docs/architecture.md, "One session, step by step").
 */
import type { Socket } from 'node:net';
import type { ListenerConfig } from './config/schema.js';
import type { CheckStage, CheckVerdict, ClientIdentity, Envelope, ProtocolName, RouteDecision, RouteTarget } from './domain.js';
import type { ErrorCode, PosternError, WarningCode } from './errors.js';

/** One recipient of a proxied message, for the per-message access record. */
export interface RecipientRecord {
  to: string;
  /** The back-end that was asked, or none when Postern answered itself (router refusal, 452). */
  backend?: string;
  /** The reply the client got for this RCPT. */
  code: number;
}

/** The per-message access record of transaction-aware proxying. */
export interface MessageRecord {
  from: string;
  recipients: RecipientRecord[];
  backend: string;
  /** Body bytes relayed, from after the 354 to the final `.CRLF` inclusive. */
  size: number;
  /** The back-end's reply to the end of data (always the back-end's own). */
  code: number;
  reply: string;
  /** Header lines Postern added at the top of the message (a policy server's PREPEND). */
  prepended?: readonly string[];
}

export type Action =
  | { type: 'reply'; data: Buffer }
  /** Log `code` at its catalogue level, send the session's reply for it (or `reply`), close if the catalogue says so. */
  | { type: 'error'; code: ErrorCode; detail?: string; reply?: Buffer }
  /** Ask the router; answer with {@link Session.routed}. */
  | { type: 'route'; envelope: Envelope }
  /** Ask the stage checks (src/checks/stage.ts) about a command; answer with `checked`. */
  | { type: 'check'; stage: CheckStage; envelope: Envelope; recipientCount: number; size?: number }
  /** Connect to `target` and replay `envelope`; answer with backendReady / backendFailed. */
  | { type: 'connect'; target: RouteTarget; envelope: Envelope }
  /** Write the first reply to the client and the rest to the back-end, then relay bytes blindly (nginx). */
  | { type: 'splice'; first: Buffer; rest: Buffer }
  /** Bytes for the back-end connection (transaction-aware proxying). */
  | { type: 'backend-write'; data: Buffer }
  /** End the back-end connection: say `quit` first (RFC 5321 §4.1.1.10), or cut it (`abort`) so an unfinished message is never completed. */
  | {
      type: 'backend-close';
      abort: boolean;
      /** The link owes no reply: the protocol may keep it for another session (ProtocolModule.release). */
      reuse?: boolean;
      /** …and no transaction is open there either: it needs no reset before it is kept. */
      clean?: boolean;
    }
  /** Run {@link Session.timer} after `ms` (greeting delay, Auth-Wait). */
  | { type: 'timer'; ms: number }
  /** Log `code` without a reply (a failure that happens where no reply is possible). */
  | { type: 'log'; code: ErrorCode | WarningCode; detail?: string }
  /** One message went through: the per-message access record. */
  | { type: 'message'; record: MessageRecord }
  /**
   * Close after the replies already queued have been written; `abort`: at once (no reply is
   * possible). `goodbye`: the client ended the session (SMTP QUIT, IMAP LOGOUT, POP3 QUIT) and
   * sent nothing after it — the socket is closed as soon as the replies are with the kernel, with
   * no half-close and linger (nginx closes after its 221 the same way, ngx_close_connection): a
   * client that resets the moment it reads the reply, as smtp-source does, then costs no failed
   * shutdown(2) and no error.
   */
  | { type: 'close'; abort?: boolean; goodbye?: boolean }
  /** Start the server side of a TLS handshake once the queued replies are written. */
  | { type: 'starttls'; discarded: number };

/** What the access record says about the session, asked for once at its end. */
export interface SessionSummary {
  helo?: string;
  user?: string;
  from?: string;
  to?: string;
  /** Messages relayed in transaction mode. */
  messages?: number;
}

/** The events a protocol's session machine receives; each returns the actions to carry out. */
export interface ProtocolSession<Ready = unknown> {
  readonly phase: string;
  /** Read from the client now (the driver pauses the socket otherwise). */
  readonly reading: boolean;
  /** What the back-end link waits for (transaction mode): sets the back-end's timer. */
  readonly backendWaiting: 'none' | 'reply' | 'final';
  /** The protocol's reply bytes for a catalogue code. */
  errorReply(code: ErrorCode): Buffer;
  summary(): SessionSummary;
  /** Greet (or start implicit TLS); `prepend`: header lines the connect checks asked for, for every message. */
  start(prepend?: readonly string[]): Action[];
  /** The connect-time checks refused the client (a blocklist): the protocol's refusal, and close. */
  refused(code: ErrorCode, detail: string, reply?: string): Action[];
  receive(chunk: Buffer): Action[];
  tlsStarted(): Action[];
  tlsFailed(code: 'PST_TLS_HANDSHAKE' | 'PST_TLS_HANDSHAKE_TIMEOUT', detail?: string): Action[];
  tlsRefused(code: ErrorCode, detail?: string): Action[];
  timer(): Action[];
  clientEnded(): Action[];
  idleTimeout(): Action[];
  routed(decision: RouteDecision): Action[];
  /** The stage checks' answer to the last `check` action. */
  checked(verdict: CheckVerdict): Action[];
  backendReady(ready: Ready): Action[];
  backendFailed(err: PosternError, reply?: Buffer): Action[];
  backendData(chunk: Buffer): Action[];
  backendLost(code: ErrorCode, detail: string): Action[];
  shutdown(): Action[];
}

/** A back-end session set up by a protocol module: the socket and what the machine needs to know. */
export interface BackendSession<Ready = unknown> {
  socket: Socket;
  /** The server that took the session (a pool's member, or one address of a name), for the records. */
  name?: string;
  /** TLS protocol of the back-end connection, if any. */
  tls: string | null;
  /** The connection was kept from earlier sessions (backend_reuse): this is its `session`-th session. */
  session?: number;
  /** The id the back-end was told for this session (IMAP ID `x-session-id`, POP3 XCLIENT `SESSION=`), for the access record: it matches the back-end's log. */
  sessionId?: string;
  ready: Ready;
}

export type BackendDone<Ready = unknown> = (err: PosternError | null, session?: BackendSession<Ready>) => void;

/**
 * One protocol for one server block: it makes a session machine per connection and sets up
 * back-end sessions. The driver knows nothing else of the protocol.
 */
export interface ProtocolModule<Ready = unknown> {
  readonly name: ProtocolName;
  /** A session factory for one of the server's listeners; `checkStages`: where stage checks are registered. */
  sessions(listener: ListenerConfig, checkStages?: ReadonlySet<CheckStage>): () => ProtocolSession<Ready>;
  /** Connects to `target` and sets the back-end session up; `done` is called once. Returns an abort. */
  connect(client: ClientIdentity, target: RouteTarget, envelope: Envelope, done: BackendDone<Ready>): () => void;
  /** The reply for a connection refused before any session exists (connection caps). */
  refusal(code: ErrorCode): Buffer;
  /** The reply code at the end of bytes sent to the client (0: none), for the access record. */
  replyCode(data: Buffer): number;
  /**
   * A back-end connection whose session is over and owes nothing: the module may keep it for a
   * later session (SMTP: RSET, then the back-end connection cache). False: not kept, the driver
   * ends it as usual.
   */
  release?(socket: Socket, clean: boolean): boolean;
  /** Shutdown or reload: let go of whatever the module keeps (kept back-end connections). */
  close?(): void;
}
