/**
 * The IMAP command reader, without I/O (nginx's ngx_mail_imap_parse_command, RFC 9051 §4 and
 * §9): tagged commands whose arguments are atoms, quoted strings (`\\` and `\"` escapes), literals
 * `{n}` (synchronising: the caller answers `+ OK` and the client waits, RFC 9051 §7.5) and `{n+}`
 * (RFC 7888), and one level of parenthesised list (for ID, RFC 2971). In a SASL exchange the
 * caller asks for bare lines instead (RFC 9051 §6.2.2).
 *
 * Each `next()` parses the current command again from its first byte, so what it yields depends
 * only on the bytes, never on how they were cut into reads. A command, its literals included,
 * must fit `maxLength` bytes (nginx: everything fits `imap_client_buffer`); a literal announced
 * larger than what is left is refused before a byte of it is read.
 */

export type ImapArg =
  | { kind: 'atom'; value: string }
  /** A quoted string or a literal; the value's bytes as latin1 (any octet a literal carries). */
  | { kind: 'string'; value: string }
  | { kind: 'list'; items: ImapArg[] };

export type ReaderItem =
  | { kind: 'command'; tag: string; name: string; args: ImapArg[] }
  /** A synchronising literal's header was read: the client waits for `+ OK` before its bytes. */
  | { kind: 'continue'; tag: string }
  /**
   * Not a command: skipped to the end of its line. `quit`: the line ended with a non-synchronising
   * literal whose bytes would be read as commands (nginx closes then too). `bytes`: NUL or a bare CR.
   */
  | { kind: 'invalid'; tag: string | null; reason: string; bytes: boolean; quit: boolean }
  /** The command (or line) is over maxLength: nothing more can be read safely. */
  | { kind: 'too-long'; tag: string | null }
  /** A SASL response line, without its line end. */
  | { kind: 'line'; text: string };

/** The most arguments a command has (nginx takes at most 3; LOGIN and AUTHENTICATE need 2). */
const MAX_ARGS = 3;
/** RFC 2971 §3.3: at most 30 field-value pairs in an ID list. */
const MAX_LIST_ITEMS = 60;
/** nginx's tag: letters, digits, `-`, `.`, `_`, at most 32 of them. */
const MAX_TAG = 32;

const SP = 0x20;
const CR = 0x0d;
const LF = 0x0a;

// Thrown inside one parse attempt: not Errors, no stack is captured.
const MORE = { why: 'more' } as const;
const LONG = { why: 'long' } as const;
/** A syntax error; `at`: the offending byte, from where the line is skipped. */
class Bad {
  constructor(readonly reason: string, readonly at: number, readonly bytes = false) {}
}

interface Parsed {
  end: number;
  item: ReaderItem;
}

/** One attempt to parse the command that starts at `start`; `answered`: sync literals already answered `+ OK`. */
class Attempt {
  i: number;
  tag: string | null = null;
  syncSeen = 0;
  nulInLiteral = false;
  readonly #limit: number;

  constructor(readonly buf: Buffer, readonly start: number, maxLength: number, readonly answered: number, readonly commands: ReadonlySet<string>) {
    this.i = start;
    this.#limit = start + maxLength;
  }

  peek(): number {
    if (this.i >= this.#limit) throw LONG;
    if (this.i >= this.buf.length) throw MORE;
    return this.buf[this.i]!;
  }

  take(): number {
    const c = this.peek();
    this.i++;
    return c;
  }

  run(): Parsed {
    this.tag = this.#tag();
    this.#spaces(true);
    const name = this.#name();
    const args: ImapArg[] = [];
    for (;;) {
      const c = this.take();
      if (c === LF) break;
      if (c === CR) {
        this.#lf();
        break;
      }
      if (c !== SP) throw new Bad('expected a space or the line end', this.i - 1, c === 0);
      this.#spaces(false);
      const n = this.peek();
      if (n === CR || n === LF) continue;
      if (args.length >= MAX_ARGS) throw new Bad('too many arguments', this.i);
      const arg = this.#arg(true);
      if (arg === 'continue') return { end: this.i, item: { kind: 'continue', tag: this.tag } };
      args.push(arg);
    }
    if (this.nulInLiteral) return { end: this.i, item: { kind: 'invalid', tag: this.tag, reason: 'NUL in a literal', bytes: true, quit: false } };
    return { end: this.i, item: { kind: 'command', tag: this.tag, name, args } };
  }

  #tag(): string {
    const from = this.i;
    for (;;) {
      const c = this.peek();
      if (c === SP && this.i > from) return this.buf.toString('latin1', from, this.i);
      if (!isTagChar(c) || this.i - from >= MAX_TAG) throw new Bad('invalid tag', this.i, c === 0);
      this.i++;
    }
  }

