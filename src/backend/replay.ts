/**
 * Replays the client's envelope to the chosen back-end in lock-step, as nginx's mail proxy does
 * (ngx_mail_proxy_smtp_handler): greeting → EHLO (HELO fallback) → [XCLIENT → client's HELO/EHLO]
 * → MAIL → RCPT. Pure: it consumes parsed replies and says what to send next.
 */
import type { ErrorCode } from '../errors.js';
import type { ClientIdentity, Envelope } from '../domain.js';
import type { Reply } from '../smtp/reply-reader.js';
import { xtext } from '../smtp/xtext.js';

export type ReplayStep = 'greeting' | 'ehlo' | 'helo' | 'starttls' | 'tls' | 'xclient' | 'rehello' | 'auth' | 'mail' | 'rcpt' | 'done';

/** AUTH to the back-end (proxy_smtp_auth); `pass` null when none is known (CRAM-MD5, EXTERNAL without Auth-Pass). */
export interface BackendAuth {
  mechanism: 'plain' | 'login';
  user: string;
  pass: string | null;
}

/** STARTTLS towards the back-end: when offered, or insisted on (RFC 3207). */
export type BackendTlsMode = 'off' | 'opportunistic' | 'required';

export type { ClientIdentity };

export interface ReplayOptions {
  serverName: string;
  envelope: Envelope;
  client: ClientIdentity;
  /** Send XCLIENT when the back-end advertises it. */
  xclient: boolean;
  /** The authenticated user, sent as XCLIENT LOGIN= (Postfix ≥ 2.9); set for AUTH sessions. */
  login?: string;
  /** Authenticate to the back-end instead (then XCLIENT carries no LOGIN=, as in nginx). */
  backendAuth?: BackendAuth;
  /** STARTTLS to the back-end; ignored when the connection is already TLS (implicit). */
  tls?: BackendTlsMode;
  /** The connection is TLS from the first byte. */
  secure?: boolean;
}

export type ReplayResult =
  | { kind: 'send'; data: Buffer }
  /** Nothing to send: the reply to an already pipelined command is still to come. */
  | { kind: 'wait' }
  /** Start the TLS handshake now, then call {@link Replay.tlsReady}. */
  | { kind: 'starttls' }
  /** An AUTH session is ready for the hand-off: there is no MAIL or RCPT to replay. */
  | { kind: 'ready' }
  /** The back-end's reply to the client's RCPT: relay it to the client and hand off. */
  | { kind: 'done'; reply: Reply }
  | { kind: 'fail'; code: ErrorCode; detail: string; reply: Reply | null };

function b64(text: string): string {
  return Buffer.from(text, 'latin1').toString('base64');
}

const WAIT: ReplayResult = Object.freeze({ kind: 'wait' });
const STARTTLS: ReplayResult = Object.freeze({ kind: 'starttls' });
const READY: ReplayResult = Object.freeze({ kind: 'ready' });

/** Postfix limits an XCLIENT command line to 512 bytes (XCLIENT_README). */
const XCLIENT_MAX = 512;

export class Replay {
  step: ReplayStep = 'greeting';
  /** True once XCLIENT has been accepted: the back-end sees the real client. */
  xclientDone = false;
  /** XCLIENT could not carry the authenticated user: the back-end does not offer LOGIN. */
  loginDropped = false;
  /** The connection to the back-end is TLS. */
  secure: boolean;
  /** EHLO keywords of the back-end, upper-cased, with their parameters. */
  readonly capabilities = new Map<string, string>();
  readonly #o: ReplayOptions;
  #rcptSent = false;
  #authDone = false;
  /** Position in an AUTH LOGIN exchange with the back-end. */
  #loginStep: 'start' | 'user' | 'pass' = 'start';

  constructor(options: ReplayOptions) {
    this.#o = options;
    this.secure = options.secure ?? false;
  }

  /**
   * A warm start on a connection kept from an earlier session (back-end session reuse, as
   * Postfix's smtp_connection_cache_on_demand): the back-end already greeted and answered EHLO
   * with `capabilities`, and its last transaction was reset. The replay goes on from after the
   * EHLO: XCLIENT with this session's client (Postfix treats it as a new session, answers 220,
   * and the client's EHLO follows), then MAIL and RCPT — or MAIL at once without XCLIENT.
   */
  warm(capabilities: ReadonlyMap<string, string>, secure: boolean): ReplayResult {
    this.capabilities.clear();
    for (const [k, v] of capabilities) this.capabilities.set(k, v);
    this.secure = secure;
    return this.#afterHello();
  }

