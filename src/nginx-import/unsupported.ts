/**
 * Why an nginx mail directive has no Postern equivalent, and where its comment goes (the
 * Postern key it would sit next to).
 */

export const REASONS: Record<string, string> = {
  proxy: 'it has no effect in nginx either (its value is never read)',
  proxy_buffer: 'Postern reads back-end replies of any length and relays with its own buffers',
  error_log: 'Postern writes JSON log lines to standard output; their level is log.level (top level only)',
  ssl_prefer_server_ciphers: "Postern keeps the client's cipher order (Node.js's default)",
  ssl_session_cache: 'Postern resumes TLS sessions with tickets only (tls.session_timeout); there is no session cache',
  ssl_session_tickets: 'Postern always offers session tickets',
  ssl_session_ticket_key: 'Postern makes its ticket key at start-up (kept across SIGHUP, new at each restart)',
  ssl_dhparam: 'Postern sets no DHE parameters (ECDHE is used)',
  ssl_ecdh_curve: "Postern uses Node.js's default curves",
  ssl_conf_command: 'Postern passes no OpenSSL configuration commands',
  ssl_crl: 'Postern checks no certificate revocation lists',
  ssl_certificate_compression: 'Postern does not compress certificates',
  ssl_stapling: 'not in the mail module (nor in Postern)',
  ssl_trusted_certificate: 'Postern has one CA bundle for client certificates, tls.client_ca, taken from ssl_client_certificate',
  ssl_early_data: 'not in the mail module (nor in Postern)',
  listen: 'listen belongs in server {} (nginx refuses it in mail {})',
  protocol: 'protocol belongs in server {}',
  worker_processes: 'it belongs in the main context (outside mail {})',
};

export type MailProtocol = 'smtp' | 'imap' | 'pop3';

/** nginx's SMTP module's directives outside the smtp_ prefix (the resolver is only for SMTP's client name). */
const SMTP_ONLY = new Set(['xclient', 'proxy_smtp_auth', 'resolver', 'resolver_timeout']);
const LABEL: Record<MailProtocol, string> = { smtp: 'an SMTP', imap: 'an IMAP', pop3: 'a POP3' };

/** The protocol a directive belongs to (nginx reads it only in servers of that protocol), or null for every protocol's. */
export function protocolOfDirective(name: string): MailProtocol | null {
  if (name.startsWith('smtp_') || SMTP_ONLY.has(name)) return 'smtp';
  if (name.startsWith('imap_')) return 'imap';
  if (name.startsWith('pop3_')) return 'pop3';
  return null;
}

/** Why a directive of another protocol is not carried into a server of `protocol`. */
export function otherProtocolReason(name: string, protocol: MailProtocol): string | null {
  const p = protocolOfDirective(name);
  if (p === null || p === protocol) return null;
  return `${LABEL[p]} directive: nginx ignores it in ${LABEL[protocol]} server too`;
}

/** The Postern key next to which the comment on a directive goes. */
export function anchorOf(name: string): string | undefined {
  if (name.startsWith('ssl') || name === 'starttls') return 'tls';
  if (name.startsWith('auth_http')) return 'route';
  if (name.startsWith('resolver')) return 'resolver';
  if (name === 'listen' || name === 'set_real_ip_from' || name === 'smtp_auth') return 'listen';
  if (name === 'imap_client_buffer' || name === 'smtp_client_buffer') return 'max_line_length';
  if (name.startsWith('imap_')) return 'imap';
  if (name.startsWith('pop3_')) return 'pop3';
  if (name === 'timeout' || name === 'proxy_timeout') return 'timeouts';
  if (name === 'smtp_capabilities') return 'capabilities';
  if (name.startsWith('proxy') || name === 'xclient') return 'xclient';
  return undefined;
}

/** The reason for a directive without a specific one, in a server of `protocol`. */
export function reasonFor(name: string, protocol: MailProtocol = 'smtp'): string {
  if (REASONS[name]) return REASONS[name];
  const other = otherProtocolReason(name, protocol);
  if (other) return other;
  return 'not a directive of the nginx mail module that Postern knows';
}
