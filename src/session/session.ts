/**
 * The client side of an SMTP session, as a state machine without I/O: the SMTP protocol module's
 * core (nginx's ngx_mail_smtp_handler, one level up from ngx_mail_parse.c).
 *
 * Events go in as method calls (`start`, `receive`, `routed`, `backendReady`, `idleTimeout`, …);
 * each returns the actions the connection driver must carry out, in order (src/protocol.ts). The
 * session is the only writer of its phase. The command dialog is ./dialog.ts; lines are handled one at a time and the
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
import type { Action, ProtocolSession, SessionSummary } from '../protocol.js';
import { lineReply } from '../smtp/replies.js';
import { printable, SmtpDialog, type BackendReadyInfo } from './dialog.js';
import { TransactionProxy, type MessageDraft } from './transaction.js';

export type { Action, MessageRecord, RecipientRecord } from '../protocol.js';
export type { Envelope } from '../domain.js';
export { NO_AUTH, type AuthLimits, type SessionLimits } from './limits.js';
export { printable, type BackendReadyInfo, type Phase } from './dialog.js';

export class Session extends SmtpDialog implements ProtocolSession<BackendReadyInfo> {

  /** Connection accepted: greet now, or wait for the greeting delay, or start implicit TLS. */
  start(prepend?: readonly string[]): Action[] {
    if (prepend) this.connectPrepend = prepend;
    if (this.limits.implicitTls) {
      // The driver starts the handshake itself: implicit TLS is a property of the listener.
      this.stage = 'tls-handshake';
      return [];
    }
    if (this.limits.greetingDelay) return this.greetingTimer();
    this.stage = 'command';
    return [{ type: 'reply', data: this.book.greeting }];
  }

  /** Refused at connect (a blocklist, a policy server): the catalogue's reply for `code`, or `reply` (one line), and close. */
  refused(code: ErrorCode, detail: string, reply?: string): Action[] {
    this.stage = 'closed';
    return [{ type: 'error', code, detail, ...(reply !== undefined ? { reply: lineReply(reply) } : {}) }];
  }

  /**
   * The TLS handshake succeeded. RFC 3207 §4.2: everything learnt before it (HELO, the
   * transaction) is forgotten; the client starts again with EHLO. On an implicit-TLS port this is
   * where the greeting is sent (or the greeting delay starts).
   */
  tlsStarted(): Action[] {
    const first = !this.secure && this.limits.implicitTls;
    this.secure = true;
    this.helo = '';
    this.esmtp = false;
    this.mail = null;
    this.authenticated = null;
    this.heloPrepend = [];
    if (this.draining) {
      this.stage = 'closed';
      return [{ type: 'error', code: 'PST_SHUTDOWN' }];
    }
    if (first) {
      this.stage = 'greeting';
      return this.limits.greetingDelay ? this.greetingTimer() : this.greetingDue();
    }
    this.stage = 'command';
    return [];
  }

  /** The handshake failed or timed out: no SMTP reply is possible in the middle of one. */
  tlsFailed(code: 'PST_TLS_HANDSHAKE' | 'PST_TLS_HANDSHAKE_TIMEOUT', detail?: string): Action[] {
    if (this.stage !== 'tls-handshake') return [];
    this.stage = 'closed';
    return [detail === undefined ? { type: 'log', code } : { type: 'log', code, detail }, { type: 'close', abort: true }];
  }

  /** The handshake succeeded but the client certificate is refused (verify_client). */
  tlsRefused(code: ErrorCode, detail?: string): Action[] {
    this.stage = 'closed';
    return [detail === undefined ? { type: 'error', code } : { type: 'error', code, detail }];
  }

  protected greetingTimer(): Action[] {
    const ms = this.limits.greetingDelayMs;
    return ms ? [{ type: 'timer', ms }] : [];
  }

  /** The greeting delay has passed without the client speaking. */
  greetingDue(): Action[] {
    if (this.stage !== 'greeting') return [];
    this.stage = 'command';
    return [{ type: 'reply', data: this.book.greeting }];
  }

  /** Bytes from the client. */
  receive(chunk: Buffer): Action[] {
    const out: Action[] = [];
    if (this.stage === 'greeting') {
      // nginx smtp_greeting_delay / postscreen pregreet: a client that talks first is not a real MTA.
      this.stage = 'closed';
      out.push({ type: 'error', code: 'PST_EARLY_TALKER', detail: printable(chunk) });
      return out;
    }
    // After close nothing more is read; after the hand-off the relay owns the bytes.
    if (this.stage === 'closed' || this.stage === 'handed-off' || this.stage === 'tls-handshake') return out;
    if (this.stage === 'data') {
      this.body(chunk, out);
      return out;
    }
    this.reader.push(chunk);
    if (this.stage === 'command') this.drain(out);
    return out;
  }

  /** What the back-end link is waiting for (transaction mode), for the driver's back-end timer. */
  get backendWaiting(): 'none' | 'reply' | 'final' {
    return this.tx ? this.tx.waiting : 'none';
  }

  summary(): SessionSummary {
    const e = this.firstEnvelope;
    return {
      ...(this.helo ? { helo: this.helo } : {}),
      ...(e?.auth ? { user: e.auth.user } : this.authenticated ? { user: this.authenticated.user } : {}),
      ...(e?.mailFrom ? { from: e.mailFrom } : {}),
      ...(e?.rcptTo ? { to: e.rcptTo } : {}),
      ...(this.limits.proxyMode === 'transaction' ? { messages: this.messages } : {}),
    };
  }

  /** The timer the session asked for has fired: the greeting delay, or an Auth-Wait. */
  timer(): Action[] {
    if (this.stage === 'greeting') return this.greetingDue();
    if (this.stage === 'auth-wait' && this.waiting) {
      const w = this.waiting;
      this.waiting = null;
      this.stage = 'routing';
      return this.routeFailed(w.reply, w.keepOpen && !this.ended);
    }
    return [];
  }

  /** The client closed its side. Commands it pipelined before are still answered. */
  clientEnded(): Action[] {
    this.ended = true;
    const out: Action[] = [];
    switch (this.stage) {
      case 'command':
      case 'greeting':
        this.end(out, 'PST_CLIENT_EOF');
        break;
      case 'tls-handshake':
        return this.tlsFailed('PST_TLS_HANDSHAKE', 'client closed during the handshake');
      case 'data':
        // The body never ended: the back-end must never see an end of data for it.
        this.stage = 'closed';
        this.tx = null;
        out.push({ type: 'backend-close', abort: true }, { type: 'log', code: 'PST_CLIENT_EOF', detail: 'in the middle of a message body' }, { type: 'close' });
        break;
      default:
        break; // routing or a back-end reply pending: EOF is handled once it is settled
    }
    return out;
  }

  /** The client was idle for timeouts.idle. */
  idleTimeout(): Action[] {
    if (this.stage === 'tls-handshake') return this.tlsFailed('PST_TLS_HANDSHAKE_TIMEOUT');
    if (this.stage !== 'command' && this.stage !== 'greeting' && this.stage !== 'data') return [];
    const out: Action[] = [];
    if (this.tx) out.push({ type: 'backend-close', abort: this.stage === 'data' });
    this.tx = null;
    this.stage = 'closed';
    out.push({ type: 'error', code: 'PST_IDLE_TIMEOUT' });
    return out;
  }

  /** The router's answer to the last `route` action. */
  routed(d: RouteDecision): Action[] {
    if (this.stage !== 'routing') return [];
    const env = this.routing!;
    if (d.kind === 'error') {
      if (this.tx && env.mailLine !== '') return this.recipientAnswered(env, 'PST_RCPT_ROUTE_FAILED', d.detail);
      return this.routeFailed({ type: 'error', code: d.code, detail: d.detail }, false);
    }
    if (d.kind === 'reject') {
      const reply: Action = { type: 'reply', data: lineReply(d.reply) };
      // Transaction mode: a refused recipient is one recipient, not the session (the transaction goes on).
      const keepOpen = d.waitMs > 0 || d.keepOpen === true || (this.limits.proxyMode === 'transaction' && !(env.auth && env.mailLine === ''));
      if (this.limits.proxyMode === 'transaction' && env.mailLine !== '') this.draftOf(env).recipients.push({ to: env.rcptTo, code: Number(d.reply.slice(0, 3)) });
      if (d.waitMs <= 0) return this.routeFailed(reply, keepOpen && !this.ended);
      this.stage = 'auth-wait';
      this.waiting = { reply, keepOpen };
      return [{ type: 'timer', ms: d.waitMs }];
    }
    if (env.auth && env.mailLine === '' && this.limits.envelopeAfterAuth) return this.authAccepted(env.auth);
    return this.toBackend(env, d);
  }

  /**
   * The router refused (or failed). The reply is sent; with `keepOpen` (Auth-Wait, or a refused
   * recipient in transaction mode) the session returns to the command phase and goes on with
   * any commands the client had pipelined.
   */
  routeFailed(action: Action, keepOpen: boolean): Action[] {
    const out: Action[] = [action];
    if (!keepOpen) {
      this.stage = 'closed';
      if (this.tx) out.push({ type: 'backend-close', abort: false });
      this.tx = null;
      out.push({ type: 'close' });
      return out;
    }
    this.stage = 'command';
    if (this.authRouting) {
      this.authRouting = false;
      if (++this.authFailures >= this.limits.auth.maxAttempts) {
        this.stage = 'closed';
        out.push({ type: 'error', code: 'PST_AUTH_TOO_MANY', detail: `${this.authFailures} failed attempts` });
        return out;
      }
    }
    this.resume(out);
    return out;
  }

  /**
   * The router accepted the AUTH but routing waits for the first RCPT (envelope_after_auth):
   * 235 now, and the session goes on as an authenticated one.
   */
  authAccepted(credentials: Credentials): Action[] {
    const out: Action[] = [];
    this.authRouting = false;
    this.authenticated = credentials;
    this.stage = 'command';
    reply(out, this.book.authOk);
    this.resume(out);
    return out;
  }

  /** Session mode: routing succeeded and the back-end accepted the replay; everything still buffered belongs to it. */
  handOff(): Buffer {
    this.stage = 'handed-off';
    return this.reader.rest();
  }

  /** Connect and replay succeeded. */
  backendReady(info: BackendReadyInfo): Action[] {
    if (this.stage !== 'routing') return [];
    const env = this.routing!;
    this.authRouting = false;
    // After RCPT the client gets the back-end's own reply; after AUTH, nginx's 235.
    const first = info.reply ? info.reply.raw : this.book.authOk;
    if (this.limits.proxyMode === 'session') return [{ type: 'splice', first, rest: this.handOff() }];
    const out: Action[] = [];
    const target = this.pendingTarget!;
    this.pendingTarget = null;
    this.tx = new TransactionProxy(target, info.pipelining, info.reply === null, info.server);
    this.stage = 'command';
    if (info.reply) this.tx.joined(this.draftOf(env), env.rcptTo, info.reply, out);
    else {
      if (env.auth) this.authenticated = env.auth;
      reply(out, first);
    }
    this.resume(out);
    return out;
  }

  /** Connect or replay failed: the catalogue's reply (or, with proxy_pass_error_message, the back-end's own), and close. */
  backendFailed(err: PosternError, reply?: Buffer): Action[] {
    if (this.stage !== 'routing') return [];
    this.pendingTarget = null;
    if (err.code === 'PST_BACKEND_SENDER_REFUSED') {
      // A pool back-end's verdict on the mail: its own reply, and the session goes on (as a refusal).
      const own = err.reply ? Buffer.from(err.reply, 'latin1') : undefined;
      return this.routeFailed({ type: 'error', code: err.code, ...(err.detail !== undefined ? { detail: err.detail } : {}), ...(own ? { reply: own } : {}) }, !this.ended);
    }
    this.stage = 'closed';
    if (!reply && this.limits.passErrorMessage && err.reply) reply = Buffer.from(err.reply, 'latin1');
    const a: Action = { type: 'error', code: err.code, ...(err.detail !== undefined ? { detail: err.detail } : {}), ...(reply ? { reply } : {}) };
    return ERRORS[err.code].close ? [a] : [a, { type: 'close' }];
  }

  /** Bytes from the back-end (transaction mode; in session mode the relay owns them). */
  backendData(chunk: Buffer): Action[] {
    const out: Action[] = [];
    if (!this.tx) return out;
    const wasData = this.stage === 'data';
    const s = this.tx.receive(chunk, out);
    if (s.kind === 'fail') {
      this.backendGone(out, s.code, s.detail);
      return out;
    }
    if (out.some((a) => a.type === 'message')) this.messages++;
    if (s.kind === 'data') {
      this.stage = 'data';
      const early = this.reader.rest();
      if (early.length > 0) this.body(early, out);
      return out;
    }
    if (!wasData && this.stage === 'backend-wait' && this.tx.waiting === 'none') {
      this.stage = 'command';
      this.resume(out);
    }
    return out;
  }

  /** The back-end connection failed, closed or timed out (transaction mode). */
  backendLost(code: ErrorCode, detail: string): Action[] {
    const out: Action[] = [];
    if (this.tx) this.backendGone(out, code, detail);
    return out;
  }

  /**
   * Stop was requested. An idle session is told so now (421, RFC 5321 §3.8); one with a command
   * in progress gets the 421 at its next command.
   */
  shutdown(): Action[] {
    this.draining = true;
    if (this.stage !== 'command' && this.stage !== 'greeting') return [];
    const out: Action[] = [];
    this.end(out, 'PST_SHUTDOWN');
    return out;
  }

  // -------------------------------------------------------------------------------------------

  protected pendingTarget: RouteTarget | null = null;

  /** After a router's OK: a new back-end session, a recipient for the open one, or a 452. */
  protected toBackend(env: Envelope, target: RouteTarget): Action[] {
    const tx = this.tx;
    // A recipient's PREPEND counts once the back-end has accepted that recipient (transaction.ts).
    if (target.prepend && env.mailLine !== '' && this.limits.proxyMode === 'transaction') (this.draftOf(env).rcptPrepend ??= new Map()).set(env.rcptTo, target.prepend);
    if (tx && !tx.fixed && env.mailLine !== '') {
      const draft = this.draftOf(env);
      if (sameBackend(tx.target, target)) {
        this.stage = 'backend-wait';
        const out: Action[] = [];
        tx.rcpt(draft, env.mailLine, env.rcptLine, env.rcptTo, out);
        return out;
      }
      // RFC 5321 §4.5.3.1.10 and RFC 3463 X.5.3: the client sends this one in another transaction.
      if (tx.accepted > 0) return this.recipientAnswered(env, 'PST_RCPT_OTHER_BACKEND', `${env.rcptTo} routes elsewhere than ${tx.name}`);
    }
    const out: Action[] = [];
    if (tx) out.push({ type: 'backend-close', abort: false, reuse: true, clean: tx.idle });
    this.tx = null;
    this.pendingTarget = target;
    out.push({ type: 'connect', target, envelope: env });
    return out;
  }

  /** Postern answers one recipient itself (transaction mode) and the session goes on. */
  protected recipientAnswered(env: Envelope, code: ErrorCode, detail: string): Action[] {
    this.draftOf(env).recipients.push({ to: env.rcptTo, code: Number(ERRORS[code].reply!.slice(0, 3)) });
    return this.routeFailed({ type: 'error', code, detail }, !this.ended);
  }

  protected draftOf(env: Envelope): MessageDraft {
    this.draft ??= { from: env.mailFrom, recipients: [] };
    return this.draft;
  }

  protected backendGone(out: Action[], code: ErrorCode, detail: string): void {
    const waiting = this.tx!.waiting;
    const mid = this.stage === 'data' || waiting !== 'none' || this.tx!.open;
    out.push({ type: 'backend-close', abort: true });
    this.tx = null;
    if (!mid) {
      // Idle between transactions: nothing is lost; the next recipient connects again.
      out.push({ type: 'log', code: 'PSW_BACKEND_IDLE_CLOSED', detail: `${code}: ${detail}` });
      return;
    }
    const inBody = this.stage === 'data';
    this.stage = 'closed';
    // After the dot (or mid-body) no reply of Postern's may stand in for the back-end's: close.
    if (waiting === 'final' || inBody) out.push({ type: 'log', code: 'PST_BACKEND_LOST', detail }, { type: 'close' });
    // A refusal or a broken reply keeps its own code; a connection that failed is PST_BACKEND_LOST_REPLY.
    else if (code === 'PST_BACKEND_REJECTED' || code === 'PST_BACKEND_INVALID_REPLY') out.push({ type: 'error', code, detail });
    else out.push({ type: 'error', code: 'PST_BACKEND_LOST_REPLY', detail: `${code}: ${detail}` });
  }
}

function reply(out: Action[], data: Buffer): void {
  out.push({ type: 'reply', data });
}
