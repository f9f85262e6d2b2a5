/**
 * `node --import tsx bench/pool-ab.ts`: the CPU cost of the pool path, more finely than `npm run
 * bench` can tell it. Three Posterns in front of the one smtp-sink — `static` and `static2` (both
 * `route.static: 127.0.0.1:<sink>`) and `pool` (`route.static: one`, a pool of that sink, no
 * active checks) — started afresh every round (so what differs between two processes of one
 * build, heap layout and JIT decisions, averages out instead of biasing every round alike), warmed
 * up, then measured in a rotating order with smtp-source (4 KiB × 50 sessions). static2 ÷ static
 * is the control: two identical configurations, so its spread is the noise floor of the pool ÷
 * static figure. Prints and writes bench/results-pool-ab.md: geometric means of the per-round
 * CPU ratios with a 95 % interval.
 *
 * Environment: AB_ROUNDS (default 12), AB_MESSAGES (default 3000), AB_PIN=1 (Posterns on CPU 1,
 * smtp-source and the sink on CPU 0, with taskset).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runSource } from './load.js';
import { ensurePackages, pidsOf, procStats, startPostern, startSink, type Proc } from './procs.js';

const rounds = Number(process.env.AB_ROUNDS ?? 12);
const messages = Number(process.env.AB_MESSAGES ?? 3000);
const pin = process.env.AB_PIN === '1';
const root = path.resolve(import.meta.dirname, '..');
const KINDS = ['static', 'static2', 'pool'] as const;
type Kind = (typeof KINDS)[number];
const PAIRS: [Kind, Kind][] = [['pool', 'static'], ['pool', 'static2'], ['static2', 'static']];

async function cpuOf(p: Proc, o: { sessions: number; messages: number; size: number }): Promise<number> {
  const pids = pidsOf(p);
  const c0 = procStats(pids).cpuMs;
  const r = await runSource(p.port, o);
  const c1 = procStats(pids).cpuMs;
  if (r.failed) throw new Error(`smtp-source failed (exit ${r.code}): ${r.stderr.slice(0, 500)}`);
  return c1 - c0;
}

function taskset(cpu: number, pid: number): void {
  execFileSync('taskset', ['-apc', String(cpu), String(pid)], { stdio: 'ignore' });
}

async function main(): Promise<void> {
  ensurePackages();
  const build = spawnSync('npm', ['run', 'build'], { cwd: root, encoding: 'utf8' });
  if (build.status !== 0) throw new Error(`npm run build failed:\n${build.stdout}${build.stderr}`);
  const sink = await startSink();
  if (pin) {
    taskset(0, sink.pid);
    taskset(0, process.pid); // smtp-source inherits it
  }
  const logRatios = new Map<string, number[]>(PAIRS.map(([a, b]) => [`${a} ÷ ${b}`, []]));
  const cpuPer1000: Record<Kind, number[]> = { static: [], static2: [], pool: [] };
  try {
    for (let i = 0; i < rounds; i++) {
      const order = [...KINDS.slice(i % 3), ...KINDS.slice(0, i % 3)];
      const procs = {} as Record<Kind, Proc>;
      for (const k of order) {
        procs[k] = await startPostern({ kind: k === 'pool' ? 'pool' : 'static', sinkPort: sink.port }, 1, { name: `ab-${k}` });
        if (pin) taskset(1, procs[k].pid);
      }
      try {
        for (const k of order) await cpuOf(procs[k], { sessions: 20, messages: Math.ceil(messages / 3), size: 4096 });
        const cpu = {} as Record<Kind, number>;
        for (const k of i % 2 ? [...order].reverse() : order) cpu[k] = await cpuOf(procs[k], { sessions: 50, messages, size: 4096 });
        for (const k of KINDS) cpuPer1000[k].push((cpu[k] / messages) * 1000);
        for (const [a, b] of PAIRS) logRatios.get(`${a} ÷ ${b}`)!.push(Math.log(cpu[a] / cpu[b]));
        process.stderr.write(`round ${i + 1}/${rounds}: ${KINDS.map((k) => `${k} ${cpu[k]} ms`).join(', ')} CPU for ${messages} messages\n`);
      } finally {
        for (const p of Object.values(procs)) await p.stop();
      }
    }
  } finally {
    await sink.stop();
  }
  const lines = ['# Pool path: CPU per message, pool ÷ static (bench/pool-ab.ts)', ''];
  lines.push(`Date: ${new Date().toISOString()}  `);
  lines.push(`Machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}, ${os.type()} ${os.release()}; Node ${process.version}  `);
  const head = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).stdout.trim();
  lines.push(`Source: commit ${head}  `);
  lines.push(`Setup: smtp-source 4 KiB × 50 sessions, ${messages} messages per measurement; ${rounds} rounds, three fresh Postern processes each (warmed up, measured in a rotating order)${pin ? '; Posterns pinned to CPU 1, load and sink to CPU 0' : ''}.`, '');
  lines.push('| Ratio (CPU per message) | geometric mean | 95 % interval | per-round sd |', '| --- | ---: | ---: | ---: |');
  for (const [name, xs] of logRatios) {
    const m = xs.reduce((a, b) => a + b, 0) / xs.length;
    const sd = xs.length > 1 ? Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / (xs.length - 1)) : 0;
    const se = sd / Math.sqrt(xs.length);
    lines.push(`| ${name} | ${Math.exp(m).toFixed(3)} | ${Math.exp(m - 2 * se).toFixed(3)}–${Math.exp(m + 2 * se).toFixed(3)} | ${(sd * 100).toFixed(1)} % |`);
  }
  const med = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  lines.push('', `Median CPU ms per 1000 messages: ${KINDS.map((k) => `${k} ${med(cpuPer1000[k]).toFixed(0)}`).join(', ')}.`);
  lines.push('', 'static2 ÷ static compares two identical configurations: its interval is how far apart two runs of the same thing land here. Reproduce: `node --import tsx bench/pool-ab.ts` (AB_ROUNDS, AB_MESSAGES, AB_PIN=1).', '');
  const report = lines.join('\n');
  process.stdout.write(report);
  writeFileSync(path.join(root, 'bench', 'results-pool-ab.md'), report);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
