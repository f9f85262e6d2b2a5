/**
 * `npm run bench`: Postern (once per proxy_mode), nginx's mail proxy and direct delivery, side by
 * side and interleaved, with Postfix smtp-source as the load and smtp-sink as the one back-end,
 * and one nginx http{} auth responder shared by all proxies. Prints ratios (Postern ÷ nginx,
 * Postern ÷ direct, transaction ÷ session) and writes bench/results.md.
 *
 * Targets: `direct` (smtp-source → smtp-sink), `haproxy` (HAProxy in TCP mode in front of the
 * sink, `nbthread` = BENCH_WORKERS: the floor for any proxy, no SMTP, no auth), `node-relay`
 * (bench/node-relay.mjs: accept, connect, pipe, close on Node's net streams — the floor for any
 * proxy written on Node's public APIs, one process whatever BENCH_WORKERS), `nginx`, `postern` (`proxy_mode: session`, the
 * default: nginx's blind relay after the first RCPT) and `postern-tx` (`proxy_mode: transaction`:
 * every command read, every RCPT routed, DATA bodies relayed with end-of-data detection) — these
 * three ask the one auth responder — `postern-checks` (`postern` plus `checks.policy`, one Postfix
 * policy server, bench/policy-responder.ts in its own process, answering DUNNO, and the
 * per-client limits on: connection and recipient rates and connections held, in the memory
 * store, so high that they never refuse), run next to `postern` in every round for the
 * checks ÷ plain ratios (what the checks cost per message; the responder's own CPU is counted
 * apart), `postern-metrics` (`postern` plus `metrics: { listen: 127.0.0.1:<port> }`, scraped at
 * `/metrics` once a second for the whole run by a fetch loop in this process, as Prometheus
 * would; this process's CPU is not charged to Postern), run next to `postern` in every round for
 * the metrics ÷ plain ratios, and `postern-static` (`route.static: host:port`) and
 * `postern-pool` (`route.static: one`, a pool of that one sink, no active checks), which run back
 * to back in every round for the pool ÷ static ratios (the cost of the pool path), and
 * `postern-reuse` (`postern-tx` plus `backend_reuse: { enabled: true }`: back-end connections kept
 * between client sessions, RSET and straight on with MAIL; xclient off as for every target), run
 * next to `postern-tx` in every round for the reuse ÷ transaction ratios, back-end CPU included.
 *
 * Environment: BENCH_ROUNDS (default 5), BENCH_QUICK=1 (a few messages: a smoke run of the harness), BENCH_ACCESS_LOG=0 (Postern without its access log: on by default, as in production),
 * BENCH_WORKERS (Postern and nginx worker processes, default 1), BENCH_SKIP_IDLE=1,
 * BENCH_TARGETS (a comma-separated subset of the targets, e.g. `postern,postern-checks,nginx`;
 * default all), BENCH_SCENARIOS (a comma-separated subset of `4k` (× 50 sessions), `4k200` (× 200
 * sessions: saturation), `100k`, `latency`; default all). Every run also reads, per target, the CPU
 * of the auth responder and of smtp-sink (the back-end) over the same runs (the targets run one
 * at a time), reported in the "Proxies side by side" section. A run of every target and scenario writes bench/results.md (results-workers-N.md with
 * BENCH_WORKERS=N); a partial run prints its report and writes only its "Checks on" section, when
 * it measured `postern` and `postern-checks`, and its "Metrics on" section, when it measured
 * `postern` and `postern-metrics`, its "Proxies side by side" section, when it measured
 * `nginx` and `haproxy`, and its "Back-end reuse" section, when it measured `nginx`, `postern-tx`
 * and `postern-reuse`, into that file in place of the ones there.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ensurePackages, freePort, logTail, pidsOf, procStats, startAuthResponder, startHaproxy, startNginxMail, startNodeRelay, startPolicyResponder, startPostern, startSink, type Proc } from './procs.js';
import { holdIdle, runSource, runTlsSource } from './load.js';

const quick = process.env.BENCH_QUICK === '1';
const rounds = Number(process.env.BENCH_ROUNDS ?? (quick ? 1 : 5));
const workers = Number(process.env.BENCH_WORKERS ?? 1);
const root = path.resolve(import.meta.dirname, '..');

interface Scenario {
  /** What BENCH_SCENARIOS calls it. */
  key?: ScenarioKey;
  name: string;
  sessions: number;
  messages: number;
  size: number;
  /** STARTTLS at the front (bench/tls-load.ts instead of smtp-source; TLS_TARGETS only). */
  tls?: boolean;
}

const SCENARIO_KEYS = ['4k', '4k200', '100k', 'latency', 'tls'] as const;
type ScenarioKey = (typeof SCENARIO_KEYS)[number];

const ALL_SCENARIOS: Scenario[] = quick
  ? [
      { key: '4k', name: '4 KiB × 5 sessions', sessions: 5, messages: 20, size: 4096 },
      // Bodies spanning many reads: transaction mode's end-of-data detection at chunk boundaries.
      { key: '100k', name: '100 KiB × 2 sessions', sessions: 2, messages: 6, size: 102400 },
    ]
  : [
      { key: '4k', name: '4 KiB × 50 sessions', sessions: 50, messages: 3000, size: 4096 },
      // Saturation: more sessions than either proxy serves at once without queueing, both CPU-bound.
      { key: '4k200', name: '4 KiB × 200 sessions (saturation)', sessions: 200, messages: 4000, size: 4096 },
      { key: '100k', name: '100 KiB × 50 sessions', sessions: 50, messages: 600, size: 102400 },
      { key: 'latency', name: '4 KiB × 1 session (latency)', sessions: 1, messages: 400, size: 4096 },
      { key: 'tls', name: '4 KiB × 50 sessions, STARTTLS at the front', sessions: 50, messages: 1000, size: 4096, tls: true },
    ];
const IDLE = quick ? 200 : 10_000;
const IDLE_SETTLE_MS = quick ? 300 : 2000;

const ALL_TARGETS = ['direct', 'haproxy', 'node-relay', 'nginx', 'postern', 'postern-checks', 'postern-metrics', 'postern-tx', 'postern-reuse', 'postern-static', 'postern-pool'] as const;
type Target = (typeof ALL_TARGETS)[number];
/** The targets of this run, in ALL_TARGETS' order (the order of the tables). */
const TARGETS: Target[] = pick('BENCH_TARGETS', ALL_TARGETS);
/**
 * The order they run in (reversed every other round): ALL_TARGETS' with postern-metrics just
 * before postern, so postern is the neighbour of both postern-metrics and postern-checks, as
 * postern-static is of postern-pool.
 */
const RUN_ORDER: Target[] = TARGETS.includes('postern')
  ? TARGETS.flatMap((t): Target[] => (t === 'postern-metrics' ? [] : t === 'postern' && TARGETS.includes('postern-metrics') ? ['postern-metrics', 'postern'] : [t]))
  : TARGETS;
