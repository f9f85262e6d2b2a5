/**
 * An auth_http service for tests: records every request (raw header lines in order) and
 * answers with headers chosen per request.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface RecordedRequest {
  method: string;
  url: string;
  /** [name, value] pairs in the order received, names as sent. */
  headers: [string, string][];
  get(name: string): string | undefined;
}

export type Answer = Record<string, string> | ((req: RecordedRequest, n: number) => Record<string, string> | 'hang' | 'destroy' | Promise<Record<string, string>>);

export class AuthStub {
  readonly requests: RecordedRequest[] = [];
  readonly #server: http.Server;
  answer: Answer;
  /** TCP connections accepted (to see keep-alive reuse). */
  connections = 0;

  private constructor(answer: Answer) {
    this.answer = answer;
    this.#server = http.createServer((req, res) => void this.#handle(req, res));
    this.#server.on('connection', () => this.connections++);
  }

  static async start(answer: Answer): Promise<AuthStub> {
    const stub = new AuthStub(answer);
    await new Promise<void>((r) => stub.#server.listen(0, '127.0.0.1', r));
    return stub;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}/auth`;
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const pairs: [string, string][] = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2) pairs.push([req.rawHeaders[i]!, req.rawHeaders[i + 1]!]);
    const rec: RecordedRequest = {
      method: req.method ?? '',
      url: req.url ?? '',
      headers: pairs,
      get: (name) => pairs.find(([n]) => n.toLowerCase() === name.toLowerCase())?.[1],
    };
    this.requests.push(rec);
    const a = typeof this.answer === 'function' ? await this.answer(rec, this.requests.length) : this.answer;
    if (a === 'hang') return;
    if (a === 'destroy') {
      req.socket.destroy();
      return;
    }
    res.writeHead(200, a);
    res.end();
  }

  async stop(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((r) => this.#server.close(() => r()));
  }
}

/** The answer that routes to a back-end, as an nginx auth service sends it. */
export function okAnswer(port: number, host = '127.0.0.1'): Record<string, string> {
  return { 'Auth-Status': 'OK', 'Auth-Server': host, 'Auth-Port': String(port) };
}
