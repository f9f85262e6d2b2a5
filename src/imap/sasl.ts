/**
 * One AUTHENTICATE exchange (RFC 9051 §6.2.2): nginx's continuations (`+ `, `+ VXNlcm5hbWU6`,
 * `+ UGFzc3dvcmQ6`, `+ <base64 salt>`) and the client's base64 responses, until the credentials
 * are complete. The payloads are decoded by the SMTP module's SASL codecs (src/smtp/sasl.ts). An
 * initial response on the command line (RFC 4959 SASL-IR; nginx takes it for PLAIN, LOGIN and
 * EXTERNAL) skips the first continuation. Pure.
 */
import type { Credentials } from '../domain.js';
import type { ErrorCode } from '../errors.js';
import { decodeBase64, decodeFinal, encodeBase64, type FinalResponse } from '../smtp/sasl.js';
import { line, type ImapBook, type ImapMechanism } from './replies.js';

export type ImapSaslStep =
  | { kind: 'challenge'; reply: Buffer }
  | { kind: 'done'; credentials: Credentials }
  | { kind: 'error'; code: ErrorCode; detail: string };

type Waiting = 'plain' | 'login-user' | 'login-pass' | 'cram' | 'external' | 'oauth';

export class ImapSasl {
  readonly mechanism: ImapMechanism;
  #waiting: Waiting | null = null;
  #user = '';
  readonly #book: ImapBook;
  readonly #salt: string;

  /** `salt`: the CRAM-MD5 challenge, `<random.time@server_name>` (nginx's ngx_mail_salt). */
  constructor(mechanism: ImapMechanism, book: ImapBook, salt: string) {
    this.mechanism = mechanism;
    this.#book = book;
    this.#salt = salt;
  }

  /** The exchange's first step; `initial`: the response given on the AUTHENTICATE line. */
  start(initial: string | undefined): ImapSaslStep {
    const b = this.#book;
    switch (this.mechanism) {
      case 'PLAIN':
        return initial === undefined ? this.#ask('plain', b.plainNext) : this.#final('plain', initial);
      case 'LOGIN':
        return initial === undefined ? this.#ask('login-user', b.username) : this.#loginUser(initial);
      case 'CRAM-MD5':
        // nginx: CRAM-MD5 takes no initial response (the salt comes first).
        return initial === undefined ? this.#ask('cram', line(`+ ${encodeBase64(this.#salt)}`)) : bad('CRAM-MD5 takes no initial response');
      case 'EXTERNAL':
        return initial === undefined ? this.#ask('external', b.username) : this.#final('external', initial);
      case 'XOAUTH2':
      case 'OAUTHBEARER':
        return initial === undefined ? this.#ask('oauth', b.plainNext) : this.#final('oauth', initial);
    }
  }

  /** A response line. RFC 9051 §6.2.2: `*` cancels (the command then fails with BAD). */
  respond(text: string): ImapSaslStep {
    if (text === '*') return { kind: 'error', code: 'PST_AUTH_CANCELLED', detail: this.mechanism };
    if (this.#waiting === null) return bad('no exchange in progress');
    return this.#waiting === 'login-user' ? this.#loginUser(text) : this.#final(this.#waiting, text);
  }

  #ask(waiting: Waiting, reply: Buffer): ImapSaslStep {
    this.#waiting = waiting;
    return { kind: 'challenge', reply };
  }

  #loginUser(b64: string): ImapSaslStep {
    const user = decodeBase64(b64);
    if (user === null || user === '') return bad('LOGIN user name is not base64 or empty');
    this.#user = user;
    return this.#ask('login-pass', this.#book.password);
  }

  #final(kind: FinalResponse, b64: string): ImapSaslStep {
    const c = decodeFinal(kind, b64, { mechanism: this.mechanism, user: this.#user, salt: this.#salt });
    return typeof c === 'string' ? bad(c) : done(c);
  }
}

function bad(detail: string): ImapSaslStep {
  return { kind: 'error', code: 'PST_AUTH_BAD_RESPONSE', detail };
}

function done(credentials: Credentials): ImapSaslStep {
  return { kind: 'done', credentials };
}