const SCENARIOS: Scenario[] = ((keys) => ALL_SCENARIOS.filter((sc) => keys.includes(sc.key!)))(pick('BENCH_SCENARIOS', SCENARIO_KEYS));
/** Every target and every scenario: the run that writes a whole results file. */
const complete = TARGETS.length === ALL_TARGETS.length && SCENARIOS.length === ALL_SCENARIOS.length;
/** The targets the STARTTLS scenario runs against (a second listener each, `starttls on`, the test certificate). */
const TLS_TARGETS: readonly Target[] = ['nginx', 'postern'];
const TLS_RUN = SCENARIOS.some((sc) => sc.tls);
const POSTERN_TARGETS: readonly Target[] = ['postern', 'postern-checks', 'postern-metrics', 'postern-tx', 'postern-reuse', 'postern-static', 'postern-pool'];
/** The targets that ask the auth responder. */
const VIA_AUTH: readonly Target[] = ['nginx', 'postern', 'postern-checks', 'postern-metrics', 'postern-tx', 'postern-reuse'];
/** How often the bench scrapes postern-metrics' `/metrics` (Prometheus' common scrape_interval is 15 s; 1 s is a busy one). */
const SCRAPE_MS = 1000;
/**
 * The idle-connection figure: the static and pool targets hold connections as `postern` does
 * before routing (postern-checks too, plus its connection limits: not measured here). HAProxy in
 * TCP mode connects to the sink for each one at once (the greeting is the sink's): its figure is
 * what a proxy that keeps two sockets and no protocol state per client costs.
 */
const PROXIES = (['haproxy', 'nginx', 'postern', 'postern-tx'] as const).filter((t) => TARGETS.includes(t));
/** HAProxy's idle connections: two descriptors each (its maxconn 9000 within a 20,000-descriptor hard limit). */
const HAPROXY_IDLE = 8500;
const POSTERNS = (['postern', 'postern-tx'] as const).filter((t) => TARGETS.includes(t));

/** A comma-separated subset of `all` from the environment, in `all`'s order (all of it when unset). */
function pick<T extends string>(env: string, all: readonly T[]): T[] {
  const v = process.env[env]?.trim();
  if (!v) return [...all];
  const want = v.split(',').map((x) => x.trim()).filter(Boolean);
  const bad = want.filter((x) => !(all as readonly string[]).includes(x));
  if (bad.length || want.length === 0) throw new Error(`${env}: unknown ${bad.join(', ') || '(empty)'}; choose from ${all.join(', ')}`);
  return all.filter((x) => want.includes(x));
}

interface Sample {
  msgsPerSec: number;
  cpuMsPer1000: number;
  /** The part of cpuMsPer1000 spent in user mode (the rest is the kernel's, on the proxy's behalf). */
  userCpuMsPer1000: number;
  msPerMsg: number;
  /** postern-checks: the policy responder's CPU over the same run, per 1000 messages (0 for the others). */
  responderCpuMsPer1000: number;
  /** The nginx http{} auth responder's CPU over the same run, per 1000 messages (about 0 for the targets that do not ask it). */
  authCpuMsPer1000: number;
  /** smtp-sink's (the back-end's) CPU over the same run, per 1000 messages. */
  sinkCpuMsPer1000: number;
  /** postern-metrics: `/metrics` scrapes started during the run (0 for the others). */
  scrapes: number;
}

/** The scrape loop's tally over the whole run (warm-up included). */
interface Scrapes {
  /** Scrapes answered 200 with a body. */
  ok: number;
  /** Scrapes that failed: a connection error, a status other than 200, or an empty body. */
  failed: number;
  /** Bytes of the last body. */
  lastBytes: number;
  /** The slowest scrape, ms. */
  maxMs: number;
  /** The final scrape's sum of `postern_sessions_total{outcome="relayed"}`, and what smtp-source sent to postern-metrics. */
  relayed: number | null;
  sent: number;
  /** Postern's CPU per scrape, ms, over IDLE_SCRAPES scrapes back to back after the measurements (no mail). */
  idleCpuMsPerScrape: number;
}

/** Scrapes back to back at the end, for Postern's CPU per scrape (the 10 ms clock tick needs many). */
const IDLE_SCRAPES = quick ? 5 : 200;

/**
 * Scrapes `/metrics` every SCRAPE_MS as Prometheus would (one keep-alive connection, one request
 * at a time: a scrape still running when the next is due is not doubled).
 */
function startScraper(port: number): { tally: Scrapes; started(): number; scrape(): Promise<string | null>; stop(): Promise<void> } {
  const tally: Scrapes = { ok: 0, failed: 0, lastBytes: 0, maxMs: 0, relayed: null, sent: 0, idleCpuMsPerScrape: NaN };
  let started = 0;
  let inflight: Promise<string | null> | null = null;
  const scrape = (): Promise<string | null> => {
    started++;
    const t0 = performance.now();
    return fetch(`http://127.0.0.1:${port}/metrics`)
      .then(async (r) => {
        const text = await r.text();
        if (r.status !== 200 || !text) throw new Error(`status ${r.status}, ${text.length} bytes`);
        tally.ok++;
        tally.lastBytes = Buffer.byteLength(text);
        return text;
      })
      .catch((err: unknown) => {
        tally.failed++;
        console.error(`scrape of postern-metrics failed: ${String(err)}`);
        return null;
      })
      .finally(() => {
        tally.maxMs = Math.max(tally.maxMs, performance.now() - t0);
      });
  };
  const tick = (): void => {
    if (inflight) return;
    inflight = scrape().finally(() => (inflight = null));
  };
  // The first at once, as Prometheus scrapes a target it has just found.
  tick();
  const timer = setInterval(tick, SCRAPE_MS);
  return {
    tally,
    started: () => started,
    scrape,
    async stop() {
      clearInterval(timer);
      await inflight;
    },
  };
}

/** The sum of a counter's samples whose labels include `match` (Prometheus text format). */
function counterSum(text: string, name: string, match: string): number {
  let sum = 0;
  for (const line of text.split('\n')) if (line.startsWith(`${name}{`) && line.includes(match)) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  return sum;
}

/** Per target, over the warm-up and every round: what smtp-source sent and what reached the sink. */
interface Delivery {
  sent: number;
  delivered: number;
  /** smtp-source runs that exited non-zero or printed a warning or fatal error. */
  sourceErrors: number;
}

type Idle = Partial<Record<(typeof PROXIES)[number], { bytesPerConn: number; dropped: number }>>;

function mapValues<K extends string, V, W>(o: Record<K, V>, f: (v: V) => W): Record<K, W> {
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, f(v as V)])) as Record<K, W>;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** a ÷ b, or '–' when it means nothing (a CPU figure below the 10 ms clock tick in a smoke run). */
function ratio(a: number, b: number): string {
  return b > 0 && Number.isFinite(a / b) ? (a / b).toFixed(2) : '–';
}

