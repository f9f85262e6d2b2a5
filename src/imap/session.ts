/**
 * The client side of an IMAP session as a state machine without I/O: the IMAP protocol module's
 * core (nginx's ngx_mail_imap_handler.c with the IMAP half of ngx_mail_auth_http_module). The
 * commands are ./dialog.ts; this file handles the events (src/protocol.ts): greeting, TLS, the
 * router's answer, the back-end's login, timers, EOF. After a successful back-end login the
 * back-end's tagged OK goes to the client and the driver relays bytes blindly (nginx).
 */
import type { RouteDecision } from '../domain.js';
import { ERRORS, type ErrorCode, type PosternError } from '../errors.js';
import type { Action, ProtocolSession, SessionSummary } from '../protocol.js';
import { ImapDialog } from './dialog.js';

export { COMMANDS, type ImapLimits, type ImapPhase } from './dialog.js';

/** What the back-end login reports: its untagged lines, and its OK to the login without the tag (the client's goes in front). */
export interface ImapReady {
  untagged: Buffer;
  status: Buffer;
}

export class ImapSession extends ImapDialog implements ProtocolSession<ImapReady> {
  /** An Auth-Wait refusal waiting for its timer, and whether the session then goes on. */
  #waiting: { reply: Buffer; keepOpen: boolean } | null = null;

  readonly backendWaiting = 'none' as const;

  /** Greet, or wait for the implicit TLS handshake (the driver starts it). */
  start(): Action[] {
    if (this.limits.implicitTls) {
      this.stage = 'tls-handshake';
      return [];
    }
    this.stage = 'command';
    return [{ type: 'reply', data: this.book.greeting }];
  }

  /** Refused at connect: `* BYE <text>` as the greeting (RFC 9051 §7.1.5), and close. */
  refused(code: ErrorCode, detail: string, reply?: string): Action[] {
    this.stage = 'closed';
    const a: Action = { type: 'error', code, detail, reply: this.book.refusal(code, reply) };
    return ERRORS[code].close ? [a] : [a, { type: 'close' }];
  }

  receive(chunk: Buffer): Action[] {
    const out: Action[] = [];
    if (this.stage === 'closed' || this.stage === 'handed-off' || this.stage === 'tls-handshake') return out;
    this.reader.push(chunk);
    this.drain(out);
    return out;
  }

  /** TLS is up: on an implicit-TLS port the greeting follows; after STARTTLS the dialog goes on (RFC 9051 §6.2.1). */
  tlsStarted(): Action[] {
    const first = !this.secure && this.limits.implicitTls;
    this.secure = true;
    if (this.draining) {
      this.stage = 'closed';
      return [{ type: 'error', code: 'PST_SHUTDOWN', reply: this.book.error('PST_SHUTDOWN', null) }];
    }
    this.stage = 'command';
    return first ? [{ type: 'reply', data: this.book.greeting }] : [];
  }

  tlsFailed(code: 'PST_TLS_HANDSHAKE' | 'PST_TLS_HANDSHAKE_TIMEOUT', detail?: string): Action[] {
    if (this.stage !== 'tls-handshake') return [];
    this.stage = 'closed';
    return [detail === undefined ? { type: 'log', code } : { type: 'log', code, detail }, { type: 'close', abort: true }];
  }

  /** verify_client refused the certificate: nginx's `* BYE` lines. */
  tlsRefused(code: ErrorCode, detail?: string): Action[] {
    this.stage = 'closed';
    return [{ type: 'error', code, ...(detail !== undefined ? { detail } : {}), reply: this.book.error(code, null) }];
  }

