/**
 * The client side of a POP3 session up to the hand-off, as a state machine without I/O (nginx's
 * ngx_mail_pop3_handler.c; RFC 1939 AUTHORIZATION state, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034
 * AUTH). Events go in as method calls and each returns the driver's actions (src/protocol.ts).
 *
 * Lines are handled one at a time and reading stops at a login that waits for the router or the
 * back-end, so replies leave in command order and every byte the client pipelined after the
 * login stays in the reader: the splice hands it to the back-end as it came (nginx 1.21.0's POP3
 * pipelining). The commands are ./dialog.ts; this file holds the events.
 */
import type { RouteDecision } from '../domain.js';
import { ERRORS, type ErrorCode, type PosternError } from '../errors.js';
import type { Action, ProtocolSession, SessionSummary } from '../protocol.js';
import { Pop3Dialog } from './dialog.js';
import { refusalLine } from './replies.js';
import { unsafeCredential } from './sasl.js';

/** What the back-end login reports: its final `+OK` line, which is the client's reply. */
export interface Pop3Ready {
  final: Buffer;
}

export class Pop3Session extends Pop3Dialog implements ProtocolSession<Pop3Ready> {
  readonly backendWaiting = 'none' as const;

  /** Greet, or let the driver start implicit TLS first (the greeting follows the handshake). */
  start(): Action[] {
    if (this.limits.implicitTls) {
      this.stage = 'tls-handshake';
      return [];
    }
    this.stage = 'command';
    return [{ type: 'reply', data: this.book.greeting(this.salt) }];
  }

  /** Refused at connect (a blocklist, a policy server): `-ERR` with the refusal's text, and close. */
  refused(code: ErrorCode, detail: string, reply?: string): Action[] {
    this.stage = 'closed';
    return [{ type: 'error', code, detail, ...(reply !== undefined ? { reply: refusalLine(reply) } : {}) }];
  }

  receive(chunk: Buffer): Action[] {
    const out: Action[] = [];
    if (this.stage === 'closed' || this.stage === 'handed-off' || this.stage === 'tls-handshake') return out;
    this.reader.push(chunk);
    if (this.stage === 'command') this.drain(out);
    return out;
  }

  /** RFC 2595 §4: after STLS the client starts over (no new greeting); on an implicit-TLS port the greeting goes now. */
  tlsStarted(): Action[] {
    const first = !this.secure && this.limits.implicitTls;
    this.secure = true;
    this.user = null;
    this.sasl = null;
    if (this.draining) {
      this.stage = 'closed';
      return [{ type: 'error', code: 'PST_SHUTDOWN' }];
    }
    this.stage = 'command';
    return first ? [{ type: 'reply', data: this.book.greeting(this.salt) }] : [];
  }

  tlsFailed(code: 'PST_TLS_HANDSHAKE' | 'PST_TLS_HANDSHAKE_TIMEOUT', detail?: string): Action[] {
    if (this.stage !== 'tls-handshake') return [];
    this.stage = 'closed';
    return [detail === undefined ? { type: 'log', code } : { type: 'log', code, detail }, { type: 'close', abort: true }];
  }

  /** verify_client refused the certificate: nginx's "-ERR No required SSL certificate" / "-ERR SSL certificate error". */
  tlsRefused(code: ErrorCode, detail?: string): Action[] {
    this.stage = 'closed';
    return [detail === undefined ? { type: 'error', code } : { type: 'error', code, detail }];
  }

  /** The Auth-Wait after a refusal is over: the `-ERR` goes out and the session goes on (nginx's sleep handler). */
  timer(): Action[] {
    if (this.stage !== 'auth-wait' || !this.waiting) return [];
    const reply = this.waiting;
    this.waiting = null;
    this.stage = 'routing';
    return this.routeFailed({ type: 'reply', data: reply }, !this.ended);
  }

  clientEnded(): Action[] {
    this.ended = true;
    if (this.stage === 'tls-handshake') return this.tlsFailed('PST_TLS_HANDSHAKE', 'client closed during the handshake');
    const out: Action[] = [];
    if (this.stage === 'command') this.end(out, 'PST_CLIENT_EOF');
    return out; // routing or waiting: EOF is honoured once that is settled
  }

