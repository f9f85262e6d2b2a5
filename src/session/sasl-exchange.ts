/**
 * One SMTP AUTH exchange (RFC 4954 §4): the 334 challenges and the client's responses, until
 * credentials are complete. Pure; the session feeds it lines.
 */
import type { ErrorCode } from '../errors.js';
import { lineReply, type ReplyBook } from '../smtp/replies.js';
import { decodeBase64, decodeFinal, encodeBase64, type Credentials, type FinalResponse, type Mechanism } from '../smtp/sasl.js';

export type SaslStep =
  | { kind: 'challenge'; reply: Buffer }
  | { kind: 'done'; credentials: Credentials }
  | { kind: 'error'; code: ErrorCode; detail: string };

export class SaslExchange {
  readonly mechanism: Mechanism;
  #state: 'initial' | 'plain' | 'login-user' | 'login-pass' | 'cram' | 'external' | 'oauth';
  #user = '';
  readonly #book: ReplyBook;
  readonly #salt: string;

  /** @param challenge the CRAM-MD5 challenge to use, `<random.time@server_name>` */
  constructor(mechanism: Mechanism, book: ReplyBook, challenge: string) {
    this.mechanism = mechanism;
    this.#book = book;
    this.#salt = challenge;
    this.#state = 'initial';
  }

  /** Starts the exchange, with the initial response if the client sent one (RFC 4954 §4). */
  start(initial: string | undefined): SaslStep {
    switch (this.mechanism) {
      case 'PLAIN':
        return initial === undefined ? this.#ask('plain', this.#book.authPlain) : this.#final('plain', initial);
      case 'LOGIN':
        // "AUTH LOGIN <user>" (Microsoft's form, which nginx accepts too) skips the first prompt.
        return initial === undefined ? this.#ask('login-user', this.#book.authUser) : this.#loginUser(initial);
      case 'CRAM-MD5':
        return this.#ask('cram', lineReply(`334 ${encodeBase64(this.#salt)}`));
      case 'EXTERNAL':
        return initial === undefined ? this.#ask('external', this.#book.authUser) : this.#final('external', initial);
      case 'XOAUTH2':
      case 'OAUTHBEARER':
        return initial === undefined ? this.#ask('oauth', this.#book.authPlain) : this.#final('oauth', initial);
    }
  }

  /** A response line (already checked for control bytes). `*` cancels (RFC 4954 §4). */
  respond(line: string): SaslStep {
    if (line === '*') return { kind: 'error', code: 'PST_AUTH_CANCELLED', detail: this.mechanism };
    if (this.#state === 'initial') return bad('no exchange in progress');
    return this.#state === 'login-user' ? this.#loginUser(line) : this.#final(this.#state, line);
  }

  #ask(state: 'plain' | 'login-user' | 'cram' | 'external' | 'oauth', reply: Buffer): SaslStep {
    this.#state = state;
    return { kind: 'challenge', reply };
  }

  #final(kind: FinalResponse, b64: string): SaslStep {
    const c = decodeFinal(kind, b64, { mechanism: this.mechanism, user: this.#user, salt: this.#salt });
    return typeof c === 'string' ? bad(c) : done(c);
  }

  #loginUser(b64: string): SaslStep {
    const user = decodeBase64(b64);
    if (user === null || user === '') return bad('LOGIN user name is not base64 or empty');
    this.#user = user;
    this.#state = 'login-pass';
    return { kind: 'challenge', reply: this.#book.authPass };
  }
}

function bad(detail: string): SaslStep {
  return { kind: 'error', code: 'PST_AUTH_BAD_RESPONSE', detail };
}

function done(credentials: Credentials): SaslStep {
  return { kind: 'done', credentials };
}
