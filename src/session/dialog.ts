/**
 * The SMTP dialog with the client: the command half of the session machine (see ./session.ts
 * for the whole and for the events that drive routing and the back-end). Lines are handled
 * strictly one at a time, and the machine stops consuming at a command that waits for a router
 * or a back-end, so replies leave in command order (RFC 2920 §3.1) and every byte after that
 * command stays in the reader. Its state and shared steps are ./dialog-state.ts.
 */
import type { CheckStage, CheckVerdict, Envelope } from '../domain.js';
import type { Action } from '../protocol.js';
import { hasForbiddenByte, parseCommand } from '../smtp/command.js';
import { parsePathArg, sizeParam } from '../smtp/path.js';
import { lineReply } from '../smtp/replies.js';
import { MECHANISMS, type Mechanism } from '../smtp/sasl.js';
import { DialogState, printable, type PendingCheck } from './dialog-state.js';
import { SaslExchange } from './sasl-exchange.js';

const GOODBYE: Action = Object.freeze({ type: 'close', goodbye: true });

export { printable, type BackendReadyInfo, type Phase } from './dialog-state.js';

export abstract class SmtpDialog extends DialogState {
  protected command(line: Buffer, out: Action[]): void {
    if (hasForbiddenByte(line)) return this.fail(out, 'PST_BAD_BYTES', printable(line));
    const { verb, arg } = parseCommand(line);
    switch (verb) {
      case 'EHLO':
      case 'HELO':
        return this.hello(verb, arg, out);
      case 'MAIL':
        return this.mailFrom(line, arg, out);
      case 'RCPT':
        return this.rcptTo(line, arg, out);
      case 'RSET':
        return this.rset(out);
      case 'NOOP':
        return reply(out, this.book.ok);
      case 'QUIT':
        this.stage = 'closed';
        reply(out, this.book.bye);
        if (this.tx) out.push({ type: 'backend-close', abort: false, reuse: true, clean: this.tx.idle });
        this.tx = null;
        // Bytes after QUIT would turn a plain close into a reset that can take the 221 with it.
        out.push(this.reader.buffered === 0 ? GOODBYE : { type: 'close' });
        return;
      case 'VRFY':
        return arg ? reply(out, this.book.vrfy) : this.fail(out, 'PST_INVALID_ARGUMENT');
      case 'HELP':
        return reply(out, this.book.help);
      case 'DATA':
        return this.data(out);
      case 'BDAT':
        return this.bdat(arg, out);
      case 'STARTTLS':
        return this.startTls(arg, out);
      case 'AUTH':
        return this.auth(arg, out);
      case 'EXPN':
        return this.fail(out, 'PST_NOT_IMPLEMENTED', verb);
      case 'XCLIENT':
      case 'XFORWARD':
        // Only Postern speaks XCLIENT to the back-end; a client's own would impersonate others.
        return this.fail(out, 'PST_NOT_PERMITTED', verb);
      case 'HTTP':
        return this.fail(out, 'PST_HTTP_REQUEST', printable(line));
      case 'UNKNOWN':
        return this.fail(out, 'PST_UNKNOWN_COMMAND', printable(line.subarray(0, 64)));
    }
  }

  /** Forgets the transaction (RSET, HELO/EHLO: RFC 5321 §4.1.4); an open one at the back-end is reset too. */
  protected forgetTransaction(out: Action[], relay: boolean): boolean {
    this.mail = null;
    this.draft = null;
    if (!this.tx?.open) return false;
    this.tx.rset(relay, out);
    return true;
  }

  protected rset(out: Action[]): void {
    if (this.forgetTransaction(out, true)) this.stage = 'backend-wait';
    else reply(out, this.book.ok);
  }

  protected hello(verb: 'EHLO' | 'HELO', arg: string, out: Action[]): void {
    // RFC 5321 §4.1.1.1: exactly one domain or address literal (nginx: "501 5.5.4 Invalid argument").
    if (arg.length === 0 || /\s/.test(arg)) return this.fail(out, 'PST_INVALID_ARGUMENT', `${verb} ${arg}`);
    if (this.checks('helo')) return this.ask({ stage: 'helo', verb, arg }, { ...this.bareEnvelope(), helo: arg, esmtp: verb === 'EHLO' }, 0, out);
    this.helloAccepted(verb, arg, out);
  }

