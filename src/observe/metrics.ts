/**
 * Prometheus metrics (prom-client). Two halves:
 *
 * - What sessions do, in every process that runs them (the one process, or each worker): an
 *   observer per server block (sessions, messages, recipients, bytes, TLS handshakes, refusals),
 *   the protocol module wrapped to count sessions as they start and time back-end set-up, and
 *   the base router wrapped to time auth_http. The hot path only adds to plain numbers; the
 *   Prometheus objects read them when scraped. Always on (it costs a few additions per session),
 *   served only when `metrics` is configured (./http.ts).
 * - What the instance knows once (the health checker's verdicts, the version, the workers), in
 *   the process that runs the checks: the primary in cluster mode, else the one process.
 *
 * In cluster mode each worker's registry is collected by the primary (./metrics-cluster.ts) and
 * merged with prom-client's AggregatorRegistry, each metric by its `aggregator`: counters and
 * histograms are summed, so are gauges of connections; a server's usability takes the minimum
 * (0 when any worker holds it out); what only the primary reports passes through (`first`).
 */
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Router } from '../auth/router.js';
import type { ServerConfig } from '../config/schema.js';
import type { ErrorCode } from '../errors.js';
import type { HealthChecker } from '../pools/checker.js';
import type { PoolRegistry } from '../pools/pool.js';
import type { ProtocolModule } from '../protocol.js';
import type { MessageEvent, SessionObserver, SessionRecord } from './observer.js';

/** Seconds: a loopback auth service answers in a millisecond, a busy one in seconds. */
const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** The access record's outcomes that are a client TLS handshake's failure, as the `result` label. */
const TLS_FAILURES: Readonly<Record<string, string>> = {
  PST_TLS_HANDSHAKE: 'failed',
  PST_TLS_HANDSHAKE_TIMEOUT: 'timeout',
  PST_TLS_CLIENT_CERT_MISSING: 'refused',
  PST_TLS_CLIENT_CERT_INVALID: 'refused',
};

/** A reply code as the `result` label of messages and recipients. */
export function replyResult(code: number): string {
  return code >= 200 && code < 300 ? 'accepted' : code >= 400 && code < 500 ? 'deferred' : code >= 500 && code < 600 ? 'rejected' : 'other';
}

/** One server block's counts, as plain numbers (label values in the map keys, joined by a space). */
export interface Tally {
  started: number;
  ended: number;
  bytesIn: number;
  bytesOut: number;
  /** Sessions that went on a kept back-end connection (backend_reuse). */
  reused: number;
  readonly outcomes: Map<string, number>;
  readonly messages: Map<string, number>;
  readonly recipients: Map<string, number>;
  readonly refusals: Map<string, number>;
  /** `protocol result`. */
  readonly tls: Map<string, number>;
}

type Labels = Record<string, string>;

const bump = (m: Map<string, number>, key: string, by = 1): void => void m.set(key, (m.get(key) ?? 0) + by);

/** What one server block's context gets: its observer and its protocol module, instrumented. */
export interface ServerMetrics {
  readonly observer: SessionObserver;
  protocol<R>(p: ProtocolModule<R>): ProtocolModule<R>;
}

/** The metrics of the sessions of one process (one instance per process: {@link sessionMetrics}). */
export class SessionMetrics {
  readonly registry: Registry;
  readonly #tallies = new Map<string, Tally>();
  /** The newest pools of this process (a reload builds new ones). */
  #pools: PoolRegistry | null = null;
  readonly #authHttp: Histogram<'result'>;
  readonly #backendConnect: Histogram<'pool' | 'result'>;

