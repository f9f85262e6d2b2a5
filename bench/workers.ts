/**
 * `npm run bench:workers`: the scaling curve per added worker process — nginx (`worker_processes
 * N`), Postern in session mode and Postern with back-end reuse (`workers: N`) — at saturation
 * (4 KiB × 200 sessions, every proxy CPU-bound), interleaved within each N, smtp-source as the
 * load and smtp-sink as the back-end, one nginx http{} auth responder for all. Postern writes its
 * access log here (one record per session, as in production), and its per-worker session counts
 * come from it (BENCH_ACCESS_LOG=0 is refused here); for every proxy, the per-worker share of CPU shows how evenly the kernel spread
 * the accepts (Postern's workers accept from the one shared socket, cluster SCHED_NONE, as
 * nginx's workers do without `reuseport`). Writes bench/results-workers.md.
 *
 * Environment: BENCH_ROUNDS (default 3), BENCH_WORKER_COUNTS (default `1,2,3`), BENCH_QUICK=1.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runSource } from './load.js';
import { ensurePackages, pidsOf, procStats, startAuthResponder, startNginxMail, startPostern, startSink, type Proc } from './procs.js';

const quick = process.env.BENCH_QUICK === '1';
const rounds = Number(process.env.BENCH_ROUNDS ?? (quick ? 1 : 3));
const counts = (process.env.BENCH_WORKER_COUNTS ?? (quick ? '1,2' : '1,2,3')).split(',').map(Number);
const LOAD = quick ? { sessions: 20, messages: 100, size: 4096 } : { sessions: 200, messages: 4000, size: 4096 };
const TARGETS = ['nginx', 'postern', 'postern-reuse'] as const;
type Target = (typeof TARGETS)[number];

interface Sample {
  msgsPerSec: number;
  cpuMsPer1000: number;
  /** Each worker's share of the proxy's CPU over the run, largest first. */
  shares: number[];
}

/** The worker processes: the children of nginx's master and of Postern's primary (the process itself with one worker). */
function workerPids(p: Proc, n: number): number[] {
  const all = pidsOf(p);
  return n === 1 && all.length === 1 ? all : all.slice(1);
}

async function measure(p: Proc, n: number): Promise<Sample> {
  const pids = pidsOf(p);
  const workers = workerPids(p, n);
  const before = procStats(pids).cpuMs;
  const perBefore = workers.map((w) => procStats([w]).cpuMs);
  const r = await runSource(p.port, LOAD);
  if (r.failed) throw new Error(`smtp-source failed: ${r.stderr.slice(0, 300)}`);
  const cpu = procStats(pids).cpuMs - before;
  const per = workers.map((w, i) => procStats([w]).cpuMs - perBefore[i]!);
  const sum = per.reduce((a, b) => a + b, 0) || 1;
  return { msgsPerSec: LOAD.messages / (r.ms / 1000), cpuMsPer1000: (cpu / LOAD.messages) * 1000, shares: per.map((x) => x / sum).sort((a, b) => b - a) };
}

