/**
 * One SMTP AUTH exchange (RFC 4954 §4): the 334 challenges and the client's responses, until
 * credentials are complete. Pure; the session feeds it lines.
 */
import type { ErrorCode } from '../errors.js';
import { lineReply, type ReplyBook } from '../smtp/replies.js';
import { decodeBase64, decodeCramMd5, decodeOauthbearer, decodePlain, decodeXoauth2, encodeBase64, type Credentials, type Mechanism } from '../smtp/sasl.js';

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
        return initial === undefined ? this.#ask('plain', this.#book.authPlain) : this.#plain(initial);
      case 'LOGIN':
        // "AUTH LOGIN <user>" (Microsoft's form, which nginx accepts too) skips the first prompt.
        return initial === undefined ? this.#ask('login-user', this.#book.authUser) : this.#loginUser(initial);
      case 'CRAM-MD5':
        return this.#ask('cram', lineReply(`334 ${encodeBase64(this.#salt)}`));
      case 'EXTERNAL':
        return initial === undefined ? this.#ask('external', this.#book.authUser) : this.#external(initial);
      case 'XOAUTH2':
      case 'OAUTHBEARER':
        return initial === undefined ? this.#ask('oauth', this.#book.authPlain) : this.#oauth(initial);
    }
  }

  /** A response line (already checked for control bytes). `*` cancels (RFC 4954 §4). */
  respond(line: string): SaslStep {
    if (line === '*') return { kind: 'error', code: 'PST_AUTH_CANCELLED', detail: this.mechanism };
    switch (this.#state) {
      case 'plain':
        return this.#plain(line);
      case 'login-user':
        return this.#loginUser(line);
      case 'login-pass': {
        const pass = decodeBase64(line);
        return pass === null ? bad('LOGIN password is not base64') : done({ method: 'plain', user: this.#user, pass });
      }
      case 'cram': {
        const c = decodeCramMd5(line, this.#salt);
        return typeof c === 'string' ? bad(c) : done(c);
      }
      case 'external':
        return this.#external(line);
      case 'oauth':
        return this.#oauth(line);
      case 'initial':
        return bad('no exchange in progress');
    }
  }

  #ask(state: 'plain' | 'login-user' | 'cram' | 'external' | 'oauth', reply: Buffer): SaslStep {
    this.#state = state;
    return { kind: 'challenge', reply };
  }

  #plain(b64: string): SaslStep {
    const c = decodePlain(b64);
    return typeof c === 'string' ? bad(c) : done(c);
  }

  #loginUser(b64: string): SaslStep {
    const user = decodeBase64(b64);
    if (user === null || user === '') return bad('LOGIN user name is not base64 or empty');
    this.#user = user;
    this.#state = 'login-pass';
    return { kind: 'challenge', reply: this.#book.authPass };
  }

  /** EXTERNAL: the identity asked for (maybe empty: "the one in my certificate"); the auth service decides with the Auth-SSL-* headers. */
  #external(b64: string): SaslStep {
    const id = decodeBase64(b64);
    return id === null ? bad('EXTERNAL identity is not base64') : done({ method: 'external', user: id, pass: '' });
  }

  #oauth(b64: string): SaslStep {
    const c = this.mechanism === 'XOAUTH2' ? decodeXoauth2(b64) : decodeOauthbearer(b64);
    return typeof c === 'string' ? bad(c) : done(c);
  }
}

function bad(detail: string): SaslStep {
  return { kind: 'error', code: 'PST_AUTH_BAD_RESPONSE', detail };
}

function done(credentials: Credentials): SaslStep {
  return { kind: 'done', credentials };
}
