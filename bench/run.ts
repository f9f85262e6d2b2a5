/**
 * `npm run bench`: Postern (once per proxy_mode), nginx's mail proxy and direct delivery, side by
 * side and interleaved, with Postfix smtp-source as the load and smtp-sink as the one back-end,
 * and one nginx http{} auth responder shared by all proxies. Prints ratios (Postern ÷ nginx,
 * Postern ÷ direct, transaction ÷ session) and writes bench/results.md.
 *
 * Targets: `direct` (smtp-source → smtp-sink), `nginx`, `postern` (`proxy_mode: session`, the
 * default: nginx's blind relay after the first RCPT) and `postern-tx` (`proxy_mode: transaction`:
 * every command read, every RCPT routed, DATA bodies relayed with end-of-data detection) — these
 * three ask the one auth responder — and `postern-static` (`route.static: host:port`) and
 * `postern-pool` (`route.static: one`, a pool of that one sink, no active checks), which run
 * back to back in every round for the pool ÷ static ratios (the cost of the pool path).
 *
 * Environment: BENCH_ROUNDS (default 5), BENCH_QUICK=1 (a few messages: a smoke run of the harness),
 * BENCH_WORKERS (Postern and nginx worker processes, default 1), BENCH_SKIP_IDLE=1.
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ensurePackages, logTail, pidsOf, procStats, startAuthResponder, startNginxMail, startPostern, startSink, type Proc } from './procs.js';
import { holdIdle, runSource } from './load.js';

const quick = process.env.BENCH_QUICK === '1';
const rounds = Number(process.env.BENCH_ROUNDS ?? (quick ? 1 : 5));
const workers = Number(process.env.BENCH_WORKERS ?? 1);
const root = path.resolve(import.meta.dirname, '..');

interface Scenario {
  name: string;
  sessions: number;
  messages: number;
  size: number;
}

const SCENARIOS: Scenario[] = quick
  ? [
      { name: '4 KiB × 5 sessions', sessions: 5, messages: 20, size: 4096 },
      // Bodies spanning many reads: transaction mode's end-of-data detection at chunk boundaries.
      { name: '100 KiB × 2 sessions', sessions: 2, messages: 6, size: 102400 },
    ]
  : [
      { name: '4 KiB × 50 sessions', sessions: 50, messages: 3000, size: 4096 },
      { name: '100 KiB × 50 sessions', sessions: 50, messages: 600, size: 102400 },
      { name: '4 KiB × 1 session (latency)', sessions: 1, messages: 400, size: 4096 },
    ];
const IDLE = quick ? 200 : 10_000;
const IDLE_SETTLE_MS = quick ? 300 : 2000;

type Target = 'direct' | 'nginx' | 'postern' | 'postern-tx' | 'postern-static' | 'postern-pool';
// postern-static and postern-pool stay neighbours in either order (rounds alternate it).
const TARGETS: Target[] = ['direct', 'nginx', 'postern', 'postern-tx', 'postern-static', 'postern-pool'];
const POSTERN_TARGETS: readonly Target[] = ['postern', 'postern-tx', 'postern-static', 'postern-pool'];
/** The idle-connection figure: the static and pool targets hold connections as `postern` does before routing. */
const PROXIES = ['nginx', 'postern', 'postern-tx'] as const;
const POSTERNS = ['postern', 'postern-tx'] as const;

interface Sample {
  msgsPerSec: number;
  cpuMsPer1000: number;
  msPerMsg: number;
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
  const sink = await startSink();
  const auth = await startAuthResponder(sink.port);
  const nginx = await startNginxMail(auth.port, workers);
  const viaAuth = { kind: 'auth_http', authPort: auth.port } as const;
  const postern = await startPostern(viaAuth, workers, { name: 'postern', proxyMode: 'session' });
  const posternTx = await startPostern(viaAuth, workers, { name: 'postern-tx', proxyMode: 'transaction' });
  const posternStatic = await startPostern({ kind: 'static', sinkPort: sink.port }, workers, { name: 'postern-static' });
  const posternPool = await startPostern({ kind: 'pool', sinkPort: sink.port }, workers, { name: 'postern-pool' });
  const posterns = { postern, 'postern-tx': posternTx, 'postern-static': posternStatic, 'postern-pool': posternPool };
  const ports: Record<Target, number> = { direct: sink.port, nginx: nginx.port, ...mapValues(posterns, (p) => p.port) };
  const procs: Record<Target, Proc | null> = { direct: null, nginx, ...posterns };
  const logs: Partial<Record<Target, string>> = mapValues(posterns, (p) => p.log);
  const results = new Map<string, Map<Target, Sample[]>>();
  const delivery = Object.fromEntries(TARGETS.map((t) => [t, { sent: 0, delivered: 0, sourceErrors: 0 }])) as Record<Target, Delivery>;
  let lost = 0;

