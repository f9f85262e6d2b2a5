/**
 * Every reply Postern itself sends in a POP3 session, built once per listener: nginx's texts
 * (ngx_mail_pop3_handler.c, ngx_mail_pop3_module.c), the CAPA lists of RFC 2449 §5 in nginx's
 * three variants, and the `-ERR` lines that stand for catalogue codes (src/errors.ts). Pure.
 */
import type { ErrorCode } from '../errors.js';

/** SASL mechanisms a POP3 listener may offer (RFC 5034); `plain` in pop3.auth offers PLAIN and LOGIN. */
export type Pop3Mechanism = 'PLAIN' | 'LOGIN' | 'CRAM-MD5' | 'EXTERNAL' | 'XOAUTH2' | 'OAUTHBEARER';

/** pop3.auth → the SASL names in nginx's order (PLAIN LOGIN CRAM-MD5 EXTERNAL), then Postern's own. */
export function pop3Mechanisms(auth: readonly string[]): Pop3Mechanism[] {
  const out: Pop3Mechanism[] = [];
  if (auth.includes('plain')) out.push('PLAIN', 'LOGIN');
  if (auth.includes('cram-md5')) out.push('CRAM-MD5');
  if (auth.includes('external')) out.push('EXTERNAL');
  if (auth.includes('xoauth2')) out.push('XOAUTH2');
  if (auth.includes('oauthbearer')) out.push('OAUTHBEARER');
  return out;
}

const line = (s: string): Buffer => Buffer.from(`${s}\r\n`, 'latin1');

/** nginx's protocol error line (`ngx_mail_pop3_protocol.internal_server_error`). */
const INTERNAL = '-ERR internal server error';
const INVALID = '-ERR invalid command';

/**
 * The `-ERR` text for catalogue codes that are not nginx's internal server error. A client
 * mistake is nginx's one "invalid command"; an RFC 3206 response code says why where it helps.
 * Codes that end a session without a reply in POP3 (RFC 1939 §3: the autologout timer closes
 * "without … sending any response") map to null.
 */
const TEXTS: Partial<Record<ErrorCode, string | null>> = {
  PST_LINE_TOO_LONG: INVALID,
  PST_BAD_BYTES: INVALID,
  PST_UNKNOWN_COMMAND: INVALID,
  PST_NOT_IMPLEMENTED: INVALID,
  PST_INVALID_ARGUMENT: INVALID,
  PST_TOO_MANY_ERRORS: INVALID,
  PST_TLS_REQUIRED: INVALID,
  PST_TLS_ACTIVE: INVALID,
  PST_AUTH_MECHANISM: INVALID,
  PST_AUTH_NEEDS_TLS: INVALID,
  PST_AUTH_CANCELLED: INVALID,
  PST_AUTH_BAD_RESPONSE: INVALID,
  PST_HTTP_REQUEST: INVALID,
  PST_IDLE_TIMEOUT: null,
  PST_TLS_CLIENT_CERT_MISSING: '-ERR No required SSL certificate',
  PST_TLS_CLIENT_CERT_INVALID: '-ERR SSL certificate error',
  PST_AUTH_REJECTED: '-ERR Authentication failed',
  PST_AUTH_TOO_MANY: '-ERR [AUTH] Too many authentication failures',
  PST_SHUTDOWN: '-ERR [SYS/TEMP] Server shutting down',
  PST_TOO_MANY_CONNECTIONS: '-ERR [SYS/TEMP] Too many connections, try again later',
  PST_CLIENT_CONNECTIONS: '-ERR [SYS/TEMP] Too many connections from your address',
  PST_RATE_CONNECTIONS: '-ERR [SYS/TEMP] Too many connections',
  PST_DNSBL_LISTED: '-ERR Service unavailable',
  PST_POLICY_CONNECT_REFUSED: '-ERR Access denied',
};

export interface Pop3BookOptions {
  /** pop3.capabilities, as configured (nginx `pop3_capabilities`). */
  capabilities: readonly string[];
  mechanisms: readonly Pop3Mechanism[];
}

export class Pop3Book {
  readonly ok = line('+OK');
  /** Continuations of AUTH (RFC 5034 §4): empty, "Username:" and "Password:" in base64, as nginx. */
  readonly next = line('+ ');
  readonly username = line('+ VXNlcm5hbWU6');
  readonly password = line('+ UGFzc3dvcmQ6');
  readonly invalid = line(INVALID);
  readonly internal = line(INTERNAL);
  /** CAPA in the clear with STLS on offer, the same after TLS (or without STLS), and with `starttls: only`. */
  readonly capaStls: Buffer;
  readonly capa: Buffer;
  readonly capaStlsOnly: Buffer;
  /** AUTH without an argument: nginx's "+OK methods supported:" list. */
  readonly authList: Buffer;
  readonly #errors = new Map<ErrorCode, Buffer>();

  constructor(o: Pop3BookOptions) {
    const head = '+OK Capability list follows\r\n';
    const caps = o.capabilities.map((c) => `${c}\r\n`).join('');
    // nginx writes "SASL" even when no mechanism follows; Postern leaves the line out then.
    const sasl = o.mechanisms.length > 0 ? `SASL ${o.mechanisms.join(' ')}\r\n` : '';
    this.capa = Buffer.from(`${head}${caps}${sasl}.\r\n`, 'latin1');
    this.capaStls = Buffer.from(`${head}${caps}${sasl}STLS\r\n.\r\n`, 'latin1');
    // starttls only: no USER and no SASL before TLS, only STLS (nginx's starttls_only_capability).
    const noUser = o.capabilities.filter((c) => c.toUpperCase() !== 'USER').map((c) => `${c}\r\n`).join('');
    this.capaStlsOnly = Buffer.from(`${head}${noUser}STLS\r\n.\r\n`, 'latin1');
    this.authList = Buffer.from(`+OK methods supported:\r\n${o.mechanisms.map((m) => `${m}\r\n`).join('')}.\r\n`, 'latin1');
  }

  /** The greeting: with a timestamp (RFC 1939 §7, the APOP and CRAM-MD5 salt) when one is given. */
  greeting(timestamp: string): Buffer {
    return line(timestamp === '' ? '+OK POP3 ready' : `+OK POP3 ready ${timestamp}`);
  }

  /** The reply for a catalogue code: empty (no reply) for a silent close. */
  error(code: ErrorCode): Buffer {
    let b = this.#errors.get(code);
    if (!b) {
      const text = code in TEXTS ? TEXTS[code] : INTERNAL;
      b = text === null || text === undefined ? Buffer.alloc(0) : line(text);
      this.#errors.set(code, b);
    }
    return b;
  }
}

/**
 * The `-ERR` line for a router's refusal: nginx sends "-ERR <Auth-Status text>". The auth
 * service's refusal comes as an SMTP reply (`535 5.7.0 <text>`); its code is not POP3's.
 */
export function refusalLine(reply: string): Buffer {
  const text = reply.replace(/^[2-5]\d\d(?: [2-5]\.\d{1,3}\.\d{1,3})?(?: |$)/, '').replace(/[^\x20-\x7e]/g, '');
  return line(`-ERR ${text === '' ? 'Authentication failed' : text}`);
}