  /** The command name, upper-cased: letters only (nginx), and one the session knows. */
  #name(): string {
    const from = this.i;
    while (isLetter(this.peek())) this.i++;
    if (this.i === from) throw new Bad('no command name', this.i, this.peek() === 0);
    const name = this.buf.toString('latin1', from, this.i).toUpperCase();
    // nginx knows the command at its name: an unknown one's arguments (literals too) are never parsed.
    if (!this.commands.has(name)) throw new Bad(`unknown command ${name}`, this.i);
    return name;
  }

  /** Spaces (nginx allows several); `one`: at least one is required. */
  #spaces(one: boolean): void {
    if (one && this.take() !== SP) throw new Bad('expected a space', this.i - 1);
    while (this.peek() === SP) this.i++;
  }

  #lf(): void {
    if (this.take() !== LF) throw new Bad('CR without LF', this.i - 1, true);
  }

  #arg(top: boolean): ImapArg | 'continue' {
    const c = this.peek();
    if (c === 0x22) return this.#quoted();
    if (c === 0x7b) return this.#literal();
    if (c === 0x28 && top) return this.#list();
    return this.#atom();
  }

  /** RFC 9051 §4.3: `"…"` with `\\` and `\"`; no CR, LF or NUL inside. */
  #quoted(): ImapArg {
    this.i++;
    const parts: number[] = [];
    for (;;) {
      let c = this.take();
      if (c === 0x22) return { kind: 'string', value: Buffer.from(parts).toString('latin1') };
      if (c === 0x5c) {
        c = this.take();
        if (c !== 0x22 && c !== 0x5c) throw new Bad('a backslash before something other than " or \\', this.i - 1, c === 0);
      } else if (c === CR || c === LF || c === 0) throw new Bad('CR, LF or NUL in a quoted string', this.i - 1, c === 0);
      parts.push(c);
    }
  }

  /** `{n}` CRLF n-bytes, or `{n+}` (RFC 7888); a synchronising one stops for `+ OK` once. */
  #literal(): ImapArg | 'continue' {
    this.i++;
    let n = 0;
    let digits = 0;
    let c = this.take();
    for (; c >= 0x30 && c <= 0x39; c = this.take()) {
      n = n * 10 + (c - 0x30);
      if (++digits > 10) throw new Bad('literal size too large', this.i - 1);
    }
    const sync = c !== 0x2b;
    if (!sync) c = this.take();
    if (digits === 0 || c !== 0x7d) throw new Bad('malformed literal header', this.i - 1, c === 0);
    c = this.take();
    if (c === CR) c = this.take();
    if (c !== LF) throw new Bad('literal header not at the line end', this.i - 1, c === 0 || c === CR);
    // Refused before it is read: the rest of the command must still fit (it needs at least a line end).
    if (this.i - this.start + n + 1 > this.#limit - this.start) throw LONG;
    if (sync && this.syncSeen++ === this.answered) return 'continue';
    if (this.buf.length < this.i + n) throw MORE;
    const value = this.buf.toString('latin1', this.i, this.i + n);
    if (this.buf.subarray(this.i, this.i + n).includes(0)) this.nulInLiteral = true;
    this.i += n;
    const next = this.peek();
    if (next !== SP && next !== CR && next !== LF && next !== 0x29) throw new Bad('a literal not followed by a space or the line end', this.i, next === 0);
    return { kind: 'string', value };
  }

  /** One level of `(` … `)` (RFC 2971 ID's field-value pairs). */
  #list(): ImapArg | 'continue' {
    this.i++;
    const items: ImapArg[] = [];
    for (;;) {
      const c = this.peek();
      if (c === 0x29) {
        this.i++;
        return { kind: 'list', items };
      }
      if (c === SP && items.length > 0) {
        this.i++;
        continue;
      }
      if (items.length >= MAX_LIST_ITEMS) throw new Bad('list too long', this.i);
      const item = this.#arg(false);
      if (item === 'continue') return item;
      items.push(item);
    }
  }

  /** Anything printable up to a space, a parenthesis or the line end (nginx is as lenient: passwords). */
  #atom(): ImapArg {
    const from = this.i;
    for (;;) {
      const c = this.peek();
      if (c === SP || c === CR || c === LF || c === 0x29) break;
      if (c < 0x20 || c === 0x7f || c === 0x22 || c === 0x28) throw new Bad('a control byte or a misplaced " or ( in an atom', this.i, c === 0);
      this.i++;
    }
    if (this.i === from) throw new Bad('empty argument', this.i);
    return { kind: 'atom', value: this.buf.toString('latin1', from, this.i) };
  }
}