async function main(): Promise<void> {
  ensurePackages();
  // Postern runs from dist/, built from the working tree as it is now (others may be editing src/).
  const build = spawnSync('npm', ['run', 'build'], { cwd: root, encoding: 'utf8' });
  if (build.status !== 0) throw new Error(`npm run build failed:\n${build.stdout}${build.stderr}`);
  const started: Proc[] = [];
  const start = async <P extends Proc>(p: Promise<P>): Promise<P> => {
    const proc = await p;
    started.push(proc);
    return proc;
  };
  const sink = await start(startSink());
  const has = (t: Target): boolean => TARGETS.includes(t);
  const posterns: Partial<Record<Target, Proc & { log: string }>> = {};
  let nginx: Proc | null = null;
  let haproxy: Proc | null = null;
  let nodeRelay: Proc | null = null;
  let auth: Proc | null = null;
  let policy: Awaited<ReturnType<typeof startPolicyResponder>> | null = null;
  let metricsPort = 0;
  try {
    auth = TARGETS.some((t) => VIA_AUTH.includes(t)) ? await start(startAuthResponder(sink.port)) : null;
    if (has('haproxy')) haproxy = await start(startHaproxy(sink.port, workers));
    if (has('node-relay')) nodeRelay = await start(startNodeRelay(sink.port));
    if (has('nginx')) nginx = await start(startNginxMail(auth!.port, workers, TLS_RUN));
    const viaAuth = { kind: 'auth_http', authPort: auth?.port ?? 0 } as const;
    if (has('postern')) posterns.postern = await start(startPostern(viaAuth, workers, { name: 'postern', proxyMode: 'session', tls: TLS_RUN }));
    if (has('postern-checks')) {
      policy = await start(startPolicyResponder());
      posterns['postern-checks'] = await start(startPostern(viaAuth, workers, { name: 'postern-checks', proxyMode: 'session', checks: { policyPort: policy.port } }));
    }
    if (has('postern-metrics')) {
      metricsPort = await freePort();
      posterns['postern-metrics'] = await start(startPostern(viaAuth, workers, { name: 'postern-metrics', proxyMode: 'session', metricsPort }));
    }
    if (has('postern-tx')) posterns['postern-tx'] = await start(startPostern(viaAuth, workers, { name: 'postern-tx', proxyMode: 'transaction' }));
    if (has('postern-reuse')) posterns['postern-reuse'] = await start(startPostern(viaAuth, workers, { name: 'postern-reuse', proxyMode: 'transaction', backendReuse: true }));
    if (has('postern-static')) posterns['postern-static'] = await start(startPostern({ kind: 'static', sinkPort: sink.port }, workers, { name: 'postern-static' }));
    if (has('postern-pool')) posterns['postern-pool'] = await start(startPostern({ kind: 'pool', sinkPort: sink.port }, workers, { name: 'postern-pool' }));
  } catch (err) {
    for (const p of started.reverse()) await p.stop();
    throw err;
  }
  const procs: Partial<Record<Target, Proc>> = { ...(haproxy ? { haproxy } : {}), ...(nodeRelay ? { 'node-relay': nodeRelay } : {}), ...(nginx ? { nginx } : {}), ...posterns };
  const ports: Partial<Record<Target, number>> = { direct: sink.port, ...mapValues(procs as Record<string, Proc>, (p) => p.port) };
  const logs: Partial<Record<Target, string>> = mapValues(posterns as Record<string, Proc & { log: string }>, (p) => p.log);
  const results = new Map<string, Map<Target, Sample[]>>();
  const delivery = Object.fromEntries(TARGETS.map((t) => [t, { sent: 0, delivered: 0, sourceErrors: 0 }])) as Record<Target, Delivery>;
  let lost = 0;
  // From here to the end of the measurements, as a Prometheus server would.
  const scraper = metricsPort ? startScraper(metricsPort) : null;

  /**
   * One smtp-source run against a target, with its sink count and the CPU of the target's process
   * tree (and, for postern-checks, of the policy responder's, apart).
   */
  const measure = async (t: Target, sc: Scenario): Promise<Sample> => {
    const before = sink.received();
    const pids = procs[t] ? pidsOf(procs[t]!) : [];
    const rpids = t === 'postern-checks' && policy ? pidsOf(policy) : [];
    const apids = auth ? pidsOf(auth) : [];
    const spids = pidsOf(sink);
    const scrapes0 = scraper?.started() ?? 0;
    const stats0 = procStats(pids);
    const cpu0 = stats0.cpuMs;
    const rcpu0 = procStats(rpids).cpuMs;
    const acpu0 = procStats(apids).cpuMs;
    const scpu0 = procStats(spids).cpuMs;
    const r = sc.tls ? await runTlsSource(procs[t]!.tlsPort!, sc) : await runSource(ports[t]!, sc);
    const stats1 = procStats(pids);
    const cpu1 = stats1.cpuMs;
    const rcpu1 = procStats(rpids).cpuMs;
    const acpu1 = procStats(apids).cpuMs;
    const scrapes = t === 'postern-metrics' ? (scraper?.started() ?? 0) - scrapes0 : 0;
    const got = (await sink.waitReceived(before + sc.messages, 10_000)) - before;
    // After the sink has counted them all: its last sessions' QUITs may still be on their way.
    const scpu1 = procStats(spids).cpuMs;
    const d = delivery[t];
    d.sent += sc.messages;
    d.delivered += got;
    if (r.failed) d.sourceErrors++;
    if (r.failed || got !== sc.messages) {
      lost += Math.abs(sc.messages - got) || 1; // missing or duplicated messages, or at least the failed run
      console.error(`LOST: ${t} ${sc.name}: sink received ${got} of ${sc.messages}; smtp-source exit ${r.code}: ${r.stderr.slice(0, 500)}`);
      const log = logs[t] ? logTail(logs[t]!) : '';
      if (log) console.error(`${t} log (${logs[t]}), last lines:\n${log}`);
    }
    return {
      msgsPerSec: sc.messages / (r.ms / 1000),
      cpuMsPer1000: ((cpu1 - cpu0) / sc.messages) * 1000,
      userCpuMsPer1000: ((stats1.userMs - stats0.userMs) / sc.messages) * 1000,
      msPerMsg: r.ms / sc.messages,
      responderCpuMsPer1000: ((rcpu1 - rcpu0) / sc.messages) * 1000,
      authCpuMsPer1000: ((acpu1 - acpu0) / sc.messages) * 1000,
      sinkCpuMsPer1000: ((scpu1 - scpu0) / sc.messages) * 1000,
      scrapes,
    };
  };

  try {
    // Warm-up: JIT, pools and caches, so round 1 is not an outlier. Its deliveries are checked too.
    for (const t of RUN_ORDER) await measure(t, { name: 'warm-up', sessions: 10, messages: quick ? 10 : 300, size: 4096 });
    for (let round = 0; round < rounds; round++) {
      for (const sc of SCENARIOS) {
        const order = round % 2 === 0 ? RUN_ORDER : [...RUN_ORDER].reverse();
        for (const t of order) {
          if (sc.tls && !TLS_TARGETS.includes(t)) continue;
          const s = await measure(t, sc);
          if (!results.has(sc.name)) results.set(sc.name, new Map());
          const m = results.get(sc.name)!;
          if (!m.has(t)) m.set(t, []);
          m.get(t)!.push(s);
          process.stderr.write(`round ${round + 1}/${rounds} ${sc.name} ${t}: ${s.msgsPerSec.toFixed(0)} msg/s, ${s.cpuMsPer1000.toFixed(0)} CPU ms/1000\n`);
        }
      }
    }
    // The policy server was asked once per message (smtp-source sends one recipient), every
    // request well formed: otherwise postern-checks measured something else.
    let policyCount: PolicyCount | null = null;
    if (policy) {
      const c = await policy.count();
      policyCount = { ...c, sent: delivery['postern-checks'].sent };
      if (c.requests !== policyCount.sent || c.malformed > 0) {
        lost += Math.abs(policyCount.sent - c.requests) + c.malformed || 1;
        console.error(`LOST: the policy responder answered ${c.requests} requests (${c.malformed} lines without '=') for ${policyCount.sent} messages sent to postern-checks`);
      }
    }
    // Every session postern-metrics relayed is in its counters (sessions are counted as they end,
    // a moment after the sink has the message: asked again for up to 5 s), and no scrape failed.
    let scrapes: Scrapes | null = null;
    if (scraper) {
      await scraper.stop();
      scrapes = scraper.tally;
      scrapes.sent = delivery['postern-metrics'].sent;
      for (const deadline = Date.now() + 5000; ; await new Promise((r) => setTimeout(r, 100))) {
        const text = await scraper.scrape();
        scrapes.relayed = text === null ? null : counterSum(text, 'postern_sessions_total', 'outcome="relayed"');
        if (scrapes.relayed === scrapes.sent || Date.now() > deadline) break;
      }
      const pids = pidsOf(procs['postern-metrics']!);
      const cpu0 = procStats(pids).cpuMs;
      for (let i = 0; i < IDLE_SCRAPES; i++) await scraper.scrape();
      scrapes.idleCpuMsPerScrape = (procStats(pids).cpuMs - cpu0) / IDLE_SCRAPES;
      if (scrapes.relayed !== scrapes.sent || scrapes.failed > 0) {
        lost += Math.abs(scrapes.sent - (scrapes.relayed ?? 0)) + scrapes.failed || 1;
        console.error(`LOST: postern-metrics counted ${scrapes.relayed} relayed sessions for ${scrapes.sent} messages sent; ${scrapes.failed} scrape(s) failed`);
      }
    }
    // smtp-sink counts a session when it ends: past backend_reuse's idle time (2 s) every kept connection has.
    let sinkSessions = 0;
    if (has('postern-reuse')) {
      await new Promise((r) => setTimeout(r, 3000));
      sinkSessions = sink.sessions();
    }
    let idle: Idle | null = null;
    if (process.env.BENCH_SKIP_IDLE !== '1' && PROXIES.length) {
      idle = {};
      for (const t of PROXIES) idle[t] = await holdIdle(procs[t]!, t === 'haproxy' ? Math.min(IDLE, HAPROXY_IDLE) : IDLE, IDLE_SETTLE_MS);
      for (const t of PROXIES) lost += idle[t]!.dropped;
    }
    const report = render(results, delivery, idle, policyCount, scrapes, sinkSessions);
    process.stdout.write(report);
    const file = path.join(root, 'bench', quick ? 'results.quick.md' : workers === 1 ? 'results.md' : `results-workers-${workers}.md`);
    if (complete || quick) writeFileSync(file, report);
    else {
      const written: string[] = [];
      if (has('postern') && has('postern-checks')) {
        spliceSection(file, CHECKS_HEADING, checksSection(withBoth(results, 'postern-checks', 'postern'), policyCount, true));
        written.push(CHECKS_HEADING);
      }
      if (has('postern') && has('postern-metrics')) {
        spliceSection(file, METRICS_HEADING, metricsSection(withBoth(results, 'postern-metrics', 'postern'), scrapes, true));
        written.push(METRICS_HEADING);
      }
      if (has('nginx') && has('haproxy')) {
        spliceSection(file, CAPACITY_HEADING, capacitySection(results, true));
        written.push(CAPACITY_HEADING);
      }
      if (has('nginx') && has('postern-tx') && has('postern-reuse')) {
        spliceSection(file, REUSE_HEADING, reuseSection(results, true, delivery, sinkSessions));
        written.push(REUSE_HEADING);
      }
      if (written.length) process.stderr.write(`partial run: wrote its ${written.map((h) => `"${h}"`).join(' and ')} section(s) into ${path.relative(root, file)}\n`);
      else process.stderr.write(`partial run: ${path.relative(root, file)} left as it is\n`);
    }
  } finally {
    await scraper?.stop();
    for (const p of started.reverse()) await p.stop();
  }
  if (lost > 0) {
    console.error(`FAIL: ${lost} messages or connections lost (or duplicated, or smtp-source errors)`);
    process.exitCode = 1;
  }
}