  constructor(registry = new Registry()) {
    this.registry = registry;
    const registers = [registry];
    const tallies = this.#tallies;
    /** A counter over every tally; `fill` gives each of a tally's label sets (the listener's added) and its count. */
    const counter = (name: string, help: string, labelNames: readonly string[], fill: (t: Tally, set: (labels: Labels, v: number) => void) => void): void => {
      new Counter({
        name, help, labelNames: ['listener', ...labelNames], registers, aggregator: 'sum',
        collect() {
          this.reset();
          for (const [listener, t] of tallies) fill(t, (labels, v) => this.inc({ listener, ...labels }, v));
        },
      });
    };
    /** The entries of one of a tally's maps, the key split into `names`. */
    const byKey = (names: readonly string[], map: (t: Tally) => Map<string, number>) => (t: Tally, set: (labels: Labels, v: number) => void): void => {
      for (const [k, v] of map(t)) {
        const values = k.split(' ');
        set(Object.fromEntries(names.map((n, i) => [n, values[i] ?? ''])), v);
      }
    };
    counter('postern_sessions_total', 'Client sessions that ended, by outcome (quit, relayed, client-eof, client-closed, or the error code that ended them).', ['outcome'], byKey(['outcome'], (t) => t.outcomes));
    counter('postern_messages_total', 'Messages in transaction mode, by the back-end\'s reply to the end of data (accepted 2xx, deferred 4xx, rejected 5xx).', ['result'], byKey(['result'], (t) => t.messages));
    counter('postern_recipients_total', 'Recipients of those messages, by the reply the client got for each RCPT.', ['result'], byKey(['result'], (t) => t.recipients));
    counter('postern_bytes_in_total', 'Bytes received from clients (on the wire, TLS included), counted when the session ends.', [], (t, set) => set({}, t.bytesIn));
    counter('postern_backend_reused_sessions_total', 'Sessions that went on a back-end connection kept from an earlier session (backend_reuse) instead of a new one.', [], (t, set) => set({}, t.reused));
    counter('postern_bytes_out_total', 'Bytes sent to clients (on the wire, TLS included), counted when the session ends.', [], (t, set) => set({}, t.bytesOut));
    counter('postern_check_refusals_total', 'Refusals by the checks and limits (connection caps and rates, DNS blocklists, policy servers, rate rules, the AUTH guard), by error code.', ['code'], byKey(['code'], (t) => t.refusals));
    counter('postern_tls_handshakes_total', 'Client TLS handshakes (implicit TLS and STARTTLS), by protocol and result (ok, failed, timeout, refused: client certificate).', ['protocol', 'result'], byKey(['protocol', 'result'], (t) => t.tls));
    new Gauge({
      name: 'postern_current_sessions', help: 'Client sessions open now.', labelNames: ['listener'], registers, aggregator: 'sum',
      collect() {
        this.reset();
        for (const [listener, t] of tallies) this.set({ listener }, t.started - t.ended);
      },
    });
    const pools = (): PoolRegistry | null => this.#pools;
    const eachServer = (f: (labels: { pool: string; server: string }, s: { up: boolean; heldOut: boolean; connections: number }) => void): void => {
      const reg = pools();
      if (!reg) return;
      for (const name of reg.names) {
        const p = reg.get(name)!;
        p.servers.forEach((s, i) => f({ pool: name, server: s.id }, p.state(i)));
      }
    };
    new Gauge({
      name: 'postern_backend_current_connections', help: 'Back-end connections open now to each pool server.', labelNames: ['pool', 'server'], registers, aggregator: 'sum',
      collect() {
        this.reset();
        eachServer((l, s) => this.set(l, s.connections));
      },
    });
    new Gauge({
      name: 'postern_backend_usable', help: '1 when every worker would send sessions to the pool server (active checks up, not held out by failed sessions), else 0.', labelNames: ['pool', 'server'], registers, aggregator: 'min',
      collect() {
        this.reset();
        eachServer((l, s) => this.set(l, s.up && !s.heldOut ? 1 : 0));
      },
    });
    this.#authHttp = new Histogram({
      name: 'postern_auth_http_duration_seconds', help: 'auth_http requests, from the request to the answer (Auth-Wait retries included), by result (ok, reject, or the error code).',
      labelNames: ['result'], buckets: BUCKETS, registers, aggregator: 'sum',
    });
    this.#backendConnect = new Histogram({
      name: 'postern_backend_connect_duration_seconds', help: 'Back-end set-up, connect and replay (greeting, EHLO, STARTTLS, XCLIENT, MAIL, RCPT; failover tries included), by pool and result (ok or the error code).',
      labelNames: ['pool', 'result'], buckets: BUCKETS, registers, aggregator: 'sum',
    });
  }

  /** The counts of the server block named `listener` (its first listen address). */
  tally(listener: string): Tally {
    let t = this.#tallies.get(listener);
    if (!t) {
      t = { started: 0, ended: 0, bytesIn: 0, bytesOut: 0, reused: 0, outcomes: new Map(), messages: new Map(), recipients: new Map(), refusals: new Map(), tls: new Map() };
      this.#tallies.set(listener, t);
    }
    return t;
  }

  get tallies(): ReadonlyMap<string, Tally> {
    return this.#tallies;
  }

  /** One server block: counts under its first listen address (`listener`); `pools`: the process's, for the per-server gauges. */
  forServer(config: ServerConfig, pools: PoolRegistry | null): ServerMetrics {
    const l = config.listen[0]!.address;
    const t = this.tally(`${l.host}:${l.port}`);
    if (pools) this.#pools = pools;
    const backendConnect = this.#backendConnect;
    return {
      observer: tallyObserver(t),
      protocol<R>(p: ProtocolModule<R>): ProtocolModule<R> {
        return {
          name: p.name,
          sessions(listener, stages) {
            const make = p.sessions(listener, stages);
            return () => {
              t.started++;
              return make();
            };
          },
          connect(client, target, envelope, done) {
            const t0 = performance.now();
            return p.connect(client, target, envelope, (err, session) => {
              backendConnect.observe({ pool: target.pool ?? '', result: err ? err.code : 'ok' }, (performance.now() - t0) / 1000);
              done(err, session);
            });
          },
          refusal: (code) => p.refusal(code),
          replyCode: (data) => p.replyCode(data),
          // The optional parts of the seam go through unchanged (kept back-end connections).
          ...(p.release ? { release: (socket: Socket, clean: boolean) => p.release!(socket, clean) } : {}),
          ...(p.close ? { close: () => p.close!() } : {}),
        };
      },
    };
  }

  /** The base router, timed when it answers later (auth_http; static and rule answers are synchronous). */
  timeAuthHttp(inner: Router): Router {
    const h = this.#authHttp;
    return {
      route(req) {
        const t0 = performance.now();
        const d = inner.route(req);
        if (!(d instanceof Promise)) return d;
        const done = (result: string): void => h.observe({ result }, (performance.now() - t0) / 1000);
        return d.then((x) => (done(x.kind === 'error' ? x.code : x.kind), x), (err: unknown) => {
          done('PST_AUTH_HTTP_UNAVAILABLE');
          throw err;
        });
      },
      close: () => inner.close(),
    };
  }
}

