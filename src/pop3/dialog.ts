/**
 * The POP3 dialog before login: the session's state and the commands of the AUTHORIZATION state
 * as nginx answers them (ngx_mail_pop3_auth_state). ./session.ts adds the events (routing, TLS,
 * timers, EOF). Only these two classes write the session's state.
 */
import type { Credentials, Envelope } from '../domain.js';
import { ERRORS, type ErrorCode } from '../errors.js';
import type { Action } from '../protocol.js';
import { printable } from '../session/dialog-state.js';
import { LINE_TOO_LONG, LineReader } from '../smtp/line-reader.js';
import { parsePop3Command, type Pop3Verb } from './command.js';
import type { Pop3Limits } from './limits.js';
import type { Pop3Book, Pop3Mechanism } from './replies.js';
import { Pop3Sasl, type Pop3SaslStep } from './sasl.js';

export type Pop3Phase = 'tls-handshake' | 'command' | 'routing' | 'auth-wait' | 'handed-off' | 'closed';

/** QUIT with nothing after it: closed as soon as the +OK is with the kernel (src/protocol.ts `goodbye`). */
const GOODBYE: Action = Object.freeze({ type: 'close', goodbye: true });

export abstract class Pop3Dialog {
  protected stage: Pop3Phase = 'command';
  /** TLS is active (implicit, or after STLS). */
  secure = false;
  errors = 0;
  /** Logins the router refused. */
  authFailures = 0;
  /** Routing requests so far (Auth-Login-Attempt). */
  attempts = 0;
  /** The name given with USER, waiting for PASS (nginx's ngx_pop3_user state). */
  protected user: string | null = null;
  protected sasl: Pop3Sasl | null = null;
  protected draining = false;
  protected ended = false;
  /** The login being routed (and, once routed, the session's). */
  protected routing: Envelope | null = null;
  /** A refusal held for its Auth-Wait. */
  protected waiting: Buffer | null = null;
  /** The greeting's timestamp, `<random.time@server_name>`: the APOP and CRAM-MD5 salt; '' when neither is on. */
  protected readonly salt: string;
  protected readonly reader: LineReader;
  protected readonly book: Pop3Book;
  protected readonly limits: Pop3Limits;

  constructor(book: Pop3Book, limits: Pop3Limits) {
    this.book = book;
    this.limits = limits;
    this.reader = new LineReader(limits.maxLineLength);
    this.salt = limits.timestamp ? limits.timestamp() : '';
  }

  get phase(): Pop3Phase {
    return this.stage;
  }

  get reading(): boolean {
    return this.stage !== 'routing' && this.stage !== 'auth-wait' && this.stage !== 'handed-off';
  }

  errorReply(code: ErrorCode): Buffer {
    return this.book.error(code);
  }

  /** Back in the command state: go on with pipelined commands, then honour EOF and stop requests. */
  protected resume(out: Action[]): void {
    this.drain(out);
    if (this.stage !== 'command') return;
    if (this.draining) this.end(out, 'PST_SHUTDOWN');
    else if (this.ended) this.end(out, 'PST_CLIENT_EOF');
  }

  protected end(out: Action[], code: 'PST_SHUTDOWN' | 'PST_CLIENT_EOF'): void {
    this.stage = 'closed';
    if (code === 'PST_SHUTDOWN') out.push({ type: 'error', code });
    else out.push({ type: 'log', code }, { type: 'close' });
  }

  protected drain(out: Action[]): void {
    while (this.stage === 'command') {
      const line = this.reader.next();
      if (line === null) return;
      if (line === LINE_TOO_LONG) {
        // nginx: "client sent too long command", "-ERR invalid command", and the session ends.
        this.reader.rest();
        this.fail(out, 'PST_LINE_TOO_LONG');
        return;
      }
      if (this.draining) return this.end(out, 'PST_SHUTDOWN');
      if (this.sasl) this.saslResponse(line, out);
      else this.command(line, out);
    }
  }

  /**
   * A refused command: its `-ERR`; at max_errors the same `-ERR` and close (mail_max_errors.t:
   * with max_errors 2 the second error is answered and the connection closed).
   */
  protected fail(out: Action[], code: ErrorCode, detail?: string): void {
    this.user = null; // nginx: an invalid command returns to the start state
    if (ERRORS[code].close) {
      this.stage = 'closed';
      out.push(detail === undefined ? { type: 'error', code } : { type: 'error', code, detail });
      return;
    }
    this.errors++;
    if (this.limits.maxErrors > 0 && this.errors >= this.limits.maxErrors) {
      this.stage = 'closed';
      out.push(detail === undefined ? { type: 'log', code } : { type: 'log', code, detail }, { type: 'error', code: 'PST_TOO_MANY_ERRORS' });
      return;
    }
    out.push(detail === undefined ? { type: 'error', code } : { type: 'error', code, detail });
  }

  protected command(line: Buffer, out: Action[]): void {
    const c = parsePop3Command(line);
    if (c.kind === 'bad-bytes') return this.fail(out, 'PST_BAD_BYTES', printable(line));
    if (c.kind === 'invalid') return this.fail(out, 'PST_UNKNOWN_COMMAND', printable(line.subarray(0, 64)));
    // After USER only PASS, CAPA, NOOP and QUIT are commands (nginx's ngx_pop3_user state).
    if (this.user !== null && c.verb !== 'PASS' && c.verb !== 'CAPA' && c.verb !== 'NOOP' && c.verb !== 'QUIT') return this.fail(out, 'PST_UNKNOWN_COMMAND', c.verb);
    this.verb(c.verb, c.args, out);
  }

