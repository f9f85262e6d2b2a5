/**
 * A named pool of back-ends: which servers are usable now (active checks, passive failures,
 * connection limits), which one a session tries next (the balancer; backups only when no
 * primary is usable, as nginx and HAProxy do), and the connections each server holds (for
 * least_conn and max_connections). One Pool object per worker; active-check verdicts arrive from
 * the instance's one checker (src/pools/checker.ts).
 */
import type { PoolConfig } from '../config/schema.js';
import { backendName } from '../domain.js';
import type { Logger } from '../log/logger.js';
import { createBalancer } from './balance.js';
import { ServerHealth, type HealthTransition } from './health.js';
import type { Balancer, HashKey, PoolServer } from './types.js';

/** A configured pool's servers as PoolServer records. */
export function poolServers(cfg: PoolConfig): PoolServer[] {
  return cfg.servers.map((s) => ({
    id: backendName(s.address),
    host: s.address.host,
    port: s.address.port,
    weight: s.weight,
    backup: s.backup,
    maxConnections: s.max_connections,
  }));
}

export class Pool {
  readonly name: string;
  readonly servers: readonly PoolServer[];
  readonly hashKey: HashKey | null;
  readonly maxTries: number;
  readonly tryTimeout: number;
  readonly #primary: number[];
  readonly #backup: number[];
  readonly #balancers: { primary: Balancer; backup: Balancer };
  readonly #active: number[];
  /** Per server: the active-check verdict (from the instance's checker) and passive detection. */
  readonly #health: ServerHealth[];
  readonly #logger: Logger;
  /** Told when a server is taken out of rotation (kept back-end connections to it are let go). */
  readonly #onOut: ((server: PoolServer) => void)[] = [];

