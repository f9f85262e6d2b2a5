/**
 * nginx's auth_http protocol, without I/O: building the request headers and reading the answer.
 * Header names, order and value formats follow ngx_mail_auth_http_module.c so that an auth
 * service written for nginx works unchanged (see docs/configuration.md, "auth_http").
 */
import type { BackendTlsChoice, RouteRequest } from '../domain.js';
import { escapeAuthValue } from './escape.js';

const TLS_MODES = new Set(['off', 'opportunistic', 'required', 'implicit']);

export { escapeAuthValue };

export interface AuthRequestOptions {
  /** Host header value: the host part of the auth_http URL, without port (as nginx sends it). */
  host: string;
  /** Extra headers (nginx `auth_http_header`), appended last. */
  extra: Readonly<Record<string, string>>;
  /** Send Auth-SMTP-* for authenticated sessions too (`envelope_after_auth`). */
  envelopeForAuth?: boolean;
}

/**
 * The request headers, as a flat `[name, value, name, value…]` list in nginx's order: after AUTH
 * (credentials escaped as nginx escapes them) or, for `Auth-Method: none` (the MX case: routing at
 * the first RCPT), with the envelope. Envelope values come from command lines that were checked
 * for CR, LF and other control bytes; SASL values may hold any byte and are escaped.
 */
export function buildAuthHeaders(req: RouteRequest, opts: AuthRequestOptions): string[] {
  const e = req.envelope;
  const a = e.auth;
  const h = ['Host', opts.host, 'Auth-Method', a ? a.method : 'none', 'Auth-User', a ? escapeAuthValue(a.user) : '', 'Auth-Pass', a ? escapeAuthValue(a.pass) : ''];
  if (a?.salt !== undefined) h.push('Auth-Salt', a.salt);
  const smtp = (req.protocol ?? 'smtp') === 'smtp';
  h.push('Auth-Protocol', req.protocol ?? 'smtp', 'Auth-Login-Attempt', String(e.attempt), 'Client-IP', req.clientAddr);
  // nginx resolves the client's name for SMTP only (smtp_resolver): IMAP and POP3 send no Client-Host.
  if (smtp) h.push('Client-Host', req.clientHost);
  const p = req.proxy;
  if (p) {
    // nginx 1.19.8's names and place; the TLVs nginx does not pass (authority, TLS to the load
    // balancer) follow as Postern's own. The codec refused control bytes in them (src/proxy/).
    h.push('Proxy-Protocol-Addr', p.addr, 'Proxy-Protocol-Port', String(p.port), 'Proxy-Protocol-Server-Addr', p.serverAddr, 'Proxy-Protocol-Server-Port', String(p.serverPort));
    if (p.authority !== undefined) h.push('X-Postern-Proxy-Authority', headerText(p.authority));
    if (p.ssl) h.push('X-Postern-Proxy-SSL', headerText(p.ssl.version ?? 'on'));
    if (p.ssl?.cn !== undefined && p.ssl.verified) h.push('X-Postern-Proxy-SSL-CN', headerText(p.ssl.cn));
  }
  // nginx sends the envelope only for Auth-Method none; envelope_after_auth sends it always.
  if (smtp && (!a || opts.envelopeForAuth)) h.push('Auth-SMTP-Helo', e.helo, 'Auth-SMTP-From', e.mailLine, 'Auth-SMTP-To', e.rcptLine);
  // Transaction-aware proxying asks once per RCPT; nginx has no header for which one this is.
  if (e.recipient !== undefined) h.push('X-Postern-Recipient', String(e.recipient));
  const t = req.tls;
  if (t) {
    // nginx sends each Auth-SSL-* header only when it has a value.
    h.push('Auth-SSL', 'on');
    if (t.protocol) h.push('Auth-SSL-Protocol', t.protocol);
    if (t.cipher) h.push('Auth-SSL-Cipher', t.cipher);
    if (t.verify) h.push('Auth-SSL-Verify', t.verify);
    if (t.subject) h.push('Auth-SSL-Subject', t.subject);
    if (t.issuer) h.push('Auth-SSL-Issuer', t.issuer);
    if (t.serial) h.push('Auth-SSL-Serial', t.serial);
    if (t.fingerprint) h.push('Auth-SSL-Fingerprint', t.fingerprint);
    if (t.cert) h.push('Auth-SSL-Cert', t.cert);
  }
  for (const name of Object.keys(opts.extra)) h.push(name, opts.extra[name]!);
  return h;
}

/** UTF-8 text for a header value: anything but printable ASCII percent-encoded (and `%` itself). */
function headerText(v: string): string {
  return v.replace(/[^\x21-\x24\x26-\x7e]/gu, (c) => encodeURIComponent(c).replace(/^%20$/, '%20'));
}

export type AuthAnswer =
  | { status: 'ok'; server: string; port: number; pool?: string; user?: string; pass?: string; tls?: BackendTlsChoice; backendAuth?: 'off' | 'plain' | 'login' }
  | { status: 'wait'; waitMs: number }
  | { status: 'fail'; reply: string; waitMs: number; text: string }
  | { status: 'invalid'; reason: string };

