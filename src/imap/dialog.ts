/**
 * The IMAP dialog before login (nginx's ngx_mail_imap_auth_state): its state and the commands
 * of the not-authenticated state (RFC 9051 §6.1, §6.2) — CAPABILITY, NOOP, LOGOUT, STARTTLS,
 * LOGIN, AUTHENTICATE, and ID (RFC 2971, which nginx lacks). Commands are read one at a time;
 * the machine stops consuming at LOGIN or a finished AUTHENTICATE, so every byte after it stays
 * in the reader for the back-end. ./session.ts handles the events.
 */
import type { Credentials, Envelope } from '../domain.js';
import { ERRORS, type ErrorCode } from '../errors.js';
import type { Action } from '../protocol.js';
import { argText, ImapReader, type ImapArg, type ReaderItem } from './reader.js';
import type { ImapBook, ImapMechanism } from './replies.js';
import { ImapSasl, type ImapSaslStep } from './sasl.js';

/** The commands of the not-authenticated state that Postern takes; any other is `BAD` at its name. */
export const COMMANDS: ReadonlySet<string> = new Set(['CAPABILITY', 'NOOP', 'LOGOUT', 'STARTTLS', 'LOGIN', 'AUTHENTICATE', 'ID']);

export type ImapPhase = 'tls-handshake' | 'command' | 'auth' | 'routing' | 'auth-wait' | 'handed-off' | 'closed';

/** The per-listener settings of an IMAP session machine. */
export interface ImapLimits {
  /** The longest command, literals included (nginx `imap_client_buffer`). */
  maxLineLength: number;
  /** Invalid commands after which the session is closed (nginx `max_errors`); 0: no limit. */
  maxErrors: number;
  starttls: 'off' | 'on' | 'only';
  implicitTls: boolean;
  /** What AUTHENTICATE takes: PLAIN and LOGIN always (nginx), the others when imap.auth lists them. */
  mechanisms: readonly ImapMechanism[];
  /** Refused logins before the session is closed (auth.max_attempts). */
  maxAttempts: number;
  /** A fresh CRAM-MD5 challenge, `<random.time@server_name>` (injected: the machine has no clock). */
  salt: () => string;
  /** proxy_pass_error_message: the back-end's own NO to the login reaches the client. */
  passErrorMessage: boolean;
}

/** RFC 2971 §3.3: at most 30 pairs; Postern's own x- fields take 5 of them towards the back-end. */
const MAX_ID_PAIRS = 25;

export abstract class ImapDialog {
  protected stage: ImapPhase = 'command';
  errors = 0;
  authFailures = 0;
  /** Logins sent to the router (Auth-Login-Attempt). */
  attempts = 0;
  secure = false;
  /** The client's ID fields, sanitised, as `"k" "v" …` (forwarded to the back-end with xclient, and recorded). */
  clientId = '';
  /** The login being routed (for the access record, and the auth service's user). */
  credentials: Credentials | null = null;
  /** The tag of the LOGIN or AUTHENTICATE in progress. */
  protected tag = '*';
  protected sasl: ImapSasl | null = null;
  protected draining = false;
  protected ended = false;
  protected readonly reader: ImapReader;
  protected readonly book: ImapBook;
  protected readonly limits: ImapLimits;

  constructor(book: ImapBook, limits: ImapLimits) {
    this.book = book;
    this.limits = limits;
    this.reader = new ImapReader(limits.maxLineLength, COMMANDS);
  }

  get phase(): ImapPhase {
    return this.stage;
  }

  get reading(): boolean {
    const p = this.stage;
    return p !== 'routing' && p !== 'auth-wait' && p !== 'handed-off';
  }

  /** The untagged reply for `code` (a tagged one is built where the tag is known). */
  errorReply(code: ErrorCode): Buffer {
    return this.book.error(code, null);
  }

  /** Reads and answers commands while the session is in the command or SASL phase. */
  protected drain(out: Action[]): void {
    while (this.stage === 'command' || this.stage === 'auth') {
      const item = this.reader.next(this.stage === 'auth' ? 'line' : 'command');
      if (item === null) return;
      this.#item(item, out);
    }
  }

  /** Back in the command phase: pipelined commands, then a pending EOF or stop. */
  protected resume(out: Action[]): void {
    this.drain(out);
    if (this.stage !== 'command') return;
    if (this.draining) this.end(out, 'PST_SHUTDOWN');
    else if (this.ended) this.end(out, 'PST_CLIENT_EOF');
  }

