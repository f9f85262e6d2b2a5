/**
 * What the client's TLS session tells the auth service, in nginx's formats (ngx_mail_ssl_module,
 * ngx_event_openssl.c): protocol, cipher, the client-certificate verdict and its fields.
 */
import { X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import { escapeAuthValue } from '../auth/escape.js';
import type { TlsInfo } from '../domain.js';
import type { ErrorCode } from '../errors.js';

export type VerifyClient = 'off' | 'on' | 'optional' | 'optional_no_ca';

export type { TlsInfo };

/** OpenSSL's X509_verify_cert_error_string texts for Node's error codes, as nginx reports them. */
const REASONS: Record<string, string> = {
  CERT_HAS_EXPIRED: 'certificate has expired',
  CERT_NOT_YET_VALID: 'certificate is not yet valid',
  DEPTH_ZERO_SELF_SIGNED_CERT: 'self-signed certificate',
  SELF_SIGNED_CERT_IN_CHAIN: 'self-signed certificate in certificate chain',
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 'unable to get local issuer certificate',
  UNABLE_TO_GET_ISSUER_CERT: 'unable to get issuer certificate',
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'unable to verify the first certificate',
  CERT_SIGNATURE_FAILURE: 'certificate signature failure',
  CERT_REVOKED: 'certificate revoked',
  CERT_CHAIN_TOO_LONG: 'certificate chain too long',
};

export function verifyReason(code: string): string {
  return REASONS[code] ?? code.toLowerCase().replace(/_/g, ' ');
}

/**
 * Applies `verify_client` after the handshake: an error code when the session must end (nginx's
 * 421 4.7.1 replies), plus the TLS facts for the auth request.
 */
export function inspectClientTls(socket: TLSSocket, policy: VerifyClient, depth: number, passCert: boolean): { error: ErrorCode | null; detail?: string; info: TlsInfo } {
  const info: TlsInfo = { protocol: socket.getProtocol() ?? '', cipher: socket.getCipher()?.name ?? '' };
  if (policy === 'off') return { error: null, info };
  const peer = socket.getPeerX509Certificate();
  if (!peer) {
    info.verify = 'NONE';
    return policy === 'on' ? { error: 'PST_TLS_CLIENT_CERT_MISSING', info } : { error: null, info };
  }
  const verifyError = peerVerifyError(socket);
  let reason = verifyError ? verifyReason(verifyError) : null;
  if (!reason && chainDepth(peer) > depth) reason = verifyReason('CERT_CHAIN_TOO_LONG');
  info.verify = reason ? `FAILED:${reason}` : 'SUCCESS';
  info.subject = rfc2253(peer.subject);
  info.issuer = rfc2253(peer.issuer);
  info.serial = peer.serialNumber.toUpperCase();
  info.fingerprint = peer.fingerprint.replace(/:/g, '').toLowerCase();
  if (passCert) info.cert = escapeAuthValue(peer.toString());
  if (reason && policy !== 'optional_no_ca') return { error: 'PST_TLS_CLIENT_CERT_INVALID', detail: reason, info };
  return { error: null, info };
}

/**
 * The chain verification result. A TLSSocket made outside tls.Server never runs Node's
 * onServerSocketSecure, so `authorized` stays unset; this is the same call Node makes there
 * (and smtp-server makes for STARTTLS).
 */
function peerVerifyError(socket: TLSSocket): string | null {
  const handle = (socket as unknown as { _handle?: { verifyError?: () => (Error & { code?: string }) | null } })._handle;
  if (typeof handle?.verifyError !== 'function') return socket.authorized ? null : String(socket.authorizationError ?? 'UNKNOWN');
  const err = handle.verifyError();
  return err ? (err.code ?? err.message) : null;
}

/** Certificates above the leaf, up to a self-issued one (OpenSSL's verify depth). */
function chainDepth(leaf: X509Certificate): number {
  let n = 0;
  let cur = leaf;
  while (n < 10) {
    const up = cur.issuerCertificate;
    if (!up) break;
    n++;
    if (up.subject === up.issuer || up.fingerprint256 === cur.fingerprint256) break;
    cur = up;
  }
  return n;
}

/**
 * Node prints a DN one attribute per line, in certificate order, values already escaped the
 * RFC 2253 way; RFC 2253 (what nginx ≥ 1.11.6 sends) lists the RDNs in reverse, comma-separated.
 */
export function rfc2253(dn: string): string {
  return dn.split('\n').filter(Boolean).reverse().join(',');
}
