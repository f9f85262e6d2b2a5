/**
 * Logging in to the IMAP back-end, without I/O (nginx's ngx_mail_proxy_imap_handler): the
 * greeting `* OK`, STARTTLS when backend_tls asks for it, Postern's ID with the client's address
 * (Dovecot honours `x-originating-ip` and the rest from login_trusted_networks), then
 * `<tag> LOGIN {n}` → `+` → `<user> {n}` → `+` → `<pass>` → `<tag> OK` as nginx sends it (one
 * round trip when the greeting offers LITERAL+, RFC 7888), or AUTHENTICATE PLAIN (RFC 4616).
 * Credentials travel as literals only, so no byte of them can end a line early. Postern's own
 * tags are used (nginx sends the client's): the session puts the client's tag on the answer.
 */
import type { ErrorCode } from '../errors.js';
import { encodeBase64 } from '../smtp/sasl.js';

/** Postern's tags towards the back-end: STARTTLS, ID, the login, and LOGOUT after a failure. */
export const TAGS = { starttls: 'T1', id: 'I1', login: 'L1', logout: 'L2' } as const;

export interface ImapLoginOptions {
  user: string;
  pass: string;
  /** imap.backend_login. */
  mode: 'login' | 'plain';
  /** The inside of Postern's ID list (`"x-originating-ip" "…" …`), or null for none. */
  id: string | null;
  /** STARTTLS to the back-end: `required`, `opportunistic` (when the greeting offers it) or `off`. */
  tls: 'off' | 'opportunistic' | 'required';
}

export type LoginStep =
  | { kind: 'send'; data: Buffer }
  | { kind: 'wait' }
  | { kind: 'starttls' }
  | { kind: 'fail'; code: ErrorCode; detail: string; reply?: string }
  /** Logged in: the untagged lines the back-end sent with its answer, and the answer after its tag (`OK …` CRLF). */
  | { kind: 'done'; untagged: Buffer; status: Buffer };

export type LoginState = 'greeting' | 'starttls' | 'id' | 'login-user' | 'login-pass' | 'plain-next' | 'login';

const latin1 = (s: string): Buffer => Buffer.from(s, 'latin1');

export class ImapLogin {
  state: LoginState = 'greeting';
  /** The back-end answered Postern's ID with OK. */
  idAccepted = false;
  #caps = new Set<string>();
  #secure = false;
  #untagged: Buffer[] = [];
  readonly #o: ImapLoginOptions;

  constructor(o: ImapLoginOptions) {
    this.#o = o;
  }