  protected verb(verb: Pop3Verb, args: string[], out: Action[]): void {
    switch (verb) {
      case 'CAPA':
        return reply(out, this.capa());
      case 'NOOP':
        return reply(out, this.book.ok);
      case 'QUIT':
        // RFC 1939 §6: +OK, and the connection closes (nothing to update before login).
        this.stage = 'closed';
        reply(out, this.book.ok);
        out.push(this.reader.buffered === 0 ? GOODBYE : { type: 'close' });
        return;
      case 'STLS':
        return this.stls(out);
      case 'USER':
        return this.userCommand(args, out);
      case 'PASS':
        return this.pass(args, out);
      case 'APOP':
        return this.apop(args, out);
      case 'AUTH':
        return this.auth(args, out);
    }
  }

  /** nginx's CAPA: STLS listed before TLS in the start state; `starttls: only` lists neither USER nor SASL. */
  protected capa(): Buffer {
    if (this.secure || this.limits.starttls === 'off' || this.user !== null) return this.book.capa;
    return this.limits.starttls === 'only' ? this.book.capaStlsOnly : this.book.capaStls;
  }

  /** A login before TLS on a `starttls: only` listener (nginx: ngx_mail_starttls_only → invalid command). */
  protected needsTls(): boolean {
    return this.limits.starttls === 'only' && !this.secure;
  }

  /** RFC 2595 §4: +OK, then the handshake; bytes pipelined after STLS were sent in the clear and are dropped. */
  protected stls(out: Action[]): void {
    if (this.limits.starttls === 'off') return this.fail(out, 'PST_NOT_IMPLEMENTED', 'STLS');
    if (this.secure) return this.fail(out, 'PST_TLS_ACTIVE');
    reply(out, this.book.ok);
    const discarded = this.reader.rest().length;
    this.stage = 'tls-handshake';
    out.push({ type: 'starttls', discarded });
  }

  protected userCommand(args: string[], out: Action[]): void {
    if (!this.limits.userPass) return this.fail(out, 'PST_NOT_IMPLEMENTED', 'USER');
    if (this.needsTls()) return this.fail(out, 'PST_TLS_REQUIRED', 'USER');
    if (args.length !== 1) return this.fail(out, 'PST_INVALID_ARGUMENT', 'USER');
    this.user = args[0]!;
    reply(out, this.book.ok);
  }

  protected pass(args: string[], out: Action[]): void {
    if (this.user === null) return this.fail(out, 'PST_UNKNOWN_COMMAND', 'PASS without USER');
    // The argument is a password: never logged.
    if (args.length !== 1) return this.fail(out, 'PST_INVALID_ARGUMENT', 'PASS');
    const user = this.user;
    this.user = null;
    this.route({ method: 'plain', user, pass: args[0]! }, out);
  }

  /** APOP name digest (RFC 1939 §7): the auth service checks the digest against the greeting's timestamp (Auth-Salt). */
  protected apop(args: string[], out: Action[]): void {
    if (this.needsTls()) return this.fail(out, 'PST_TLS_REQUIRED', 'APOP');
    if (!this.limits.apop) return this.fail(out, 'PST_NOT_IMPLEMENTED', 'APOP');
    if (args.length !== 2) return this.fail(out, 'PST_INVALID_ARGUMENT', 'APOP');
    this.route({ method: 'apop', user: args[0]!, pass: args[1]!, salt: this.salt }, out);
  }

  /** AUTH: without an argument nginx's list of methods; else RFC 5034 with an optional initial response. */
  protected auth(args: string[], out: Action[]): void {
    if (this.needsTls()) return this.fail(out, 'PST_TLS_REQUIRED', 'AUTH');
    if (args.length === 0) return reply(out, this.book.authList);
    const [name, initial] = args as [string, string | undefined];
    const mech = name.toUpperCase() as Pop3Mechanism;
    if (!this.limits.mechanisms.includes(mech)) return this.fail(out, 'PST_AUTH_MECHANISM', name);
    // The initial response may hold credentials: it is never logged.
    if (args.length > 2 || (mech === 'CRAM-MD5' && initial !== undefined)) return this.fail(out, 'PST_INVALID_ARGUMENT', `AUTH ${mech}`);
    this.sasl = new Pop3Sasl(mech, this.book, this.salt);
    this.saslStep(this.sasl.start(initial), out);
  }

  protected saslResponse(line: Buffer, out: Action[]): void {
    const text = line.toString('latin1').trim();
    if (/[\x00-\x1f\x7f]/.test(text)) {
      this.sasl = null;
      return this.fail(out, 'PST_AUTH_BAD_RESPONSE', 'control byte in a SASL response');
    }
    this.saslStep(this.sasl!.respond(text), out);
  }

  protected saslStep(step: Pop3SaslStep, out: Action[]): void {
    if (step.kind === 'challenge') return reply(out, step.reply);
    const mech = this.sasl!.mechanism;
    this.sasl = null;
    if (step.kind === 'error') return this.fail(out, step.detail.endsWith('cancelled') ? 'PST_AUTH_CANCELLED' : 'PST_AUTH_BAD_RESPONSE', `${mech}: ${step.detail}`);
    this.route(step.credentials, out);
  }

  /** A complete login: the router decides (nginx's ngx_mail_auth), and reading stops until it has. */
  protected route(auth: Credentials, out: Action[]): void {
    this.stage = 'routing';
    this.attempts++;
    this.routing = { helo: '', esmtp: false, mailLine: '', rcptLine: '', mailFrom: '', rcptTo: '', attempt: this.attempts, auth };
    out.push({ type: 'route', envelope: this.routing });
  }
}

function reply(out: Action[], data: Buffer): void {
  out.push({ type: 'reply', data });
}