  /** Ends an idle session: `* BYE` for a stop, a quiet close for EOF. */
  protected end(out: Action[], code: 'PST_SHUTDOWN' | 'PST_CLIENT_EOF' | 'PST_IDLE_TIMEOUT'): void {
    this.stage = 'closed';
    this.sasl = null;
    if (code === 'PST_CLIENT_EOF') out.push({ type: 'log', code }, { type: 'close' });
    else out.push({ type: 'error', code, reply: this.book.error(code, null) });
  }

  /** A refused command: its tagged reply, counted against max_errors (nginx counts every BAD). */
  protected failed(out: Action[], code: ErrorCode, tag: string | null, detail?: string): void {
    this.errors++;
    const d = detail !== undefined ? { detail } : {};
    if (this.limits.maxErrors > 0 && this.errors >= this.limits.maxErrors) {
      this.stage = 'closed';
      out.push({ type: 'log', code, ...d }, { type: 'error', code: 'PST_TOO_MANY_ERRORS', detail: `${this.errors} errors`, reply: this.book.error('PST_TOO_MANY_ERRORS', tag) });
      return;
    }
    out.push({ type: 'error', code, ...d, reply: this.book.error(code, tag) });
    if (ERRORS[code].close) this.stage = 'closed';
  }

  #item(item: ReaderItem, out: Action[]): void {
    switch (item.kind) {
      case 'too-long': {
        const tag = this.stage === 'auth' ? this.tag : item.tag;
        this.stage = 'closed';
        out.push({ type: 'error', code: 'PST_LINE_TOO_LONG', detail: `over ${this.limits.maxLineLength} bytes`, reply: this.book.error('PST_LINE_TOO_LONG', tag) });
        return;
      }
      case 'continue':
        out.push({ type: 'reply', data: this.book.next });
        return;
      case 'invalid':
        return this.#invalid(item, out);
      case 'line':
        return this.#respond(item.text, out);
      case 'command':
        return this.#command(item.tag, item.name, item.args, out);
    }
  }

  #invalid(item: Extract<ReaderItem, { kind: 'invalid' }>, out: Action[]): void {
    const tag = this.stage === 'auth' ? this.tag : item.tag;
    const code: ErrorCode = item.bytes ? 'PST_BAD_BYTES' : 'PST_UNKNOWN_COMMAND';
    if (this.stage === 'auth') {
      this.stage = 'command';
      this.sasl = null;
    }
    this.failed(out, code, tag, item.reason);
    // nginx: a line ending in a non-synchronising literal is followed by bytes that are no command.
    if (item.quit && this.stage !== 'closed') {
      this.stage = 'closed';
      out.push({ type: 'close' });
    }
  }

  #command(tag: string, name: string, args: ImapArg[], out: Action[]): void {
    switch (name) {
      case 'CAPABILITY':
        out.push({ type: 'reply', data: Buffer.concat([this.#capability(), this.book.ok(tag)]) });
        return;
      case 'NOOP':
        out.push({ type: 'reply', data: this.book.ok(tag) });
        return;
      case 'LOGOUT':
        this.stage = 'closed';
        out.push({ type: 'reply', data: Buffer.concat([this.book.bye, this.book.ok(tag)]) }, { type: 'close', goodbye: this.reader.rest().length === 0 });
        return;
      case 'STARTTLS':
        return this.#starttls(tag, out);
      case 'ID':
        return this.#id(tag, args, out);
      case 'LOGIN':
        return this.#login(tag, args, out);
      case 'AUTHENTICATE':
        return this.#authenticate(tag, args, out);
    }
  }

  /** nginx's three lines: with STARTTLS on offer, with `starttls: only` before TLS (LOGINDISABLED), or after TLS. */
  #capability(): Buffer {
    if (this.secure || this.limits.starttls === 'off') return this.book.capability;
    return this.limits.starttls === 'only' ? this.book.capabilityStarttlsOnly : this.book.capabilityStarttls;
  }

  /** RFC 9051 §6.2.1: OK, then the handshake; bytes the client pipelined after it are dropped (nginx). */
  #starttls(tag: string, out: Action[]): void {
    if (this.secure) return this.failed(out, 'PST_TLS_ACTIVE', tag);
    if (this.limits.starttls === 'off') return this.failed(out, 'PST_UNKNOWN_COMMAND', tag, 'STARTTLS is off on this listener');
    this.stage = 'tls-handshake';
    out.push({ type: 'reply', data: this.book.ok(tag) }, { type: 'starttls', discarded: this.reader.discard() });
  }

  /** RFC 2971: `* ID NIL` before login; the client's fields are kept (sanitised) for the record and the back-end. */
  #id(tag: string, args: ImapArg[], out: Action[]): void {
    const a = args[0];
    if (args.length !== 1 || !a || (a.kind === 'atom' && a.value.toUpperCase() !== 'NIL') || a.kind === 'string' || (a.kind === 'list' && a.items.length % 2 !== 0)) {
      return this.failed(out, 'PST_INVALID_ARGUMENT', tag, 'ID needs NIL or a list of field-value pairs');
    }
    if (a.kind === 'list') this.clientId = idPairs(a.items);
    out.push({ type: 'reply', data: Buffer.concat([this.book.id, this.book.ok(tag)]) });
  }

  /** `LOGIN user password` (RFC 9051 §6.2.3), refused before TLS with `starttls: only` (nginx, LOGINDISABLED). */
  #login(tag: string, args: ImapArg[], out: Action[]): void {
    if (this.limits.starttls === 'only' && !this.secure) return this.failed(out, 'PST_TLS_REQUIRED', tag, 'LOGIN before STARTTLS');
    const user = argText(args[0]);
    const pass = argText(args[1]);
    if (args.length !== 2 || user === null || user === '' || pass === null) return this.failed(out, 'PST_INVALID_ARGUMENT', tag, 'LOGIN needs a user and a password');
    this.tag = tag;
    this.route(out, { method: 'plain', user, pass });
  }

  #authenticate(tag: string, args: ImapArg[], out: Action[]): void {
    if (this.limits.starttls === 'only' && !this.secure) return this.failed(out, 'PST_TLS_REQUIRED', tag, 'AUTHENTICATE before STARTTLS');
    const name = argText(args[0])?.toUpperCase();
    const initial = args.length === 2 ? argText(args[1]) : undefined;
    if (name === undefined || args.length > 2 || initial === null) return this.failed(out, 'PST_INVALID_ARGUMENT', tag, 'AUTHENTICATE needs a mechanism');
    const mech = this.limits.mechanisms.find((m) => m === name);
    if (!mech) return this.failed(out, 'PST_AUTH_MECHANISM', tag, name);
    this.tag = tag;
    this.sasl = new ImapSasl(mech, this.book, mech === 'CRAM-MD5' ? this.limits.salt() : '');
    this.#step(this.sasl.start(initial), out);
  }

  #respond(text: string, out: Action[]): void {
    this.#step(this.sasl!.respond(text), out);
  }

  #step(s: ImapSaslStep, out: Action[]): void {
    if (s.kind === 'challenge') {
      this.stage = 'auth';
      out.push({ type: 'reply', data: s.reply });
      return;
    }
    this.sasl = null;
    if (s.kind === 'error') {
      this.stage = 'command';
      return this.failed(out, s.code, this.tag, s.detail);
    }
    this.route(out, s.credentials);
  }

  /** Login complete: ask the router (nginx's auth_http request, Auth-Protocol imap). */
  protected route(out: Action[], credentials: Credentials): void {
    this.stage = 'routing';
    this.credentials = credentials;
    const envelope: Envelope = { helo: this.clientId, esmtp: false, mailLine: '', rcptLine: '', mailFrom: '', rcptTo: '', attempt: ++this.attempts, auth: credentials };
    out.push({ type: 'route', envelope });
  }
}

/** The client's ID list as `"field" "value" …`: printable ASCII, quoted, no x- fields (those are Postern's to set). */
export function idPairs(items: readonly ImapArg[]): string {
  const out: string[] = [];
  for (let i = 0; i + 1 < items.length && out.length < MAX_ID_PAIRS; i += 2) {
    const field = argText(items[i]);
    const v = items[i + 1]!;
    if (field === null || items[i]!.kind !== 'string' || /^x-/i.test(field)) continue;
    const f = clean(field, 30);
    if (f === '') continue;
    out.push(`${quote(f)} ${v.kind === 'string' ? quote(clean(v.value, 1024)) : 'NIL'}`);
  }
  return out.join(' ');
}

function clean(s: string, max: number): string {
  return s.replace(/[^\x20-\x7e]/g, '').slice(0, max);
}

/** An IMAP quoted string (RFC 9051 §4.3): `\` and `"` escaped; the caller has removed CR, LF and NUL. */
export function quote(s: string): string {
  return `"${s.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}
