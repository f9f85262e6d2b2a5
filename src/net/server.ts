/**
 * The listeners of every server block and the set of live connections, with a bounded drain
 * on stop. Connection caps are process-wide (per worker), as nginx's worker_connections; the
 * rate rules (src/limits/rules.ts) are applied here at accept (connections), and handed to each
 * server block as a stage check at MAIL (messages) and router layers at AUTH and RCPT (refused
 * logins, recipients), all before the policy servers.
 */
import net, { type BlockList } from 'node:net';
import { authFailureRules } from '../auth/failure-guard.js';
import type { Router, RouterLayer } from '../auth/router.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import { ERRORS } from '../errors.js';
import { messageRateCheck } from '../checks/message-rate.js';
import { recipientRateLayer } from '../checks/rate-layer.js';
import type { Limiter, LimitVerdict, MaybePromise } from '../limits/limiter.js';
import { plainAddress } from '../limits/keys.js';
import { firstOver, overDetail, type Over, type RateRule } from '../limits/rules.js';
import { buildLimits, clientKey, type Limits } from '../limits/setup.js';
import { lineReply } from '../smtp/replies.js';
import { PoolRegistry } from '../pools/pool.js';
import { Connection } from './connection.js';
import { directOrigin, readProxyHeader, trustedPeers, type Origin } from './proxy-accept.js';
import { buildContext, type ListenerContext, type ServerContext } from './context.js';

export { createRouter } from './context.js';

export class PosternServer {
  readonly #config: Readonly<Config>;
  /** This worker's pools (active-check verdicts are applied to them: setUp). */
  readonly pools: PoolRegistry;
  readonly #logger: Logger;
  readonly #contexts: ServerContext[];
  readonly #servers: net.Server[] = [];
  /** Listeners by `host:port` as configured, for a reload to take over (port 0 is never shared). */
  readonly #byAddress = new Map<string, net.Server>();
  /** Listeners a newer configuration took over: a retiring server leaves them open. */
  readonly #handedOver = new Set<net.Server>();
  /** set_real_ip_from of each server block, built at its first PROXY connection. */
  readonly #trustedBy = new Map<ServerContext, BlockList>();
  /** Connections whose PROXY header is still being read: not sessions yet, closed by stop(). */
  readonly #awaitingHeader = new Set<net.Socket>();
  readonly #connections = new Set<Connection>();
  /** Open connections per client address (limits.max_connections_per_client). */
  readonly #perClient: Limiter;
  /** Connections per period (limits.connection_rate, limits.rates), asked in order at accept. */
  readonly #connectionRates: readonly RateRule[];
  readonly #limits: Limits;
  #stopping: Promise<void> | null = null;
  #onIdle: (() => void) | null = null;

