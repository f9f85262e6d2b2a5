/**
 * The routing seam: a router turns a {@link RouteRequest} into a {@link RouteDecision}. Two
 * routers are built in — the static route (no HTTP service needed) and nginx's auth_http — and
 * features that check or rewrite a decision wrap a router rather than reach into the connection
 * (see {@link RouterLayer} and {@link composeRouter}).
 */
import type { RouteDecision, RouteRequest } from '../domain.js';

export type { BackendTlsChoice, RouteDecision, RouteRequest, RouteTarget } from '../domain.js';

export interface Router {
  /** A static router answers synchronously; auth_http with a Promise. */
  route(req: RouteRequest): RouteDecision | Promise<RouteDecision>;
  close(): Promise<void>;
}

/**
 * A check, a pool or any other feature that sits in front of a router: it receives the inner
 * router and returns a router. Layers compose like middleware; the first listed is outermost.
 */
export type RouterLayer = (inner: Router) => Router;

export function composeRouter(base: Router, layers: readonly RouterLayer[]): Router {
  let r = base;
  for (let i = layers.length - 1; i >= 0; i--) r = layers[i]!(r);
  return r;
}

/** `route: { static: host:port | pool }`: every session goes to one back-end, or one pool. */
export class StaticRouter implements Router {
  readonly #decision: RouteDecision;

  constructor(target: { host: string; port: number } | { pool: string }) {
    this.#decision = Object.freeze('pool' in target ? { kind: 'ok', host: '', port: 0, pool: target.pool } : { kind: 'ok', host: target.host, port: target.port });
  }

  route(): RouteDecision {
    return this.#decision;
  }

  async close(): Promise<void> {}
}