  protected helloAccepted(verb: 'EHLO' | 'HELO', arg: string, out: Action[]): void {
    this.helo = arg;
    this.esmtp = verb === 'EHLO';
    this.forgetTransaction(out, false);
    const a = this.limits.auth;
    const ehlo = this.book.ehlo(!this.secure && this.limits.starttls !== 'off', a.mechanisms.length > 0 && (this.secure || a.plaintext));
    reply(out, this.esmtp ? ehlo : this.book.helo);
  }

  protected startTls(arg: string, out: Action[]): void {
    if (this.limits.starttls === 'off') return this.fail(out, 'PST_NOT_IMPLEMENTED', 'STARTTLS');
    if (arg !== '') return this.fail(out, 'PST_INVALID_ARGUMENT', `STARTTLS ${arg}`);
    if (this.secure) return this.fail(out, 'PST_TLS_ACTIVE');
    reply(out, this.book.startTls);
    // The identity the back-end session was set up with is gone with the TLS restart.
    this.dropBackend(out);
    // RFC 3207 §4.2 and CVE-2011-0411 / nginx CVE-2014-3556: bytes the client pipelined after
    // STARTTLS were sent in the clear and must never be read as commands of the TLS session.
    const discarded = this.reader.rest().length;
    this.stage = 'tls-handshake';
    out.push({ type: 'starttls', discarded });
  }

  protected dropBackend(out: Action[]): void {
    if (!this.tx) return;
    out.push({ type: 'backend-close', abort: false });
    this.tx = null;
    this.mail = null;
    this.draft = null;
  }

  protected mailFrom(line: Buffer, arg: string, out: Action[]): void {
    if (this.limits.starttls === 'only' && !this.secure) return this.fail(out, 'PST_TLS_REQUIRED');
    if (!this.limits.auth.allowNone && !this.authenticated && !this.tx?.fixed) return this.fail(out, 'PST_AUTH_REQUIRED');
    if (this.limits.requireHelo && this.helo === '') return this.fail(out, 'PST_NEED_HELO');
    if (this.mail) return this.fail(out, 'PST_NESTED_MAIL');
    const path = parsePathArg(arg, 'FROM:');
    if (!path) return this.fail(out, 'PST_BAD_SENDER', arg);
    const size = sizeParam(path.params);
    if (size !== undefined && Number.isNaN(size)) return this.fail(out, 'PST_INVALID_ARGUMENT', arg);
    if (size !== undefined && this.limits.maxMessageSize > 0 && size > this.limits.maxMessageSize) {
      return this.fail(out, 'PST_MESSAGE_TOO_BIG', `SIZE=${size}`);
    }
    const mailLine = line.toString('latin1');
    // A new number for each MAIL asked about, taken or refused: a policy server's verdict cached under one never answers another.
    this.transactions++;
    if (this.checks('mail')) {
      return this.ask({ stage: 'mail', line: mailLine, from: path.address }, { ...this.bareEnvelope(), mailLine, mailFrom: path.address }, 0, out, size);
    }
    this.mailAccepted(mailLine, path.address, undefined, out);
  }

  protected mailAccepted(mailLine: string, from: string, prepend: readonly string[] | undefined, out: Action[]): void {
    this.mail = { line: mailLine, from };
    this.draft = { from, recipients: [], ...(prepend ? { prepend: [...prepend] } : {}) };
    if (this.tx?.fixed) {
      // A route fixed at AUTH: MAIL goes to the back-end now and its reply is the client's.
      this.stage = 'backend-wait';
      this.tx.mail(this.mail.line, out);
      return;
    }
    reply(out, this.book.mailOk);
  }

