/** What the connections share: the frozen config and what was built from it, per listener. */
import type { Router } from '../auth/router.js';
import type { Config, ListenerConfig } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import type { SessionLimits } from '../session/session.js';
import { randomInt } from 'node:crypto';
import { ReplyBook } from '../smtp/replies.js';
import { cramChallenge, type Mechanism } from '../smtp/sasl.js';
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
  /** Failed AUTH attempts per client address (auth.max_failures_per_client). */
  readonly authFailures: FailureCounter;
  /** Back-end warnings already logged ("<kind> <host:port>"): each is logged once, not per session. */
  readonly warned: Set<string>;
}

/** Counts failures per key in a fixed window; entries expire with their window (no timers). */
export class FailureCounter {
  readonly #max: number;
  readonly #windowMs: number;
  readonly #entries = new Map<string, { n: number; until: number }>();

  constructor(max: number, windowMs: number) {
    this.#max = max;
    this.#windowMs = windowMs;
  }

  add(key: string, now = Date.now()): void {
    const e = this.#entries.get(key);
    if (!e || e.until <= now) {
      // Expired entries are swept lazily, so the map stays bounded by recent offenders.
      if (this.#entries.size > 10_000) for (const [k, v] of this.#entries) if (v.until <= now) this.#entries.delete(k);
      this.#entries.set(key, { n: 1, until: now + this.#windowMs });
    } else {
      e.n++;
    }
  }

  blocked(key: string, now = Date.now()): boolean {
    const e = this.#entries.get(key);
    return e !== undefined && e.until > now && e.n >= this.#max;
  }
}

function mechanisms(l: ListenerConfig): Mechanism[] {
  return l.smtp_auth.filter((m) => m !== 'none').map((m) => m.toUpperCase() as Mechanism);
}

export function buildContext(config: Readonly<Config>, router: Router, logger: Logger, tls: TlsContexts | null): ServerContext {
  const capabilities = config.capabilities.map((c) =>
    c.toUpperCase() === 'SIZE' && config.max_message_size > 0 ? `SIZE ${config.max_message_size}` : c,
  );
  const listeners = config.listen.map((l) => ({
    config: l,
    book: new ReplyBook({ serverName: config.server_name, capabilities, starttls: l.starttls !== 'off', auth: mechanisms(l) }),
    limits: {
      maxLineLength: config.max_line_length,
      maxErrors: config.max_errors,
      maxMessageSize: config.max_message_size,
      requireHelo: config.require_helo,
      greetingDelay: config.greeting_delay > 0,
      starttls: l.starttls,
      implicitTls: l.implicit_tls,
      auth: {
        mechanisms: mechanisms(l),
        allowNone: l.smtp_auth.includes('none'),
        plaintext: l.auth_plaintext,
        maxAttempts: config.auth.max_attempts,
        // nginx's salt: <random.unixtime@server_name>
        challenge: () => cramChallenge(randomInt(1e9), Math.floor(Date.now() / 1000), config.server_name),
      },
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
  const authFailures = new FailureCounter(config.auth.max_failures_per_client, config.auth.failure_window);
  return { config, router, logger, tls, listeners, backendTls, authFailures, warned: new Set() };
}