/** The commit Postern was built from, and whether src/ had uncommitted changes at build time. */
function source(): string {
  const git = (...args: string[]): string => spawnSync('git', args, { cwd: root, encoding: 'utf8' }).stdout?.trim() ?? '';
  const head = git('rev-parse', '--short', 'HEAD') || '?';
  const dirty = git('status', '--porcelain', '--', 'src').split('\n').filter(Boolean).length;
  return `commit ${head}${dirty ? ` plus uncommitted changes to ${dirty} file(s) in src/` : ''}`;
}

interface PolicyCount {
  /** Requests the policy responder answered, over the whole run (warm-up included). */
  requests: number;
  /** Request lines without `=`. */
  malformed: number;
  /** Messages smtp-source sent to postern-checks over the same time. */
  sent: number;
}

const CHECKS_HEADING = '## Checks on (policy server + limits)';
const KEYS: (keyof Sample)[] = ['msgsPerSec', 'cpuMsPer1000', 'msPerMsg'];
const RATIO_NOTE = 'Ratio of the medians; in brackets the lowest and highest per-round ratio. msg/s above 1 is faster, CPU and ms / msg above 1 cost more.';

const medOf = (m: Map<Target, Sample[]>) => (t: Target, k: keyof Sample): number => median((m.get(t) ?? []).map((s) => s[k]));

/**
 * f over a's samples ÷ g over b's (the same round's, which share its noise): the ratio of the
 * medians and, in brackets, the spread of the per-round ratios.
 */
function pairCell(m: Map<Target, Sample[]>, a: Target, b: Target, f: (s: Sample) => number, g: (s: Sample) => number = f): string {
  const as = m.get(a) ?? [];
  const bs = m.get(b) ?? [];
  const per = as.map((s, i) => (bs[i] && g(bs[i]!) > 0 ? f(s) / g(bs[i]!) : NaN)).filter(Number.isFinite);
  const spread = per.length > 1 ? ` (${Math.min(...per).toFixed(2)}–${Math.max(...per).toFixed(2)})` : '';
  const r = ratio(median(as.map(f)), median(bs.map(g)));
  return r === '–' ? r : r + spread;
}

/** The scenarios in which both a and b ran (the STARTTLS one runs only TLS_TARGETS). */
function withBoth(results: Map<string, Map<Target, Sample[]>>, a: Target, b: Target): Map<string, Map<Target, Sample[]>> {
  return new Map([...results].filter(([, m]) => m.has(a) && m.has(b)));
}

/** Pairs that ran next to each other in every round: one row per scenario. */
function pairRows(results: Map<string, Map<Target, Sample[]>>, a: Target, b: Target): string[] {
  return [...results].filter(([, m]) => m.has(a) && m.has(b)).map(([name, m]) => `| ${name} | ${KEYS.map((k) => pairCell(m, a, b, (s) => s[k])).join(' | ')} |`);
}

