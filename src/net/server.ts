/**
 * The listeners and the set of live connections, with a bounded drain on stop.
 */
import net from 'node:net';
import { AuthHttpRouter } from '../auth/auth-http.js';
import { StaticRouter, type Router } from '../auth/router.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import { ERRORS } from '../errors.js';
import { Connection } from './connection.js';
import { buildContext, type ListenerContext, type ServerContext } from './context.js';
import { TlsContexts } from '../tls/contexts.js';

export function createRouter(config: Readonly<Config>): Router {
  const r = config.route;
  if ('static' in r) return new StaticRouter(r.static.host, r.static.port);
  return new AuthHttpRouter(r.auth_http, config.timeouts.auth);
}

export class PosternServer {
  readonly #ctx: ServerContext;
  readonly #servers: net.Server[] = [];
  readonly #connections = new Set<Connection>();
  /** Open connections per client address (limits.max_connections_per_client). */
  readonly #perClient = new Map<string, number>();
  #stopping: Promise<void> | null = null;
  #onIdle: (() => void) | null = null;

  constructor(config: Readonly<Config>, logger: Logger, router: Router = createRouter(config)) {
    const needsTls = config.listen.some((l) => l.implicit_tls || l.starttls !== 'off');
    this.#ctx = buildContext(config, router, logger, needsTls ? new TlsContexts(config.tls) : null);
  }

  /** Re-reads the certificate files (SIGHUP); on error the running certificates stay. */
  reloadTls(): void {
    this.#ctx.tls?.reload();
  }

  /** The bound addresses, in `listen` order (after start()). */
  get addresses(): net.AddressInfo[] {
    return this.#servers.map((s) => s.address() as net.AddressInfo);
  }

  get connections(): number {
    return this.#connections.size;
  }

  /** Binds every listener; resolves with the bound addresses (port 0 gets a real port). */
  async start(): Promise<net.AddressInfo[]> {
    const bound: net.AddressInfo[] = [];
    for (const listener of this.#ctx.listeners) {
      const l = listener.config;
      // allowHalfOpen: a client's FIN must not cut off the back-end's last replies (see relay.ts).
      const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => this.#accept(socket, listener));
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host: l.address.host, port: l.address.port, backlog: 511 }, () => {
          server.removeListener('error', reject);
          resolve();
        });
      });
      server.on('error', (err) => this.#ctx.logger.error({ err }, 'listener error'));
      this.#servers.push(server);
      bound.push(server.address() as net.AddressInfo);
      this.#ctx.logger.info({ listen: `${l.address.host}:${(server.address() as net.AddressInfo).port}` }, 'listening');
    }
    return bound;
  }

  #accept(socket: net.Socket, listener: ListenerContext): void {
    if (this.#stopping) {
      socket.destroy();
      return;
    }
    socket.on('error', noop);
    const limits = this.#ctx.config.limits;
    if (limits.max_connections > 0 && this.#connections.size >= limits.max_connections) return this.#refuse(socket, 'PST_TOO_MANY_CONNECTIONS');
    const addr = socket.remoteAddress ?? '';
    if (limits.max_connections_per_client > 0) {
      const n = this.#perClient.get(addr) ?? 0;
      if (n >= limits.max_connections_per_client) return this.#refuse(socket, 'PST_CLIENT_CONNECTIONS');
      this.#perClient.set(addr, n + 1);
    }
    this.#connections.add(new Connection(socket, this.#ctx, listener, (c) => this.#closed(c, addr)));
  }

  /** Over a cap: the 421 (RFC 5321 §3.8) without a session, then close. */
  #refuse(socket: net.Socket, code: 'PST_TOO_MANY_CONNECTIONS' | 'PST_CLIENT_CONNECTIONS'): void {
    this.#ctx.logger[ERRORS[code].level]({ code, client: socket.remoteAddress }, ERRORS[code].message);
    socket.end(this.#ctx.listeners[0]!.book.error(code));
    socket.setTimeout(2000, () => socket.destroy());
  }

  #closed(c: Connection, addr: string): void {
    this.#connections.delete(c);
    const n = this.#perClient.get(addr);
    if (n !== undefined) {
      if (n <= 1) this.#perClient.delete(addr);
      else this.#perClient.set(addr, n - 1);
    }
    if (this.#connections.size === 0) this.#onIdle?.();
  }

  /**
   * Stops accepting, tells idle sessions (421), lets the others finish for up to `drainMs`,
   * then closes what is left. Resolves when every connection is gone.
   */
  stop(drainMs = this.#ctx.config.timeouts.shutdown): Promise<void> {
    this.#stopping ??= (async () => {
      // close() stops accepting now; its callback would wait for every connection, so it is not awaited.
      for (const s of this.#servers) s.close();
      for (const c of this.#connections) c.shutdown();
      if (this.#connections.size > 0) {
        const idle = new Promise<void>((r) => (this.#onIdle = r));
        let timer: NodeJS.Timeout | undefined;
        const late = new Promise<void>((r) => (timer = setTimeout(r, drainMs)));
        await Promise.race([idle, late]);
        clearTimeout(timer);
        for (const c of this.#connections) c.destroy();
      }
      await this.#ctx.router.close();
    })();
    return this.#stopping;
  }
}

function noop(): void {}
