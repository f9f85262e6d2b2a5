/**
 * The metrics listener (`metrics.listen`): `/metrics` (Prometheus), `/livez`, `/readyz`, and a
 * status page (`/`, `/status`) that polls `/status.json`. It runs where the instance is seen
 * whole: the cluster primary (which asks the workers, ./metrics-cluster.ts), or the one process.
 * Workers only answer the primary. There is no authentication: bind it to loopback or a
 * management network. Its sockets never keep a stopping process alive.
 */
import cluster from 'node:cluster';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { AggregatorRegistry, Registry } from 'prom-client';
import type { Config, ServerConfig } from '../config/schema.js';
import { backendName } from '../domain.js';
import type { Logger } from '../log/logger.js';
import type { HealthChecker } from '../pools/checker.js';
import { poolServers } from '../pools/pool.js';
import type { HealthSnapshotEntry } from '../pools/types.js';
import { ClusterListeners, WorkerMetrics, answerMetrics, type MetricsJson } from './metrics-cluster.js';
import { registerInstanceMetrics, registerProcessMetrics, sessionMetrics } from './metrics.js';
import { STATUS_PAGE } from './status-page.js';

export interface MetricsOptions {
  version: string;
  /** The configuration in use now (a reload replaces it); default: the one started with. */
  config?: () => Readonly<Config>;
  /** The one process's server (its bound listeners); absent in the cluster primary. */
  server?: () => { readonly addresses: readonly (AddressInfo | null)[] };
  /** The instance's health checker now (primary or one process; a reload starts a new one). */
  checker: () => HealthChecker | null;
}

export interface MetricsService {
  /** The bound address of the metrics listener (null in a worker). */
  readonly address: AddressInfo | null;
  stop(): Promise<void>;
}

/** What the endpoints are built from. */
interface Source {
  /** Every process's metrics, merged. */
  collect(): Promise<{ registry: Registry; missing: number }>;
  /** Bound listener addresses, and whether enough are bound to serve. */
  listeners(): { bound: string[]; ready: boolean };
  workers(): number;
  mode: 'single' | 'cluster';
}

let registered = false;

/**
 * Starts the metrics for this process as its role asks: in a worker, answering the primary;
 * elsewhere, the listener. Resolves when it listens (rejects if it cannot bind); null when
 * `metrics` is not configured. Call once per process.
 */
export async function startMetrics(config: Readonly<Config>, logger: Logger, o: MetricsOptions): Promise<MetricsService | null> {
  if (!config.metrics) return null;
  if (registered) throw new Error('startMetrics: called twice in one process');
  registered = true;
  const own = sessionMetrics.registry;
  if (cluster.isWorker) {
    registerProcessMetrics(own);
    const stop = answerMetrics(own);
    return { address: null, stop: async () => stop() };
  }
  const now = o.config ?? (() => config);
  const expected = (): number => now().servers.reduce((n, s) => n + s.listen.length, 0);
  let source: Source;
  let stopSource = (): void => {};
  if (o.server) {
    const server = o.server;
    registerProcessMetrics(own);
    stopSource = registerInstanceMetrics(own, { checker: o.checker, version: o.version, workers: () => 1 });
    source = {
      mode: 'single',
      collect: async () => ({ registry: own, missing: 0 }),
      listeners: () => {
        const bound = server().addresses.filter((a): a is AddressInfo => a !== null).map(addressName);
        return { bound, ready: bound.length >= expected() };
      },
      workers: () => 1,
    };
  } else {
    // The primary serves no sessions: its registry holds what only it knows, and its own process figures.
    const primary = new Registry();
    registerProcessMetrics(primary);
    const listening = new ClusterListeners();
    const workers = new WorkerMetrics();
    const unfollow = registerInstanceMetrics(primary, { checker: o.checker, version: o.version, workers: () => listening.workers });
    source = {
      mode: 'cluster',
      collect: async () => {
        const g = await workers.gather();
        const all: MetricsJson[] = [...g.answers, (await primary.getMetricsAsJSON()) as MetricsJson];
        return { registry: AggregatorRegistry.aggregate(all), missing: g.missing };
      },
      listeners: () => ({ bound: listening.addresses, ready: listening.ready(expected()) > 0 }),
      workers: () => listening.workers,
    };
    stopSource = () => {
      unfollow();
      workers.stop();
      listening.stop();
    };
  }
  let stopping = false;
  const onStop = (): void => void (stopping = true);
  process.once('SIGTERM', onStop);
  process.once('SIGINT', onStop);
  const ready = (): string | null => {
    if (stopping) return 'stopping';
    if (!source.listeners().ready) return 'listeners not bound';
    return backendProblem(now(), o.checker()?.snapshot() ?? null);
  };

  const srv = http.createServer({ requestTimeout: 10_000, headersTimeout: 5_000, keepAliveTimeout: 5_000 }, (req, res) => {
    handle(req, res, { config: now, source, ready, version: o.version, checker: o.checker }).catch((err: Error) => {
      logger.warn({ err: err.message, path: req.url }, 'metrics: request failed');
      if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', `error: ${err.message}\n`);
      else res.destroy();
    });
  });
  // Scrapes never keep a stopping process alive.
  srv.on('connection', (s) => s.unref());
  const { host, port } = config.metrics.listen;
  await new Promise<void>((resolve, reject) => {
    srv.once('error', (err) => reject(new Error(`metrics.listen ${host}:${port}: ${err.message}`)));
    srv.listen({ host, port }, () => {
      srv.removeAllListeners('error');
      resolve();
    });
  });
  srv.unref();
  srv.on('error', (err) => logger.error({ err }, 'metrics listener error'));
  const address = srv.address() as AddressInfo;
  logger.info({ metrics: addressName(address) }, 'metrics listening');
  return {
    address,
    stop: async () => {
      process.removeListener('SIGTERM', onStop);
      process.removeListener('SIGINT', onStop);
      stopSource();
      srv.closeAllConnections();
      await new Promise<void>((r) => srv.close(() => r()));
    },
  };
}

