/**
 * The client side of an SMTP session, as a state machine without I/O: the SMTP protocol module's
 * core (nginx's ngx_mail_smtp_handler, one level up from ngx_mail_parse.c).
 *
 * Events go in as method calls (`start`, `receive`, `routed`, `backendReady`, `idleTimeout`, …);
 * each returns the actions the connection driver must carry out, in order (./actions.ts). The
 * session is the only writer of its phase. Lines are handled strictly one at a time and the
 * machine stops consuming at a command that waits for a router or a back-end, so replies always
 * leave in command order (RFC 2920 §3.1) and every byte after that command stays in the reader.
 *
 * Two ways to proxy (per server, `proxy_mode`):
 * - `session` (nginx): route at the first RCPT (or at AUTH), replay, then splice bytes blindly.
 * - `transaction`: keep reading commands after the first route; every RCPT is routed, every
 *   transaction may go to another back-end (./transaction.ts holds the back-end half).
 * Phase names match docs/lifecycle.md.
 */
import type { Credentials, Envelope, RouteDecision, RouteTarget } from '../domain.js';
import { sameBackend } from '../domain.js';
import { ERRORS, type ErrorCode, type PosternError } from '../errors.js';
import { hasForbiddenByte, parseCommand } from '../smtp/command.js';
import { LINE_TOO_LONG, LineReader } from '../smtp/line-reader.js';
import { parsePathArg, sizeParam } from '../smtp/path.js';
import { lineReply, type ReplyBook } from '../smtp/replies.js';
import type { Reply } from '../smtp/reply-reader.js';
import { MECHANISMS, type Mechanism } from '../smtp/sasl.js';
import type { Action, ProtocolSession, SessionSummary } from '../protocol.js';
import { SaslExchange } from './sasl-exchange.js';
import { TransactionProxy, type MessageDraft } from './transaction.js';

export type { Action, MessageRecord, RecipientRecord } from '../protocol.js';
export type { Envelope } from '../domain.js';
export { NO_AUTH, type AuthLimits, type SessionLimits } from './limits.js';
import type { SessionLimits } from './limits.js';

export type Phase =
  | 'tls-handshake'
  | 'greeting'
  | 'command'
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
}

interface HeldMail {
  line: string;
  from: string;
}

export class Session implements ProtocolSession<BackendReadyInfo> {
  #phase: Phase = 'greeting';
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
  #mail: HeldMail | null = null;
  #sasl: SaslExchange | null = null;
  #authRouting = false;
  #draining = false;
  #clientEnded = false;
  /** The envelope being routed, and for a recipient of a transaction mode session, its path. */
  #routing: Envelope | null = null;
  /** An Auth-Wait refusal waiting for its timer. */
  #waiting: { reply: Action; keepOpen: boolean } | null = null;
  /** Transaction mode: the back-end link, once the first route has connected. */
  #tx: TransactionProxy | null = null;
  #draft: MessageDraft | null = null;
  readonly #reader: LineReader;
  readonly #book: ReplyBook;
  readonly #limits: SessionLimits;

  constructor(book: ReplyBook, limits: SessionLimits) {
    this.#book = book;
    this.#limits = limits;
    this.#reader = new LineReader(limits.maxLineLength);
  }

  get phase(): Phase {
    return this.#phase;
  }

  /** Whether the driver should read from the client now (it pauses the socket otherwise). */
  get reading(): boolean {
    const p = this.#phase;
    return p !== 'routing' && p !== 'auth-wait' && p !== 'backend-wait' && p !== 'handed-off';
  }

  /** What the back-end link is waiting for (transaction mode), for the driver's back-end timer. */
  get backendWaiting(): 'none' | 'reply' | 'final' {
    return this.#tx ? this.#tx.waiting : 'none';
  }

