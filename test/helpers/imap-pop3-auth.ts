/**
 * An auth_http answer for the IMAP/POP3 interop tests that behaves like a real nginx auth service in front of
 * Dovecot: it checks the client's credentials against the Dovecot harness's users (plain, APOP's digest,
 * CRAM-MD5's), refuses with nginx's wording otherwise, and routes an accepted login to a Dovecot port, handing
 * the real password back in Auth-Pass (which nginx requires for APOP and CRAM-MD5).
 */
import { createHash, createHmac } from 'node:crypto';
import type { Answer, RecordedRequest } from './auth-stub.js';
import { DOVECOT_USERS, type DovecotUser } from './dovecot.js';

/** nginx's Auth-User/Auth-Pass escaping undone: %XX → the byte; the bytes (latin1 in Node's headers) as UTF-8. */
export function unescapeAuthValue(v: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < v.length; i++) {
    const hex = v[i] === '%' ? v.slice(i + 1, i + 3) : '';
    if (/^[0-9A-Fa-f]{2}$/.test(hex)) {
      bytes.push(Number.parseInt(hex, 16));
      i += 2;
    } else bytes.push(v.charCodeAt(i) & 0xff);
  }
  return Buffer.from(bytes).toString('utf8');
}

export const INVALID = 'Invalid login or password';

export interface MailboxAuthOptions {
  /** The Dovecot port an accepted login goes to (per request: a test may route server blocks apart). */
  port: (req: RecordedRequest) => number;
  /** Skip the password check (so that the back-end is the one to refuse). Default false. */
  trustAll?: () => boolean;
  /** An Auth-Wait (seconds) for refusals: the proxy waits, says the refusal and lets the client try again. */
  wait?: () => number | undefined;
}

function userOf(name: string): DovecotUser | undefined {
  return Object.values(DOVECOT_USERS).find((u) => u.user === name);
}

/** Does the client's proof (Auth-Pass for `method`) match `password`? */
export function proofMatches(method: string, pass: string, salt: string | undefined, password: string): boolean {
  switch (method) {
    case 'plain':
    case 'login':
      return pass === password;
    case 'apop':
      return salt !== undefined && createHash('md5').update(Buffer.from(salt.trim() + password, 'utf8')).digest('hex') === pass.toLowerCase();
    case 'cram-md5':
      return salt !== undefined && createHmac('md5', Buffer.from(password, 'utf8')).update(salt.trim()).digest('hex') === pass.toLowerCase();
    // The tests' OAuth provider issues one bearer token per user: oauthTokenOf(user).
    case 'xoauth2':
    case 'oauthbearer':
      return false;
    default:
      return false;
  }
}

/** The bearer token the tests' OAuth provider issued to `user` (what an auth service would introspect). */
export const oauthTokenOf = (user: string): string => `ya29.test-token-for-${user}`;

export function mailboxAuth(opts: MailboxAuthOptions): Answer {
  return (req) => {
    const user = unescapeAuthValue(req.get('Auth-User') ?? '');
    const pass = unescapeAuthValue(req.get('Auth-Pass') ?? '');
    const method = req.get('Auth-Method') ?? '';
    const known = userOf(user);
    const bearer = method === 'xoauth2' || method === 'oauthbearer';
    // EXTERNAL: the client certificate vouches (nginx sends its verdict and subject); the test CA's client.test may be anyone.
    const certified = method === 'external' && req.get('Auth-SSL-Verify') === 'SUCCESS' && /CN=client\.test/.test(req.get('Auth-SSL-Subject') ?? '');
    const ok = opts.trustAll?.() || (known !== undefined && (method === 'external' ? certified : bearer ? pass === oauthTokenOf(known.user) : proofMatches(method, pass, req.get('Auth-Salt'), known.password)));
    const wait = opts.wait?.();
    if (!ok) return { 'Auth-Status': INVALID, ...(wait !== undefined && { 'Auth-Wait': String(wait) }) };
    const answer: Record<string, string> = { 'Auth-Status': 'OK', 'Auth-Server': '127.0.0.1', 'Auth-Port': String(opts.port(req)) };
    // The back-end needs the password itself; a digest (APOP, CRAM-MD5) is no use to it. Header values are latin1.
    if (known && method !== 'plain' && method !== 'login') answer['Auth-Pass'] = Buffer.from(known.password, 'utf8').toString('latin1');
    return answer;
  };
}