  protected rcptTo(line: Buffer, arg: string, out: Action[]): void {
    if (this.limits.starttls === 'only' && !this.secure) return this.fail(out, 'PST_TLS_REQUIRED');
    if (!this.limits.auth.allowNone && !this.authenticated && !this.tx?.fixed) return this.fail(out, 'PST_AUTH_REQUIRED');
    if (!this.mail) return this.fail(out, 'PST_NEED_MAIL');
    const path = parsePathArg(arg, 'TO:');
    if (!path || path.address === '') return this.fail(out, 'PST_BAD_RECIPIENT', arg);
    const rcptLine = line.toString('latin1');
    if (this.tx?.fixed) {
      this.stage = 'backend-wait';
      this.tx.rcpt(this.draft!, this.mail.line, rcptLine, path.address, out);
      return;
    }
    this.stage = 'routing';
    this.attempts++;
    const envelope: Envelope = {
      helo: this.helo,
      esmtp: this.esmtp,
      mailLine: this.mail.line,
      rcptLine,
      mailFrom: this.mail.from,
      rcptTo: path.address,
      attempt: this.attempts,
      transaction: this.transactions,
      ...(this.authenticated ? { auth: this.authenticated } : {}),
      ...(this.limits.proxyMode === 'transaction' ? { recipient: this.draft!.recipients.length + 1 } : {}),
    };
    this.route(envelope, out);
  }

  protected route(envelope: Envelope, out: Action[]): void {
    this.routing = envelope;
    this.firstEnvelope ??= envelope;
    out.push({ type: 'route', envelope });
  }

  protected data(out: Action[]): void {
    if (!this.mail) return this.fail(out, 'PST_NEED_MAIL');
    if (this.tx?.open) {
      if (this.checks('data')) return this.ask({ stage: 'data' }, { ...this.bareEnvelope(), mailLine: this.mail.line, mailFrom: this.mail.from }, this.tx.accepted, out);
      return this.dataAccepted(undefined, out);
    }
    // Transaction mode: recipients were given, but none reached a back-end (Postfix's text).
    if (this.draft && this.draft.recipients.length > 0) return this.fail(out, 'PST_NO_VALID_RECIPIENTS');
    this.fail(out, 'PST_NEED_RCPT');
  }

  protected dataAccepted(prepend: readonly string[] | undefined, out: Action[]): void {
    const draft = this.draft!;
    // The one change Postern makes to a message: header lines its checks asked for, at the top.
    const lines = [...new Set([...this.connectPrepend, ...this.heloPrepend, ...(draft.prepend ?? []), ...(prepend ?? [])])];
    if (lines.length > 0) draft.prepend = lines;
    this.stage = 'backend-wait';
    this.tx!.data(draft, out);
  }

  /** Whether a stage check is registered for `stage` (none: the command goes on at once). */
  protected checks(stage: CheckStage): boolean {
    return this.limits.checkStages?.has(stage) === true;
  }

  /** The session's envelope before MAIL: who the client is and what it said. */
  protected bareEnvelope(): Envelope {
    return { helo: this.helo, esmtp: this.esmtp, mailLine: '', rcptLine: '', mailFrom: '', rcptTo: '', attempt: this.attempts, transaction: this.transactions, ...(this.authenticated ? { auth: this.authenticated } : {}) };
  }

  /** Holds `pending` and asks the stage checks; {@link checked} carries it out or refuses it. */
  protected ask(pending: PendingCheck, envelope: Envelope, recipientCount: number, out: Action[], size?: number): void {
    this.stage = 'checking';
    this.pendingCheck = pending;
    out.push({ type: 'check', stage: pending.stage, envelope, recipientCount, ...(size !== undefined ? { size } : {}) });
  }

  /** The stage checks' verdict on the held command: a refusal answers it and the session goes on. */
  checked(v: CheckVerdict): Action[] {
    const p = this.pendingCheck;
    if (this.stage !== 'checking' || !p) return [];
    this.pendingCheck = null;
    this.stage = 'command';
    const out: Action[] = [];
    if (v.kind === 'reject') reply(out, lineReply(v.reply));
    else if (p.stage === 'helo') {
      this.helloAccepted(p.verb, p.arg, out);
      this.heloPrepend = v.prepend ?? [];
    } else if (p.stage === 'mail') this.mailAccepted(p.line, p.from, v.prepend, out);
    else this.dataAccepted(v.prepend, out);
    this.resume(out);
    return out;
  }

