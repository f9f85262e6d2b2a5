/**
 * The schema of the mailbox protocols' settings (a server block with `protocol: imap` or
 * `pop3`), part of ./schema.ts. Defaults are nginx's (`imap_capabilities`, `imap_auth`,
 * `pop3_capabilities`, `pop3_auth`) so an nginx `mail {}` block carries over unchanged.
 */
import { z } from 'zod';

/** One capability word with optional parameters, printable ASCII (it is sent verbatim). */
const word = (what: string) => z.string().regex(/^[A-Za-z0-9][\x21-\x7e]*( [\x21-\x7e]+)*$/, what);

const dedupe = <T>(list: T[]): T[] => [...new Set(list)];

export const imapSettings = z.strictObject({
  /**
   * The CAPABILITY list before login (nginx `imap_capabilities`); `AUTH=` entries, `STARTTLS`
   * and `LOGINDISABLED` are added from `auth` and the listener's `starttls` as nginx adds them.
   */
  capabilities: z.array(word('an IMAP capability')).default(['IMAP4', 'IMAP4rev1', 'UIDPLUS']),
  /** Mechanisms for AUTHENTICATE (nginx `imap_auth`); LOGIN with a user and password is always accepted (unless LOGINDISABLED). */
  auth: z.array(z.enum(['plain', 'login', 'cram-md5', 'external', 'xoauth2', 'oauthbearer'])).min(1).default(['plain']).transform(dedupe),
  /** How Postern logs in to the back-end: `login` (nginx: LOGIN with literals) or `plain` (AUTHENTICATE PLAIN, RFC 4616). */
  backend_login: z.enum(['login', 'plain']).default('login'),
}).prefault({});

export const pop3Settings = z.strictObject({
  /** The CAPA lines (nginx `pop3_capabilities`); `SASL`, `STLS` and `USER` follow from `auth` and `starttls` as in nginx. */
  capabilities: z.array(word('a POP3 capability')).default(['TOP', 'USER', 'UIDL']),
  /** Mechanisms (nginx `pop3_auth`): `plain` allows USER/PASS and AUTH PLAIN/LOGIN; `apop` and `cram-md5` put a timestamp in the greeting. */
  auth: z.array(z.enum(['plain', 'apop', 'cram-md5', 'external', 'xoauth2', 'oauthbearer'])).min(1).default(['plain']).transform(dedupe),
  /** How Postern logs in to the back-end: `user` (nginx: USER/PASS) or `plain` (AUTH PLAIN, RFC 5034). */
  backend_login: z.enum(['user', 'plain']).default('user'),
}).prefault({});

export type ImapSettings = z.output<typeof imapSettings>;
export type Pop3Settings = z.output<typeof pop3Settings>;
