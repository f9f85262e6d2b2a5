/**
 * Reading Postern's metrics in tests: the Prometheus text format parsed into samples, sums of
 * the samples that match some labels, and `promtool check metrics` (the Debian `prometheus`
 * package). In CI (CI=true) a missing promtool is a failure, not a skip.
 */
import { spawn, spawnSync } from 'node:child_process';
import type { TestContext } from 'node:test';

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The samples of an exposition (comments and blank lines skipped). */
export function parseMetrics(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

/** The sum of the samples named `name` whose labels include `labels`. */
export function metric(text: string, name: string, labels: Record<string, string> = {}): number {
  return parseMetrics(text)
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((n, s) => n + s.value, 0);
}

/** Whether any sample is named `name` (with these labels). */
export function hasMetric(text: string, name: string, labels: Record<string, string> = {}): boolean {
  return parseMetrics(text).some((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
}

export function havePromtool(): boolean {
  return spawnSync('promtool', ['--version'], { stdio: 'ignore' }).status === 0;
}

/** Skips the test without promtool, unless CI=true, where that is a failure. Returns true to go on. */
export function needPromtool(t: TestContext): boolean {
  if (havePromtool()) return true;
  if (process.env.CI === 'true') throw new Error('promtool is missing (Debian package prometheus; see .ci/run)');
  t.skip('promtool is not installed (apt-get install prometheus)');
  return false;
}

/** `promtool check metrics` on `text`: its exit code and what it printed (lint problems). */
export function promtoolCheck(text: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn('promtool', ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    p.stdout.on('data', (d: Buffer) => (output += d.toString()));
    p.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const t = setTimeout(() => p.kill('SIGKILL'), 10_000);
    p.once('error', reject);
    p.once('close', (code) => {
      clearTimeout(t);
      resolve({ code, output });
    });
    p.stdin.end(text);
  });
}

/** GET on the metrics listener: status and body. */
export async function get(port: number, path: string): Promise<{ status: number; body: string; type: string | null }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(5000) });
  return { status: res.status, body: await res.text(), type: res.headers.get('content-type') };
}

/** Polls `f` every 50 ms until it returns true, or throws after `timeoutMs` with `what`. */
export async function until(f: () => boolean | Promise<boolean>, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await f()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