  /** AUTH <mechanism> [initial-response] (RFC 4954 §4). */
  protected auth(arg: string, out: Action[]): void {
    const a = this.limits.auth;
    if (a.mechanisms.length === 0) return this.fail(out, 'PST_NOT_IMPLEMENTED', 'AUTH');
    if (this.authenticated || this.tx?.fixed) return this.fail(out, 'PST_AUTH_ALREADY');
    if (this.mail) return this.fail(out, 'PST_AUTH_IN_TRANSACTION');
    if (this.limits.requireHelo && this.helo === '') return this.fail(out, 'PST_NEED_HELO');
    const [name = '', initial, extra] = arg.split(' ');
    // The argument may hold credentials: it is never logged.
    if (name === '' || extra !== undefined) return this.fail(out, 'PST_INVALID_ARGUMENT', 'AUTH');
    const mech = name.toUpperCase() as Mechanism;
    if (!MECHANISMS.includes(mech) || !a.mechanisms.includes(mech)) return this.fail(out, 'PST_AUTH_MECHANISM', name);
    if (this.limits.starttls === 'only' && !this.secure) return this.fail(out, 'PST_TLS_REQUIRED');
    if (!this.secure && !a.plaintext) return this.fail(out, 'PST_AUTH_NEEDS_TLS', mech);
    // RFC 4954 §4: CRAM-MD5 has no initial response (the server speaks first).
    if (mech === 'CRAM-MD5' && initial !== undefined) return this.fail(out, 'PST_AUTH_BAD_RESPONSE', 'CRAM-MD5 takes no initial response');
    // A login changes who the back-end must see: the unauthenticated back-end session ends.
    this.dropBackend(out);
    this.sasl = new SaslExchange(mech, this.book, mech === 'CRAM-MD5' ? a.challenge() : '');
    this.saslStep(this.sasl.start(initial), out);
  }

  protected saslResponse(line: Buffer, out: Action[]): void {
    if (hasForbiddenByte(line)) {
      this.sasl = null;
      return this.fail(out, 'PST_AUTH_BAD_RESPONSE', 'control byte in a SASL response');
    }
    this.saslStep(this.sasl!.respond(line.toString('latin1').trim()), out);
  }

  protected saslStep(step: ReturnType<SaslExchange['respond']>, out: Action[]): void {
    if (step.kind === 'challenge') return reply(out, step.reply);
    this.sasl = null;
    if (step.kind === 'error') return this.fail(out, step.code, step.detail);
    // nginx's authenticated path: the routing decision is made now, not at RCPT.
    this.stage = 'routing';
    this.authRouting = true;
    this.attempts++;
    this.route({ helo: this.helo, esmtp: this.esmtp, mailLine: '', rcptLine: '', mailFrom: '', rcptTo: '', attempt: this.attempts, auth: step.credentials }, out);
  }

  /** CHUNKING is never advertised, but a BDAT chunk is stepped over so it is not read as commands. */
  protected bdat(arg: string, out: Action[]): void {
    const m = /^(\d{1,15})(?: +LAST)?$/i.exec(arg);
    if (!m) {
      // Without a valid size the chunk boundary is unknown: nothing after it can be trusted.
      this.fail(out, 'PST_INVALID_ARGUMENT', `BDAT ${arg}`);
      if (this.stage === 'command') {
        this.stage = 'closed';
        if (this.tx) out.push({ type: 'backend-close', abort: false });
        this.tx = null;
        out.push({ type: 'close' });
      }
      return;
    }
    this.reader.skip(Number(m[1]));
    this.fail(out, this.mail ? 'PST_NEED_RCPT' : 'PST_NEED_MAIL');
  }
}

function reply(out: Action[], data: Buffer): void {
  out.push({ type: 'reply', data });
}