/** The observer that adds a server block's records to its tally. */
export function tallyObserver(t: Tally): SessionObserver {
  return {
    sessionEnd(r: SessionRecord): void {
      t.ended++;
      t.bytesIn += r.bytes_in;
      t.bytesOut += r.bytes_out;
      if (r.backend_session !== undefined) t.reused++;
      bump(t.outcomes, r.outcome);
      const failed = TLS_FAILURES[r.outcome];
      if (r.tls !== undefined || failed !== undefined) bump(t.tls, `${r.tls ?? 'unknown'} ${failed ?? 'ok'}`);
      const refused = r.checks?.refused;
      if (refused) for (const x of refused) bump(t.refusals, x.split(':', 1)[0]!);
    },
    message(e: MessageEvent): void {
      bump(t.messages, replyResult(e.code));
      for (const r of e.recipients) bump(t.recipients, replyResult(r.code));
    },
    connectionRefused(code: ErrorCode): void {
      bump(t.refusals, code);
    },
  };
}

/** This process's session metrics (every server block, across reloads). */
export const sessionMetrics = new SessionMetrics();

/** For buildContext: the server block's observer and instrumented protocol module. */
export function serverMetrics(config: ServerConfig, pools: PoolRegistry | null): ServerMetrics {
  return sessionMetrics.forServer(config, pools);
}

/** For createRouter: the base router timed (postern_auth_http_duration_seconds). */
export function timedAuthHttp(router: Router): Router {
  return sessionMetrics.timeAuthHttp(router);
}

