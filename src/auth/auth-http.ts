/**
 * The auth_http router: asks an nginx-compatible auth service over a keep-alive pool, unlike
 * nginx, which opens a new connection per request.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { AuthHttpConfig } from '../config/schema.js';
import { buildAuthHeaders, parseAuthAnswer, type AuthAnswer } from './auth-http-protocol.js';
import { HttpPool } from './http-pool.js';
import type { RouteDecision, RouteRequest, Router } from './router.js';

// eslint-disable-next-line no-control-regex
const UNSAFE = /[\x00\r\n]/;

export class AuthHttpRouter implements Router {
  readonly #pool: HttpPool;
  readonly #requestLine: string;
  readonly #host: string;
  readonly #cfg: AuthHttpConfig;

  constructor(cfg: AuthHttpConfig, timeoutMs: number) {
    const url = new URL(cfg.url);
    this.#cfg = cfg;
    this.#requestLine = `GET ${url.pathname}${url.search} HTTP/1.1\r\n`;
    this.#host = url.hostname.replace(/^\[|\]$/g, '');
    this.#pool = new HttpPool(url, {
      maxConnections: cfg.max_connections,
      timeoutMs,
      maxHeaderSize: cfg.max_header_size,
      keepAliveMs: 30_000,
    });
  }

  async route(req: RouteRequest): Promise<RouteDecision> {
    const request = this.#request(buildAuthHeaders(req, { host: this.#host, extra: this.#cfg.headers, envelopeForAuth: this.#cfg.envelope_after_auth }));
    if (request === null) return { kind: 'error', code: 'PST_AUTH_HTTP_INVALID', detail: 'a request header value holds CR, LF or NUL' };
    for (let tries = 0; ; tries++) {
      const answer = await this.#ask(request);
      if ('kind' in answer) return answer;
      switch (answer.status) {
        case 'ok': {
          const d: RouteDecision = { kind: 'ok', host: answer.server, port: answer.port, ...(answer.pool !== undefined ? { pool: answer.pool } : {}) };
          if (answer.user !== undefined) d.user = answer.user;
          if (answer.pass !== undefined) d.pass = answer.pass;
          if (answer.tls !== undefined) d.tls = answer.tls;
          if (answer.backendAuth !== undefined) d.backendAuth = answer.backendAuth;
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
   * The request bytes, or null if a value could break the header block. Session values are
   * checked for control bytes when the command is read; this is the last line of defence.
   */
  #request(headers: string[]): Buffer | null {
    let text = this.#requestLine;
    for (let i = 0; i < headers.length; i += 2) {
      const value = headers[i + 1]!;
      if (UNSAFE.test(value)) return null;
      text += `${headers[i]}: ${value}\r\n`;
    }
    return Buffer.from(`${text}\r\n`, 'latin1');
  }

  async #ask(request: Buffer): Promise<AuthAnswer | RouteDecision> {
    const r = await this.#pool.request(request);
    if (r.ok) return parseAuthAnswer(r.head.headers); // the status code is ignored, as nginx ignores it
    const code = r.reason === 'timeout' ? 'PST_AUTH_HTTP_TIMEOUT' : r.reason === 'invalid' ? 'PST_AUTH_HTTP_INVALID' : 'PST_AUTH_HTTP_UNAVAILABLE';
    return { kind: 'error', code, detail: r.detail };
  }

  async close(): Promise<void> {
    await this.#pool.close();
  }
}
