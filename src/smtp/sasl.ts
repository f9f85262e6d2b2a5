/**
 * SASL payloads of SMTP AUTH (RFC 4954), decoded without I/O: PLAIN (RFC 4616), LOGIN,
 * CRAM-MD5 (RFC 2195), EXTERNAL (RFC 4422 App. A), XOAUTH2 (Google's) and OAUTHBEARER (RFC 7628).
 * Values are latin1 strings so that their bytes reach the auth service unchanged (nginx escapes
 * them there, not here).
 */

export type Mechanism = 'PLAIN' | 'LOGIN' | 'CRAM-MD5' | 'EXTERNAL' | 'XOAUTH2' | 'OAUTHBEARER';

export const MECHANISMS: readonly Mechanism[] = ['PLAIN', 'LOGIN', 'CRAM-MD5', 'EXTERNAL', 'XOAUTH2', 'OAUTHBEARER'];

import type { Credentials } from '../domain.js';

export type { Credentials };

const B64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** Strict base64 (RFC 4648 §4, no whitespace), or null. `=` alone is the empty response (RFC 4954 §4). */
export function decodeBase64(text: string): string | null {
  if (text === '=') return '';
  if (text.length % 4 !== 0 || !B64.test(text)) return null;
  return Buffer.from(text, 'base64').toString('latin1');
}

export function encodeBase64(text: string): string {
  return Buffer.from(text, 'latin1').toString('base64');
}

/** PLAIN: `authzid NUL authcid NUL passwd`; the authzid is ignored, as nginx ignores it. */
export function decodePlain(b64: string): Credentials | string {
  const raw = decodeBase64(b64);
  if (raw === null) return 'bad base64';
  const parts = raw.split('\0');
  if (parts.length !== 3) return 'PLAIN needs authzid\\0user\\0password';
  const [, user, pass] = parts as [string, string, string];
  if (user === '') return 'empty user name';
  return { method: 'plain', user, pass };
}

/** CRAM-MD5 reply: `user SP 32-hex-digest`. */
export function decodeCramMd5(b64: string, salt: string): Credentials | string {
  const raw = decodeBase64(b64);
  if (raw === null) return 'bad base64';
  const sp = raw.lastIndexOf(' ');
  const user = raw.slice(0, sp);
  const digest = raw.slice(sp + 1);
  if (sp <= 0 || !/^[0-9a-fA-F]{32}$/.test(digest)) return 'CRAM-MD5 reply is not "user digest"';
  return { method: 'cram-md5', user, pass: digest.toLowerCase(), salt };
}

/** XOAUTH2: `user=U ^A auth=Bearer T ^A ^A`. */
export function decodeXoauth2(b64: string): Credentials | string {
  const raw = decodeBase64(b64);
  if (raw === null) return 'bad base64';
  const fields = raw.split('\x01');
  const user = fields.find((f) => f.startsWith('user='))?.slice(5);
  const auth = fields.find((f) => f.startsWith('auth='))?.slice(5);
  if (!user || !auth || !/^Bearer ./i.test(auth)) return 'XOAUTH2 needs user= and auth=Bearer';
  return { method: 'xoauth2', user, pass: auth.slice(7) };
}

/** OAUTHBEARER (RFC 7628 §3.1): `gs2-header ^A auth=Bearer T ^A [kvpairs] ^A`, user from `a=` of the gs2 header. */
export function decodeOauthbearer(b64: string): Credentials | string {
  const raw = decodeBase64(b64);
  if (raw === null) return 'bad base64';
  const [gs2, ...kv] = raw.split('\x01');
  const m = /^[ny],(?:a=([^,]*))?,$/.exec(gs2 ?? '');
  const auth = kv.find((f) => f.startsWith('auth='))?.slice(5);
  if (!m || !auth || !/^Bearer ./i.test(auth)) return 'OAUTHBEARER needs a GS2 header and auth=Bearer';
  // RFC 5801 §4: "=2C" and "=3D" escape "," and "=" in the authzid.
  const user = (m[1] ?? '').replace(/=2C/g, ',').replace(/=3D/g, '=');
  if (user === '') return 'OAUTHBEARER without a user (a=)';
  return { method: 'oauthbearer', user, pass: auth.slice(7) };
}

/** The CRAM-MD5 challenge: `<random.unixtime@server_name>`, as nginx builds it. */
export function cramChallenge(random: number, unixTime: number, serverName: string): string {
  return `<${random}.${unixTime}@${serverName}>`;
}

/** A client response that completes an exchange: every step but LOGIN's user name. */
export type FinalResponse = 'plain' | 'login-pass' | 'cram' | 'external' | 'oauth';

/**
 * Decodes a response that completes an exchange, the same for SMTP AUTH, IMAP AUTHENTICATE and
 * POP3 AUTH: the credentials, or why not. `user`: LOGIN's user name; `salt`: the CRAM-MD5
 * challenge; `mechanism`: which bearer-token format (XOAUTH2 or OAUTHBEARER, RFC 7628).
 */
export function decodeFinal(kind: FinalResponse, b64: string, x: { mechanism: string; user: string; salt: string }): Credentials | string {
  switch (kind) {
    case 'plain':
      return decodePlain(b64);
    case 'login-pass': {
      const pass = decodeBase64(b64);
      return pass === null ? 'LOGIN password is not base64' : { method: 'plain', user: x.user, pass };
    }
    case 'cram':
      return decodeCramMd5(b64, x.salt);
    case 'external': {
      // EXTERNAL: the identity asked for (maybe empty: "the one in my certificate"); the auth service decides with Auth-SSL-*.
      const id = decodeBase64(b64);
      return id === null ? 'EXTERNAL identity is not base64' : { method: 'external', user: id, pass: '' };
    }
    case 'oauth':
      return x.mechanism === 'XOAUTH2' ? decodeXoauth2(b64) : decodeOauthbearer(b64);
  }
}
