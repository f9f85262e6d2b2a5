/**
 * Active health checks of the pools' servers: one {@link probeSmtp} per server every
 * `health.interval`, spread over the interval (a random first offset, ±10 % on every later one)
 * so that a pool's servers — and many Posterns' checks of one server — do not all arrive at once.
 * A server's checks never overlap. Results go through rise/fall ({@link ServerHealth}); each state
 * change is one `change` event, and {@link HealthChecker.snapshot} is the current picture.
 *
 * Checks run once per instance: in the cluster primary when workers > 1 (it broadcasts to the
 * workers, src/net/cluster.ts), in the process itself when workers = 1. {@link startHealthChecks}
 * is that owner's entry point: checker, log lines, status file, broadcast.
 */
import { proxyV1, proxyV2 } from '../proxy/writer.js';
import cluster from 'node:cluster';
import { EventEmitter } from 'node:events';
import type { BackendTlsOptions } from '../backend/connect.js';
import type { Config, PoolConfig } from '../config/schema.js';
import { WARNINGS } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { backendTlsOptions } from '../backend/route-options.js';
import { broadcastHealth, serveHealthSnapshots } from './ipc.js';
import { ServerHealth } from './health.js';
import { poolServers } from './pool.js';
import { probeMailbox } from './mailbox-probe.js';
import { probeSmtp, type ProbeOptions, type ProbeResult } from './probe.js';
import { STATUS_REFRESH_MS, StatusWriter } from './status.js';
import type { HealthChange, HealthSnapshotEntry, PoolServer } from './types.js';

/** One pool as the checker sees it. */
export interface CheckedPool {
  servers: readonly PoolServer[];
  health: PoolConfig['health'];
  /** Back-end TLS for this pool's checks; default: the checker's `defaultTls`. */
  tls?: BackendTlsOptions;
}

export interface HealthCheckerOptions {
  pools: Readonly<Record<string, CheckedPool>>;
  /** The name sent with EHLO (top-level `server_name`). */
  ehloName: string;
  /**
   * Back-end TLS of pools without their own: `mode: implicit` makes the check speak TLS from the
   * first byte; with `health.starttls` the check does STARTTLS, verifying as these options say.
   */
  defaultTls?: BackendTlsOptions;
  /** A PROXY header for every check (the top-level `proxy_protocol`): LOCAL in v2, UNKNOWN in v1, as a check carries no client. */
  proxyHeader?: Buffer;
  /** The check itself (tests replace it). */
  probe?: (opts: ProbeOptions) => Promise<ProbeResult>;
  /** Wall clock for `since` and `lastCheck` (ms since the epoch). */
  now?: () => number;
  /** In [0, 1): the spread of the checks. */
  random?: () => number;
}

export type { HealthSnapshotEntry } from './types.js';

/** A check's outcome, for debug logging. */
export interface CheckEvent {
  pool: string;
  server: string;
  ok: boolean;
  reason: string;
  ms: number;
}

interface Tracked {
  pool: string;
  server: PoolServer;
  cfg: CheckedPool;
  health: ServerHealth;
  entry: HealthSnapshotEntry;
  timer: NodeJS.Timeout | null;
  abort: AbortController | null;
}

const DEFAULT_TLS: BackendTlsOptions = { mode: 'off', verify: true, minVersion: 'TLSv1.2' };

export class HealthChecker extends EventEmitter<{ change: [HealthChange]; check: [CheckEvent] }> {
  readonly #opts: HealthCheckerOptions;
  readonly #now: () => number;
  readonly #random: () => number;
  readonly #probe: (opts: ProbeOptions) => Promise<ProbeResult>;
  readonly #servers: Tracked[] = [];
  #running = false;