  /** The TLS handshake after STARTTLS succeeded: greet again, as RFC 3207 §4.2 requires. */
  tlsReady(): ReplayResult {
    this.secure = true;
    this.capabilities.clear();
    return this.#send('ehlo', `EHLO ${this.#o.serverName}`);
  }

  onReply(r: Reply): ReplayResult {
    switch (this.step) {
      case 'greeting':
        if (r.code !== 220) return this.#fail('PST_BACKEND_REJECTED', r);
        return this.#send('ehlo', `EHLO ${this.#o.serverName}`);
      case 'ehlo':
        if (r.code === 250) {
          this.#readCapabilities(r);
          return this.#maybeStartTls() ?? this.#afterHello();
        }
        // RFC 5321 §3.2: a server that does not know EHLO answers 500/502; fall back to HELO.
        if (r.code >= 500) return this.#send('helo', `HELO ${this.#o.serverName}`);
        return this.#fail('PST_BACKEND_REJECTED', r);
      case 'helo':
        if (r.code !== 250) return this.#fail('PST_BACKEND_REJECTED', r);
        return this.#maybeStartTls() ?? this.#afterHello();
      case 'starttls':
        if (r.code === 220) {
          this.step = 'tls';
          return STARTTLS;
        }
        if (this.#o.tls === 'required') return this.#fail('PST_BACKEND_TLS_REQUIRED', r);
        return this.#afterHello(); // opportunistic: go on in the clear
      case 'tls':
        return { kind: 'fail', code: 'PST_BACKEND_INVALID_REPLY', detail: 'reply during the TLS handshake', reply: r };
      case 'xclient':
        // Postfix answers a good XCLIENT with a new 220 greeting; smtp-sink with 250.
        if (r.code !== 220 && r.code !== 250) {
          return this.#fail('PST_BACKEND_REJECTED', r, 'XCLIENT refused: is Postern in smtpd_authorized_xclient_hosts?');
        }
        this.xclientDone = true;
        return this.#rehello();
      case 'rehello':
        if (r.code !== 250) return this.#fail('PST_BACKEND_REJECTED', r);
        this.capabilities.clear();
        this.#readCapabilities(r);
        return this.#mail();
      case 'auth':
        return this.#authReply(r);
      case 'mail':
        // A 5xx is the back-end's verdict on the sender, not a fault another server would not have.
        if (r.code >= 500) return this.#fail('PST_BACKEND_SENDER_REFUSED', r);
        if (r.code !== 250) return this.#fail('PST_BACKEND_REJECTED', r);
        if (this.#rcptSent) {
          this.step = 'rcpt';
          return WAIT;
        }
        return this.#send('rcpt', this.#o.envelope.rcptLine);
      case 'rcpt':
        this.step = 'done';
        return { kind: 'done', reply: r };
      case 'done':
        return { kind: 'fail', code: 'PST_BACKEND_INVALID_REPLY', detail: 'unexpected reply after RCPT', reply: r };
    }
  }

  /** STARTTLS when the mode asks for it; a `required` back-end that does not offer it is a failure. */
  #maybeStartTls(): ReplayResult | null {
    const mode = this.#o.tls ?? 'off';
    if (mode === 'off' || this.secure) return null;
    if (this.capabilities.has('STARTTLS')) return this.#send('starttls', 'STARTTLS');
    if (mode === 'required') {
      return { kind: 'fail', code: 'PST_BACKEND_TLS_REQUIRED', detail: `${this.step}: the back-end does not offer STARTTLS`, reply: null };
    }
    return null;
  }

