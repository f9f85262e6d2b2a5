/**
 * `npm run bench`: Postern, nginx's mail proxy and direct delivery, side by side and interleaved,
 * with Postfix smtp-source as the load and smtp-sink as the one back-end, and one nginx http{}
 * auth responder shared by both proxies. Prints ratios and writes bench/results.md.
 *
 * Environment: BENCH_ROUNDS (default 5), BENCH_QUICK=1 (a few messages: a smoke run of the harness),
 * BENCH_WORKERS (Postern and nginx worker processes, default 1), BENCH_SKIP_IDLE=1.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ensurePackages, pidsOf, procStats, startAuthResponder, startNginxMail, startPostern, startSink, type Proc } from './procs.js';
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
  ? [{ name: '4 KiB × 5 sessions', sessions: 5, messages: 20, size: 4096 }]
  : [
      { name: '4 KiB × 50 sessions', sessions: 50, messages: 3000, size: 4096 },
      { name: '100 KiB × 50 sessions', sessions: 50, messages: 600, size: 102400 },
      { name: '4 KiB × 1 session (latency)', sessions: 1, messages: 400, size: 4096 },
    ];
const IDLE = quick ? 200 : 10_000;

type Target = 'direct' | 'nginx' | 'postern';
const TARGETS: Target[] = ['direct', 'nginx', 'postern'];

interface Sample {
  msgsPerSec: number;
  cpuMsPer1000: number;
  msPerMsg: number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function main(): Promise<void> {
  ensurePackages();
  execFileSync('npm', ['run', 'build'], { cwd: root, stdio: 'ignore' });
  const sink = await startSink();
  const auth = await startAuthResponder(sink.port);
  const nginx = await startNginxMail(auth.port, workers);
  const postern = await startPostern(auth.port, workers);
  const ports: Record<Target, number> = { direct: sink.port, nginx: nginx.port, postern: postern.port };
  const procs: Record<Target, Proc | null> = { direct: null, nginx, postern };
  const results = new Map<string, Map<Target, Sample[]>>();
  let lost = 0;

  try {
    // Warm-up: JIT, pools and caches, so round 1 is not an outlier.
    for (const t of TARGETS) await runSource(ports[t], { sessions: 10, messages: quick ? 10 : 300, size: 4096 });
    for (let round = 0; round < rounds; round++) {
      for (const sc of SCENARIOS) {
        const order = round % 2 === 0 ? TARGETS : [...TARGETS].reverse();
        for (const t of order) {
          const before = sink.received();
          const pids = procs[t] ? pidsOf(procs[t]!) : [];
          const cpu0 = procStats(pids).cpuMs;
          const r = await runSource(ports[t], sc);
          const cpu1 = procStats(pids).cpuMs;
          const got = await sink.waitReceived(before + sc.messages, 10_000);
          if (r.failed || got < before + sc.messages) {
            lost += before + sc.messages - got;
            console.error(`LOST: ${t} ${sc.name}: sink received ${got - before} of ${sc.messages}; smtp-source: ${r.stderr.slice(0, 500)}`);
          }
          const s: Sample = {
            msgsPerSec: sc.messages / (r.ms / 1000),
            cpuMsPer1000: ((cpu1 - cpu0) / sc.messages) * 1000,
            msPerMsg: r.ms / sc.messages,
          };
          if (!results.has(sc.name)) results.set(sc.name, new Map());
          const m = results.get(sc.name)!;
          if (!m.has(t)) m.set(t, []);
          m.get(t)!.push(s);
          process.stderr.write(`round ${round + 1}/${rounds} ${sc.name} ${t}: ${s.msgsPerSec.toFixed(0)} msg/s, ${s.cpuMsPer1000.toFixed(0)} CPU ms/1000\n`);
        }
      }
    }
    const idle = process.env.BENCH_SKIP_IDLE === '1' ? null : {
      nginx: await holdIdle(nginx, IDLE),
      postern: await holdIdle(postern, IDLE),
    };
    const report = render(results, idle);
    process.stdout.write(report);
    const file = quick ? 'results.quick.md' : workers === 1 ? 'results.md' : `results-workers-${workers}.md`;
    writeFileSync(path.join(root, 'bench', file), report);
    if (idle && (idle.nginx.dropped > 0 || idle.postern.dropped > 0)) lost += idle.nginx.dropped + idle.postern.dropped;
  } finally {
    await postern.stop();
    await nginx.stop();
    await auth.stop();
    await sink.stop();
  }
  if (lost > 0) {
    console.error(`FAIL: ${lost} messages or connections lost`);
    process.exitCode = 1;
  }
}

function render(results: Map<string, Map<Target, Sample[]>>, idle: { nginx: { bytesPerConn: number; dropped: number }; postern: { bytesPerConn: number; dropped: number } } | null): string {
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
  lines.push('# Postern benchmark results', '');
  lines.push(`Date: ${new Date().toISOString()}  `);
  lines.push(`Machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${os.type()} ${os.release()}  `);
  lines.push(`Versions: Node ${process.version}; ${v('nginx', ['-v'])}; postfix ${v('postconf', ['-h', 'mail_version'])}  `);
  lines.push(`Setup: ${workers} worker process(es) each; smtp-source → proxy → smtp-sink; one nginx http{} auth responder; xclient off; ${rounds} interleaved round(s), medians shown.`, '');
  lines.push('| Scenario | Target | msg/s | CPU ms / 1000 msg | ms / msg | Postern ÷ nginx (msg/s) | Postern ÷ nginx (CPU) | Postern ÷ direct (msg/s) |');
  lines.push('| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const [name, m] of results) {
    const med = (t: Target, k: keyof Sample): number => median((m.get(t) ?? []).map((s) => s[k]));
    for (const t of TARGETS) {
      const isP = t === 'postern';
      lines.push(
        `| ${name} | ${t} | ${med(t, 'msgsPerSec').toFixed(0)} | ${t === 'direct' ? '–' : med(t, 'cpuMsPer1000').toFixed(0)} | ${med(t, 'msPerMsg').toFixed(2)} | ` +
          `${isP ? (med('postern', 'msgsPerSec') / med('nginx', 'msgsPerSec')).toFixed(2) : ''} | ${isP ? (med('postern', 'cpuMsPer1000') / med('nginx', 'cpuMsPer1000')).toFixed(2) : ''} | ` +
          `${isP ? (med('postern', 'msgsPerSec') / med('direct', 'msgsPerSec')).toFixed(2) : ''} |`,
      );
    }
    if (name.includes('latency')) {
      lines.push('', `Added latency per message over direct delivery: nginx ${(med('nginx', 'msPerMsg') - med('direct', 'msPerMsg')).toFixed(2)} ms, Postern ${(med('postern', 'msPerMsg') - med('direct', 'msPerMsg')).toFixed(2)} ms.`, '');
      lines.push('| Scenario | Target | msg/s | CPU ms / 1000 msg | ms / msg | Postern ÷ nginx (msg/s) | Postern ÷ nginx (CPU) | Postern ÷ direct (msg/s) |');
      lines.push('| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |');
    }
  }
  if (lines.at(-1)!.startsWith('| ---')) lines.splice(-3, 3);
  if (idle) {
    lines.push('', `Idle connections (greeted, then silent): ${IDLE}`, '');
    lines.push('| Target | resident memory per connection | dropped |', '| --- | ---: | ---: |');
    lines.push(`| nginx | ${(idle.nginx.bytesPerConn / 1024).toFixed(2)} KiB | ${idle.nginx.dropped} |`);
    lines.push(`| postern | ${(idle.postern.bytesPerConn / 1024).toFixed(2)} KiB | ${idle.postern.dropped} |`);
    lines.push(`| Postern ÷ nginx | ${(idle.postern.bytesPerConn / idle.nginx.bytesPerConn).toFixed(2)} | |`);
  }
  lines.push('', 'Reproduce: `npm run bench` (BENCH_ROUNDS, BENCH_WORKERS, BENCH_QUICK=1 for a smoke run).', '');
  return lines.join('\n');
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