type Headers = Readonly<Record<string, string | string[] | undefined>>;

function first(h: Headers, name: string): string | undefined {
  const v = h[name];
  return (Array.isArray(v) ? v[0] : v)?.trim();
}

/** nginx copies Auth-Error-Code verbatim; Postern takes it when it is a 4xx/5xx code, with or without an enhanced code. */
const ERROR_CODE = /^[45]\d\d( [45]\.\d{1,3}\.\d{1,3})?$/;
const DEFAULT_ERROR_CODE = '535 5.7.0';

/**
 * Interprets the auth service's response headers (names lower-cased by the response reader).
 * The HTTP status is ignored, as nginx ignores it.
 */
export function parseAuthAnswer(h: Headers): AuthAnswer {
  const status = first(h, 'auth-status');
  const waitRaw = first(h, 'auth-wait');
  const waitS = waitRaw && /^\d{1,6}$/.test(waitRaw) ? Number(waitRaw) : 0;
  if (status === 'WAIT') return { status: 'wait', waitMs: waitS * 1000 };
  if (status !== undefined && status !== 'OK') {
    // The text becomes part of an SMTP reply: strip anything that is not printable.
    const text = status.replace(/[^\x20-\x7e]/g, '').slice(0, 400) || 'Authentication failed';
    const codeRaw = first(h, 'auth-error-code');
    const code = codeRaw && ERROR_CODE.test(codeRaw) ? codeRaw : DEFAULT_ERROR_CODE;
    return { status: 'fail', reply: `${code} ${text}`, waitMs: waitS * 1000, text };
  }
  // Postern's own: a pool instead of one server (an nginx service that answers Auth-Server works unchanged).
  const pool = first(h, 'x-postern-pool');
  if (pool !== undefined && !/^[A-Za-z][A-Za-z0-9._-]*$/.test(pool)) return { status: 'invalid', reason: `invalid X-Postern-Pool ${JSON.stringify(pool)}` };
  // nginx goes ahead without Auth-Status when Auth-Server and Auth-Port are present.
  const server = first(h, 'auth-server');
  const portRaw = first(h, 'auth-port');
  // The pool wins over an Auth-Server given beside it (which an nginx-only service may need).
  if (pool !== undefined) return withOptions(h, { status: 'ok', server: '', port: 0, pool });
  if (!server) return { status: 'invalid', reason: 'no Auth-Server header' };
  if (!portRaw) return { status: 'invalid', reason: 'no Auth-Port header' };
  const port = /^\d{1,5}$/.test(portRaw) ? Number(portRaw) : 0;
  if (port < 1 || port > 65535) return { status: 'invalid', reason: `invalid Auth-Port ${JSON.stringify(portRaw)}` };
  // An IP literal (IPv6 without brackets, as nginx expects) or, unlike nginx, a host name.
  const host = server.startsWith('[') && server.endsWith(']') ? server.slice(1, -1) : server;
  if (!/^[A-Za-z0-9.:-]+$/.test(host)) return { status: 'invalid', reason: `invalid Auth-Server ${JSON.stringify(server)}` };
  return withOptions(h, { status: 'ok', server: host, port });
}

/** Auth-User, Auth-Pass and Postern's per-route headers, on an OK answer. */
function withOptions(h: Headers, answer: Extract<AuthAnswer, { status: 'ok' }>): AuthAnswer {
  const user = first(h, 'auth-user');
  const pass = first(h, 'auth-pass');
  // Taken raw, as nginx takes them (it escapes only what it sends, not what it receives).
  if (user !== undefined) answer.user = user;
  if (pass !== undefined) answer.pass = pass;
  // Postern's own headers (nginx ignores unknown ones, so one auth service can serve both).
  const mode = first(h, 'x-postern-backend-tls')?.toLowerCase();
  const name = first(h, 'x-postern-backend-tls-name');
  if (mode !== undefined && !TLS_MODES.has(mode)) return { status: 'invalid', reason: `invalid X-Postern-Backend-TLS ${JSON.stringify(mode)}` };
  if (name !== undefined && !/^[A-Za-z0-9.-]+$/.test(name)) return { status: 'invalid', reason: `invalid X-Postern-Backend-TLS-Name ${JSON.stringify(name)}` };
  const backendAuth = first(h, 'x-postern-backend-auth')?.toLowerCase();
  if (backendAuth !== undefined) {
    if (backendAuth !== 'off' && backendAuth !== 'plain' && backendAuth !== 'login') return { status: 'invalid', reason: `invalid X-Postern-Backend-Auth ${JSON.stringify(backendAuth)}` };
    answer.backendAuth = backendAuth;
  }
  if (mode !== undefined || name !== undefined) {
    answer.tls = {};
    if (mode !== undefined) answer.tls.mode = mode as NonNullable<BackendTlsChoice['mode']>;
    if (name !== undefined) answer.tls.name = name;
  }
  return answer;
}