export class ImapReader {
  #buf: Buffer = Buffer.alloc(0);
  #pos = 0;
  /** Synchronising literals of the current command already answered with `+ OK`. */
  #answered = 0;
  readonly #max: number;
  readonly #commands: ReadonlySet<string>;

  /** `maxLength`: the longest command, literals and line ends included; `commands`: the names (upper case) the session takes. */
  constructor(maxLength: number, commands: ReadonlySet<string>) {
    this.#max = maxLength;
    this.#commands = commands;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    if (this.#pos > 0 && this.#pos === this.#buf.length) {
      this.#buf = chunk;
      this.#pos = 0;
      return;
    }
    this.#buf = this.#pos > 0 ? Buffer.concat([this.#buf.subarray(this.#pos), chunk]) : Buffer.concat([this.#buf, chunk]);
    this.#pos = 0;
  }

  /** The next command (or, with `line`, the next SASL response line), or null until more bytes come. */
  next(mode: 'command' | 'line' = 'command'): ReaderItem | null {
    if (this.#pos >= this.#buf.length) return null;
    const p = mode === 'line' ? this.#line() : this.#command();
    if (p === null) return null;
    if (p.item.kind === 'continue') this.#answered++;
    else {
      this.#pos = p.end;
      this.#answered = 0;
    }
    return p.item;
  }

  /** Bytes not yet consumed (for the back-end at the hand-off). */
  rest(): Buffer {
    return Buffer.from(this.#buf.subarray(this.#pos));
  }

  /** Drops what is buffered (bytes pipelined after STARTTLS, RFC 9051 §6.2.1); returns how many. */
  discard(): number {
    const n = this.#buf.length - this.#pos;
    this.#buf = Buffer.alloc(0);
    this.#pos = 0;
    this.#answered = 0;
    return n;
  }

  #command(): Parsed | null {
    const a = new Attempt(this.#buf, this.#pos, this.#max, this.#answered, this.#commands);
    try {
      return a.run();
    } catch (e) {
      if (e === MORE) return null;
      if (e === LONG) return { end: this.#buf.length, item: { kind: 'too-long', tag: a.tag } };
      if (e instanceof Bad) return this.#skip(a, e);
      throw e;
    }
  }

  /** nginx's recovery: skip to the end of the line; a line ending in `{n+}` means close. */
  #skip(a: Attempt, bad: Bad): Parsed | null {
    const lf = this.#buf.indexOf(LF, bad.at);
    const limit = this.#pos + this.#max;
    if (lf < 0 || lf >= limit) return this.#buf.length >= limit ? { end: this.#buf.length, item: { kind: 'too-long', tag: a.tag } } : null;
    const line = this.#buf.subarray(this.#pos, lf + 1);
    const quit = /\{\d+\+\}\r?\n$/.test(line.toString('latin1'));
    const bytes = bad.bytes || line.includes(0);
    return { end: lf + 1, item: { kind: 'invalid', tag: a.tag, reason: bad.reason, bytes, quit } };
  }

  /** A SASL response line (RFC 9051 §6.2.2): base64 or `*`; no control bytes. */
  #line(): Parsed | null {
    const lf = this.#buf.indexOf(LF, this.#pos);
    const limit = this.#pos + this.#max;
    if (lf < 0 || lf >= limit) return this.#buf.length >= limit ? { end: this.#buf.length, item: { kind: 'too-long', tag: null } } : null;
    const end = lf > this.#pos && this.#buf[lf - 1] === CR ? lf - 1 : lf;
    const body = this.#buf.subarray(this.#pos, end);
    if (body.some((c) => c < 0x20 || c === 0x7f)) return { end: lf + 1, item: { kind: 'invalid', tag: null, reason: 'control byte in a SASL response', bytes: true, quit: false } };
    return { end: lf + 1, item: { kind: 'line', text: body.toString('latin1') } };
  }
}

function isLetter(c: number): boolean {
  return (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
}

function isTagChar(c: number): boolean {
  return isLetter(c) || (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x2e || c === 0x5f;
}

/** The latin1 value of a string or atom argument; a list has none. */
export function argText(a: ImapArg | undefined): string | null {
  return a === undefined || a.kind === 'list' ? null : a.value;
}