  summary(): SessionSummary {
    const e = this.firstEnvelope;
    return {
      ...(this.helo ? { helo: this.helo } : {}),
      ...(e?.auth ? { user: e.auth.user } : this.authenticated ? { user: this.authenticated.user } : {}),
      ...(e?.mailFrom ? { from: e.mailFrom } : {}),
      ...(e?.rcptTo ? { to: e.rcptTo } : {}),
      ...(this.#limits.proxyMode === 'transaction' ? { messages: this.messages } : {}),
    };
  }

  /** The catalogue's reply bytes for `code` ({host} filled in). */
  errorReply(code: ErrorCode): Buffer {
    return this.#book.error(code);
  }

  /** Connection accepted: greet now, or wait for the greeting delay, or start implicit TLS. */
  start(): Action[] {
    if (this.#limits.implicitTls) {
      // The driver starts the handshake itself: implicit TLS is a property of the listener.
      this.#phase = 'tls-handshake';
      return [];
    }
    if (this.#limits.greetingDelay) return this.#greetingTimer();
    this.#phase = 'command';
    return [{ type: 'reply', data: this.#book.greeting }];
  }

  /**
   * The TLS handshake succeeded. RFC 3207 §4.2: everything learnt before it (HELO, the
   * transaction) is forgotten; the client starts again with EHLO. On an implicit-TLS port this is
   * where the greeting is sent (or the greeting delay starts).
   */
  tlsStarted(): Action[] {
    const first = !this.secure && this.#limits.implicitTls;
    this.secure = true;
    this.helo = '';
    this.esmtp = false;
    this.#mail = null;
    this.authenticated = null;
    if (this.#draining) {
      this.#phase = 'closed';
      return [{ type: 'error', code: 'PST_SHUTDOWN' }];
    }
    if (first) {
      this.#phase = 'greeting';
      return this.#limits.greetingDelay ? this.#greetingTimer() : this.greetingDue();
    }
    this.#phase = 'command';
    return [];
  }

  /** The handshake failed or timed out: no SMTP reply is possible in the middle of one. */
  tlsFailed(code: 'PST_TLS_HANDSHAKE' | 'PST_TLS_HANDSHAKE_TIMEOUT', detail?: string): Action[] {
    if (this.#phase !== 'tls-handshake') return [];
    this.#phase = 'closed';
    return [detail === undefined ? { type: 'log', code } : { type: 'log', code, detail }, { type: 'close', abort: true }];
  }

  /** The handshake succeeded but the client certificate is refused (verify_client). */
  tlsRefused(code: ErrorCode, detail?: string): Action[] {
    this.#phase = 'closed';
    return [detail === undefined ? { type: 'error', code } : { type: 'error', code, detail }];
  }

  #greetingTimer(): Action[] {
    const ms = this.#limits.greetingDelayMs;
    return ms ? [{ type: 'timer', ms }] : [];
  }

  /** The greeting delay has passed without the client speaking. */
  greetingDue(): Action[] {
    if (this.#phase !== 'greeting') return [];
    this.#phase = 'command';
    return [{ type: 'reply', data: this.#book.greeting }];
  }

  /** The timer the session asked for has fired: the greeting delay, or an Auth-Wait. */
  timer(): Action[] {
    if (this.#phase === 'greeting') return this.greetingDue();
    if (this.#phase === 'auth-wait' && this.#waiting) {
      const w = this.#waiting;
      this.#waiting = null;
      this.#phase = 'routing';
      return this.routeFailed(w.reply, w.keepOpen && !this.#clientEnded);
    }
    return [];
  }

  /** Bytes from the client. */
  receive(chunk: Buffer): Action[] {
    const out: Action[] = [];
    if (this.#phase === 'greeting') {
      // nginx smtp_greeting_delay / postscreen pregreet: a client that talks first is not a real MTA.
      this.#phase = 'closed';
      out.push({ type: 'error', code: 'PST_EARLY_TALKER', detail: printable(chunk) });
      return out;
    }
    // After close nothing more is read; after the hand-off the relay owns the bytes.
    if (this.#phase === 'closed' || this.#phase === 'handed-off' || this.#phase === 'tls-handshake') return out;
    if (this.#phase === 'data') {
      this.#body(chunk, out);
      return out;
    }
    this.#reader.push(chunk);
    if (this.#phase === 'command') this.#drain(out);
    return out;
  }

  /** The client closed its side. Commands it pipelined before are still answered. */
  clientEnded(): Action[] {
    this.#clientEnded = true;
    const out: Action[] = [];
    switch (this.#phase) {
      case 'command':
      case 'greeting':
        this.#end(out, 'PST_CLIENT_EOF');
        break;
      case 'tls-handshake':
        return this.tlsFailed('PST_TLS_HANDSHAKE', 'client closed during the handshake');
      case 'data':
        // The body never ended: the back-end must never see an end of data for it.
        this.#phase = 'closed';
        this.#tx = null;
        out.push({ type: 'backend-close', abort: true }, { type: 'log', code: 'PST_CLIENT_EOF', detail: 'in the middle of a message body' }, { type: 'close' });
        break;
      default:
        break; // routing or a back-end reply pending: EOF is handled once it is settled
    }
    return out;
  }

  /** The client was idle for timeouts.idle. */
  idleTimeout(): Action[] {
    if (this.#phase === 'tls-handshake') return this.tlsFailed('PST_TLS_HANDSHAKE_TIMEOUT');
    if (this.#phase !== 'command' && this.#phase !== 'greeting' && this.#phase !== 'data') return [];
    const out: Action[] = [];
    if (this.#tx) out.push({ type: 'backend-close', abort: this.#phase === 'data' });
    this.#tx = null;
    this.#phase = 'closed';
    out.push({ type: 'error', code: 'PST_IDLE_TIMEOUT' });
    return out;
  }

  /** The router's answer to the last `route` action. */
  routed(d: RouteDecision): Action[] {
    if (this.#phase !== 'routing') return [];
    const env = this.#routing!;
    if (d.kind === 'error') {
      if (this.#tx && env.mailLine !== '') return this.#recipientAnswered(env, 'PST_RCPT_ROUTE_FAILED', d.detail);
      return this.routeFailed({ type: 'error', code: d.code, detail: d.detail }, false);
    }
    if (d.kind === 'reject') {
      const reply: Action = { type: 'reply', data: lineReply(d.reply) };
      // Transaction mode: a refused recipient is one recipient, not the session (the transaction goes on).
      const keepOpen = d.waitMs > 0 || (this.#limits.proxyMode === 'transaction' && !(env.auth && env.mailLine === ''));
      if (this.#limits.proxyMode === 'transaction' && env.mailLine !== '') this.#draftOf(env).recipients.push({ to: env.rcptTo, code: Number(d.reply.slice(0, 3)) });
      if (d.waitMs <= 0) return this.routeFailed(reply, keepOpen && !this.#clientEnded);
      this.#phase = 'auth-wait';
      this.#waiting = { reply, keepOpen };
      return [{ type: 'timer', ms: d.waitMs }];
    }
    if (env.auth && env.mailLine === '' && this.#limits.envelopeAfterAuth) return this.authAccepted(env.auth);
    return this.#toBackend(env, d);
  }

  /**
   * The router refused (or failed). The reply is sent; with `keepOpen` (Auth-Wait, or a refused
   * recipient in transaction mode) the session returns to the command phase and goes on with
   * any commands the client had pipelined.
   */
  routeFailed(action: Action, keepOpen: boolean): Action[] {
    const out: Action[] = [action];
    if (!keepOpen) {
      this.#phase = 'closed';
      if (this.#tx) out.push({ type: 'backend-close', abort: false });
      this.#tx = null;
      out.push({ type: 'close' });
      return out;
    }
    this.#phase = 'command';
    if (this.#authRouting) {
      this.#authRouting = false;
      if (++this.authFailures >= this.#limits.auth.maxAttempts) {
        this.#phase = 'closed';
        out.push({ type: 'error', code: 'PST_AUTH_TOO_MANY', detail: `${this.authFailures} failed attempts` });
        return out;
      }
    }
    this.#resume(out);
    return out;
  }

  /**
   * The router accepted the AUTH but routing waits for the first RCPT (envelope_after_auth):
   * 235 now, and the session goes on as an authenticated one.
   */
  authAccepted(credentials: Credentials): Action[] {
    const out: Action[] = [];
    this.#authRouting = false;
    this.authenticated = credentials;
    this.#phase = 'command';
    reply(out, this.#book.authOk);
    this.#resume(out);
    return out;
  }

  /** Session mode: routing succeeded and the back-end accepted the replay; everything still buffered belongs to it. */
  handOff(): Buffer {
    this.#phase = 'handed-off';
    return this.#reader.rest();
  }

  /** Connect and replay succeeded. */
  backendReady(info: BackendReadyInfo): Action[] {
    if (this.#phase !== 'routing') return [];
    const env = this.#routing!;
    this.#authRouting = false;
    // After RCPT the client gets the back-end's own reply; after AUTH, nginx's 235.
    const first = info.reply ? info.reply.raw : this.#book.authOk;
    if (this.#limits.proxyMode === 'session') return [{ type: 'splice', first, rest: this.handOff() }];
    const out: Action[] = [];
    const target = this.#pendingTarget!;
    this.#pendingTarget = null;
    this.#tx = new TransactionProxy(target, info.pipelining, info.reply === null);
    this.#phase = 'command';
    if (info.reply) this.#tx.joined(this.#draftOf(env), env.rcptTo, info.reply, out);
    else {
      if (env.auth) this.authenticated = env.auth;
      reply(out, first);
    }
    this.#resume(out);
    return out;
  }

  /** Connect or replay failed: the catalogue's reply (or, with proxy_pass_error_message, the back-end's own), and close. */
  backendFailed(err: PosternError, reply?: Buffer): Action[] {
    if (this.#phase !== 'routing') return [];
    this.#phase = 'closed';
    this.#pendingTarget = null;
    if (!reply && this.#limits.passErrorMessage && err.reply) reply = Buffer.from(err.reply, 'latin1');
    const a: Action = { type: 'error', code: err.code, ...(err.detail !== undefined ? { detail: err.detail } : {}), ...(reply ? { reply } : {}) };
    return ERRORS[err.code].close ? [a] : [a, { type: 'close' }];
  }

  /** Bytes from the back-end (transaction mode; in session mode the relay owns them). */
  backendData(chunk: Buffer): Action[] {
    const out: Action[] = [];
    if (!this.#tx) return out;
    const wasData = this.#phase === 'data';
    const s = this.#tx.receive(chunk, out);
    if (s.kind === 'fail') {
      this.#backendGone(out, s.code, s.detail);
      return out;
    }
    if (out.some((a) => a.type === 'message')) this.messages++;
    if (s.kind === 'data') {
      this.#phase = 'data';
      const early = this.#reader.rest();
      if (early.length > 0) this.#body(early, out);
      return out;
    }
    if (!wasData && this.#phase === 'backend-wait' && this.#tx.waiting === 'none') {
      this.#phase = 'command';
      this.#resume(out);
    }
    return out;
  }

  /** The back-end connection failed, closed or timed out (transaction mode). */
  backendLost(code: ErrorCode, detail: string): Action[] {
    const out: Action[] = [];
    if (this.#tx) this.#backendGone(out, code, detail);
    return out;
  }

  /**
   * Stop was requested. An idle session is told so now (421, RFC 5321 §3.8); one with a command
   * in progress gets the 421 at its next command.
   */
  shutdown(): Action[] {
    this.#draining = true;
    if (this.#phase !== 'command' && this.#phase !== 'greeting') return [];
    const out: Action[] = [];
    this.#end(out, 'PST_SHUTDOWN');
    return out;
  }

  // -------------------------------------------------------------------------------------------

  #pendingTarget: RouteTarget | null = null;

  /** After a router's OK: a new back-end session, a recipient for the open one, or a 452. */
  #toBackend(env: Envelope, target: RouteTarget): Action[] {
    const tx = this.#tx;
    if (tx && !tx.fixed && env.mailLine !== '') {
      const draft = this.#draftOf(env);
      if (sameBackend(tx.target, target)) {
        this.#phase = 'backend-wait';
        const out: Action[] = [];
        tx.rcpt(draft, env.mailLine, env.rcptLine, env.rcptTo, out);
        return out;
      }
      // RFC 5321 §4.5.3.1.10 and RFC 3463 X.5.3: the client sends this one in another transaction.
      if (tx.accepted > 0) return this.#recipientAnswered(env, 'PST_RCPT_OTHER_BACKEND', `${env.rcptTo} routes elsewhere than ${tx.name}`);
    }
    const out: Action[] = [];
    if (tx) out.push({ type: 'backend-close', abort: false });
    this.#tx = null;
    this.#pendingTarget = target;
    out.push({ type: 'connect', target, envelope: env });
    return out;
  }

  /** Postern answers one recipient itself (transaction mode) and the session goes on. */
  #recipientAnswered(env: Envelope, code: ErrorCode, detail: string): Action[] {
    this.#draftOf(env).recipients.push({ to: env.rcptTo, code: Number(ERRORS[code].reply!.slice(0, 3)) });
    return this.routeFailed({ type: 'error', code, detail }, !this.#clientEnded);
  }

  #draftOf(env: Envelope): MessageDraft {
    this.#draft ??= { from: env.mailFrom, recipients: [] };
    return this.#draft;
  }

  #backendGone(out: Action[], code: ErrorCode, detail: string): void {
    const waiting = this.#tx!.waiting;
    const mid = this.#phase === 'data' || waiting !== 'none' || this.#tx!.open;
    out.push({ type: 'backend-close', abort: true });
    this.#tx = null;
    if (!mid) {
      // Idle between transactions: nothing is lost; the next recipient connects again.
      out.push({ type: 'log', code: 'PSW_BACKEND_IDLE_CLOSED', detail: `${code}: ${detail}` });
      return;
    }
    const inBody = this.#phase === 'data';
    this.#phase = 'closed';
    // After the dot (or mid-body) no reply of Postern's may stand in for the back-end's: close.
    if (waiting === 'final' || inBody) out.push({ type: 'log', code: 'PST_BACKEND_LOST', detail }, { type: 'close' });
    else out.push({ type: 'error', code: 'PST_BACKEND_LOST_REPLY', detail: `${code}: ${detail}` });
  }

  #body(chunk: Buffer, out: Action[]): void {
    const s = this.#tx!.body(chunk, out);
    if (s.kind === 'more') return;
    if (s.kind === 'smuggling') {
      this.#phase = 'closed';
      this.#tx = null;
      out.push({ type: 'backend-close', abort: true }, { type: 'error', code: 'PST_DATA_BARE_LF' });
      return;
    }
    this.#draft = null;
    this.#mail = null;
    this.#phase = 'backend-wait';
    if (s.rest.length > 0) this.#reader.push(s.rest);
  }

  /** Back in the command phase: go on with pipelined commands, then honour EOF and stop requests. */
  #resume(out: Action[]): void {
    this.#drain(out);
    if (this.#phase !== 'command') return;
    if (this.#draining) this.#end(out, 'PST_SHUTDOWN');
    else if (this.#clientEnded) this.#end(out, 'PST_CLIENT_EOF');
  }

  /** Ends an idle session: 421 for a stop, a quiet close for EOF; the back-end gets its QUIT. */
  #end(out: Action[], code: 'PST_SHUTDOWN' | 'PST_CLIENT_EOF'): void {
    this.#phase = 'closed';
    if (this.#tx) out.push({ type: 'backend-close', abort: false });
    this.#tx = null;
    if (code === 'PST_SHUTDOWN') out.push({ type: 'error', code });
    else out.push({ type: 'log', code }, { type: 'close' });
  }

  #drain(out: Action[]): void {
    while (this.#phase === 'command') {
      const line = this.#reader.next();
      if (line === null) return;
      if (line === LINE_TOO_LONG) {
        this.#reader.rest();
        this.#fail(out, 'PST_LINE_TOO_LONG');
        return;
      }
      if (this.#draining) {
        this.#end(out, 'PST_SHUTDOWN');
        return;
      }
      if (this.#sasl) this.#saslResponse(line, out);
      else this.#command(line, out);
    }
  }

  #command(line: Buffer, out: Action[]): void {
    if (hasForbiddenByte(line)) return this.#fail(out, 'PST_BAD_BYTES', printable(line));
    const { verb, arg } = parseCommand(line);
    switch (verb) {
      case 'EHLO':
      case 'HELO':
        return this.#hello(verb, arg, out);
      case 'MAIL':
        return this.#mailFrom(line, arg, out);
      case 'RCPT':
        return this.#rcptTo(line, arg, out);
      case 'RSET':
        return this.#rset(out);
      case 'NOOP':
        return reply(out, this.#book.ok);
      case 'QUIT':
        this.#phase = 'closed';
        reply(out, this.#book.bye);
        if (this.#tx) out.push({ type: 'backend-close', abort: false });
        this.#tx = null;
        out.push({ type: 'close' });
        return;
      case 'VRFY':
        return arg ? reply(out, this.#book.vrfy) : this.#fail(out, 'PST_INVALID_ARGUMENT');
      case 'HELP':
        return reply(out, this.#book.help);
      case 'DATA':
        return this.#data(out);
      case 'BDAT':
        return this.#bdat(arg, out);
      case 'STARTTLS':
        return this.#startTls(arg, out);
      case 'AUTH':
        return this.#auth(arg, out);
      case 'EXPN':
        return this.#fail(out, 'PST_NOT_IMPLEMENTED', verb);
      case 'XCLIENT':
      case 'XFORWARD':
        // Only Postern speaks XCLIENT to the back-end; a client's own would impersonate others.
        return this.#fail(out, 'PST_NOT_PERMITTED', verb);
      case 'HTTP':
        return this.#fail(out, 'PST_HTTP_REQUEST', printable(line));
      case 'UNKNOWN':
        return this.#fail(out, 'PST_UNKNOWN_COMMAND', printable(line.subarray(0, 64)));
    }
  }

  /** Forgets the transaction (RSET, HELO/EHLO: RFC 5321 §4.1.4); an open one at the back-end is reset too. */
  #forgetTransaction(out: Action[], relay: boolean): boolean {
    this.#mail = null;
    this.#draft = null;
    if (!this.#tx?.open) return false;
    this.#tx.rset(relay, out);
    return true;
  }

  #rset(out: Action[]): void {
    if (this.#forgetTransaction(out, true)) this.#phase = 'backend-wait';
    else reply(out, this.#book.ok);
  }

  #hello(verb: 'EHLO' | 'HELO', arg: string, out: Action[]): void {
    // RFC 5321 §4.1.1.1: exactly one domain or address literal (nginx: "501 5.5.4 Invalid argument").
    if (arg.length === 0 || /\s/.test(arg)) return this.#fail(out, 'PST_INVALID_ARGUMENT', `${verb} ${arg}`);
    this.helo = arg;
    this.esmtp = verb === 'EHLO';
    this.#forgetTransaction(out, false);
    const a = this.#limits.auth;
    const ehlo = this.#book.ehlo(!this.secure && this.#limits.starttls !== 'off', a.mechanisms.length > 0 && (this.secure || a.plaintext));
    reply(out, this.esmtp ? ehlo : this.#book.helo);
  }

  #startTls(arg: string, out: Action[]): void {
    if (this.#limits.starttls === 'off') return this.#fail(out, 'PST_NOT_IMPLEMENTED', 'STARTTLS');
    if (arg !== '') return this.#fail(out, 'PST_INVALID_ARGUMENT', `STARTTLS ${arg}`);
    if (this.secure) return this.#fail(out, 'PST_TLS_ACTIVE');
    reply(out, this.#book.startTls);
    // The identity the back-end session was set up with is gone with the TLS restart.
    this.#dropBackend(out);
    // RFC 3207 §4.2 and CVE-2011-0411 / nginx CVE-2014-3556: bytes the client pipelined after
    // STARTTLS were sent in the clear and must never be read as commands of the TLS session.
    const discarded = this.#reader.rest().length;
    this.#phase = 'tls-handshake';
    out.push({ type: 'starttls', discarded });
  }

  #dropBackend(out: Action[]): void {
    if (!this.#tx) return;
    out.push({ type: 'backend-close', abort: false });
    this.#tx = null;
    this.#mail = null;
    this.#draft = null;
  }

  #mailFrom(line: Buffer, arg: string, out: Action[]): void {
    if (this.#limits.starttls === 'only' && !this.secure) return this.#fail(out, 'PST_TLS_REQUIRED');
    if (!this.#limits.auth.allowNone && !this.authenticated && !this.#tx?.fixed) return this.#fail(out, 'PST_AUTH_REQUIRED');
    if (this.#limits.requireHelo && this.helo === '') return this.#fail(out, 'PST_NEED_HELO');
    if (this.#mail) return this.#fail(out, 'PST_NESTED_MAIL');
    const path = parsePathArg(arg, 'FROM:');
    if (!path) return this.#fail(out, 'PST_BAD_SENDER', arg);
    const size = sizeParam(path.params);
    if (size !== undefined && Number.isNaN(size)) return this.#fail(out, 'PST_INVALID_ARGUMENT', arg);
    if (size !== undefined && this.#limits.maxMessageSize > 0 && size > this.#limits.maxMessageSize) {
      return this.#fail(out, 'PST_MESSAGE_TOO_BIG', `SIZE=${size}`);
    }
    this.#mail = { line: line.toString('latin1'), from: path.address };
    this.#draft = { from: path.address, recipients: [] };
    if (this.#tx?.fixed) {
      // A route fixed at AUTH: MAIL goes to the back-end now and its reply is the client's.
      this.#phase = 'backend-wait';
      this.#tx.mail(this.#mail.line, out);
      return;
    }
    reply(out, this.#book.mailOk);
  }

  #rcptTo(line: Buffer, arg: string, out: Action[]): void {
    if (this.#limits.starttls === 'only' && !this.secure) return this.#fail(out, 'PST_TLS_REQUIRED');
    if (!this.#limits.auth.allowNone && !this.authenticated && !this.#tx?.fixed) return this.#fail(out, 'PST_AUTH_REQUIRED');
    if (!this.#mail) return this.#fail(out, 'PST_NEED_MAIL');
    const path = parsePathArg(arg, 'TO:');
    if (!path || path.address === '') return this.#fail(out, 'PST_BAD_RECIPIENT', arg);
    const rcptLine = line.toString('latin1');
    if (this.#tx?.fixed) {
      this.#phase = 'backend-wait';
      this.#tx.rcpt(this.#draft!, this.#mail.line, rcptLine, path.address, out);
      return;
    }
    this.#phase = 'routing';
    this.attempts++;
    const envelope: Envelope = {
      helo: this.helo,
      esmtp: this.esmtp,
      mailLine: this.#mail.line,
      rcptLine,
      mailFrom: this.#mail.from,
      rcptTo: path.address,
      attempt: this.attempts,
      ...(this.authenticated ? { auth: this.authenticated } : {}),
      ...(this.#limits.proxyMode === 'transaction' ? { recipient: this.#draft!.recipients.length + 1 } : {}),
    };
    this.#route(envelope, out);
  }

  #route(envelope: Envelope, out: Action[]): void {
    this.#routing = envelope;
    this.firstEnvelope ??= envelope;
    out.push({ type: 'route', envelope });
  }

  #data(out: Action[]): void {
    if (!this.#mail) return this.#fail(out, 'PST_NEED_MAIL');
    if (this.#tx?.open) {
      this.#phase = 'backend-wait';
      this.#tx.data(this.#draft!, out);
      return;
    }
    // Transaction mode: recipients were given, but none reached a back-end (Postfix's text).
    if (this.#draft && this.#draft.recipients.length > 0) return this.#fail(out, 'PST_NO_VALID_RECIPIENTS');
    this.#fail(out, 'PST_NEED_RCPT');
  }

  /** AUTH <mechanism> [initial-response] (RFC 4954 §4). */
  #auth(arg: string, out: Action[]): void {
    const a = this.#limits.auth;
    if (a.mechanisms.length === 0) return this.#fail(out, 'PST_NOT_IMPLEMENTED', 'AUTH');
    if (this.authenticated || this.#tx?.fixed) return this.#fail(out, 'PST_AUTH_ALREADY');
    if (this.#mail) return this.#fail(out, 'PST_AUTH_IN_TRANSACTION');
    if (this.#limits.requireHelo && this.helo === '') return this.#fail(out, 'PST_NEED_HELO');
    const [name = '', initial, extra] = arg.split(' ');
    // The argument may hold credentials: it is never logged.
    if (name === '' || extra !== undefined) return this.#fail(out, 'PST_INVALID_ARGUMENT', 'AUTH');
    const mech = name.toUpperCase() as Mechanism;
    if (!MECHANISMS.includes(mech) || !a.mechanisms.includes(mech)) return this.#fail(out, 'PST_AUTH_MECHANISM', name);
    if (this.#limits.starttls === 'only' && !this.secure) return this.#fail(out, 'PST_TLS_REQUIRED');
    if (!this.secure && !a.plaintext) return this.#fail(out, 'PST_AUTH_NEEDS_TLS', mech);
    // RFC 4954 §4: CRAM-MD5 has no initial response (the server speaks first).
    if (mech === 'CRAM-MD5' && initial !== undefined) return this.#fail(out, 'PST_AUTH_BAD_RESPONSE', 'CRAM-MD5 takes no initial response');
    // A login changes who the back-end must see: the unauthenticated back-end session ends.
    this.#dropBackend(out);
    this.#sasl = new SaslExchange(mech, this.#book, mech === 'CRAM-MD5' ? a.challenge() : '');
    this.#saslStep(this.#sasl.start(initial), out);
  }

  #saslResponse(line: Buffer, out: Action[]): void {
    if (hasForbiddenByte(line)) {
      this.#sasl = null;
      return this.#fail(out, 'PST_AUTH_BAD_RESPONSE', 'control byte in a SASL response');
    }
    this.#saslStep(this.#sasl!.respond(line.toString('latin1').trim()), out);
  }

  #saslStep(step: ReturnType<SaslExchange['respond']>, out: Action[]): void {
    if (step.kind === 'challenge') return reply(out, step.reply);
    this.#sasl = null;
    if (step.kind === 'error') return this.#fail(out, step.code, step.detail);
    // nginx's authenticated path: the routing decision is made now, not at RCPT.
    this.#phase = 'routing';
    this.#authRouting = true;
    this.attempts++;
    this.#route({ helo: this.helo, esmtp: this.esmtp, mailLine: '', rcptLine: '', mailFrom: '', rcptTo: '', attempt: this.attempts, auth: step.credentials }, out);
  }

  /** CHUNKING is never advertised, but a BDAT chunk is stepped over so it is not read as commands. */
  #bdat(arg: string, out: Action[]): void {
    const m = /^(\d{1,15})(?: +LAST)?$/i.exec(arg);
    if (!m) {
      // Without a valid size the chunk boundary is unknown: nothing after it can be trusted.
      this.#fail(out, 'PST_INVALID_ARGUMENT', `BDAT ${arg}`);
      if (this.#phase === 'command') {
        this.#phase = 'closed';
        if (this.#tx) out.push({ type: 'backend-close', abort: false });
        this.#tx = null;
        out.push({ type: 'close' });
      }
      return;
    }
    this.#reader.skip(Number(m[1]));
    this.#fail(out, this.#mail ? 'PST_NEED_RCPT' : 'PST_NEED_MAIL');
  }

  #fail(out: Action[], code: ErrorCode, detail?: string): void {
    out.push(detail === undefined ? { type: 'error', code } : { type: 'error', code, detail });
    if (ERRORS[code].close) {
      this.#phase = 'closed';
      if (this.#tx) out.push({ type: 'backend-close', abort: false });
      this.#tx = null;
      return;
    }
    this.errors++;
    if (this.#limits.maxErrors > 0 && this.errors >= this.#limits.maxErrors) {
      this.#phase = 'closed';
      if (this.#tx) out.push({ type: 'backend-close', abort: false });
      this.#tx = null;
      out.push({ type: 'error', code: 'PST_TOO_MANY_ERRORS' });
    }
  }
}

function reply(out: Action[], data: Buffer): void {
  out.push({ type: 'reply', data });
}

/** A log-safe rendering of client bytes: control and 8-bit bytes escaped, length capped. */
export function printable(buf: Buffer): string {
  const s = buf.subarray(0, 128).toString('latin1');
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\x00-\x1f\x7f-\xff]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}