  /** RFC 1939 §3: the autologout timer closes "without … sending any response" (nginx: "client timed out"). */
  idleTimeout(): Action[] {
    if (this.stage === 'tls-handshake') return this.tlsFailed('PST_TLS_HANDSHAKE_TIMEOUT');
    if (this.stage !== 'command') return [];
    this.stage = 'closed';
    return [{ type: 'error', code: 'PST_IDLE_TIMEOUT' }];
  }

  routed(d: RouteDecision): Action[] {
    if (this.stage !== 'routing' || !this.routing?.auth) return [];
    if (d.kind === 'error') return this.routeFailed({ type: 'error', code: d.code, detail: d.detail }, false);
    if (d.kind === 'reject') {
      // nginx: "-ERR <Auth-Status>"; with Auth-Wait the session goes on after the wait, else it closes.
      const reply = refusalLine(d.reply);
      const keepOpen = d.waitMs > 0 || d.keepOpen === true;
      if (d.waitMs <= 0) return this.routeFailed({ type: 'reply', data: reply }, keepOpen && !this.ended);
      this.stage = 'auth-wait';
      this.waiting = reply;
      return [{ type: 'timer', ms: d.waitMs }];
    }
    const creds = this.routing.auth;
    // nginx needs a password for the back-end: APOP, CRAM-MD5 and EXTERNAL give none ("auth http server … did not send password").
    if (creds.method !== 'plain' && d.pass === undefined) {
      return this.routeFailed({ type: 'error', code: 'PST_BACKEND_AUTH_FAILED', detail: `no password available: the auth service sent no Auth-Pass for ${creds.method}` }, false);
    }
    if (unsafeCredential(d.user ?? '') || unsafeCredential(d.pass ?? '')) {
      return this.routeFailed({ type: 'error', code: 'PST_AUTH_HTTP_INVALID', detail: 'Auth-User or Auth-Pass holds CR, LF or NUL' }, false);
    }
    return [{ type: 'connect', target: d, envelope: this.routing }];
  }

  /** No stage checks in POP3. */
  checked(): Action[] {
    return [];
  }

  /** The back-end took the login: its `+OK` to the client, the pipelined bytes to it, then the blind relay. */
  backendReady(ready: Pop3Ready): Action[] {
    if (this.stage !== 'routing') return [];
    this.stage = 'handed-off';
    return [{ type: 'splice', first: ready.final, rest: this.reader.rest() }];
  }

  /** nginx: "-ERR internal server error" (or, with proxy_pass_error_message, the back-end's own `-ERR` line), and close. */
  backendFailed(err: PosternError, reply?: Buffer): Action[] {
    if (this.stage !== 'routing') return [];
    this.stage = 'closed';
    if (!reply && this.limits.passErrorMessage && err.reply?.startsWith('-ERR')) reply = Buffer.from(`${err.reply.replace(/[\r\n]+$/, '')}\r\n`, 'latin1');
    const a: Action = { type: 'error', code: err.code, ...(err.detail !== undefined ? { detail: err.detail } : {}), ...(reply ? { reply } : {}) };
    return ERRORS[err.code].close ? [a] : [a, { type: 'close' }];
  }

  /** Session mode only: after the splice the relay owns the back-end. */
  backendData(): Action[] {
    return [];
  }

  backendLost(): Action[] {
    return [];
  }

  /** Stop requested: an idle session is closed now, one waiting for its login at its next command. */
  shutdown(): Action[] {
    this.draining = true;
    if (this.stage !== 'command') return [];
    const out: Action[] = [];
    this.end(out, 'PST_SHUTDOWN');
    return out;
  }

  summary(): SessionSummary {
    const user = this.routing?.auth?.user ?? this.user;
    return user ? { user } : {};
  }

  /** A refused login: the reply; closed, or (Auth-Wait, or keepOpen) back to the start state with the pipelined commands. */
  protected routeFailed(action: Action, keepOpen: boolean): Action[] {
    const out: Action[] = [action];
    if (!keepOpen) {
      this.stage = 'closed';
      if (action.type !== 'error' || !ERRORS[action.code].close) out.push({ type: 'close' });
      return out;
    }
    this.stage = 'command';
    this.user = null;
    if (++this.authFailures >= this.limits.maxAttempts) {
      this.stage = 'closed';
      out.push({ type: 'error', code: 'PST_AUTH_TOO_MANY', detail: `${this.authFailures} failed attempts` });
      return out;
    }
    this.resume(out);
    return out;
  }
}