const addressName = (a: { address: string; port: number }): string => (a.address.includes(':') ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`);

/**
 * Why no back-end can be used, or null. Only the pools know: a route to host:port (static or a
 * rule's) counts as usable, and so does an instance without pools (an auth service names its
 * back-ends). With pools and no such route, at least one pool server must be up by its checks.
 */
export function backendProblem(config: Readonly<Config>, snapshot: readonly HealthSnapshotEntry[] | null): string | null {
  if (Object.keys(config.pools).length === 0 || snapshot === null) return null;
  if (config.servers.some(hasDirectRoute)) return null;
  if (snapshot.some((e) => e.up)) return null;
  return `every pool server is down (${snapshot.map((e) => `${e.pool} ${e.server}`).join(', ')})`;
}

function hasDirectRoute(s: ServerConfig): boolean {
  const r = s.route;
  const direct = (t: { pool: string } | { host: string; port: number } | undefined): boolean => t !== undefined && !('pool' in t);
  if ('static' in r) return direct(r.static);
  if ('rules' in r) return r.rules.rules.some((x) => direct(x.to)) || ('to' in r.rules.default && direct(r.rules.default.to));
  return false;
}

interface HandleContext {
  config: () => Readonly<Config>;
  source: Source;
  ready: () => string | null;
  version: string;
  checker: () => HealthChecker | null;
}

async function handle(req: http.IncomingMessage, res: http.ServerResponse, c: HandleContext): Promise<void> {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('Allow', 'GET, HEAD');
    return send(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n');
  }
  const path = new URL(req.url ?? '/', 'http://localhost').pathname;
  switch (path) {
    case '/metrics': {
      const { registry } = await c.source.collect();
      return send(res, 200, registry.contentType, await registry.metrics());
    }
    case '/livez':
      return send(res, 200, 'text/plain; charset=utf-8', 'ok\n');
    case '/readyz': {
      const why = c.ready();
      return why === null ? send(res, 200, 'text/plain; charset=utf-8', 'ok\n') : send(res, 503, 'text/plain; charset=utf-8', `not ready: ${why}\n`);
    }
    case '/':
    case '/status':
      res.setHeader('Content-Security-Policy', "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:");
      return send(res, 200, 'text/html; charset=utf-8', STATUS_PAGE);
    case '/status.json':
      return send(res, 200, 'application/json', `${JSON.stringify(await status(c), null, 1)}\n`);
    default:
      return send(res, 404, 'text/plain; charset=utf-8', 'not found (try /metrics, /livez, /readyz, /status)\n');
  }
}

function send(res: http.ServerResponse, code: number, type: string, body: string): void {
  res.writeHead(code, { 'Content-Type': type, 'Cache-Control': 'no-store', 'X-Content-Type-Options': 'nosniff', 'Content-Length': Buffer.byteLength(body) });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}

/** The values of one metric, by label set (histograms: their `_count`). */
function valuesOf(metrics: MetricsJson, name: string): { labels: Record<string, string | number>; value: number }[] {
  const m = metrics.find((x) => x.name === name);
  if (!m) return [];
  const count = String(m.type) === 'histogram' ? `${name}_count` : undefined;
  return (m.values as { labels: Record<string, string | number>; value: number; metricName?: string }[])
    .filter((v) => count === undefined || v.metricName === count)
    .map((v) => ({ labels: v.labels, value: v.value }));
}

const total = (metrics: MetricsJson, name: string, where: (l: Record<string, string | number>) => boolean = () => true): number =>
  valuesOf(metrics, name).reduce((n, v) => (where(v.labels) ? n + v.value : n), 0);

function byLabel(metrics: MetricsJson, name: string, label: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const v of valuesOf(metrics, name)) {
    const k = String(v.labels[label]);
    out[k] = (out[k] ?? 0) + v.value;
  }
  return out;
}

function describeRoute(s: ServerConfig): string {
  const r = s.route;
  if ('static' in r) return `static ${'pool' in r.static ? `pool ${r.static.pool}` : backendName(r.static)}`;
  if ('auth_http' in r) {
    const u = new URL(r.auth_http.url);
    return `auth_http ${u.origin}${u.pathname}`;
  }
  return `rules (${r.rules.rules.length})${r.rules.auth_http ? ' + auth_http' : ''}`;
}

/** What the status page shows (`/status.json`). */
async function status(c: HandleContext): Promise<Record<string, unknown>> {
  const { registry, missing } = await c.source.collect();
  const m = (await registry.getMetricsAsJSON()) as MetricsJson;
  const why = c.ready();
  const snapshot = new Map((c.checker()?.snapshot() ?? []).map((e) => [`${e.pool} ${e.server}`, e]));
  const pick = (name: string, pool: string, server: string): number | undefined =>
    valuesOf(m, name).find((v) => v.labels.pool === pool && v.labels.server === server)?.value;
  const listeners = c.source.listeners();
  const config = c.config();
  return {
    version: c.version,
    pid: process.pid,
    mode: c.source.mode,
    workers: c.source.workers(),
    ...(missing > 0 ? { workers_not_answering: missing } : {}),
    uptime_seconds: Math.round(process.uptime()),
    ready: { ok: why === null, reason: why ?? 'ok' },
    listeners: { expected: config.servers.reduce((n, s) => n + s.listen.length, 0), bound: listeners.bound },
    servers: config.servers.map((s) => {
      const name = `${s.listen[0]!.address.host}:${s.listen[0]!.address.port}`;
      const mine = (l: Record<string, string | number>): boolean => l.listener === name;
      return {
        server_name: s.server_name,
        listener: name,
        listen: s.listen.map((l) => ({
          address: `${l.address.host}:${l.address.port}`,
          tls: l.implicit_tls ? 'implicit' : l.starttls === 'off' ? 'none' : `starttls ${l.starttls}`,
          smtp_auth: l.smtp_auth,
        })),
        route: describeRoute(s),
        proxy_mode: s.proxy_mode,
        current_sessions: total(m, 'postern_current_sessions', mine),
        sessions: total(m, 'postern_sessions_total', mine),
      };
    }),
    pools: Object.entries(config.pools).map(([name, p]) => ({
      name,
      balance: p.balance,
      servers: poolServers(p).map((s) => {
        const e = snapshot.get(`${name} ${s.id}`);
        return {
          server: s.id,
          backup: s.backup,
          weight: s.weight,
          up: e?.up ?? true,
          checked: e?.checked ?? false,
          reason: e?.reason ?? '',
          since: e ? new Date(e.since).toISOString() : null,
          last_check: e?.lastCheck ? new Date(e.lastCheck).toISOString() : null,
          last_result: e?.lastResult ?? null,
          usable: pick('postern_backend_usable', name, s.id) ?? null,
          connections: pick('postern_backend_current_connections', name, s.id) ?? 0,
        };
      }),
    })),
    totals: {
      current_sessions: total(m, 'postern_current_sessions'),
      sessions: total(m, 'postern_sessions_total'),
      messages: total(m, 'postern_messages_total'),
      recipients: total(m, 'postern_recipients_total'),
      bytes_in: total(m, 'postern_bytes_in_total'),
      bytes_out: total(m, 'postern_bytes_out_total'),
      refusals: total(m, 'postern_check_refusals_total'),
      tls_handshakes: total(m, 'postern_tls_handshakes_total'),
      auth_http_requests: total(m, 'postern_auth_http_duration_seconds'),
      backend_connects: total(m, 'postern_backend_connect_duration_seconds'),
    },
    outcomes: byLabel(m, 'postern_sessions_total', 'outcome'),
    refusals: byLabel(m, 'postern_check_refusals_total', 'code'),
  };
}