/**
 * postern-checks against postern: the section the issue asks for (the CPU the policy check and
 * the limits add per message, as a ratio), and the policy responder's own CPU apart. `standalone`:
 * it is written into a results file whose other figures come from another run, so it says which
 * run it comes from and repeats its absolute figures.
 */
function checksSection(results: Map<string, Map<Target, Sample[]>>, policy: PolicyCount | null, standalone: boolean): string[] {
  const lines: string[] = [CHECKS_HEADING, ''];
  lines.push(
    '`postern-checks` is `postern` (`proxy_mode: session`, the same auth responder and sink) plus `checks.policy: [{ server: tcp:127.0.0.1:<port> }]` — a Postfix policy server ' +
      '(bench/policy-responder.ts, in its own process) that reads each request up to its empty line and answers `action=DUNNO` on a connection kept open — and the per-client limits: ' +
      '`limits.connection_rate` and `limits.recipient_rate` at `{ max: 1000000, per: 1m }` and `limits.max_connections_per_client: 100000`, in the default memory store (never refused). ' +
      'The two run next to each other in every round. Postern\'s CPU is its own process tree\'s; the responder\'s, over the same runs, is charged to its own process tree and shown apart, per message of postern-checks.',
    '',
  );
  if (standalone) {
    const ts = TARGETS.map((t) => `\`${t}\``).join(', ');
    lines.push(`Run: ${new Date().toISOString()}; ${source()}; ${ts} only, ${rounds} interleaved round(s), ${workers} worker process(es) each, medians shown; ${machine()}. The figures above this section come from the run named at the top of the file.`, '');
    lines.push('| Scenario | Target | msg/s | CPU ms / 1000 msg | ms / msg |', '| --- | --- | ---: | ---: | ---: |');
    for (const [name, m] of results) {
      const med = medOf(m);
      for (const t of TARGETS.filter((x) => m.has(x))) lines.push(`| ${name} | ${t} | ${med(t, 'msgsPerSec').toFixed(0)} | ${t === 'direct' ? '–' : med(t, 'cpuMsPer1000').toFixed(0)} | ${med(t, 'msPerMsg').toFixed(2)} |`);
      lines.push(`| ${name} | policy responder (during postern-checks) | – | ${med('postern-checks', 'responderCpuMsPer1000').toFixed(0)} | – |`);
    }
    lines.push('');
  }
  lines.push(`postern-checks ÷ postern. ${RATIO_NOTE} The last three columns are CPU: the responder's per message (absolute), the responder's ÷ postern's, and postern-checks' and the responder's together ÷ postern's.`, '');
  lines.push(
    '| Scenario | msg/s | CPU ms / 1000 msg | ms / msg | responder CPU ms / 1000 msg | responder ÷ postern (CPU) | (postern-checks + responder) ÷ postern (CPU) |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
  );
  const cpu = (s: Sample): number => s.cpuMsPer1000;
  for (const [name, m] of results) {
    lines.push(
      `| ${name} | ${KEYS.map((k) => pairCell(m, 'postern-checks', 'postern', (s) => s[k])).join(' | ')} | ${medOf(m)('postern-checks', 'responderCpuMsPer1000').toFixed(0)} | ` +
        `${pairCell(m, 'postern-checks', 'postern', (s) => s.responderCpuMsPer1000, cpu)} | ${pairCell(m, 'postern-checks', 'postern', (s) => s.cpuMsPer1000 + s.responderCpuMsPer1000, cpu)} |`,
    );
  }
  const intervals = cpuIntervals(results, 'postern-checks', 'postern');
  if (intervals.length) lines.push('', `CPU per message, postern-checks ÷ postern, geometric mean of the per-round ratios: ${intervals.join('; ')}.`);
  if (policy) {
    lines.push('', `Policy requests answered: ${policy.requests} for ${policy.sent} messages sent to postern-checks (one recipient each, warm-up included); request lines without \`=\`: ${policy.malformed}.`);
  }
  return lines;
}

/**
 * CPU per message, a ÷ b: the per-round ratios' geometric mean and its 95 % interval (t ≈ 2), as
 * bench/pool-ab.ts gives them, per scenario with at least 3 rounds.
 */
function cpuIntervals(results: Map<string, Map<Target, Sample[]>>, a: Target, b: Target): string[] {
  const intervals: string[] = [];
  for (const [name, m] of results) {
    const as = m.get(a) ?? [];
    const bs = m.get(b) ?? [];
    const logs = as.map((s, i) => Math.log(s.cpuMsPer1000 / (bs[i]?.cpuMsPer1000 ?? NaN))).filter(Number.isFinite);
    if (logs.length < 3) continue;
    const mean = logs.reduce((acc, x) => acc + x, 0) / logs.length;
    const se = Math.sqrt(logs.reduce((acc, x) => acc + (x - mean) ** 2, 0) / (logs.length - 1) / logs.length);
    intervals.push(`${name}: ${Math.exp(mean).toFixed(3)} (95 % interval ${Math.exp(mean - 2 * se).toFixed(3)}–${Math.exp(mean + 2 * se).toFixed(3)}, ${logs.length} rounds)`);
  }
  return intervals;
}

const CAPACITY_HEADING = '## Proxies side by side: CPU per message of the proxy, the auth responder and the back-end';

/**
 * Every target against nginx, with the CPU the shared processes spend on its messages: the nginx
 * http{} auth responder's and smtp-sink's, each its own process tree, read over the same runs
 * (the targets run one at a time). `standalone` as for checksSection. A partial run writes it
 * when it measured nginx and haproxy.
 */