  /** The Auth-Wait delay is over: the refusal goes out now. */
  timer(): Action[] {
    if (this.stage !== 'auth-wait' || !this.#waiting) return [];
    const w = this.#waiting;
    this.#waiting = null;
    return this.#refused(w.reply, w.keepOpen && !this.ended);
  }

  clientEnded(): Action[] {
    this.ended = true;
    if (this.stage === 'tls-handshake') return this.tlsFailed('PST_TLS_HANDSHAKE', 'client closed during the handshake');
    if (this.stage !== 'command' && this.stage !== 'auth') return []; // settled once routing is over
    const out: Action[] = [];
    this.end(out, 'PST_CLIENT_EOF');
    return out;
  }

  /** RFC 9051 §7.1.5: an autologout is announced with BYE. */
  idleTimeout(): Action[] {
    if (this.stage === 'tls-handshake') return this.tlsFailed('PST_TLS_HANDSHAKE_TIMEOUT');
    if (this.stage !== 'command' && this.stage !== 'auth') return [];
    const out: Action[] = [];
    this.end(out, 'PST_IDLE_TIMEOUT');
    return out;
  }

  /** The router's answer to the login. */
  routed(d: RouteDecision): Action[] {
    if (this.stage !== 'routing') return [];
    if (d.kind === 'error') return this.#fail(d.code, d.detail);
    if (d.kind === 'reject') {
      // nginx: `<tag> NO <Auth-Status>`; the session goes on only after an Auth-Wait.
      const reply = this.book.refused(this.tag, d.reply);
      const keepOpen = d.waitMs > 0 || d.keepOpen === true;
      if (d.waitMs <= 0) return this.#refused(reply, keepOpen && !this.ended);
      this.stage = 'auth-wait';
      this.#waiting = { reply, keepOpen };
      return [{ type: 'timer', ms: d.waitMs }];
    }
    // nginx needs a password for the back-end's LOGIN: CRAM-MD5, EXTERNAL and tokens give none of their own.
    if (d.pass === undefined && this.credentials?.method !== 'plain') {
      return this.#fail('PST_BACKEND_AUTH_FAILED', `the router sent no password (Auth-Pass) for a ${this.credentials?.method ?? 'unknown'} login; IMAP logs in to the back-end with one`);
    }
    return [{ type: 'connect', target: d, envelope: { helo: this.clientId, esmtp: false, mailLine: '', rcptLine: '', mailFrom: '', rcptTo: '', attempt: this.attempts, ...(this.credentials ? { auth: this.credentials } : {}) } }];
  }

  checked(): Action[] {
    return [];
  }

  /** The back-end took the login: its lines to the client, the pipelined bytes to it, then the blind relay. */
  backendReady(ready: ImapReady): Action[] {
    if (this.stage !== 'routing') return [];
    this.stage = 'handed-off';
    const first = Buffer.concat([ready.untagged, Buffer.from(`${this.tag} `, 'latin1'), ready.status]);
    return [{ type: 'splice', first, rest: this.reader.rest() }];
  }

  /**
   * The back-end could not be logged in to: `<tag> NO …`, and close. With proxy_pass_error_message
   * its own answer to the login (`err.reply`: `NO …` without a tag) goes out under the client's tag.
   */
  backendFailed(err: PosternError, reply?: Buffer): Action[] {
    if (this.stage !== 'routing') return [];
    const own = !reply && this.limits.passErrorMessage && err.reply ? Buffer.from(`${this.tag} ${err.reply}`, 'latin1') : undefined;
    return this.#fail(err.code, err.detail, reply ?? own);
  }

  backendData(): Action[] {
    return [];
  }

  backendLost(): Action[] {
    return [];
  }

  /** A stop: an idle session hears `* BYE` now, one waiting for its router at its next command. */
  shutdown(): Action[] {
    this.draining = true;
    if (this.stage !== 'command' && this.stage !== 'auth') return [];
    const out: Action[] = [];
    this.end(out, 'PST_SHUTDOWN');
    return out;
  }

  summary(): SessionSummary {
    return {
      ...(this.clientId ? { helo: this.clientId } : {}),
      ...(this.credentials ? { user: this.credentials.user } : {}),
    };
  }

  /** A router or back-end failure answers the login (`<tag> NO …`, `* BYE` where the code has one) and closes. */
  #fail(code: ErrorCode, detail?: string, reply?: Buffer): Action[] {
    this.stage = 'closed';
    let data = reply ?? this.book.error(code, this.tag);
    // A code said only as BYE still owes the login its tagged answer.
    if (!reply && !data.toString('latin1').startsWith(`${this.tag} `)) data = Buffer.concat([this.book.refused(this.tag, 'Authentication failed'), data]);
    const a: Action = { type: 'error', code, ...(detail !== undefined ? { detail } : {}), reply: data };
    return ERRORS[code].close ? [a] : [a, { type: 'close' }];
  }

  /** A refused login: the reply; then closed, or (Auth-Wait) back to commands, closing after auth.max_attempts. */
  #refused(reply: Buffer, keepOpen: boolean): Action[] {
    const out: Action[] = [{ type: 'reply', data: reply }];
    this.authFailures++;
    if (!keepOpen) {
      this.stage = 'closed';
      out.push({ type: 'close' });
      return out;
    }
    this.stage = 'command';
    if (this.authFailures >= this.limits.maxAttempts) {
      this.stage = 'closed';
      out.push({ type: 'error', code: 'PST_AUTH_TOO_MANY', detail: `${this.authFailures} failed attempts`, reply: this.book.error('PST_AUTH_TOO_MANY', null) });
      return out;
    }
    this.resume(out);
    return out;
  }
}