  /** One smtp-source run against a target, with its sink count and the CPU of the target's process tree. */
  const measure = async (t: Target, sc: Scenario): Promise<Sample> => {
    const before = sink.received();
    const pids = procs[t] ? pidsOf(procs[t]!) : [];
    const cpu0 = procStats(pids).cpuMs;
    const r = await runSource(ports[t], sc);
    const cpu1 = procStats(pids).cpuMs;
    const got = (await sink.waitReceived(before + sc.messages, 10_000)) - before;
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
    return { msgsPerSec: sc.messages / (r.ms / 1000), cpuMsPer1000: ((cpu1 - cpu0) / sc.messages) * 1000, msPerMsg: r.ms / sc.messages };
  };

  try {
    // Warm-up: JIT, pools and caches, so round 1 is not an outlier. Its deliveries are checked too.
    for (const t of TARGETS) await measure(t, { name: 'warm-up', sessions: 10, messages: quick ? 10 : 300, size: 4096 });
    for (let round = 0; round < rounds; round++) {
      for (const sc of SCENARIOS) {
        const order = round % 2 === 0 ? TARGETS : [...TARGETS].reverse();
        for (const t of order) {
          const s = await measure(t, sc);
          if (!results.has(sc.name)) results.set(sc.name, new Map());
          const m = results.get(sc.name)!;
          if (!m.has(t)) m.set(t, []);
          m.get(t)!.push(s);
          process.stderr.write(`round ${round + 1}/${rounds} ${sc.name} ${t}: ${s.msgsPerSec.toFixed(0)} msg/s, ${s.cpuMsPer1000.toFixed(0)} CPU ms/1000\n`);
        }
      }
    }
    let idle: Idle | null = null;
    if (process.env.BENCH_SKIP_IDLE !== '1') {
      idle = {};
      for (const t of PROXIES) idle[t] = await holdIdle(procs[t]!, IDLE, IDLE_SETTLE_MS);
      for (const t of PROXIES) lost += idle[t]!.dropped;
    }
    const report = render(results, delivery, idle);
    process.stdout.write(report);
    const file = quick ? 'results.quick.md' : workers === 1 ? 'results.md' : `results-workers-${workers}.md`;
    writeFileSync(path.join(root, 'bench', file), report);
  } finally {
    for (const p of Object.values(posterns)) await p.stop();
    await nginx.stop();
    await auth.stop();
    await sink.stop();
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

function render(results: Map<string, Map<Target, Sample[]>>, delivery: Record<Target, Delivery>, idle: Idle | null): string {
  const lines: string[] = [];
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
    '| Scenario | Target | msg/s | CPU ms / 1000 msg | ms / msg | Postern ÷ nginx (msg/s) | Postern ÷ nginx (CPU) | Postern ÷ direct (msg/s) |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  lines.push('# Postern benchmark results', '');
  lines.push(`Date: ${new Date().toISOString()}  `);
  lines.push(`Machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${os.type()} ${os.release()}  `);
  lines.push(`Versions: Node ${process.version}; ${v('nginx', ['-v'])}; postfix ${v('postconf', ['-h', 'mail_version'])}  `);
  lines.push(`Source: ${source()}  `);
  lines.push(`Setup: ${workers} worker process(es) each; smtp-source → proxy → smtp-sink; one nginx http{} auth responder; xclient off; ${rounds} interleaved round(s), medians shown.  `);
  lines.push('Targets: `postern` is `proxy_mode: session` (the default, nginx\'s blind relay after the first RCPT); `postern-tx` is `proxy_mode: transaction` (every command read, every RCPT routed, bodies relayed with end-of-data detection); both ask the auth responder, as nginx does. `postern-static` routes by `route.static: 127.0.0.1:<sink>`, `postern-pool` by `route.static: one`, a pool holding that one sink (`health.enabled: false`); the two run back to back in every round. CPU is each proxy\'s own process tree (the shared auth responder and sink are not counted).', '');
  lines.push(...HEAD);
  const medOf = (m: Map<Target, Sample[]>) => (t: Target, k: keyof Sample): number => median((m.get(t) ?? []).map((s) => s[k]));
  for (const [name, m] of results) {
    const med = medOf(m);
    for (const t of TARGETS) {
      const isP = POSTERN_TARGETS.includes(t);
      lines.push(
        `| ${name} | ${t} | ${med(t, 'msgsPerSec').toFixed(0)} | ${t === 'direct' ? '–' : med(t, 'cpuMsPer1000').toFixed(0)} | ${med(t, 'msPerMsg').toFixed(2)} | ` +
          `${isP ? ratio(med(t, 'msgsPerSec'), med('nginx', 'msgsPerSec')) : ''} | ${isP ? ratio(med(t, 'cpuMsPer1000'), med('nginx', 'cpuMsPer1000')) : ''} | ` +
          `${isP ? ratio(med(t, 'msgsPerSec'), med('direct', 'msgsPerSec')) : ''} |`,
      );
    }
    if (name.includes('latency')) {
      const added = (t: Target): string => (med(t, 'msPerMsg') - med('direct', 'msPerMsg')).toFixed(2);
      lines.push('', `Added latency per message over direct delivery: nginx ${added('nginx')} ms, Postern (session) ${added('postern')} ms, Postern (transaction) ${added('postern-tx')} ms, Postern (static route) ${added('postern-static')} ms, Postern (pool) ${added('postern-pool')} ms.`, '');
      lines.push(...HEAD);
    }
  }
  if (lines.at(-1)!.startsWith('| ---')) lines.splice(-3, 3);

  // Pairs that ran back to back in every round: ratios of the medians, and in brackets the spread
  // of the per-round ratios (a round's two runs share its noise).
  const pairRatios = (a: Target, b: Target, keys: (keyof Sample)[]): void => {
    for (const [name, m] of results) {
      const med = medOf(m);
      const cell = (k: keyof Sample): string => {
        const as = m.get(a) ?? [];
        const bs = m.get(b) ?? [];
        const per = as.map((s, i) => (bs[i] && bs[i]![k] > 0 ? s[k] / bs[i]![k] : NaN)).filter(Number.isFinite);
        const spread = per.length > 1 ? ` (${Math.min(...per).toFixed(2)}–${Math.max(...per).toFixed(2)})` : '';
        const r = ratio(med(a, k), med(b, k));
        return r === '–' ? r : r + spread;
      };
      lines.push(`| ${name} | ${keys.map(cell).join(' | ')} |`);
    }
  };
  const KEYS: (keyof Sample)[] = ['msgsPerSec', 'cpuMsPer1000', 'msPerMsg'];
  lines.push('', '## Transaction mode ÷ session mode (postern-tx ÷ postern)', '');
  lines.push('Ratio of the medians; in brackets the lowest and highest per-round ratio. msg/s above 1 is faster, CPU and ms / msg above 1 cost more.', '');
  lines.push('| Scenario | msg/s | CPU ms / 1000 msg | ms / msg |', '| --- | ---: | ---: | ---: |');
  pairRatios('postern-tx', 'postern', KEYS);
  lines.push('', '## Pool ÷ static route (postern-pool ÷ postern-static)', '');
  lines.push('The same sink reached through `route.static: one` (a one-server pool: balancer pick, connection count, failover loop, passive health) and through `route.static: 127.0.0.1:<sink>`. Ratio of the medians; in brackets the lowest and highest per-round ratio. A few rounds cannot resolve a few per cent here: `bench/pool-ab.ts` measures this ratio with fresh processes per round and an identical-configuration control (bench/results-pool-ab.md).', '');
  lines.push('| Scenario | msg/s | CPU ms / 1000 msg | ms / msg |', '| --- | ---: | ---: | ---: |');
  pairRatios('postern-pool', 'postern-static', KEYS);

  lines.push('', '## Delivery', '', 'Every message smtp-source sent (warm-up included), counted at smtp-sink.', '');
  lines.push('| Target | sent | delivered | smtp-source errors |', '| --- | ---: | ---: | ---: |');
  for (const t of TARGETS) lines.push(`| ${t} | ${delivery[t].sent} | ${delivery[t].delivered} | ${delivery[t].sourceErrors} |`);

  if (idle) {
    lines.push('', `## Idle connections (greeted, then silent): ${IDLE}`, '');
    lines.push('| Target | resident memory per connection | dropped |', '| --- | ---: | ---: |');
    for (const t of PROXIES) lines.push(`| ${t} | ${(idle[t]!.bytesPerConn / 1024).toFixed(2)} KiB | ${idle[t]!.dropped} |`);
    for (const t of POSTERNS) lines.push(`| ${t} ÷ nginx | ${ratio(idle[t]!.bytesPerConn, idle.nginx!.bytesPerConn)} | |`);
  }
  lines.push('', 'Reproduce: `npm run bench` (BENCH_ROUNDS, BENCH_WORKERS, BENCH_QUICK=1 for a smoke run).', '');
  return lines.join('\n');
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