function capacitySection(results: Map<string, Map<Target, Sample[]>>, standalone: boolean): string[] {
  const lines: string[] = [CAPACITY_HEADING, ''];
  lines.push(
    '`haproxy` is HAProxy in TCP mode (`mode tcp`, `balance roundrobin`, one server: the sink; `nbthread` = the worker count; no logging): the floor for any proxy, no SMTP and no auth. ' +
      '`node-relay` is bench/node-relay.mjs, accept, connect, pipe and close on Node\'s net streams, nothing else: the floor for a proxy on Node\'s public APIs. "of it user" is the part of the proxy\'s CPU in user mode; the rest is the kernel\'s (system calls, loopback TCP), about the same for every proxy. ' +
      'CPU per 1000 messages, each its own process tree over the same runs: the proxy\'s; the nginx http{} auth responder\'s (nginx and the Postern targets that ask it; about 0 for the others); smtp-sink\'s, the back-end. ' +
      '"proxy + responder" is what issue 13\'s CPU targets compare. The ÷ nginx columns are ratios of the medians; in brackets the lowest and highest per-round ratio (each round runs every target once, interleaved).',
    '',
  );
  if (standalone) {
    const ts = TARGETS.map((t) => `\`${t}\``).join(', ');
    lines.push(`Run: ${new Date().toISOString()}; ${source()}; ${ts} only; scenarios ${SCENARIOS.map((sc) => `\`${sc.key}\``).join(', ')}; ${rounds} interleaved round(s), ${workers} worker process(es) (or HAProxy thread(s)) each, medians shown; ${machine()}; load average ${os.loadavg().map((x) => x.toFixed(1)).join(', ')} at the end. The figures above this section come from the run named at the top of the file.`, '');
  }
  lines.push(
    '| Scenario | Target | msg/s | proxy CPU ms / 1000 msg | of it user | auth responder CPU | back-end CPU | proxy + responder CPU | ÷ nginx (msg/s) | ÷ nginx (proxy CPU) | ÷ nginx (proxy + responder CPU) | ÷ nginx (back-end CPU) |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  );
  const both = (s: Sample): number => s.cpuMsPer1000 + s.authCpuMsPer1000;
  for (const [name, m] of results) {
    const med = medOf(m);
    for (const t of TARGETS.filter((x) => m.has(x))) {
      const proxy = t !== 'direct';
      const vs = (f: (s: Sample) => number): string => (TARGETS.includes('nginx') && t !== 'nginx' ? pairCell(m, t, 'nginx', f) : '');
      lines.push(
        `| ${name} | ${t} | ${med(t, 'msgsPerSec').toFixed(0)} | ${proxy ? med(t, 'cpuMsPer1000').toFixed(0) : '–'} | ${proxy ? med(t, 'userCpuMsPer1000').toFixed(0) : '–'} | ${med(t, 'authCpuMsPer1000').toFixed(0)} | ${med(t, 'sinkCpuMsPer1000').toFixed(0)} | ` +
          `${proxy ? median((m.get(t) ?? []).map(both)).toFixed(0) : '–'} | ${vs((s) => s.msgsPerSec)} | ${proxy ? vs((s) => s.cpuMsPer1000) : ''} | ${proxy ? vs(both) : ''} | ${vs((s) => s.sinkCpuMsPer1000)} |`,
      );
    }
  }
  if (TARGETS.includes('nginx')) {
    const intervals = TARGETS.filter((t) => t !== 'direct' && t !== 'nginx').flatMap((t) => cpuIntervals(results, t, 'nginx').map((x) => `${t} ${x}`));
    if (intervals.length) lines.push('', `Proxy CPU per message ÷ nginx's, geometric mean of the per-round ratios: ${intervals.join('; ')}.`);
  }
  return lines;
}

const REUSE_HEADING = '## Back-end reuse (postern-reuse ÷ nginx and ÷ postern-tx)';

/**
 * postern-reuse against nginx and against postern-tx (the same configuration without
 * backend_reuse): messages/s, CPU per message of the proxy, of the proxy and the auth responder,
 * and of the back-end (which reuse should lower: no connect, greeting, EHLO and QUIT per session).
 * `standalone` as for checksSection; a partial run writes it when it measured nginx, postern-tx
 * and postern-reuse.
 */