/** Process CPU, memory and start time under the usual names; summed across the instance's processes (the oldest start). */
export function registerProcessMetrics(registry: Registry): void {
  const registers = [registry];
  const start = Date.now() / 1000 - process.uptime();
  new Counter({
    name: 'process_cpu_seconds_total', help: 'User and system CPU time spent, in seconds.', registers, aggregator: 'sum',
    collect() {
      const u = process.cpuUsage();
      this.reset();
      this.inc((u.user + u.system) / 1e6);
    },
  });
  new Gauge({ name: 'process_resident_memory_bytes', help: 'Resident memory size in bytes.', registers, aggregator: 'sum', collect() { this.set(process.memoryUsage.rss()); } });
  new Gauge({ name: 'process_start_time_seconds', help: 'Start time of the process since the Unix epoch, in seconds.', registers, aggregator: 'min', collect() { this.set(Math.round(start)); } });
}

export interface InstanceMetricsOptions {
  /** The instance's health checker now (a reload starts a new one); null without one. */
  checker: () => HealthChecker | null;
  version: string;
  /** Processes serving sessions: live workers, or 1. */
  workers: () => number;
}

/** What the process that runs the checks reports once for the instance. Returns the function that stops following the checker. */
export function registerInstanceMetrics(registry: Registry, o: InstanceMetricsOptions): () => void {
  const registers = [registry];
  const checks = new Map<string, number>();
  const lastMs = new Map<string, number>();
  const onCheck = (e: { pool: string; server: string; ok: boolean; ms: number }): void => {
    bump(checks, `${e.pool} ${e.server} ${e.ok ? 'ok' : 'failed'}`);
    lastMs.set(`${e.pool} ${e.server}`, e.ms);
  };
  // Follows the current checker: a reload replaces it (checked every second and at each scrape).
  let followed: HealthChecker | null = null;
  const current = (): HealthChecker | null => {
    const c = o.checker();
    if (c !== followed) {
      followed?.off('check', onCheck);
      c?.on('check', onCheck);
      followed = c;
    }
    return c;
  };
  current();
  const follow = setInterval(current, 1000).unref();
  const snapshot = () => current()?.snapshot() ?? [];
  new Gauge({
    name: 'postern_backend_up', help: 'The active checks\' verdict on each pool server: 1 up, 0 down (1 when the pool is not checked).', labelNames: ['pool', 'server'], registers, aggregator: 'first',
    collect() {
      this.reset();
      for (const e of snapshot()) this.set({ pool: e.pool, server: e.server }, e.up ? 1 : 0);
    },
  });
  new Gauge({
    name: 'postern_backend_last_change_timestamp_seconds', help: 'When each pool server\'s verdict last changed (or the checks started), since the Unix epoch.', labelNames: ['pool', 'server'], registers, aggregator: 'first',
    collect() {
      this.reset();
      for (const e of snapshot()) this.set({ pool: e.pool, server: e.server }, e.since / 1000);
    },
  });
  new Gauge({
    name: 'postern_backend_check_duration_seconds', help: 'How long the last active check of each pool server took.', labelNames: ['pool', 'server'], registers, aggregator: 'first',
    collect() {
      this.reset();
      for (const [k, ms] of lastMs) {
        const [pool, server] = k.split(' ') as [string, string];
        this.set({ pool, server }, ms / 1000);
      }
    },
  });
  new Counter({
    name: 'postern_backend_checks_total', help: 'Active checks of each pool server, by result (ok, failed).', labelNames: ['pool', 'server', 'result'], registers, aggregator: 'first',
    collect() {
      this.reset();
      for (const [k, n] of checks) {
        const [pool, server, result] = k.split(' ') as [string, string, string];
        this.inc({ pool, server, result }, n);
      }
    },
  });
  new Gauge({ name: 'postern_build_info', help: 'Always 1; the version is a label.', labelNames: ['version', 'node'], registers, aggregator: 'first' })
    .set({ version: o.version, node: process.version }, 1);
  new Gauge({ name: 'postern_workers', help: 'Processes serving sessions (workers, or 1).', registers, aggregator: 'first', collect() { this.set(o.workers()); } });
  return () => {
    clearInterval(follow);
    followed?.off('check', onCheck);
  };
}
