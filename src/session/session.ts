/**
 * The client side of an SMTP session up to the hand-off, as a state machine without I/O.
 *
 * Events go in as method calls (`start`, `receive`, `routeFailed`, …); each returns the actions
 * the network layer must carry out, in order. Lines are handled strictly one at a time and the
 * machine stops consuming at the command that needs a routing decision, so replies always leave
 * in command order (RFC 2920 §3.1) and every byte after that command stays in the reader for the
 * back-end. Phase names match docs/lifecycle.md.
 */
import { ERRORS, type ErrorCode } from '../errors.js';
import { hasForbiddenByte, parseCommand } from '../smtp/command.js';
import { LINE_TOO_LONG, LineReader } from '../smtp/line-reader.js';
import { parsePathArg, sizeParam } from '../smtp/path.js';
import type { ReplyBook } from '../smtp/replies.js';
import { MECHANISMS, type Credentials, type Mechanism } from '../smtp/sasl.js';
import { SaslExchange } from './sasl-exchange.js';

export type Phase = 'tls-handshake' | 'greeting' | 'command' | 'routing' | 'handed-off' | 'closed';

export interface SessionLimits {
  /** Longest command line in bytes, CRLF included (nginx `smtp_client_buffer`). */
  maxLineLength: number;
  /** Error replies after which the session is closed (nginx `max_errors`); 0 disables. */
  maxErrors: number;
  /** Largest SIZE= accepted at MAIL (RFC 1870); 0 means no limit. */
  maxMessageSize: number;
  /** Refuse MAIL before HELO/EHLO (RFC 5321 §4.1.4). */
  requireHelo: boolean;
  /** Hold the greeting until {@link Session.greetingDue}; input before it is an early talker. */
  greetingDelay: boolean;
  /** STARTTLS on this listener: `only` refuses MAIL and RCPT before TLS. */
  starttls: 'off' | 'on' | 'only';
  /** TLS from the first byte: the greeting follows the handshake. */
  implicitTls: boolean;
  /** SMTP AUTH on this listener. */
  auth: AuthLimits;
}

export interface AuthLimits {
  mechanisms: readonly Mechanism[];
  /** `none` listed: unauthenticated MAIL/RCPT are allowed (routing at RCPT). */
  allowNone: boolean;
  /** AUTH before TLS is allowed. */
  plaintext: boolean;
  /** Refused AUTH attempts before the session is closed. */
  maxAttempts: number;
  /** A fresh CRAM-MD5 challenge, `<random.time@server_name>` (injected: the machine has no clock). */
  challenge: () => string;
}

/** A listener without AUTH. */
export const NO_AUTH: AuthLimits = Object.freeze({ mechanisms: [], allowNone: true, plaintext: false, maxAttempts: 3, challenge: () => '' });

/** What the router needs to choose a back-end, and what the replay sends to it. */
export interface Envelope {
  /** HELO/EHLO argument, empty when the client never greeted. */
  helo: string;
  /** True when the client greeted with EHLO. */
  esmtp: boolean;
  /** The MAIL command line as the client typed it, without CRLF (replayed verbatim, nginx's Auth-SMTP-From). */
  mailLine: string;
  /** The RCPT command line that triggered routing, without CRLF (nginx's Auth-SMTP-To). */
  rcptLine: string;
  mailFrom: string;
  rcptTo: string;
  /** 1 for the first routing request of the session, +1 for each later one (Auth-Login-Attempt). */
  attempt: number;
  /** Set when routing follows a completed AUTH (nginx's authenticated path): no MAIL/RCPT yet. */
  auth?: Credentials;
}

export type Action =
  | { type: 'reply'; data: Buffer }
  /** Send the catalogue reply for `code`, log it, and close if the catalogue says so. */
  | { type: 'error'; code: ErrorCode; detail?: string }
  | { type: 'route'; envelope: Envelope }
  /** Close after the replies already queued have been written. */
  | { type: 'close' }
  /** Start the server side of a TLS handshake once the queued replies are written. */
  | { type: 'starttls'; discarded: number };

interface Transaction {
  line: string;
  from: string;
}

export class Session {
  phase: Phase = 'greeting';
  helo = '';
  esmtp = false;
  errors = 0;
  attempts = 0;
  /** TLS is active (implicit, or after STARTTLS). */
  secure = false;
  #mail: Transaction | null = null;
  #sasl: SaslExchange | null = null;
  /** Credentials the router accepted, when the session stays with Postern until RCPT (envelope_after_auth). */
  authenticated: Credentials | null = null;
  /** AUTH attempts the router refused. */
  authFailures = 0;
  #authRouting = false;
  #draining = false;
  readonly #reader: LineReader;
  readonly #book: ReplyBook;
  readonly #limits: SessionLimits;

