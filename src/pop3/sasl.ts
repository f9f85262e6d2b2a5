/**
 * One POP3 AUTH exchange (RFC 5034 §4): nginx's continuations (`+ `, `+ VXNlcm5hbWU6`,
 * `+ UGFzc3dvcmQ6`, `+ <base64 salt>`) and the client's responses, until the credentials are
 * complete. The payloads are decoded by src/smtp/sasl.ts (PLAIN RFC 4616, CRAM-MD5 RFC 2195,
 * EXTERNAL RFC 4422 App. A, XOAUTH2, OAUTHBEARER RFC 7628). Pure; the session feeds it lines.
 */
import type { Credentials } from '../domain.js';
import { decodeBase64, decodeFinal, encodeBase64, type FinalResponse } from '../smtp/sasl.js';
import type { Pop3Book, Pop3Mechanism } from './replies.js';

export type Pop3SaslStep =
  | { kind: 'challenge'; reply: Buffer }
  | { kind: 'done'; credentials: Credentials }
  /** Not decodable, or cancelled with `*` (RFC 5034 §4): nginx answers "-ERR invalid command". */
  | { kind: 'error'; detail: string };

type State = 'plain' | 'login-user' | 'login-pass' | 'cram' | 'external' | 'oauth';

export class Pop3Sasl {
  readonly mechanism: Pop3Mechanism;
  #state: State = 'plain';
  #user = '';
  readonly #book: Pop3Book;
  readonly #salt: string;

  /** @param salt the greeting's timestamp `<random.time@server_name>`: nginx's CRAM-MD5 challenge */
  constructor(mechanism: Pop3Mechanism, book: Pop3Book, salt: string) {
    this.mechanism = mechanism;
    this.#book = book;
    this.#salt = salt;
  }

  /** Starts the exchange, with the initial response if the client sent one (RFC 5034 §4). */
  start(initial: string | undefined): Pop3SaslStep {
    switch (this.mechanism) {
      case 'PLAIN':
        return initial === undefined ? this.#ask('plain', this.#book.next) : this.#final('plain', initial);
      case 'LOGIN':
        // "AUTH LOGIN <user>": nginx skips to the password prompt.
        return initial === undefined ? this.#ask('login-user', this.#book.username) : this.#loginUser(initial);
      case 'CRAM-MD5':
        // nginx: the challenge is the greeting's timestamp, base64 (ngx_mail_auth_cram_md5_salt).
        return this.#ask('cram', Buffer.from(`+ ${encodeBase64(this.#salt)}\r\n`, 'latin1'));
      case 'EXTERNAL':
        return initial === undefined ? this.#ask('external', this.#book.username) : this.#final('external', initial);
      case 'XOAUTH2':
      case 'OAUTHBEARER':
        return initial === undefined ? this.#ask('oauth', this.#book.next) : this.#final('oauth', initial);
    }
  }

  /** A response line (already checked for control bytes). */
  respond(line: string): Pop3SaslStep {
    if (line === '*') return { kind: 'error', detail: `${this.mechanism} cancelled` };
    return this.#state === 'login-user' ? this.#loginUser(line) : this.#final(this.#state, line);
  }

  #ask(state: State, reply: Buffer): Pop3SaslStep {
    this.#state = state;
    return { kind: 'challenge', reply };
  }

  #final(kind: FinalResponse, b64: string): Pop3SaslStep {
    const c = decodeFinal(kind, b64, { mechanism: this.mechanism, user: this.#user, salt: this.#salt });
    return typeof c === 'string' ? bad(c) : checked(c);
  }

  #loginUser(b64: string): Pop3SaslStep {
    const user = decodeBase64(b64);
    if (user === null || user === '') return bad('LOGIN user name is not base64 or empty');
    this.#user = user;
    this.#state = 'login-pass';
    return { kind: 'challenge', reply: this.#book.password };
  }
}

function bad(detail: string): Pop3SaslStep {
  return { kind: 'error', detail };
}

/**
 * Decoded SASL values may hold any byte. A user name or password with CR, LF or NUL could
 * never be sent in a USER or PASS line without becoming another command: refused here, so it
 * never reaches the auth service or the back-end.
 */
function checked(credentials: Credentials): Pop3SaslStep {
  if (unsafeCredential(credentials.user) || unsafeCredential(credentials.pass)) return bad('CR, LF or NUL in a decoded credential');
  return { kind: 'done', credentials };
}

export function unsafeCredential(s: string): boolean {
  return /[\r\n\0]/.test(s);
}
