/**
 * The auth_http router: asks an nginx-compatible auth service over a keep-alive pool (undici),
 * unlike nginx, which opens a new connection per request.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { IncomingHttpHeaders } from 'node:http';
import { Pool, errors as undiciErrors, type Dispatcher } from 'undici';
import type { AuthHttpConfig } from '../config/schema.js';
import { buildAuthHeaders, parseAuthAnswer, type AuthAnswer } from './auth-http-protocol.js';
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
    // connectTimeout and headersTimeout bound the exchange (nginx's auth_http_timeout); the body,
    // which nginx ignores, gets the same bound.
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

  /**
   * One request through undici's dispatch API: no body stream, no AbortSignal, no promise chain per
   * chunk (request() costs several times more per call). The body is ignored, as nginx ignores it;
   * undici still reads it off the connection, so the connection is reused.
   */
  #ask(headers: string[]): Promise<AuthAnswer | RouteDecision> {
    return new Promise((resolve) => {
      this.#pool.dispatch({ path: this.#path, method: 'GET', headers }, new AnswerHandler(resolve));
    });
  }

  async close(): Promise<void> {
    await this.#pool.close();
  }
}

class AnswerHandler implements Dispatcher.DispatchHandler {
  #answer: AuthAnswer | null = null;
  readonly #resolve: (a: AuthAnswer | RouteDecision) => void;

  constructor(resolve: (a: AuthAnswer | RouteDecision) => void) {
    this.#resolve = resolve;
  }

  onRequestStart(): void {}

  onResponseStart(_c: Dispatcher.DispatchController, _status: number, headers: IncomingHttpHeaders): void {
    // The HTTP status is ignored, as nginx ignores it.
    this.#answer = parseAuthAnswer(headers);
  }

  onResponseData(): void {}

  onResponseEnd(): void {
    this.#resolve(this.#answer ?? { kind: 'error', code: 'PST_AUTH_HTTP_INVALID', detail: 'no response headers' });
  }

  onResponseError(_c: Dispatcher.DispatchController, err: Error): void {
    this.#resolve(classify(err));
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