function reuseSection(results: Map<string, Map<Target, Sample[]>>, standalone: boolean, delivery: Record<Target, Delivery>, sinkSessions: number): string[] {
  const lines: string[] = [REUSE_HEADING, ''];
  lines.push(
    '`postern-reuse` is `postern-tx` (`proxy_mode: transaction`, the same auth responder and sink, `xclient: false`) plus `backend_reuse: { enabled: true }` (the defaults: idle 2 s, max_sessions 100, max_age 300 s, per_backend 64): ' +
      'a session that ends with QUIT leaves its back-end connection, after RSET, to the next session, which goes on with MAIL at once. smtp-source still opens a new session per message at the front, so the proxy\'s work per session stays; ' +
      'the back-end sees fewer connections, greetings, EHLOs and QUITs. CPU per 1000 messages, each its own process tree over the same runs, as in "Proxies side by side". ' +
      `${RATIO_NOTE} The sink count holds for it as for every target (Delivery: no message lost or doubled).`,
    '',
  );
  const both = (s: Sample): number => s.cpuMsPer1000 + s.authCpuMsPer1000;
  if (standalone) {
    const ts = TARGETS.map((t) => `\`${t}\``).join(', ');
    lines.push(`Run: ${new Date().toISOString()}; ${source()}; ${ts} only; scenarios ${SCENARIOS.map((sc) => `\`${sc.key}\``).join(', ')}; ${rounds} interleaved round(s), ${workers} worker process(es) each, medians shown; ${machine()}; load average ${os.loadavg().map((x) => x.toFixed(1)).join(', ')} at the end. The figures above this section come from the run named at the top of the file.`, '');
    lines.push(
      '| Scenario | Target | msg/s | proxy CPU ms / 1000 msg | auth responder CPU | back-end CPU | proxy + responder CPU | ms / msg |',
      '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    );
    for (const [name, m] of results) {
      const med = medOf(m);
      for (const t of (['nginx', 'postern-tx', 'postern-reuse'] as const).filter((x) => m.has(x))) {
        lines.push(
          `| ${name} | ${t} | ${med(t, 'msgsPerSec').toFixed(0)} | ${med(t, 'cpuMsPer1000').toFixed(0)} | ${med(t, 'authCpuMsPer1000').toFixed(0)} | ${med(t, 'sinkCpuMsPer1000').toFixed(0)} | ${median((m.get(t) ?? []).map(both)).toFixed(0)} | ${med(t, 'msPerMsg').toFixed(2)} |`,
        );
      }
    }
    lines.push('');
  }
  lines.push(
    '| Scenario | postern-reuse ÷ | msg/s | proxy CPU | proxy + responder CPU | back-end CPU | ms / msg |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: |',
  );
  for (const [name, m] of withBoth(results, 'postern-reuse', 'postern-tx')) {
    for (const b of (['nginx', 'postern-tx'] as const).filter((x) => m.has(x))) {
      const cell = (f: (s: Sample) => number): string => pairCell(m, 'postern-reuse', b, f);
      lines.push(`| ${name} | ${b} | ${cell((s) => s.msgsPerSec)} | ${cell((s) => s.cpuMsPer1000)} | ${cell(both)} | ${cell((s) => s.sinkCpuMsPer1000)} | ${cell((s) => s.msPerMsg)} |`);
    }
  }
  const intervals = (['nginx', 'postern-tx'] as const).filter((b) => TARGETS.includes(b)).flatMap((b) => cpuIntervals(results, 'postern-reuse', b).map((x) => `÷ ${b} ${x}`));
  if (intervals.length) lines.push('', `Proxy CPU per message, postern-reuse ÷ the other, geometric mean of the per-round ratios: ${intervals.join('; ')}.`);
  // Every other target opens one back-end session per message (smtp-source sends one per session).
  const others = TARGETS.filter((t) => t !== 'postern-reuse').reduce((n, t) => n + delivery[t].delivered, 0);
  const reused = sinkSessions - others;
  lines.push(
    '',
    `Back-end sessions: smtp-sink counted ${sinkSessions} over the whole run (warm-up included, counted as they end, read 3 s after the last measurement); ` +
      `the other targets' ${others} messages took one each, which leaves ${reused} for postern-reuse's ${delivery['postern-reuse'].delivered} messages (${ratio(delivery['postern-reuse'].delivered, reused)} messages per back-end connection).`,
  );
  return lines;
}

const METRICS_HEADING = '## Metrics on (Prometheus listener, scraped every second)';

/**
 * postern-metrics against postern: what the metrics listener and a scrape every second cost per
 * message, as a ratio. `standalone` as for checksSection.
 */
function metricsSection(results: Map<string, Map<Target, Sample[]>>, scrapes: Scrapes | null, standalone: boolean): string[] {
  const lines: string[] = [METRICS_HEADING, ''];
  lines.push(
    `\`postern-metrics\` is \`postern\` (\`proxy_mode: session\`, the same auth responder and sink) plus \`metrics: { listen: 127.0.0.1:<port> }\`, whose \`/metrics\` the bench scrapes every ${SCRAPE_MS / 1000} s for the whole run, ` +
      'as a Prometheus server would (a fetch loop in the bench process, one keep-alive connection, one request at a time; the bench\'s own CPU is not counted, Postern\'s serving of each scrape is). ' +
      'The counters themselves are always on (src/observe/metrics.ts adds to plain numbers at every session record, listener or not), so this measures the listener and the scrapes: building the text from the tallies on each request. ' +
      'The two run next to each other in every round.',
    '',
  );
  if (standalone) {
    const ts = TARGETS.map((t) => `\`${t}\``).join(', ');
    lines.push(`Run: ${new Date().toISOString()}; ${source()}; ${ts} only, ${rounds} interleaved round(s), ${workers} worker process(es) each, medians shown; ${machine()}; load average ${os.loadavg().map((x) => x.toFixed(1)).join(', ')} at the end. The figures above this section come from the run named at the top of the file.`, '');
    lines.push('| Scenario | Target | msg/s | CPU ms / 1000 msg | ms / msg |', '| --- | --- | ---: | ---: | ---: |');
    for (const [name, m] of results) {
      const med = medOf(m);
      for (const t of TARGETS.filter((x) => m.has(x))) lines.push(`| ${name} | ${t} | ${med(t, 'msgsPerSec').toFixed(0)} | ${t === 'direct' ? '–' : med(t, 'cpuMsPer1000').toFixed(0)} | ${med(t, 'msPerMsg').toFixed(2)} |`);
    }
    lines.push('');
  }
  lines.push(`postern-metrics ÷ postern. ${RATIO_NOTE} Scrapes per run: how many scrapes started during each measured run of postern-metrics (median, and the range).`, '');
  lines.push('| Scenario | msg/s | CPU ms / 1000 msg | ms / msg | scrapes per run |', '| --- | ---: | ---: | ---: | ---: |');
  for (const [name, m] of results) {
    const n = (m.get('postern-metrics') ?? []).map((s) => s.scrapes);
    const range = n.length > 1 ? ` (${Math.min(...n)}–${Math.max(...n)})` : '';
    lines.push(`| ${name} | ${KEYS.map((k) => pairCell(m, 'postern-metrics', 'postern', (s) => s[k])).join(' | ')} | ${n.length ? median(n) + range : '–'} |`);
  }
  const intervals = cpuIntervals(results, 'postern-metrics', 'postern');
  if (intervals.length) lines.push('', `CPU per message, postern-metrics ÷ postern, geometric mean of the per-round ratios: ${intervals.join('; ')}.`);
  if (scrapes) {
    // What one scrape a second should add, from the CPU per scrape measured apart: finer than
    // the interleaved rounds can resolve.
    const expected = [...results].map(([name, m]) => {
      const med = medOf(m);
      const perMsg = (scrapes.idleCpuMsPerScrape * (1000 / SCRAPE_MS) * 1000) / med('postern-metrics', 'msgsPerSec');
      return `${name}: ${perMsg.toFixed(1)} CPU ms / 1000 msg at its median ${med('postern-metrics', 'msgsPerSec').toFixed(0)} msg/s, ${ratio(med('postern', 'cpuMsPer1000') + perMsg, med('postern', 'cpuMsPer1000'))}× postern's`;
    });
    lines.push(
      '',
      `Scrapes: ${scrapes.ok} answered, ${scrapes.failed} failed, the last ${(scrapes.lastBytes / 1024).toFixed(1)} KiB, the slowest ${scrapes.maxMs.toFixed(1)} ms; ` +
        `the final scrape counts ${scrapes.relayed ?? '?'} relayed sessions for ${scrapes.sent} messages sent to postern-metrics (one session each, warm-up included). ` +
        `Postern's CPU per scrape, ${IDLE_SCRAPES} back to back after the measurements (no mail; counted in "answered"): ${scrapes.idleCpuMsPerScrape.toFixed(2)} ms, ` +
        `so one scrape a second should cost ${expected.join('; ')}.`,
    );
  }
  return lines;
}

/** Replaces the section under `heading` (up to the next `## ` heading) in a results file, or adds it before the Delivery section. */
function spliceSection(file: string, heading: string, section: string[]): void {
  const text = existsSync(file) ? readFileSync(file, 'utf8') : '# Postern benchmark results\n';
  const lines = text.replace(/\n+$/, '').split('\n');
  const at = lines.indexOf(heading);
  const body = [...section, ''];
  if (at !== -1) {
    let end = lines.findIndex((l, i) => i > at && l.startsWith('## '));
    if (end === -1) end = lines.findIndex((l, i) => i > at && l.startsWith('Reproduce:'));
    lines.splice(at, (end === -1 ? lines.length : end) - at, ...body);
  } else {
    let before = lines.indexOf('## Delivery');
    if (before === -1) before = lines.findIndex((l) => l.startsWith('Reproduce:'));
    if (before === -1) lines.push('', ...body);
    else lines.splice(before, 0, ...body);
  }
  writeFileSync(file, lines.join('\n').replace(/\n*$/, '\n'));
}

function machine(): string {
  return `${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${os.type()} ${os.release()}`;
}

