/**
 * The POP3 login towards the back-end, without I/O (nginx's ngx_mail_proxy_pop3_handler): wait
 * for `+OK`, optionally STLS (RFC 2595 §4, which nginx cannot do) and Dovecot's XCLIENT, then
 * USER/PASS as nginx, or AUTH PLAIN with an initial response (RFC 5034 §4). Every step expects
 * `+OK`; the back-end's last `+OK` line is the client's reply. ./connect.ts drives it over a socket.
 */
import type { ErrorCode, PosternError } from '../errors.js';
import { encodeBase64 } from '../smtp/sasl.js';

export interface XclientFields {
  addr: string;
  port: number;
  /** Dovecot's session id, so the back-end's log lines carry the proxy's (`session=<…>`). */
  session: string;
  /** Proxy hops left (Dovecot's loop guard). */
  ttl: number;
}

export interface LoginOptions {
  user: string;
  pass: string;
  /** pop3.backend_login: `user` (USER/PASS, nginx) or `plain` (AUTH PLAIN). */
  login: 'user' | 'plain';
  /** XCLIENT to send when the greeting offers it (xclient on), or null. */
  xclient: XclientFields | null;
  /** STLS before the login: `opportunistic` when CAPA lists STLS, `required` always ('off' for implicit TLS). */
  tls: 'off' | 'opportunistic' | 'required';
}

export type LoginStep =
  | { kind: 'send'; data: Buffer }
  /** A CAPA line that is not the last: read on. */
  | { kind: 'wait' }
  /** STLS accepted: the TLS handshake, then {@link Pop3Login.tlsReady}. */
  | { kind: 'starttls' }
  | { kind: 'done'; final: Buffer }
  /** `reply`: the back-end's own line, for proxy_pass_error_message. */
  | { kind: 'fail'; code: ErrorCode; detail: string; reply?: string };

type Step = 'greeting' | 'capa' | 'capa-list' | 'stls' | 'tls' | 'xclient' | 'user' | 'pass' | 'auth' | 'done';

/** A value for a back-end command line: printable, no space (an XCLIENT attribute), or no CR/LF/NUL (USER, PASS). */
const ATTR = /^[\x21-\x7e]+$/;
const SAFE = /^[^\r\n\0]*$/;

export class Pop3Login {
  step: Step = 'greeting';
  /** The greeting carried `[XCLIENT]` (Dovecot, to a peer in login_trusted_networks). */
  offersXclient = false;
  xclientDone = false;
  #stlsListed = false;
  readonly #o: LoginOptions;

  constructor(o: LoginOptions) {
    this.#o = o;
  }

  /** One line from the back-end: `line` without its terminator, `raw` as received (the client's copy). */
  onLine(line: Buffer, raw: Buffer): LoginStep {
    const text = line.toString('latin1');
    const ok = text.startsWith('+OK');
    switch (this.step) {
      case 'greeting':
        if (!ok) return fail('PST_BACKEND_REJECTED', `greeting: ${text}`, text);
        // RFC 2449 §8 response codes in brackets; Dovecot's banner is "+OK [XCLIENT] Dovecot ready."
        this.offersXclient = /^\+OK \[([^\]]*)\]/.exec(text)?.[1]?.toUpperCase().split(' ').includes('XCLIENT') ?? false;
        if (this.#o.tls === 'opportunistic') return this.#send('capa', 'CAPA');
        if (this.#o.tls === 'required') return this.#send('stls', 'STLS');
        return this.#afterTls();
      case 'capa':
        // RFC 2449 §5: a server without CAPA answers -ERR; then it offers no STLS.
        if (!ok) return this.#afterTls();
        this.step = 'capa-list';
        return { kind: 'wait' };
      case 'capa-list':
        if (text !== '.') {
          if (text.toUpperCase() === 'STLS') this.#stlsListed = true;
          return { kind: 'wait' };
        }
        return this.#stlsListed ? this.#send('stls', 'STLS') : this.#afterTls();
      case 'stls':
        if (ok) {
          this.step = 'tls';
          return { kind: 'starttls' };
        }
        if (this.#o.tls === 'required') return fail('PST_BACKEND_TLS_REQUIRED', `STLS: ${text}`, text);
        return this.#afterTls();
      case 'xclient':
        if (!ok) return fail('PST_BACKEND_REJECTED', `XCLIENT: ${text}`, text);
        this.xclientDone = true;
        return this.#login();
      case 'user':
        if (!ok) return fail('PST_BACKEND_AUTH_FAILED', `USER: ${text}`, text);
        return this.#send('pass', `PASS ${this.#o.pass}`);
      case 'pass':
      case 'auth':
        if (!ok) return fail('PST_BACKEND_AUTH_FAILED', `${this.step === 'pass' ? 'PASS' : 'AUTH PLAIN'}: ${text}`, text);
        this.step = 'done';
        return { kind: 'done', final: raw };
      default:
        return fail('PST_BACKEND_INVALID_REPLY', `unexpected line at ${this.step}`);
    }
  }

  /** The STLS handshake is done: the login goes on inside TLS. */
  tlsReady(): LoginStep {
    return this.#afterTls();
  }

  #afterTls(): LoginStep {
    const x = this.#o.xclient;
    if (!x || !this.offersXclient) return this.#login();
    const session = x.session;
    // Dovecot's pop3-proxy form; no value may carry a space, CR or LF (each is one attribute).
    if (!ATTR.test(x.addr) || !ATTR.test(session) || !Number.isInteger(x.port) || !Number.isInteger(x.ttl)) {
      return fail('PST_BACKEND_REJECTED', 'XCLIENT: a value holds a space or a control byte');
    }
    return this.#send('xclient', `XCLIENT ADDR=${x.addr} PORT=${x.port} SESSION=${session} TTL=${x.ttl}`);
  }

  #login(): LoginStep {
    const { user, pass } = this.#o;
    // CR or LF in a credential would end the command and start another: never sent.
    if (!SAFE.test(user) || !SAFE.test(pass) || user === '') return fail('PST_BACKEND_AUTH_FAILED', 'the user name or password holds CR, LF or NUL, or the user name is empty');
    if (this.#o.login === 'plain') return this.#send('auth', `AUTH PLAIN ${encodeBase64(`\0${user}\0${pass}`)}`);
    return this.#send('user', `USER ${user}`);
  }

  #send(step: Step, line: string): LoginStep {
    this.step = step;
    return { kind: 'send', data: Buffer.from(`${line}\r\n`, 'latin1') };
  }
}

function fail(code: ErrorCode, detail: string, reply?: string): LoginStep {
  // The back-end's `-ERR` line is kept for proxy_pass_error_message; a password is never in it.
  return reply !== undefined && reply.startsWith('-ERR') ? { kind: 'fail', code, detail, reply } : { kind: 'fail', code, detail };
}

/**
 * Which failures may be retried on another server (src/pools/failover.ts): every fault before
 * the client saw a back-end byte. Not a refused login (it would fail on every server, and a
 * wrong password must not take servers out), unless the back-end says the trouble is its own
 * (RFC 3206 `[SYS/TEMP]`).
 */
export function pop3Retryable(err: PosternError): boolean {
  if (err.code === 'PST_CLIENT_LOST') return false;
  if (err.code === 'PST_BACKEND_AUTH_FAILED') return err.reply?.includes('[SYS/TEMP]') ?? false;
  return true;
}
