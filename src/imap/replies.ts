/**
 * Every reply Postern itself sends in an IMAP session, built once per listener: nginx's texts
 * (ngx_mail_imap_handler.c, ngx_mail_imap_module.c), its three CAPABILITY lines, and the IMAP
 * form of each catalogue code (src/errors.ts), tagged for the command it answers or untagged.
 * Response codes in brackets are RFC 5530's. Pure.
 */
import type { ErrorCode } from '../errors.js';

/** SASL mechanisms of AUTHENTICATE; nginx always takes PLAIN and LOGIN, the rest only when listed in imap.auth. */
export type ImapMechanism = 'PLAIN' | 'LOGIN' | 'CRAM-MD5' | 'EXTERNAL' | 'XOAUTH2' | 'OAUTHBEARER';

export const line = (s: string): Buffer => Buffer.from(`${s}\r\n`, 'latin1');

/** nginx's reply texts. */
export const OK_COMPLETED = 'OK completed';
export const INVALID = 'BAD invalid command';
const INTERNAL = 'internal server error';

/**
 * How a catalogue code is said in IMAP: the tagged status of the command it answers (`NO` or
 * `BAD` with a text), and the `* BYE` that precedes a close (RFC 9051 §7.1.5), if any. Codes not
 * listed are nginx's internal server error: `<tag> NO [UNAVAILABLE] …` (nginx: `* BAD internal
 * server error`) and close.
 */
interface Said {
  status?: string;
  bye?: string;
}

const CLIENT: Said = { status: INVALID };
const SAID: Partial<Record<ErrorCode, Said | null>> = {
  PST_BAD_BYTES: CLIENT,
  PST_UNKNOWN_COMMAND: CLIENT,
  PST_INVALID_ARGUMENT: CLIENT,
  PST_TLS_REQUIRED: CLIENT,
  PST_TLS_ACTIVE: CLIENT,
  PST_AUTH_MECHANISM: CLIENT,
  PST_AUTH_NEEDS_TLS: CLIENT,
  PST_AUTH_CANCELLED: { status: 'BAD authentication cancelled' },
  PST_AUTH_BAD_RESPONSE: CLIENT,
  PST_LINE_TOO_LONG: { status: INVALID, bye: 'Line too long' },
  PST_TOO_MANY_ERRORS: { status: INVALID, bye: 'Too many invalid commands' },
  PST_AUTH_REJECTED: { status: 'NO Authentication failed' },
  PST_AUTH_TOO_MANY: { bye: 'Too many authentication failures' },
  PST_IDLE_TIMEOUT: { bye: 'Autologout; idle for too long' },
  PST_SHUTDOWN: { bye: '[UNAVAILABLE] Server shutting down' },
  PST_TLS_CLIENT_CERT_MISSING: { bye: 'No required SSL certificate' },
  PST_TLS_CLIENT_CERT_INVALID: { bye: 'SSL certificate error' },
  PST_TOO_MANY_CONNECTIONS: { bye: '[UNAVAILABLE] Too many connections, try again later' },
  PST_CLIENT_CONNECTIONS: { bye: '[UNAVAILABLE] Too many connections from your address' },
  PST_RATE_CONNECTIONS: { bye: '[UNAVAILABLE] Too many connections' },
  PST_DNSBL_LISTED: { bye: 'Service unavailable' },
  PST_POLICY_CONNECT_REFUSED: { bye: 'Access denied' },
  PST_POOL_EXHAUSTED: { status: 'NO [UNAVAILABLE] No back-end available, try again later' },
  PST_BACKEND_AUTH_FAILED: { status: 'NO [UNAVAILABLE] Internal server error' },
  // Closed without a word: end of input, a TLS handshake that failed, a relay that broke.
  PST_CLIENT_EOF: null,
  PST_TLS_HANDSHAKE: null,
  PST_TLS_HANDSHAKE_TIMEOUT: null,
  PST_CLIENT_LOST: null,
  PST_BACKEND_LOST: null,
  PST_RELAY_IDLE_TIMEOUT: null,
  PST_PROXY_INVALID: null,
  PST_PROXY_TIMEOUT: null,
  PST_PROXY_UNTRUSTED: null,
};

const UNAVAILABLE: Said = { status: 'NO [UNAVAILABLE] Internal server error' };

function said(code: ErrorCode): Said | null {
  const s = SAID[code];
  return s === undefined ? UNAVAILABLE : s;
}