  #afterHello(): ReplayResult {
    const attrs = this.#o.xclient ? this.capabilities.get('XCLIENT') : undefined;
    if (attrs === undefined) return this.#mail();
    const line = this.#xclientLine(new Set(attrs.toUpperCase().split(/\s+/)));
    // A back-end offering none of the attributes Postern sends gets no (empty, invalid) XCLIENT.
    return line === null ? this.#mail() : this.#send('xclient', line);
  }

  /** After XCLIENT the back-end is back at its greeting stage (Postfix); replay the client's own greeting. */
  #rehello(): ReplayResult {
    const e = this.#o.envelope;
    // nginx sends no second greeting for a client that never sent one.
    if (e.helo === '') return this.#mail();
    return this.#send('rehello', `${e.esmtp ? 'EHLO' : 'HELO'} ${e.helo}`);
  }

  /**
   * With PIPELINING (RFC 2920 §3.1: MAIL and RCPT may be grouped) MAIL and RCPT leave in one
   * write, saving a round trip; their replies are still read and checked one by one.
   */
  /** proxy_smtp_auth: PLAIN in one step, or LOGIN's two 334 prompts (RFC 4954; Exchange wants LOGIN). */
  #startAuth(a: BackendAuth): ReplayResult {
    if (a.pass === null) {
      return { kind: 'fail', code: 'PST_BACKEND_AUTH_FAILED', detail: 'no password available for the back-end (CRAM-MD5 or EXTERNAL without Auth-Pass)', reply: null };
    }
    if (a.mechanism === 'plain') return this.#send('auth', `AUTH PLAIN ${b64(`\0${a.user}\0${a.pass}`)}`);
    this.#loginStep = 'user';
    return this.#send('auth', 'AUTH LOGIN');
  }

  #authReply(r: Reply): ReplayResult {
    const a = this.#o.backendAuth!;
    if (r.code === 235) {
      this.#authDone = true;
      return this.#mail();
    }
    if (r.code === 334 && a.mechanism === 'login' && this.#loginStep !== 'start') {
      const value = this.#loginStep === 'user' ? a.user : a.pass!;
      this.#loginStep = this.#loginStep === 'user' ? 'pass' : 'start';
      return this.#send('auth', b64(value));
    }
    return this.#fail('PST_BACKEND_AUTH_FAILED', r);
  }

  #mail(): ReplayResult {
    const e = this.#o.envelope;
    if (this.#o.backendAuth && !this.#authDone) return this.#startAuth(this.#o.backendAuth);
    if (e.auth && e.mailLine === '') {
      this.step = 'done';
      return READY;
    }
    if (!this.capabilities.has('PIPELINING')) return this.#send('mail', e.mailLine);
    this.#rcptSent = true;
    this.step = 'mail';
    return { kind: 'send', data: Buffer.from(`${e.mailLine}\r\n${e.rcptLine}\r\n`, 'latin1') };
  }

  /** Only attributes the back-end advertised are sent (Postfix rejects unknown ones with 501). */
  #xclientLine(advertised: Set<string>): string | null {
    const { client, envelope } = this.#o;
    const parts: string[] = [];
    if (advertised.has('ADDR')) parts.push(`ADDR=${xtext(client.addr.includes(':') ? `IPV6:${client.addr}` : client.addr)}`);
    if (advertised.has('PORT')) parts.push(`PORT=${client.port}`);
    if (this.#o.login && !this.#o.backendAuth) {
      if (advertised.has('LOGIN')) parts.push(`LOGIN=${xtext(this.#o.login)}`);
      else this.loginDropped = true;
    }
    if (advertised.has('NAME')) parts.push(`NAME=${xtext(client.name)}`);
    if (advertised.has('PROTO')) parts.push(`PROTO=${envelope.esmtp ? 'ESMTP' : 'SMTP'}`);
    if (parts.length === 0 && !(advertised.has('HELO') && envelope.helo !== '')) return null;
    let line = parts.length ? `XCLIENT ${parts.join(' ')}` : 'XCLIENT';
    // HELO is also replayed after XCLIENT, so it is the attribute to drop when the line would be too long.
    if (advertised.has('HELO') && envelope.helo !== '') {
      const withHelo = `${line} HELO=${xtext(envelope.helo)}`;
      if (withHelo.length + 2 <= XCLIENT_MAX) line = withHelo;
    }
    return line;
  }

  #readCapabilities(r: Reply): void {
    for (let i = 1; i < r.lines.length; i++) {
      const text = r.lines[i]!.trim();
      if (text === '') continue;
      const sp = text.indexOf(' ');
      const key = (sp === -1 ? text : text.slice(0, sp)).toUpperCase();
      this.capabilities.set(key, sp === -1 ? '' : text.slice(sp + 1));
    }
  }

  #send(step: ReplayStep, line: string): ReplayResult {
    this.step = step;
    return { kind: 'send', data: Buffer.from(`${line}\r\n`, 'latin1') };
  }

  #fail(code: ErrorCode, r: Reply, note?: string): ReplayResult {
    const text = r.lines.join(' / ');
    return { kind: 'fail', code, detail: `${note ? `${note} ` : ''}${this.step}: ${r.code} ${text}`, reply: r };
  }
}
