/**
 * How a session's back-end connection is secured and authenticated: the configured defaults with
 * the auth service's per-route choices applied.
 */
import net from 'node:net';
import type { BackendTlsChoice, Credentials, RouteTarget } from '../domain.js';
import type { ServerConfig } from '../config/schema.js';
import { readBackendCa } from '../tls/contexts.js';
import type { BackendTlsOptions } from './connect.js';
import type { BackendAuth } from './replay.js';

/**
 * proxy_smtp_auth (or the auth service's X-Postern-Backend-Auth): the credentials for the back-end.
 * nginx's rules: Auth-User/Auth-Pass from the answer win; a CRAM-MD5 digest is no password.
 */
export function backendAuthFor(creds: Credentials | undefined, d: RouteTarget, configured: 'off' | 'plain' | 'login'): { backendAuth?: BackendAuth } {
  const mechanism = d.backendAuth ?? configured;
  if (!creds || mechanism === 'off') return {};
  const pass = d.pass ?? (creds.method === 'plain' ? creds.pass : null);
  return { backendAuth: { mechanism, user: d.user ?? creds.user, pass } };
}

/** The configured back-end TLS, with the auth service's per-route choice applied. */
export function backendTlsFor(base: BackendTlsOptions, choice: BackendTlsChoice | undefined): BackendTlsOptions {
  if (!choice) return base;
  return { ...base, ...(choice.mode ? { mode: choice.mode } : {}), ...(choice.name ? { serverName: choice.name } : {}) };
}

/**
 * The TLS for one try of a route: `backendTlsFor`, and when the try goes to one address of a
 * host name (a pool member is named by its own address), the certificate is still checked
 * against the route's name.
 */
export function candidateTls(base: BackendTlsOptions, target: RouteTarget, candidateHost: string): BackendTlsOptions {
  const t = backendTlsFor(base, target.tls);
  const named = target.host !== '' && !net.isIP(target.host) && candidateHost !== target.host;
  return named && !t.serverName ? { ...t, serverName: target.host } : t;
}

/** The configured back-end TLS (the auth service may override the mode and name per route). */
export function backendTlsOptions(config: ServerConfig): BackendTlsOptions {
  const b = config.backend_tls;
  const ca = b.ca ? readBackendCa(b.ca) : undefined;
  return {
    mode: b.mode,
    verify: b.verify,
    minVersion: b.min_version,
    ...(ca ? { ca } : {}),
    ...(b.server_name ? { serverName: b.server_name } : {}),
  };
}