  constructor(name: string, c: PoolConfig, logger: Logger, now: () => number = Date.now) {
    this.name = name;
    this.servers = poolServers(c);
    this.hashKey = c.balance === 'hash' ? (c.hash ?? 'rcpt_domain') : null;
    this.maxTries = c.max_tries === 0 ? this.servers.length : Math.min(c.max_tries, this.servers.length);
    this.tryTimeout = c.try_timeout;
    this.#logger = logger;
    this.#primary = this.servers.flatMap((s, i) => (s.backup ? [] : [i]));
    this.#backup = this.servers.flatMap((s, i) => (s.backup ? [i] : []));
    this.#active = this.servers.map(() => 0);
    const h = { rise: c.health.rise, fall: c.health.fall, maxFails: c.max_fails, failTimeout: c.fail_timeout };
    this.#health = this.servers.map(() => new ServerHealth(h, now));
    const sub = (idx: number[]): Balancer => {
      const b = createBalancer(c.balance, idx.map((i) => this.servers[i]!), (j) => this.#active[idx[j]!]!, { maxFails: c.max_fails });
      return {
        pick: (key, skip) => {
          const j = b.pick(key, (k) => skip(idx[k]!));
          return j < 0 ? -1 : idx[j]!;
        },
        failed: (i) => {
          const j = idx.indexOf(i);
          if (j >= 0) b.failed(j);
        },
      };
    };
    this.#balancers = { primary: sub(this.#primary), backup: sub(this.#backup) };
  }

  /** Usable now: up by the active checks, not held out by passive failures, below its connection limit. */
  usable(i: number): boolean {
    const h = this.#health[i]!;
    if (!h.usable()) return false;
    // A hold that has ended by time alone gets its log line when the server is next considered.
    this.#log(i, h.refresh());
    const max = this.servers[i]!.maxConnections;
    return max === 0 || this.#active[i]! < max;
  }

  /**
   * The next server for a session: a usable primary not yet `tried`, else a usable backup, -1
   * when none is left. The balancer's order decides among them (the hash by `key`).
   */
  pick(key: string | null, tried: ReadonlySet<number>): number {
    const skip = (i: number): boolean => tried.has(i) || !this.usable(i);
    const i = this.#balancers.primary.pick(key, skip);
    return i >= 0 ? i : this.#balancers.backup.pick(key, skip);
  }

  /** Where `key` goes now, without counting a pick (the transaction affinity of a hash pool). */
  affinity(key: string | null): string | undefined {
    if (this.hashKey === null) return undefined;
    const i = this.pick(key, new Set());
    return i >= 0 ? this.servers[i]!.id : undefined;
  }

  /** A connection to server `i` is opened (least_conn, max_connections); call `release` when it closes. */
  acquire(i: number): void {
    this.#active[i]!++;
  }

  release(i: number): void {
    if (this.#active[i]! > 0) this.#active[i]!--;
  }

  /** Server `i` failed a session before the client saw a byte (passive detection). */
  failed(i: number, reason: string): void {
    this.#balancers[this.servers[i]!.backup ? 'backup' : 'primary'].failed(i);
    this.#changed(i, this.#health[i]!.failed(reason));
  }

  /** `cb` is called with each server the checks or passive detection take out of rotation. */
  onOut(cb: (server: PoolServer) => void): void {
    this.#onOut.push(cb);
  }

  /** Server `i` carried a session up to the client: its failure count is cleared. */
  succeeded(i: number): void {
    const h = this.#health[i]!;
    const trial = h.onTrial;
    this.#log(i, h.succeeded());
    if (trial) this.#logger.info({ code: 'PSW_POOL_SERVER_UP', pool: this.name, server: this.servers[i]!.id }, 'pool server back in rotation: its trial session got through');
  }

  /** An active-check verdict (from this process's checker or the primary's); the checker logs it where it ran. */
  setUp(serverId: string, up: boolean, reason = up ? 'check passed' : 'check failed'): void {
    const i = this.servers.findIndex((s) => s.id === serverId);
    if (i >= 0) this.#changed(i, this.#health[i]!.setActive(up, reason));
  }

  #changed(i: number, t: HealthTransition | null): void {
    this.#log(i, t);
    if (t && !t.up) for (const cb of this.#onOut) cb(this.servers[i]!);
  }

  /** One log line per change that passive detection made (active changes are logged by the checker). */
  #log(i: number, t: HealthTransition | null): void {
    if (t === null || t.source !== 'passive') return;
    const server = this.servers[i]!.id;
    // A dead server's trial every fail_timeout, and its failure, would otherwise be two lines each time.
    if (t.trial) return void this.#logger.debug({ code: t.up ? 'PSW_POOL_SERVER_UP' : 'PSW_POOL_SERVER_DOWN', pool: this.name, server, detail: t.reason }, t.up ? 'pool server on trial' : 'pool server trial failed');
    if (t.up) this.#logger.info({ code: 'PSW_POOL_SERVER_UP', pool: this.name, server, detail: t.reason }, 'pool server usable again (passive detection)');
    else this.#logger.warn({ code: 'PSW_POOL_SERVER_DOWN', pool: this.name, server, detail: t.reason }, 'pool server taken out after failed sessions (max_fails); tried again after fail_timeout');
  }

  /** Each server and why it cannot be used now, for the log line when none can. */
  describe(): string {
    return this.servers.map((s, i) => {
      const h = this.#health[i]!;
      const why = !h.activeUp ? 'down by the active checks' : h.passivelyOut ? 'out after failed sessions (fail_timeout)' : s.maxConnections > 0 && this.#active[i]! >= s.maxConnections ? 'at max_connections' : 'usable';
      return `${s.id} ${why}`;
    }).join('; ');
  }

  /** Server `i` as this worker sees it now, without side effects (metrics, the status page). */
  state(i: number): { up: boolean; heldOut: boolean; connections: number } {
    const h = this.#health[i]!;
    return { up: h.activeUp, heldOut: h.passivelyOut, connections: this.#active[i]! };
  }

  /** Connections held per server (status, tests). */
  get active(): readonly number[] {
    return this.#active;
  }
}

/** Every pool of the configuration, by name (one registry per worker, shared by its server blocks). */
export class PoolRegistry {
  readonly #pools = new Map<string, Pool>();

  /** Every pool, for a module that watches their servers (back-end reuse). */
  all(): IterableIterator<Pool> {
    return this.#pools.values();
  }

  constructor(pools: Readonly<Record<string, PoolConfig>>, logger: Logger, now?: () => number) {
    for (const [name, c] of Object.entries(pools)) this.#pools.set(name, new Pool(name, c, logger, now));
  }

  get(name: string): Pool | undefined {
    return this.#pools.get(name);
  }

  get names(): ReadonlySet<string> {
    return new Set(this.#pools.keys());
  }

  /** Applies an active-check verdict to the named pool's server. */
  setUp(pool: string, server: string, up: boolean): void {
    this.#pools.get(pool)?.setUp(server, up);
  }
}
