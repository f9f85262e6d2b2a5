/**
 * Postern as its own process, the way an admin runs it (`postern --config FILE`, from src/ through
 * tsx, so nothing needs building), on an ephemeral loopback port, with its JSON log lines parsed
 * for assertions. What the command line starts is what runs (e.g. the pools' health checks,
 * once cli.ts starts them), unlike test/helpers/postern.ts, which builds a PosternServer in-process.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import type { LogRecord } from './postern.js';
import { cleanupOnExit } from './postfix.js';

const root = path.resolve(import.meta.dirname, '../..');

export interface PosternProcess {
  port: number;
  pid: number;
  /** The configuration file it runs on (a test may rewrite it and send SIGHUP). */
  configFile: string;
  /** Every JSON log record so far, in order. */
  logs: LogRecord[];
  /** What the process wrote that is not a JSON record (stderr, a crash). */
  output(): string;
  /** The first record matching `pred`, waiting up to `timeoutMs`. */
  waitForLog(pred: (r: LogRecord) => boolean, timeoutMs?: number): Promise<LogRecord>;
  /** SIGTERM (the bounded drain), SIGKILL after 10 s; resolves with the exit code. */
  stop(): Promise<number | null>;
}

/** `overrides` are YAML-shaped settings on top of `server_name: proxy.test`, `listen: [127.0.0.1:0]`, `log.level: debug`. */
export async function startPosternProcess(overrides: Record<string, unknown>, timeoutMs = 20_000): Promise<PosternProcess> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'postern-proc-'));
  const file = path.join(dir, 'postern.yaml');
  writeFileSync(file, stringify({ server_name: 'proxy.test', listen: ['127.0.0.1:0'], log: { level: 'debug' }, ...overrides }));
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(root, 'src/cli.ts'), '--config', file], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  const unregister = cleanupOnExit(() => {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  const logs: LogRecord[] = [];
  let other = '';
  let partial = '';
  let exitCode: number | null | undefined;
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve((exitCode = code))));
  child.stdout!.on('data', (d: Buffer) => {
    partial += d.toString();
    const lines = partial.split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      if (!line) continue;
      try {
        logs.push(JSON.parse(line) as LogRecord);
      } catch {
        other += `${line}\n`;
      }
    }
  });
  child.stderr!.on('data', (d: Buffer) => (other += d.toString()));

  const waitForLog = async (pred: (r: LogRecord) => boolean, ms = 5_000): Promise<LogRecord> => {
    const deadline = Date.now() + ms;
    for (;;) {
      const hit = logs.find(pred);
      if (hit) return hit;
      if (exitCode !== undefined) throw new Error(`postern exited (${exitCode}) without the expected log record\n${other}${JSON.stringify(logs.slice(-10))}`);
      if (Date.now() > deadline) throw new Error(`no matching log record within ${ms} ms; last records: ${JSON.stringify(logs.slice(-10))}\n${other}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  };
  let port: number;
  try {
    const listening = await waitForLog((r) => r.msg === 'listening' && typeof r.listen === 'string', timeoutMs);
    port = Number(String(listening.listen).split(':').pop());
    await waitForLog((r) => r.msg === 'postern started', timeoutMs);
  } catch (err) {
    child.kill('SIGKILL');
    await exited;
    unregister();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  let stopped: Promise<number | null> | undefined;
  return {
    port,
    pid: child.pid!,
    configFile: file,
    logs,
    output: () => other,
    waitForLog,
    stop: () =>
      (stopped ??= (async () => {
        if (exitCode === undefined) child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
        const code = await exited;
        clearTimeout(t);
        unregister();
        rmSync(dir, { recursive: true, force: true });
        return code;
      })()),
  };
}