  /** `router` replaces every server's configured router (tests). */
  constructor(config: Readonly<Config>, logger: Logger, router?: Router) {
    this.#config = config;
    this.#logger = logger;
    this.#limits = buildLimits(config, logger);
    this.#perClient = this.#limits.perClient;
    const rates = this.#limits.rates;
    this.#connectionRates = rates.connections;
    this.pools = new PoolRegistry(config.pools, logger);
    this.#contexts = config.servers.map((srv, i) => buildContext(srv, {
      logger,
      accessLog: config.log.access,
      pools: this.pools,
      // Outermost after the server's own AUTH guard, and before its policy servers: cheapest first.
      layers: [
        ...(rates.auth_failures.length > 0 ? [authFailureRules(rates.auth_failures, srv.server_name)] : []),
        ...(rates.recipients.length > 0 ? [recipientRateLayer(rates.recipients)] : []),
      ] satisfies RouterLayer[],
      stageChecks: rates.messages.length > 0 ? [messageRateCheck(rates.messages)] : [],
      authFailures: this.#limits.authFailures(i, srv.auth.max_failures_per_client, srv.auth.failure_window),
      ...(router ? { router } : {}),
    }));
  }

  get config(): Readonly<Config> {
    return this.#config;
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

  /**
   * Binds every listener; resolves with the bound addresses (port 0 gets a real port). With
   * `previous` (a reload), a listener on an address the previous configuration also had is taken
   * over as it is — the socket stays open, so no connection is refused — and only new addresses
   * are bound. If one cannot be bound, what this call bound is closed again and the previous
   * server keeps every listener (the reload fails, nothing changed).
   */
  async start(previous?: PosternServer): Promise<net.AddressInfo[]> {
    // A shared limits store is given a moment to connect, so the first clients are counted in it.
    await this.#limits.ready();
    const plan: { server: net.Server | null; ctx: ServerContext; listener: ListenerContext; key: string }[] = [];
    for (const ctx of this.#contexts) for (const listener of ctx.listeners) {
      const l = listener.config;
      const key = `${l.address.host}:${l.address.port}`;
      plan.push({ server: previous && l.address.port !== 0 ? previous.#byAddress.get(key) ?? null : null, ctx, listener, key });
    }
    const fresh: net.Server[] = [];
    try {
      for (const p of plan) {
        if (p.server) continue;
        // allowHalfOpen: a client's FIN must not cut off the back-end's last replies (see relay.ts).
        const server = net.createServer({ allowHalfOpen: true, noDelay: true });
        await listen(server, p.listener.config.address);
        fresh.push(server);
        p.server = server;
        this.#logger.info({ listen: `${p.listener.config.address.host}:${(server.address() as net.AddressInfo).port}` }, 'listening');
      }
    } catch (err) {
      for (const s of fresh) s.close();
      throw err;
    }
    for (const p of plan) {
      const server = p.server!;
      if (!fresh.includes(server)) {
        // Taken over: from now on its connections are this configuration's.
        server.removeAllListeners('connection');
        previous!.#handedOver.add(server);
      } else server.on('error', (err) => this.#logger.error({ err }, 'listener error'));
      server.on('connection', (socket: net.Socket) => this.#accept(socket, p.ctx, p.listener));
      this.#servers.push(server);
      this.#byAddress.set(p.key, server);
    }
    return this.addresses;
  }

  /**
   * After a reload: the listeners the new configuration did not take over are closed, the
   * sessions in progress go on under the configuration they started with until they end by
   * themselves (within `graceMs`), then the rest is stopped as at SIGTERM.
   */
  async retire(graceMs: number): Promise<void> {
    for (const s of this.#servers) if (!this.#handedOver.has(s)) s.close();
    if (this.#connections.size > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([new Promise<void>((r) => (this.#onIdle = r)), new Promise<void>((r) => (timer = setTimeout(r, graceMs)))]);
      clearTimeout(timer);
    }
    await this.stop();
  }

  #accept(socket: net.Socket, ctx: ServerContext, listener: ListenerContext): void {
    if (this.#stopping) {
      socket.destroy();
      return;
    }
    socket.on('error', noop);
    if (!listener.config.proxy_protocol) return this.#admit(socket, ctx, listener, directOrigin(socket));
    // Gone before it was handled (a load balancer's TCP check: connect, then reset): nothing to say.
    if (socket.remoteAddress === undefined) return void socket.destroy();
    // The load balancer's header comes first: only then is the client, and its limits, known.
    this.#awaitingHeader.add(socket);
    readProxyHeader(socket, this.#trusted(ctx), ctx.config.timeouts.proxy_protocol, (o) => {
      this.#awaitingHeader.delete(socket);
      // A header that completes after stop() must not start a session on a stopped server.
      if (this.#stopping) return void socket.destroy();
      if ('origin' in o) return this.#admit(socket, ctx, listener, o.origin);
      this.#logger[ERRORS[o.error].level]({ code: o.error, peer: socket.remoteAddress, detail: o.detail }, ERRORS[o.error].message);
      socket.destroy();
    });
  }

  #trusted(ctx: ServerContext): BlockList {
    let t = this.#trustedBy.get(ctx);
    if (!t) this.#trustedBy.set(ctx, (t = trustedPeers(ctx.config.set_real_ip_from)));
    return t;
  }

  #admit(socket: net.Socket, ctx: ServerContext, listener: ListenerContext, origin: Origin): void {
    if (socket.destroyed) return;
    const limits = this.#config.limits;
    if (limits.max_connections > 0 && this.#connections.size >= limits.max_connections) return this.#refuse(socket, ctx, 'PST_TOO_MANY_CONNECTIONS', undefined, undefined, origin.addr);
    const addr = origin.addr;
    const key = clientKey(addr);
    const admit = (v: LimitVerdict): void => {
      if (!v.allowed) return this.#refuse(socket, ctx, 'PST_CLIENT_CONNECTIONS', undefined, undefined, addr);
      if (socket.destroyed) return void this.#perClient.release(key);
      this.#connections.add(new Connection(socket, ctx, listener, (c) => this.#closed(c, key), origin));
    };
    const held = (): void => then(this.#perClient.take(key), admit, ALLOW);
    // Connections per period first (cheapest to refuse), then connections held.
    if (this.#connectionRates.length === 0) return held();
    then(firstOver(this.#connectionRates, { clientAddr: addr }), (o: Over | null) => {
      if (!o) return held();
      // Postfix anvil's text (smtpd_client_connection_rate_limit), naming the client address.
      this.#refuse(socket, ctx, 'PST_RATE_CONNECTIONS', `421 4.7.0 ${ctx.config.server_name} Error: too many connections from ${plainAddress(addr)}`, overDetail(o), addr);
    }, null);
  }

  /** Over a cap: the 421 (RFC 5321 §3.8) without a session, then close. */
  #refuse(socket: net.Socket, ctx: ServerContext, code: 'PST_TOO_MANY_CONNECTIONS' | 'PST_CLIENT_CONNECTIONS' | 'PST_RATE_CONNECTIONS', reply?: string, detail?: string, client?: string): void {
    this.#logger[ERRORS[code].level]({ code, client: client ?? socket.remoteAddress, ...(detail !== undefined ? { detail } : {}), ...(reply !== undefined ? { reply } : {}) }, ERRORS[code].message);
    socket.end(reply !== undefined ? lineReply(reply) : ctx.protocol.refusal(code));
    socket.setTimeout(2000, () => socket.destroy());
    for (const o of ctx.observers) o.connectionRefused?.(code);
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
      for (const s of this.#servers) if (!this.#handedOver.has(s)) s.close();
      for (const s of this.#awaitingHeader) s.destroy();
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
      for (const c of this.#contexts) c.protocol.close?.();
      this.#limits.close();
    })();
    return this.#stopping;
  }
}

function noop(): void {}

function listen(server: net.Server, address: { host: string; port: number }): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: address.host, port: address.port, backlog: 511 }, () => {
      server.removeListener('error', reject);
      resolve();
    });
  });
}

const ALLOW: LimitVerdict = Object.freeze({ allowed: true, count: 0, limit: 0 });

/** A limiter's answer now, or when its Promise settles (a store that fails lets the connection in: `failed`). */
function then<T>(v: MaybePromise<T>, f: (v: T) => void, failed: T): void {
  if (v instanceof Promise) v.then(f, () => f(failed));
  else f(v);
}