/** Sessions per worker pid in a Postern access log (its `session` records). */
function sessionsPerPid(log: string): number[] {
  const by = new Map<number, number>();
  for (const line of readFileSync(log, 'utf8').split('\n')) {
    if (!line.includes('"msg":"session"')) continue;
    const pid = Number(/"pid":(\d+)/.exec(line)?.[1]);
    by.set(pid, (by.get(pid) ?? 0) + 1);
  }
  return [...by.values()].sort((a, b) => b - a);
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function main(): Promise<void> {
  ensurePackages();
  if (process.env.BENCH_ACCESS_LOG === '0') throw new Error('bench:workers counts sessions per worker from the access log: leave BENCH_ACCESS_LOG unset');
  const sink = await startSink();
  const auth = await startAuthResponder(sink.port);
  const results = new Map<number, Map<Target, Sample[]>>();
  const sessions = new Map<number, number[]>();
  try {
    for (const n of counts) {
      const viaAuth = { kind: 'auth_http' as const, authPort: auth.port };
      const procs: Record<Target, Proc & { log?: string }> = {
        nginx: await startNginxMail(auth.port, n),
        postern: await startPostern(viaAuth, n, { name: `postern-w${n}`, proxyMode: 'session' }),
        'postern-reuse': await startPostern(viaAuth, n, { name: `postern-reuse-w${n}`, proxyMode: 'transaction', backendReuse: true }),
      };
      const m = new Map<Target, Sample[]>(TARGETS.map((t) => [t, []]));
      results.set(n, m);
      try {
        for (const t of TARGETS) await runSource(procs[t].port, { sessions: 10, messages: quick ? 10 : 300, size: 4096 });
        for (let round = 0; round < rounds; round++) {
          const order = round % 2 ? [...TARGETS].reverse() : TARGETS;
          for (const t of order) {
            const s = await measure(procs[t], n);
            m.get(t)!.push(s);
            process.stderr.write(`workers ${n} round ${round + 1}/${rounds} ${t}: ${s.msgsPerSec.toFixed(0)} msg/s, ${s.cpuMsPer1000.toFixed(0)} CPU ms/1000, shares ${s.shares.map((x) => x.toFixed(2)).join('/')}\n`);
          }
        }
        sessions.set(n, sessionsPerPid(procs.postern.log!));
      } finally {
        for (const t of TARGETS) await procs[t].stop();
      }
    }
  } finally {
    await auth.stop();
    await sink.stop();
  }
  const report = render(results, sessions);
  process.stdout.write(report);
  writeFileSync(path.join(import.meta.dirname, quick ? 'results-workers.quick.md' : 'results-workers.md'), report);
}

function render(results: Map<number, Map<Target, Sample[]>>, sessions: Map<number, number[]>): string {
  const med = (n: number, t: Target, k: 'msgsPerSec' | 'cpuMsPer1000'): number => median(results.get(n)!.get(t)!.map((s) => s[k]));
  const first = counts[0]!;
  const lines = [
    '# Workers: the scaling curve',
    '',
    `Date: ${new Date().toISOString()}  `,
    `Machine: ${os.cpus().length} × ${os.cpus()[0]?.model.split(' ').slice(0, 2).join(' ')}, load average at the end ${os.loadavg()[0]!.toFixed(1)}  `,
    `Load: smtp-source ${LOAD.sessions} sessions, ${LOAD.messages} messages of ${LOAD.size / 1024} KiB per run; ${rounds} interleaved round(s) per worker count, medians shown. ` +
      'The load generator, the sink and the auth responder share the same cores: past 1 worker per core the proxies compete with them.',
    '',
    `| Workers | Target | msg/s | CPU ms / 1000 msg | msg/s ÷ ${first} worker | ÷ nginx (msg/s) | ÷ nginx (CPU) | busiest worker's CPU share |`,
    '| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const n of counts) {
    for (const t of TARGETS) {
      const shares = median(results.get(n)!.get(t)!.map((s) => s.shares[0] ?? 1));
      const vsNginx = t === 'nginx' ? ['', ''] : [(med(n, t, 'msgsPerSec') / med(n, 'nginx', 'msgsPerSec')).toFixed(2), (med(n, t, 'cpuMsPer1000') / med(n, 'nginx', 'cpuMsPer1000')).toFixed(2)];
      lines.push(`| ${n} | ${t} | ${med(n, t, 'msgsPerSec').toFixed(0)} | ${med(n, t, 'cpuMsPer1000').toFixed(0)} | ${(med(n, t, 'msgsPerSec') / med(first, t, 'msgsPerSec')).toFixed(2)} | ${vsNginx[0]} | ${vsNginx[1]} | ${n === 1 ? '1.00' : shares.toFixed(2)} |`);
    }
  }
  lines.push('', 'Sessions per Postern worker (session mode, from its access log, every round of that worker count with the warm-up):', '');
  for (const n of counts) lines.push(`- ${n} worker(s): ${sessions.get(n)!.join(' / ')}`);
  lines.push('', 'Reproduce: `npm run bench:workers` (BENCH_ROUNDS, BENCH_WORKER_COUNTS, BENCH_QUICK=1).', '');
  return lines.join('\n');
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