/** An auth service's or policy server's refusal text without its SMTP code (`535 5.7.0 …`), printable only. */
export function refusalText(reply: string, fallback: string): string {
  const text = reply.replace(/^[2-5]\d\d(?: [2-5]\.\d{1,3}\.\d{1,3})?(?: |$)/, '').replace(/[^\x20-\x7e]/g, '').trim();
  return text === '' ? fallback : text;
}

export interface ImapBookOptions {
  /** imap.capabilities (nginx `imap_capabilities`). */
  capabilities: readonly string[];
  /** The mechanisms offered as AUTH= (nginx's order: PLAIN LOGIN CRAM-MD5 EXTERNAL, then XOAUTH2 OAUTHBEARER). */
  mechanisms: readonly ImapMechanism[];
  starttls: 'off' | 'on' | 'only';
}

export class ImapBook {
  /** nginx's greeting, word for word. */
  readonly greeting = line('* OK IMAP4 ready');
  /** A synchronising literal may come (RFC 9051 §7.5): nginx's `+ OK`. */
  readonly next = line('+ OK');
  /** AUTHENTICATE continuations (nginx): empty, "Username:", "Password:" in base64. */
  readonly plainNext = line('+ ');
  readonly username = line('+ VXNlcm5hbWU6');
  readonly password = line('+ UGFzc3dvcmQ6');
  readonly bye = line('* BYE');
  /** RFC 2971 §3.1: the server says nothing about itself. */
  readonly id = line('* ID NIL');
  /** After TLS (or without STARTTLS), with STARTTLS on offer, and with `starttls: only` before TLS. */
  readonly capability: Buffer;
  readonly capabilityStarttls: Buffer;
  readonly capabilityStarttlsOnly: Buffer;

  constructor(o: ImapBookOptions) {
    // Postern's honest additions to nginx's list: ID (answered before login) and SASL-IR (initial responses are taken).
    const base = dedupe([...o.capabilities, 'ID']);
    const full = dedupe([...base, 'SASL-IR', ...o.mechanisms.map((m) => `AUTH=${m}`)]);
    this.capability = line(`* CAPABILITY ${full.join(' ')}`);
    this.capabilityStarttls = line(`* CAPABILITY ${[...full, 'STARTTLS'].join(' ')}`);
    this.capabilityStarttlsOnly = line(`* CAPABILITY ${[...base, 'STARTTLS', 'LOGINDISABLED'].join(' ')}`);
  }

  /** `<tag> OK completed` (nginx). */
  ok(tag: string): Buffer {
    return line(`${tag} ${OK_COMPLETED}`);
  }

  /** `<tag> BAD invalid command`, or `* BAD invalid command` when the line had no tag (nginx). */
  invalid(tag: string | null): Buffer {
    return line(`${tag ?? '*'} ${INVALID}`);
  }

  /** `<tag> NO <text>`: an auth service's refusal (nginx: the Auth-Status text). */
  refused(tag: string, reply: string): Buffer {
    return line(`${tag} NO ${refusalText(reply, 'Authentication failed')}`);
  }

  /** The reply for `code` answering the command tagged `tag`: its tagged status, then `* BYE` if it closes. */
  error(code: ErrorCode, tag: string | null): Buffer {
    const s = said(code);
    if (s === null) return Buffer.alloc(0);
    const out: string[] = [];
    if (s.status !== undefined) out.push(`${tag ?? '*'} ${tag === null && s === UNAVAILABLE ? `BAD ${INTERNAL}` : s.status}`);
    if (s.bye !== undefined) out.push(`* BYE ${s.bye}`);
    return Buffer.from(out.map((l) => `${l}\r\n`).join(''), 'latin1');
  }

  /** A connection refused before the greeting (caps, blocklists, a policy server): `* BYE <text>` (RFC 9051 §7.1.5, a greeting). */
  refusal(code: ErrorCode, reply?: string): Buffer {
    const s = said(code);
    if (reply !== undefined) return line(`* BYE ${refusalText(reply, s?.bye ?? 'Access denied')}`);
    if (s === null) return Buffer.alloc(0);
    return line(`* BYE ${s.bye ?? INTERNAL}`);
  }
}

function dedupe(list: readonly string[]): string[] {
  const seen = new Set<string>();
  return list.filter((c) => {
    const k = c.toUpperCase();
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

/** imap.auth → the mechanisms offered (AUTH=) in nginx's order, then Postern's own. */
export function imapMechanisms(auth: readonly string[]): ImapMechanism[] {
  const order: ImapMechanism[] = ['PLAIN', 'LOGIN', 'CRAM-MD5', 'EXTERNAL', 'XOAUTH2', 'OAUTHBEARER'];
  return order.filter((m) => auth.includes(m.toLowerCase()));
}