  constructor(book: ReplyBook, limits: SessionLimits) {
    this.#book = book;
    this.#limits = limits;
    this.#reader = new LineReader(limits.maxLineLength);
  }

  /** Connection accepted: greet now, or wait for the greeting delay. */
  start(): Action[] {
    if (this.#limits.implicitTls) {
      this.phase = 'tls-handshake';
      return [];
    }
    if (this.#limits.greetingDelay) return [];
    this.phase = 'command';
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
      this.phase = 'closed';
      return [{ type: 'error', code: 'PST_SHUTDOWN' }];
    }
    if (first) {
      this.phase = 'greeting';
      return this.#limits.greetingDelay ? [] : this.greetingDue();
    }
    this.phase = 'command';
    return [];
  }

  /** The greeting delay has passed without the client speaking. */
  greetingDue(): Action[] {
    if (this.phase !== 'greeting') return [];
    this.phase = 'command';
    return [{ type: 'reply', data: this.#book.greeting }];
  }

  /** Bytes from the client. */
  receive(chunk: Buffer): Action[] {
    const out: Action[] = [];
    if (this.phase === 'greeting') {
      // nginx smtp_greeting_delay / postscreen pregreet: a client that talks first is not a real MTA.
      this.phase = 'closed';
      out.push({ type: 'error', code: 'PST_EARLY_TALKER', detail: printable(chunk) });
      return out;
    }
    // After close nothing more is read; after the hand-off the relay owns the bytes.
    if (this.phase === 'closed' || this.phase === 'handed-off' || this.phase === 'tls-handshake') return out;
    this.#reader.push(chunk);
    if (this.phase === 'command') this.#drain(out);
    return out;
  }

  /**
   * The router refused (or failed). The reply is sent; with `keepOpen` (Auth-Wait) the session
   * returns to the command phase and goes on with any commands the client had pipelined.
   */
  routeFailed(action: Action, keepOpen: boolean): Action[] {
    const out: Action[] = [action];
    if (!keepOpen) {
      this.phase = 'closed';
      out.push({ type: 'close' });
      return out;
    }
    this.phase = 'command';
    if (this.#authRouting) {
      this.#authRouting = false;
      if (++this.authFailures >= this.#limits.auth.maxAttempts) {
        this.phase = 'closed';
        out.push({ type: 'error', code: 'PST_AUTH_TOO_MANY', detail: `${this.authFailures} failed attempts` });
        return out;
      }
    }
    this.#drain(out);
    // A stop requested while the router was busy is announced now rather than at the next command.
    if (this.#draining && this.phase === 'command') {
      this.phase = 'closed';
      out.push({ type: 'error', code: 'PST_SHUTDOWN' });
    }
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
    this.phase = 'command';
    reply(out, this.#book.authOk);
    this.#drain(out);
    return out;
  }

  /** Routing succeeded and the back-end accepted the replay: everything still buffered belongs to it. */
  handOff(): Buffer {
    this.phase = 'handed-off';
    return this.#reader.rest();
  }

  /**
   * Stop was requested. An idle session is told so now (421, RFC 5321 §3.8); one with a command
   * in progress gets the 421 at its next command.
   */
  shutdown(): Action[] {
    this.#draining = true;
    if (this.phase !== 'command' && this.phase !== 'greeting') return [];
    this.phase = 'closed';
    return [{ type: 'error', code: 'PST_SHUTDOWN' }];
  }

  #drain(out: Action[]): void {
    while (this.phase === 'command') {
      const line = this.#reader.next();
      if (line === null) return;
      if (line === LINE_TOO_LONG) {
        this.#reader.rest();
        this.#fail(out, 'PST_LINE_TOO_LONG');
        return;
      }
      if (this.#draining) {
        this.#fail(out, 'PST_SHUTDOWN');
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
        this.#mail = null;
        return reply(out, this.#book.ok);
      case 'NOOP':
        return reply(out, this.#book.ok);
      case 'QUIT':
        this.phase = 'closed';
        reply(out, this.#book.bye);
        out.push({ type: 'close' });
        return;
      case 'VRFY':
        return arg ? reply(out, this.#book.vrfy) : this.#fail(out, 'PST_INVALID_ARGUMENT');
      case 'HELP':
        return reply(out, this.#book.help);
      case 'DATA':
        return this.#fail(out, this.#mail ? 'PST_NEED_RCPT' : 'PST_NEED_MAIL');
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

  #hello(verb: 'EHLO' | 'HELO', arg: string, out: Action[]): void {
    // RFC 5321 §4.1.1.1: exactly one domain or address literal (nginx: "501 5.5.4 Invalid argument").
    if (arg.length === 0 || /\s/.test(arg)) return this.#fail(out, 'PST_INVALID_ARGUMENT', `${verb} ${arg}`);
    this.helo = arg;
    this.esmtp = verb === 'EHLO';
    this.#mail = null; // RFC 5321 §4.1.4: HELO/EHLO resets the transaction.
    const a = this.#limits.auth;
    const ehlo = this.#book.ehlo(!this.secure && this.#limits.starttls !== 'off', a.mechanisms.length > 0 && (this.secure || a.plaintext));
    reply(out, this.esmtp ? ehlo : this.#book.helo);
  }

  #startTls(arg: string, out: Action[]): void {
    if (this.#limits.starttls === 'off') return this.#fail(out, 'PST_NOT_IMPLEMENTED', 'STARTTLS');
    if (arg !== '') return this.#fail(out, 'PST_INVALID_ARGUMENT', `STARTTLS ${arg}`);
    if (this.secure) return this.#fail(out, 'PST_TLS_ACTIVE');
    reply(out, this.#book.startTls);
    // RFC 3207 §4.2 and CVE-2011-0411 / nginx CVE-2014-3556: bytes the client pipelined after
    // STARTTLS were sent in the clear and must never be read as commands of the TLS session.
    const discarded = this.#reader.rest().length;
    this.phase = 'tls-handshake';
    out.push({ type: 'starttls', discarded });
  }

  #mailFrom(line: Buffer, arg: string, out: Action[]): void {
    if (this.#limits.starttls === 'only' && !this.secure) return this.#fail(out, 'PST_TLS_REQUIRED');
    if (!this.#limits.auth.allowNone && !this.authenticated) return this.#fail(out, 'PST_AUTH_REQUIRED');
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
    reply(out, this.#book.mailOk);
  }

  #rcptTo(line: Buffer, arg: string, out: Action[]): void {
    if (this.#limits.starttls === 'only' && !this.secure) return this.#fail(out, 'PST_TLS_REQUIRED');
    if (!this.#limits.auth.allowNone && !this.authenticated) return this.#fail(out, 'PST_AUTH_REQUIRED');
    if (!this.#mail) return this.#fail(out, 'PST_NEED_MAIL');
    const path = parsePathArg(arg, 'TO:');
    if (!path || path.address === '') return this.#fail(out, 'PST_BAD_RECIPIENT', arg);
    this.phase = 'routing';
    this.attempts++;
    out.push({
      type: 'route',
      envelope: {
        helo: this.helo,
        esmtp: this.esmtp,
        mailLine: this.#mail.line,
        rcptLine: line.toString('latin1'),
        mailFrom: this.#mail.from,
        rcptTo: path.address,
        attempt: this.attempts,
        ...(this.authenticated ? { auth: this.authenticated } : {}),
      },
    });
  }

  /** AUTH <mechanism> [initial-response] (RFC 4954 §4). */
  #auth(arg: string, out: Action[]): void {
    const a = this.#limits.auth;
    if (a.mechanisms.length === 0) return this.#fail(out, 'PST_NOT_IMPLEMENTED', 'AUTH');
    if (this.authenticated) return this.#fail(out, 'PST_AUTH_ALREADY');
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
    this.phase = 'routing';
    this.#authRouting = true;
    this.attempts++;
    out.push({
      type: 'route',
      envelope: { helo: this.helo, esmtp: this.esmtp, mailLine: '', rcptLine: '', mailFrom: '', rcptTo: '', attempt: this.attempts, auth: step.credentials },
    });
  }

  /** CHUNKING is never advertised, but a BDAT chunk is stepped over so it is not read as commands. */
  #bdat(arg: string, out: Action[]): void {
    const m = /^(\d{1,15})(?: +LAST)?$/i.exec(arg);
    if (!m) {
      // Without a valid size the chunk boundary is unknown: nothing after it can be trusted.
      this.#fail(out, 'PST_INVALID_ARGUMENT', `BDAT ${arg}`);
      if (this.phase === 'command') {
        this.phase = 'closed';
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
      this.phase = 'closed';
      return;
    }
    this.errors++;
    if (this.#limits.maxErrors > 0 && this.errors >= this.#limits.maxErrors) {
      this.phase = 'closed';
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
