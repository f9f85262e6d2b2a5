/**
 * One process's serving state across reloads (the single process, or one cluster worker):
 * the running PosternServer, the servers a reload retired that still drain their sessions, and
 * the pool health the process follows.
 *
 * A reload is nginx's `-s reload` done in one process: the file is read and validated again (on
 * any error the running configuration stays and the key paths are logged), a new PosternServer
 * is built from it and takes over the listeners both configurations have — the listening
 * sockets stay open, so no connection is refused — and binds the new ones; the old server closes
 * the listeners that are gone and its sessions go on under the configuration they began with
 * until they end by themselves (bounded by timeouts.idle), as nginx's old workers do.
 */
import cluster from 'node:cluster';
import { ConfigError, loadConfig } from '../config/load.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import { startHealthChecks, type HealthChecker, type HealthChecks } from '../pools/checker.js';
import { onHealthMessages } from '../pools/ipc.js';
import type { HealthChange } from '../pools/types.js';
import { readBackendCa, TlsContexts, TlsLoadError } from '../tls/contexts.js';
import { workerCount } from './cluster.js';
import { PosternServer } from './server.js';

export type Reread = { config: Readonly<Config> } | { problems: string[] };

/** The configuration file read and checked again, as check-config does: the config, or the problems by key path. */
export function rereadConfig(file: string): Reread {
  try {
    const config = loadConfig(file);
    const problems = tlsFileProblems(config);
    return problems.length > 0 ? { problems } : { config };
  } catch (err) {
    if (err instanceof ConfigError) return { problems: err.message.split('\n').map((l) => l.trim()).filter((l) => l !== '') };
    return { problems: [(err as Error).message] };
  }
}

/** Settings a reload cannot change (the process was started with them): the keys that changed. */
export function restartOnly(running: Readonly<Config>, next: Readonly<Config>): string[] {
  // The log level is applied in place; the log's destination is opened once, at start.
  const view = (c: Readonly<Config>) => ({ log: { ...c.log, level: undefined }, pid_file: c.pid_file, metrics: c.metrics, user: c.user, group: c.group });
  const a = view(running);
  const b = view(next);
  return (Object.keys(a) as (keyof typeof a)[]).filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k]));
}

/** Certificates, keys and CA files are read as check-config's last step, per server block. */
export function tlsFileProblems(config: Readonly<Config>): string[] {
  const problems: string[] = [];
  config.servers.forEach((srv, i) => {
    const at = config.serverBlocks ? `servers.${i}.` : '';
    for (const check of [
      () => srv.listen.some((l) => l.implicit_tls || l.starttls !== 'off') && new TlsContexts(srv.tls),
      () => srv.backend_tls.ca && readBackendCa(srv.backend_tls.ca),
    ]) {
      try {
        check();
      } catch (err) {
        if (!(err instanceof TlsLoadError)) throw err;
        problems.push(...err.problems.map((p) => at + p));
      }
    }
  });
  return problems;
}

export class Instance {
  #config: Readonly<Config>;
  #server: PosternServer;
  readonly #configFile: string;
  readonly #logger: Logger;
  readonly #retiring = new Set<PosternServer>();
  /** The process runs its own active health checks (one process); a worker hears the primary's. */
  readonly #ownChecks: boolean;
  #checks: HealthChecks | null = null;
  #unsubscribe: (() => void) | null = null;
  #reloading: Promise<boolean> | null = null;
  #again = false;

  constructor(config: Readonly<Config>, configFile: string, logger: Logger) {
    this.#config = config;
    this.#configFile = configFile;
    this.#logger = logger;
    this.#ownChecks = !cluster.isWorker;
    this.#server = new PosternServer(config, logger);
  }

  get server(): PosternServer {
    return this.#server;
  }

  get config(): Readonly<Config> {
    return this.#config;
  }

