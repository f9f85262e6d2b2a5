/**
 * The auth_http router: asks an nginx-compatible auth service over a keep-alive pool (undici),
 * unlike nginx, which opens a new connection per request.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Pool, errors as undiciErrors } from 'undici';
import type { AuthHttpConfig } from '../config/schema.js';
import { buildAuthHeaders, parseAuthAnswer } from './auth-http-protocol.js';
import type { RouteDecision, RouteRequest, Router } from './router.js';

export class AuthHttpRouter implements Router {
  readonly #pool: Pool;
  readonly #path: string;
  readonly #host: string;
  readonly #cfg: AuthHttpConfig;
  readonly #timeoutMs: number;

  constructor(cfg: AuthHttpConfig, timeoutMs: number) {
    const url = new URL(cfg.url);
    this.#cfg = cfg;
    this.#timeoutMs = timeoutMs;
    this.#path = `${url.pathname}${url.search}`;
    this.#host = url.hostname;
    this.#pool = new Pool(url.origin, {
      connections: cfg.max_connections,
      keepAliveTimeout: 30_000,
      connectTimeout: timeoutMs,
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
      maxHeaderSize: cfg.max_header_size,
    });
  }

  async route(req: RouteRequest): Promise<RouteDecision> {
    const headers = buildAuthHeaders(req, { host: this.#host, extra: this.#cfg.headers });
    for (let tries = 0; ; tries++) {
      const answer = await this.#ask(headers);
      if ('kind' in answer) return answer;
      switch (answer.status) {
        case 'ok': {
          const d: RouteDecision = { kind: 'ok', host: answer.server, port: answer.port };
          if (answer.user !== undefined) d.user = answer.user;
          if (answer.pass !== undefined) d.pass = answer.pass;
          return d;
        }
        case 'fail':
          return { kind: 'reject', reply: answer.reply, waitMs: answer.waitMs, reason: answer.text };
        case 'invalid':
          return { kind: 'error', code: 'PST_AUTH_HTTP_INVALID', detail: answer.reason };
        case 'wait':
          // nginx re-asks forever; Postern gives up after max_wait_retries.
          if (tries >= this.#cfg.max_wait_retries) {
            return { kind: 'error', code: 'PST_AUTH_HTTP_INVALID', detail: `still WAIT after ${tries} retries` };
          }
          await sleep(answer.waitMs);
      }
    }
  }

  async #ask(headers: string[]): Promise<ReturnType<typeof parseAuthAnswer> | RouteDecision> {
    try {
      const res = await this.#pool.request({
        path: this.#path,
        method: 'GET',
        headers,
        signal: AbortSignal.timeout(this.#timeoutMs),
      });
      // The body is ignored (as nginx does) but must be drained for the connection to be reused.
      await res.body.dump({ limit: 65536 });
      return parseAuthAnswer(res.headers);
    } catch (err) {
      return classify(err as Error);
    }
  }

  async close(): Promise<void> {
    await this.#pool.close();
  }
}

function classify(err: Error): RouteDecision {
  const detail = `${(err as { code?: string }).code ?? err.name}: ${err.message}`;
  if (
    err instanceof undiciErrors.HeadersTimeoutError ||
    err instanceof undiciErrors.ConnectTimeoutError ||
    err instanceof undiciErrors.BodyTimeoutError ||
    err.name === 'TimeoutError' ||
    err.name === 'AbortError'
  ) {
    return { kind: 'error', code: 'PST_AUTH_HTTP_TIMEOUT', detail };
  }
  if (err instanceof undiciErrors.HeadersOverflowError || (err as { code?: string }).code === 'HPE_INVALID_HEADER_TOKEN' || err.name === 'HTTPParserError') {
    return { kind: 'error', code: 'PST_AUTH_HTTP_INVALID', detail };
  }
  return { kind: 'error', code: 'PST_AUTH_HTTP_UNAVAILABLE', detail };
}