  /** One complete response line (its literals included), with its CRLF. */
  onLine(raw: Buffer): LoginStep {
    const text = raw.toString('latin1').replace(/\r?\n$/, '');
    if (/^\* BYE\b/i.test(text)) return this.#fail('PST_BACKEND_REJECTED', `${this.state}: ${text}`);
    switch (this.state) {
      case 'greeting':
        return this.#greeting(text);
      case 'starttls':
        return this.#tagged(text, TAGS.starttls, (ok) => (ok ? { kind: 'starttls' } : this.#o.tls === 'required' ? this.#fail('PST_BACKEND_TLS_REQUIRED', `STARTTLS refused: ${text}`) : this.#afterTls()));
      case 'id':
        return this.#tagged(text, TAGS.id, (ok) => {
          this.idAccepted = ok;
          return this.#login();
        });
      case 'login-user':
      case 'login-pass':
      case 'plain-next':
        return this.#continuation(text);
      case 'login':
        return this.#final(text, raw);
    }
  }

  /** The back-end's TLS is up: RFC 9051 §6.2.1, what it said before is forgotten. */
  tlsReady(): LoginStep {
    this.#secure = true;
    this.#caps = new Set();
    return this.#afterTls();
  }

  /** RFC 9051 §7.1.1: `* OK [CAPABILITY …] text`; PREAUTH would be someone else's session. */
  #greeting(text: string): LoginStep {
    const m = /^\* OK(?: \[CAPABILITY ([^\]]*)\])?/i.exec(text);
    if (!m) return this.#fail(/^\* PREAUTH/i.test(text) ? 'PST_BACKEND_REJECTED' : 'PST_BACKEND_INVALID_REPLY', `greeting: ${text}`);
    this.#caps = new Set((m[1] ?? '').toUpperCase().split(' ').filter(Boolean));
    const tls = this.#o.tls;
    if (!this.#secure && (tls === 'required' || (tls === 'opportunistic' && this.#caps.has('STARTTLS')))) {
      this.state = 'starttls';
      return send(`${TAGS.starttls} STARTTLS\r\n`);
    }
    return this.#afterTls();
  }

  #afterTls(): LoginStep {
    if (this.#o.id === null) return this.#login();
    this.state = 'id';
    return send(`${TAGS.id} ID (${this.#o.id})\r\n`);
  }

  /** nginx's LOGIN with literals, or AUTHENTICATE PLAIN (with SASL-IR when the back-end offers it). */
  #login(): LoginStep {
    const { user, pass } = this.#o;
    const tag = TAGS.login;
    if (this.#o.mode === 'plain') {
      const b64 = encodeBase64(`\0${user}\0${pass}`);
      this.state = this.#caps.has('SASL-IR') ? 'login' : 'plain-next';
      return send(this.state === 'login' ? `${tag} AUTHENTICATE PLAIN ${b64}\r\n` : `${tag} AUTHENTICATE PLAIN\r\n`);
    }
    if (this.#caps.has('LITERAL+')) {
      this.state = 'login';
      return { kind: 'send', data: Buffer.concat([latin1(`${tag} LOGIN {${user.length}+}\r\n`), latin1(user), latin1(` {${pass.length}+}\r\n`), latin1(pass), latin1('\r\n')]) };
    }
    this.state = 'login-user';
    return send(`${tag} LOGIN {${user.length}}\r\n`);
  }

  /** Waiting for `+` (RFC 9051 §7.5); untagged lines in between are tolerated, a tagged answer ends the login. */
  #continuation(text: string): LoginStep {
    if (text.startsWith('+')) {
      const { user, pass } = this.#o;
      switch (this.state) {
        case 'login-user':
          this.state = 'login-pass';
          return { kind: 'send', data: Buffer.concat([latin1(user), latin1(` {${pass.length}}\r\n`)]) };
        case 'login-pass':
          this.state = 'login';
          return { kind: 'send', data: Buffer.concat([latin1(pass), latin1('\r\n')]) };
        default:
          this.state = 'login';
          return send(`${encodeBase64(`\0${user}\0${pass}`)}\r\n`);
      }
    }
    if (text.startsWith('* ')) return { kind: 'wait' };
    return this.#refusal(text) ?? this.#fail('PST_BACKEND_INVALID_REPLY', `${this.state}: ${text}`);
  }

  /** The login's answer; untagged lines before it go to the client with it (nginx PR #276: `* CAPABILITY`). */
  #final(text: string, raw: Buffer): LoginStep {
    if (text.startsWith('* ')) {
      this.#untagged.push(raw);
      return { kind: 'wait' };
    }
    const tag = TAGS.login;
    if (text.startsWith(`${tag} `) && /^OK\b/i.test(text.slice(tag.length + 1))) {
      return { kind: 'done', untagged: Buffer.concat(this.#untagged), status: raw.subarray(tag.length + 1) };
    }
    return this.#refusal(text) ?? this.#fail('PST_BACKEND_INVALID_REPLY', `login: ${text}`);
  }

  /** A tagged NO (the credentials, the back-end's verdict) or BAD to the login; its status (`NO …`) is kept for proxy_pass_error_message. */
  #refusal(text: string): LoginStep | null {
    const tag = TAGS.login;
    if (!text.startsWith(`${tag} `)) return null;
    const status = text.slice(tag.length + 1);
    const reply = `${status}\r\n`;
    if (/^NO\b/i.test(status)) return this.#fail('PST_BACKEND_AUTH_FAILED', `login refused: ${text}`, reply);
    if (/^BAD\b/i.test(status)) return this.#fail('PST_BACKEND_REJECTED', `login: ${text}`, reply);
    return null;
  }

  /** A tagged answer to one of Postern's own commands (STARTTLS, ID); untagged lines before it are dropped. */
  #tagged(text: string, tag: string, then: (ok: boolean) => LoginStep): LoginStep {
    if (text.startsWith('* ')) return { kind: 'wait' };
    if (!text.startsWith(`${tag} `)) return this.#fail('PST_BACKEND_INVALID_REPLY', `${this.state}: ${text}`);
    const status = text.slice(tag.length + 1);
    if (!/^(OK|NO|BAD)\b/i.test(status)) return this.#fail('PST_BACKEND_INVALID_REPLY', `${this.state}: ${text}`);
    return then(/^OK\b/i.test(status));
  }

  #fail(code: ErrorCode, detail: string, reply?: string): LoginStep {
    return { kind: 'fail', code, detail, ...(reply !== undefined ? { reply } : {}) };
  }
}

function send(s: string): LoginStep {
  return { kind: 'send', data: latin1(s) };
}

/** A value for Postern's ID list: a quoted string of printable ASCII (RFC 2971; no CR, LF or NUL can reach the back-end). */
export function idValue(s: string): string {
  return `"${s.replace(/[^\x20-\x7e]/g, '').replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/**
 * Reads the back-end's response lines during the login: up to CRLF (a bare LF taken), a line
 * that ends in a literal `{n}` going on past its n bytes (RFC 9051 §4.3). Pure.
 */
export class ResponseReader {
  #buf: Buffer = Buffer.alloc(0);
  readonly #max: number;

  constructor(maxLength: number) {
    this.#max = maxLength;
  }

  push(chunk: Buffer): void {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
  }

  /** The next whole line with its line end, null until it has come, or 'too-long'. */
  next(): Buffer | null | 'too-long' {
    let from = 0;
    for (;;) {
      const lf = this.#buf.indexOf(0x0a, from);
      if (lf < 0 || lf >= this.#max) return this.#buf.length >= this.#max ? 'too-long' : null;
      const m = /\{(\d{1,9})\+?\}\r?$/.exec(this.#buf.toString('latin1', Math.max(from, lf - 14), lf));
      if (m) {
        from = lf + 1 + Number(m[1]);
        if (from > this.#max) return 'too-long';
        if (this.#buf.length < from) return null;
        continue;
      }
      const line = this.#buf.subarray(0, lf + 1);
      this.#buf = this.#buf.subarray(lf + 1);
      return line;
    }
  }

  rest(): Buffer {
    return this.#buf;
  }
}
