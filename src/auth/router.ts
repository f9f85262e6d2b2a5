/**
 * The routing decision: which back-end gets this session. Two implementations: the built-in
 * static route (no HTTP service needed) and nginx's auth_http protocol.
 */
import type { ErrorCode } from '../errors.js';
import type { Envelope } from '../session/session.js';
import type { TlsInfo } from '../tls/client-cert.js';

/** The auth service's choice of TLS to this back-end (Postern's own response headers). */
export interface BackendTlsChoice {
  mode?: 'off' | 'opportunistic' | 'required' | 'implicit';
  name?: string;
}

export interface RouteRequest {
  envelope: Envelope;
  clientAddr: string;
  clientPort: number;
  /** Reverse name or `[UNAVAILABLE]`, sent as Client-Host. */
  clientHost: string;
  /** The client's TLS session, when there is one (Auth-SSL-* headers). */
  tls?: TlsInfo;
}

export type RouteDecision =
  | { kind: 'ok'; host: string; port: number; user?: string; pass?: string; tls?: BackendTlsChoice; backendAuth?: 'off' | 'plain' | 'login' }
  /** Refused by policy: `reply` goes to the client; with `waitMs` > 0 it is delayed and the session stays open (Auth-Wait). */
  | { kind: 'reject'; reply: string; waitMs: number; reason: string }
  /** The router itself failed (auth service down, garbage…): 451 4.3.2 and close. */
  | { kind: 'error'; code: ErrorCode; detail: string };

export interface Router {
  /** A static router answers synchronously; auth_http with a Promise. */
  route(req: RouteRequest): RouteDecision | Promise<RouteDecision>;
  close(): Promise<void>;
}

/** `route: { static: host:port }`: every session goes to one back-end. */
export class StaticRouter implements Router {
  readonly #decision: RouteDecision;

  constructor(host: string, port: number) {
    this.#decision = Object.freeze({ kind: 'ok', host, port });
  }

  route(): RouteDecision {
    return this.#decision;
  }

  async close(): Promise<void> {}
}
