/** What the connections share: the frozen config and what was built from it, per listener. */
import type { Router } from '../auth/router.js';
import type { Config, ListenerConfig } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import type { SessionLimits } from '../session/session.js';
import { ReplyBook } from '../smtp/replies.js';
import type { BackendTlsOptions } from '../backend/connect.js';
import { readBackendCa, type TlsContexts } from '../tls/contexts.js';

export interface ListenerContext {
  readonly config: ListenerConfig;
  readonly book: ReplyBook;
  readonly limits: SessionLimits;
}

export interface ServerContext {
  readonly config: Readonly<Config>;
  readonly router: Router;
  readonly logger: Logger;
  /** Server certificates; null when no listener uses TLS. */
  readonly tls: TlsContexts | null;
  readonly listeners: readonly ListenerContext[];
  /** Default TLS towards back-ends (the auth service may override the mode and name per route). */
  readonly backendTls: BackendTlsOptions;
  /** Back-ends already warned about for not offering XCLIENT (warn once each, not per session). */
  readonly noXclient: Set<string>;
}

export function buildContext(config: Readonly<Config>, router: Router, logger: Logger, tls: TlsContexts | null): ServerContext {
  const capabilities = config.capabilities.map((c) =>
    c.toUpperCase() === 'SIZE' && config.max_message_size > 0 ? `SIZE ${config.max_message_size}` : c,
  );
  const listeners = config.listen.map((l) => ({
    config: l,
    book: new ReplyBook({ serverName: config.server_name, capabilities, starttls: l.starttls !== 'off' }),
    limits: {
      maxLineLength: config.max_line_length,
      maxErrors: config.max_errors,
      maxMessageSize: config.max_message_size,
      requireHelo: config.require_helo,
      greetingDelay: config.greeting_delay > 0,
      starttls: l.starttls,
      implicitTls: l.implicit_tls,
    },
  }));
  const b = config.backend_tls;
  const ca = b.ca ? readBackendCa(b.ca) : undefined;
  const backendTls: BackendTlsOptions = {
    mode: b.mode,
    verify: b.verify,
    minVersion: b.min_version,
    ...(ca ? { ca } : {}),
    ...(b.server_name ? { serverName: b.server_name } : {}),
  };
  return { config, router, logger, tls, listeners, backendTls, noXclient: new Set() };
}