function render(results: Map<string, Map<Target, Sample[]>>, delivery: Record<Target, Delivery>, idle: Idle | null, policy: PolicyCount | null, scrapes: Scrapes | null, sinkSessions: number): string {
  const lines: string[] = [];
  const has = (t: Target): boolean => TARGETS.includes(t);
  const v = (cmd: string, args: string[]): string => {
    try {
      // nginx -v writes to stderr.
      const r = spawnSync(cmd, args, { encoding: 'utf8' });
      return `${r.stdout}${r.stderr}`.trim().split('\n')[0]!;
    } catch (e) {
      return String((e as { stderr?: string }).stderr ?? '').trim().split('\n')[0] ?? '?';
    }
  };
  const HEAD = [
    '| Scenario | Target | msg/s | CPU ms / 1000 msg | ms / msg | ÷ nginx (msg/s) | ÷ nginx (CPU) | ÷ direct (msg/s) |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  lines.push('# Postern benchmark results', '');
  lines.push(`Date: ${new Date().toISOString()}  `);
  lines.push(`Machine: ${machine()}  `);
  lines.push(`Versions: Node ${process.version}; ${v('nginx', ['-v'])}; postfix ${v('postconf', ['-h', 'mail_version'])}  `);
  lines.push(`Source: ${source()}  `);
  if (!complete) lines.push(`Partial run: targets ${TARGETS.join(', ')}; scenarios ${SCENARIOS.map((sc) => sc.key).join(', ')}.  `);
  lines.push(`Setup: ${workers} worker process(es) each; smtp-source → proxy → smtp-sink; one nginx http{} auth responder; xclient off; Postern's access log ${process.env.BENCH_ACCESS_LOG === '0' ? 'off (BENCH_ACCESS_LOG=0)' : 'on (one record per session, and per message in transaction mode, as in production)'}; ${rounds} interleaved round(s), medians shown.  `);
  lines.push(
    'Targets: `haproxy` is HAProxy in TCP mode in front of the sink (`mode tcp`, `balance roundrobin`, one server, `nbthread` = the worker count): the floor for any proxy. `node-relay` is bench/node-relay.mjs (accept, connect, pipe, close on Node\'s net streams; one process): the floor for a proxy on Node\'s public APIs. `postern` is `proxy_mode: session` (the default, nginx\'s blind relay after the first RCPT); `postern-checks` is `postern` plus a Postfix policy server asked at every RCPT (bench/policy-responder.ts, answering DUNNO) and the per-client limits on (see its section); ' +
      '`postern-metrics` is `postern` plus the Prometheus metrics listener, scraped every second (see its section); ' +
      '`postern-tx` is `proxy_mode: transaction` (every command read, every RCPT routed, bodies relayed with end-of-data detection); `postern-reuse` is `postern-tx` plus `backend_reuse: { enabled: true }` (see its section); all five ask the auth responder, as nginx does. ' +
      '`postern-static` routes by `route.static: 127.0.0.1:<sink>`, `postern-pool` by `route.static: one`, a pool holding that one sink (`health.enabled: false`); the two run back to back in every round. ' +
      'CPU is each proxy\'s own process tree (the shared auth responder, the policy responder and the sink are not counted here; the auth responder\'s and the sink\'s are in their own columns in "Proxies side by side").',
    '',
  );
  lines.push(...HEAD);
  const vsNginx = (t: Target, med: (t: Target, k: keyof Sample) => number, k: keyof Sample): string => ((POSTERN_TARGETS.includes(t) || t === 'haproxy' || t === 'node-relay') && has('nginx') ? ratio(med(t, k), med('nginx', k)) : '');
  for (const [name, m] of results) {
    const med = medOf(m);
    for (const t of TARGETS.filter((x) => m.has(x))) {
      lines.push(
        `| ${name} | ${t} | ${med(t, 'msgsPerSec').toFixed(0)} | ${t === 'direct' ? '–' : med(t, 'cpuMsPer1000').toFixed(0)} | ${med(t, 'msPerMsg').toFixed(2)} | ` +
          `${vsNginx(t, med, 'msgsPerSec')} | ${vsNginx(t, med, 'cpuMsPer1000')} | ` +
          `${(POSTERN_TARGETS.includes(t) || t === 'haproxy' || t === 'node-relay') && has('direct') ? ratio(med(t, 'msgsPerSec'), med('direct', 'msgsPerSec')) : ''} |`,
      );
    }
    if (name.includes('latency') && has('direct')) {
      const LABEL: Partial<Record<Target, string>> = {
        haproxy: 'HAProxy (TCP)', 'node-relay': 'Node relay (floor)', nginx: 'nginx', postern: 'Postern (session)', 'postern-checks': 'Postern (checks on)', 'postern-metrics': 'Postern (metrics on)', 'postern-tx': 'Postern (transaction)', 'postern-reuse': 'Postern (back-end reuse)', 'postern-static': 'Postern (static route)', 'postern-pool': 'Postern (pool)',
      };
      const added = TARGETS.filter((t) => t !== 'direct').map((t) => `${LABEL[t]} ${(med(t, 'msPerMsg') - med('direct', 'msPerMsg')).toFixed(2)} ms`);
      lines.push('', `Added latency per message over direct delivery: ${added.join(', ')}.`, '');
      lines.push(...HEAD);
    }
  }
  if (lines.at(-1)!.startsWith('| ---')) lines.splice(-3, 3);

  if (has('postern') && has('postern-tx')) {
    lines.push('', '## Transaction mode ÷ session mode (postern-tx ÷ postern)', '');
    lines.push(RATIO_NOTE, '');
    lines.push('| Scenario | msg/s | CPU ms / 1000 msg | ms / msg |', '| --- | ---: | ---: | ---: |');
    lines.push(...pairRows(results, 'postern-tx', 'postern'));
  }
  if (has('postern-static') && has('postern-pool')) {
    lines.push('', '## Pool ÷ static route (postern-pool ÷ postern-static)', '');
    lines.push('The same sink reached through `route.static: one` (a one-server pool: balancer pick, connection count, failover loop, passive health) and through `route.static: 127.0.0.1:<sink>`. Ratio of the medians; in brackets the lowest and highest per-round ratio. A few rounds cannot resolve a few per cent here: `bench/pool-ab.ts` measures this ratio with fresh processes per round and an identical-configuration control (bench/results-pool-ab.md).', '');
    lines.push('| Scenario | msg/s | CPU ms / 1000 msg | ms / msg |', '| --- | ---: | ---: | ---: |');
    lines.push(...pairRows(results, 'postern-pool', 'postern-static'));
  }
  // Last of the comparisons, where a partial run puts them too (spliceSection).
  if (has('postern') && has('postern-checks')) lines.push('', ...checksSection(withBoth(results, 'postern-checks', 'postern'), policy, false));
  if (has('postern') && has('postern-metrics')) lines.push('', ...metricsSection(withBoth(results, 'postern-metrics', 'postern'), scrapes, false));
  lines.push('', ...capacitySection(results, false));
  if (has('nginx') && has('postern-tx') && has('postern-reuse')) lines.push('', ...reuseSection(results, false, delivery, sinkSessions));

  lines.push('', '## Delivery', '', 'Every message smtp-source sent (warm-up included), counted at smtp-sink.', '');
  lines.push('| Target | sent | delivered | smtp-source errors |', '| --- | ---: | ---: | ---: |');
  for (const t of TARGETS) lines.push(`| ${t} | ${delivery[t].sent} | ${delivery[t].delivered} | ${delivery[t].sourceErrors} |`);

  if (idle) {
    lines.push('', `## Idle connections (greeted, then silent): ${IDLE}`, '');
    lines.push('| Target | resident memory per connection | dropped |', '| --- | ---: | ---: |');
    for (const t of PROXIES) lines.push(`| ${t} | ${(idle[t]!.bytesPerConn / 1024).toFixed(2)} KiB | ${idle[t]!.dropped} |`);
    if (idle.nginx) for (const t of POSTERNS) lines.push(`| ${t} ÷ nginx | ${ratio(idle[t]!.bytesPerConn, idle.nginx.bytesPerConn)} | |`);
    if (idle.haproxy) lines.push('', `HAProxy (TCP mode) opens a sink connection for each client at once: its memory is for two sockets per client, the sink's is not counted; it holds ${Math.min(IDLE, HAPROXY_IDLE)} (two descriptors each, within the machine's hard limit of 20,000 per process).`);
  }
  lines.push('', 'Reproduce: `npm run bench` (BENCH_ROUNDS, BENCH_WORKERS, BENCH_TARGETS, BENCH_SCENARIOS, BENCH_QUICK=1 for a smoke run).', '');
  return lines.join('\n');
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