  constructor(opts: HealthCheckerOptions) {
    super();
    this.#opts = opts;
    this.#now = opts.now ?? Date.now;
    this.#random = opts.random ?? Math.random;
    this.#probe = opts.probe ?? probeSmtp;
    const t = this.#now();
    for (const [pool, cfg] of Object.entries(opts.pools)) {
      const enabled = cfg.health.enabled;
      for (const server of cfg.servers) {
        this.#servers.push({
          pool,
          server,
          cfg,
          // The primary sees no sessions: passive detection (max_fails) is the workers' business.
          health: new ServerHealth({ rise: cfg.health.rise, fall: cfg.health.fall, maxFails: 0, failTimeout: 1 }, this.#now),
          entry: {
            pool,
            server: server.id,
            up: true,
            reason: enabled ? 'up until checks say otherwise' : 'not checked (health.enabled: false)',
            since: t,
            lastCheck: null,
            lastResult: null,
            checked: enabled,
          },
          timer: null,
          abort: null,
        });
      }
    }
  }

  /** Starts checking every server of every pool with health.enabled. */
  start(): void {
    if (this.#running) return;
    this.#running = true;
    for (const s of this.#servers) {
      if (s.entry.checked) this.#schedule(s, this.#random() * s.cfg.health.interval);
    }
  }

  /** Clears every timer and aborts the checks under way; no event follows. */
  stop(): void {
    this.#running = false;
    for (const s of this.#servers) {
      if (s.timer) clearTimeout(s.timer);
      s.timer = null;
      s.abort?.abort();
      s.abort = null;
    }
  }

  /** Every server's current state (copies). */
  snapshot(): HealthSnapshotEntry[] {
    return this.#servers.map((s) => ({ ...s.entry }));
  }

  /** The snapshot as HealthChange records (what a new worker applies). */
  states(): HealthChange[] {
    return this.#servers.map(({ entry: e }) => ({ pool: e.pool, server: e.server, up: e.up, reason: e.reason }));
  }

  #schedule(s: Tracked, delay: number): void {
    // unref: the checks never keep a process alive that has nothing else to do.
    s.timer = setTimeout(() => void this.#check(s), Math.max(0, Math.round(delay))).unref();
  }

  async #check(s: Tracked): Promise<void> {
    s.timer = null;
    if (!this.#running) return;
    const { health } = s.cfg;
    const tls = s.cfg.tls ?? this.#opts.defaultTls ?? DEFAULT_TLS;
    const abort = new AbortController();
    s.abort = abort;
    const probe = health.protocol === 'smtp' ? this.#probe : (o: ProbeOptions) => probeMailbox(health.protocol as 'imap' | 'pop3', o);
    const result = await probe({
      host: s.server.host,
      port: s.server.port,
      ehloName: this.#opts.ehloName,
      timeoutMs: health.timeout,
      tls: tls.mode === 'implicit' ? 'implicit' : health.starttls ? 'starttls' : 'plain',
      tlsOptions: tls,
      signal: abort.signal,
      ...(this.#opts.proxyHeader ? { proxyHeader: this.#opts.proxyHeader } : {}),
    });
    if (!this.#running || s.abort !== abort) return;
    s.abort = null;
    const e = s.entry;
    e.lastCheck = this.#now();
    e.lastResult = result.reason;
    this.emit('check', { pool: s.pool, server: s.server.id, ok: result.ok, reason: result.reason, ms: result.ms });
    const t = s.health.checked(result.ok, result.reason);
    if (t) {
      e.up = t.up;
      e.reason = t.reason;
      e.since = e.lastCheck;
      this.emit('change', { pool: s.pool, server: s.server.id, up: t.up, reason: t.reason });
    }
    if (!this.#running) return;
    // The next check `interval` after this one began, ±10 %.
    const interval = health.interval * (0.9 + 0.2 * this.#random());
    this.#schedule(s, interval - result.ms);
  }
}

export { poolServers };

export interface HealthChecks {
  checker: HealthChecker;
  /** Stops the checks, the status file's refresh and the cluster broadcast; removes the status file. */
  stop(): Promise<void>;
}

/**
 * Runs the instance's health checks: call it once, in the cluster primary when workers > 1, in
 * the process itself when workers = 1. Logs one line per state change (`warn` when a server goes
 * down, `info` when it comes back), writes the status file (src/pools/status.ts) at start, on
 * every change and every 30 s, and — in a primary with workers — sends every change to every
 * worker and answers each new worker's snapshot request (src/net/cluster.ts). In one process,
 * listen to `checker.on('change')` directly. With no pools it does nothing (and writes no file).
 *
 * `configFile` is the configuration file as given on the command line: the status file's path
 * is derived from it (the Config does not carry its own path).
 *
 * The checks use the top-level `server_name` for EHLO and the top-level `backend_tls` (the
 * defaults every server block inherits): pools are process-wide, not a server block's.
 */
export function startHealthChecks(config: Readonly<Config>, logger: Logger, opts: { configFile: string }): HealthChecks {
  const pools: Record<string, CheckedPool> = {};
  for (const [name, cfg] of Object.entries(config.pools)) pools[name] = { servers: poolServers(cfg), health: cfg.health };
  const proxyHeader = config.proxy_protocol === 'v2' ? proxyV2(undefined, undefined, { local: true }) : config.proxy_protocol === 'v1' ? proxyV1(undefined, undefined) : undefined;
  const checker = new HealthChecker({ pools, ehloName: config.server_name, defaultTls: backendTlsOptions(config), ...(proxyHeader ? { proxyHeader } : {}) });
  if (Object.keys(pools).length === 0) return { checker, stop: async () => {} };

  const writer = new StatusWriter(opts.configFile, logger);
  const write = (): void => void writer.write(checker.snapshot());
  checker.on('change', (c) => {
    const code = c.up ? 'PSW_POOL_CHECK_UP' : 'PSW_POOL_CHECK_DOWN';
    logger[WARNINGS[code].level]({ code, pool: c.pool, server: c.server, reason: c.reason }, c.up ? 'pool server up' : 'pool server down');
    if (cluster.isPrimary) broadcastHealth(c);
    write();
  });
  checker.on('check', (c) => logger.debug({ pool: c.pool, server: c.server, ok: c.ok, reason: c.reason, ms: c.ms }, 'health check'));
  const unserve = cluster.isPrimary ? serveHealthSnapshots(() => checker.states()) : () => {};
  const refresh = setInterval(write, STATUS_REFRESH_MS).unref();
  checker.start();
  write();
  const checked = checker.snapshot().filter((e) => e.checked).length;
  logger.info({ pools: Object.keys(pools).length, servers: checked, status: writer.file }, 'health checks started');
  return {
    checker,
    async stop() {
      checker.stop();
      clearInterval(refresh);
      unserve();
      await writer.remove();
    },
  };
}
