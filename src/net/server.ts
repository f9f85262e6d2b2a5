/**
 * The listeners of every server block and the set of live connections, with a bounded drain
 * on stop. Connection caps are process-wide (per worker), as nginx's worker_connections.
 */
import net from 'node:net';
import type { Router } from '../auth/router.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import { ERRORS } from '../errors.js';
import type { Limiter, LimitVerdict } from '../limits/limiter.js';
import { recipientRateLayer } from '../checks/rate-layer.js';
import { buildLimits, clientKey, type Limits } from '../limits/setup.js';
import { PoolRegistry } from '../pools/pool.js';
import { Connection } from './connection.js';
import { buildContext, type ListenerContext, type ServerContext } from './context.js';

export { createRouter } from './context.js';

export class PosternServer {
  readonly #config: Readonly<Config>;
  /** This worker's pools (active-check verdicts are applied to them: setUp). */
  readonly pools: PoolRegistry;
  readonly #logger: Logger;
  readonly #contexts: ServerContext[];
  readonly #servers: net.Server[] = [];
  readonly #connections = new Set<Connection>();
  /** Open connections per client address (limits.max_connections_per_client). */
  readonly #perClient: Limiter;
  readonly #connectionRate: Limiter | null;
  readonly #limits: Limits;
  #stopping: Promise<void> | null = null;
  #onIdle: (() => void) | null = null;

  /** `router` replaces every server's configured router (tests). */
  constructor(config: Readonly<Config>, logger: Logger, router?: Router) {
    this.#config = config;
    this.#logger = logger;
    this.#limits = buildLimits(config, logger);
    this.#perClient = this.#limits.perClient;
    this.#connectionRate = this.#limits.connectionRate;
    this.pools = new PoolRegistry(config.pools, logger);
    this.#contexts = config.servers.map((srv, i) => buildContext(srv, {
      logger,
      accessLog: config.log.access,
      pools: this.pools,
      layers: this.#limits.recipients ? [recipientRateLayer(this.#limits.recipients)] : [],
      authFailures: this.#limits.authFailures(i, srv.auth.max_failures_per_client, srv.auth.failure_window),
      ...(router ? { router } : {}),
    }));
  }

  /** Re-reads the certificate files (SIGHUP); on error the running certificates stay. */
  reloadTls(): void {
    for (const c of this.#contexts) c.tls?.reload();
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
    // A shared limits store is given a moment to connect, so the first clients are counted in it.
    await this.#limits.ready();
    const bound: net.AddressInfo[] = [];
    for (const ctx of this.#contexts) for (const listener of ctx.listeners) {
      const l = listener.config;
      // allowHalfOpen: a client's FIN must not cut off the back-end's last replies (see relay.ts).
      const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => this.#accept(socket, ctx, listener));
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host: l.address.host, port: l.address.port, backlog: 511 }, () => {
          server.removeListener('error', reject);
          resolve();
        });
      });
      server.on('error', (err) => this.#logger.error({ err }, 'listener error'));
      this.#servers.push(server);
      bound.push(server.address() as net.AddressInfo);
      this.#logger.info({ listen: `${l.address.host}:${(server.address() as net.AddressInfo).port}` }, 'listening');
    }
    return bound;
  }

  #accept(socket: net.Socket, ctx: ServerContext, listener: ListenerContext): void {
    if (this.#stopping) {
      socket.destroy();
      return;
    }
    socket.on('error', noop);
    const limits = this.#config.limits;
    if (limits.max_connections > 0 && this.#connections.size >= limits.max_connections) return this.#refuse(socket, ctx, 'PST_TOO_MANY_CONNECTIONS');
    const key = clientKey(socket.remoteAddress ?? '');
    const admit = (v: LimitVerdict): void => {
      if (!v.allowed) return this.#refuse(socket, ctx, 'PST_CLIENT_CONNECTIONS');
      if (socket.destroyed) return void this.#perClient.release(key);
      this.#connections.add(new Connection(socket, ctx, listener, (c) => this.#closed(c, key)));
    };
    const held = (): void => then(this.#perClient.take(key), admit);
    // Connections per period first (cheapest to refuse), then connections held.
    if (!this.#connectionRate) return held();
    then(this.#connectionRate.take(key), (v) => (v.allowed ? held() : this.#refuse(socket, ctx, 'PST_RATE_CONNECTIONS')));
  }

  /** Over a cap: the 421 (RFC 5321 §3.8) without a session, then close. */
  #refuse(socket: net.Socket, ctx: ServerContext, code: 'PST_TOO_MANY_CONNECTIONS' | 'PST_CLIENT_CONNECTIONS' | 'PST_RATE_CONNECTIONS'): void {
    this.#logger[ERRORS[code].level]({ code, client: socket.remoteAddress }, ERRORS[code].message);
    socket.end(ctx.protocol.refusal(code));
    socket.setTimeout(2000, () => socket.destroy());
  }

  #closed(c: Connection, key: string): void {
    this.#connections.delete(c);
    void this.#perClient.release(key);
    if (this.#connections.size === 0) this.#onIdle?.();
  }

  /**
   * Stops accepting, tells idle sessions (421), lets the others finish for up to `drainMs`,
   * then closes what is left. Resolves when every connection is gone.
   */
  stop(drainMs = Math.max(...this.#config.servers.map((s) => s.timeouts.shutdown))): Promise<void> {
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
      await Promise.all(this.#contexts.map((c) => c.router.close()));
      this.#limits.close();
    })();
    return this.#stopping;
  }
}

function noop(): void {}

/** A limiter's answer now, or when its Promise settles (a store that fails lets the connection in). */
function then(v: LimitVerdict | Promise<LimitVerdict>, f: (v: LimitVerdict) => void): void {
  if (v instanceof Promise) v.then(f, () => f({ allowed: true, count: 0, limit: 0 }));
  else f(v);
}