  /** The process's own active checks (one process; null in a worker), for the metrics. */
  get checker(): HealthChecker | null {
    return this.#checks?.checker ?? null;
  }

  /** Sessions open now, the draining ones of retired configurations included. */
  get connections(): number {
    let n = this.#server.connections;
    for (const s of this.#retiring) n += s.connections;
    return n;
  }

  async start(): Promise<void> {
    await this.#server.start();
    this.#followHealth(this.#config);
  }

  /**
   * Reads the file again and, if it is valid, switches to it. Resolves true when the new
   * configuration is in use. Reloads asked for while one runs are folded into one more.
   */
  reload(): Promise<boolean> {
    if (this.#reloading) {
      this.#again = true;
      return this.#reloading;
    }
    this.#reloading = (async () => {
      let ok = false;
      do {
        this.#again = false;
        ok = await this.#reloadOnce();
      } while (this.#again);
      this.#reloading = null;
      return ok;
    })();
    return this.#reloading;
  }

  async #reloadOnce(): Promise<boolean> {
    const r = rereadConfig(this.#configFile);
    if ('problems' in r) {
      this.#logger.error({ code: 'PSW_RELOAD_REFUSED', problems: r.problems }, 'reload: the configuration has errors; the running one stays');
      return false;
    }
    const fixed = restartOnly(this.#config, r.config);
    // In cluster mode the primary says so, once.
    if (fixed.length > 0 && !cluster.isWorker) this.#logger.warn({ code: 'PSW_RELOAD_PARTIAL', keys: fixed }, 'reload: these settings need a restart; the rest is applied');
    if (!cluster.isWorker && workerCount(r.config) !== workerCount(this.#config)) {
      this.#logger.warn({ code: 'PSW_RELOAD_PARTIAL', workers: r.config.workers }, 'reload: a change of workers between one and several needs a restart; the rest is applied');
    }
    const next = new PosternServer(r.config, this.#logger);
    try {
      await next.start(this.#server);
    } catch (err) {
      this.#logger.error({ code: 'PSW_RELOAD_REFUSED', problems: [(err as Error).message] }, 'reload: a new listener cannot be bound; the running configuration stays');
      await next.stop(0);
      return false;
    }
    const old = this.#server;
    this.#server = next;
    this.#config = r.config;
    this.#logger.level = r.config.log.level;
    await this.#checks?.stop();
    this.#followHealth(r.config);
    this.#retiring.add(old);
    const grace = Math.max(...old.config.servers.map((s) => s.timeouts.idle));
    void old.retire(grace).then(() => this.#retiring.delete(old));
    this.#logger.info({ code: 'PSW_RELOADED', draining: old.connections }, 'reload: the new configuration is in use; sessions under the old one finish on their own');
    return true;
  }

  /** Pool verdicts: the process's own active checks, or (a worker) the primary's over IPC. */
  #followHealth(config: Readonly<Config>): void {
    const apply = (c: HealthChange): void => this.#server.pools.setUp(c.pool, c.server, c.up);
    if (this.#ownChecks) {
      this.#checks = startHealthChecks(config, this.#logger, { configFile: this.#configFile });
      this.#checks.checker.on('change', apply);
    } else {
      // A new subscription asks the primary for a snapshot: the new pools start from the current verdicts.
      this.#unsubscribe?.();
      this.#unsubscribe = onHealthMessages(apply);
    }
  }

  /** A worker the primary no longer needs: stop accepting, let the sessions end by themselves (bounded by timeouts.idle). */
  async drain(): Promise<void> {
    await this.#server.retire(Math.max(...this.#config.servers.map((s) => s.timeouts.idle)));
  }

  /** SIGTERM: the current server and every retiring one drain now (421 to idle sessions). */
  async stop(): Promise<void> {
    this.#unsubscribe?.();
    await Promise.all([this.#server.stop(), ...[...this.#retiring].map((s) => s.stop()), this.#checks?.stop()]);
  }
}
