/**
 * Load for the benchmark: Postfix smtp-source (a new session per message, as mail arrives at an
 * MX), and a holder of idle connections for the memory figure.
 */
import { spawn } from 'node:child_process';
import net from 'node:net';
import { pidsOf, procStats, type Proc } from './procs.js';

export interface SourceResult {
  ms: number;
  /** smtp-source's exit code (null: killed by a signal). */
  code: number | null;
  failed: boolean;
  stderr: string;
}

export function runSource(port: number, o: { sessions: number; messages: number; size: number }): Promise<SourceResult> {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    const child = spawn('/usr/sbin/smtp-source', [
      '-s', String(o.sessions), '-m', String(o.messages), '-l', String(o.size),
      '-f', 'a@x.test', '-t', 'u@y.test', '-M', 'load.test', `127.0.0.1:${port}`,
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('exit', (code) => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      resolve({ ms, code, failed: code !== 0 || /fatal|warning/.test(stderr), stderr });
    });
  });
}

/**
 * Opens `n` connections, waits for each greeting, and reports the proxy's resident memory per
 * connection (RSS with them open minus RSS before, divided by n) and how many were dropped.
 * `settleMs`: how long the connections stay open before RSS is read (a smoke run needs less).
 */
export async function holdIdle(proxy: Proc, n: number, settleMs = 2000): Promise<{ bytesPerConn: number; dropped: number }> {
  const pids = pidsOf(proxy);
  await new Promise((r) => setTimeout(r, settleMs / 4));
  const before = procStats(pids).rss;
  const sockets: net.Socket[] = [];
  let greeted = 0;
  let dropped = 0;
  const batch = 500;
  for (let i = 0; i < n; i += batch) {
    await Promise.all(
      Array.from({ length: Math.min(batch, n - i) }, () =>
        new Promise<void>((resolve) => {
          const s = net.connect(proxy.port, '127.0.0.1');
          sockets.push(s);
          s.once('data', () => {
            greeted++;
            resolve();
          });
          s.once('error', () => {
            dropped++;
            resolve();
          });
          s.once('close', () => resolve());
        }),
      ),
    );
  }
  await new Promise((r) => setTimeout(r, settleMs));
  const after = procStats(pids).rss;
  dropped += sockets.filter((s) => s.destroyed).length;
  for (const s of sockets) s.destroy();
  await new Promise((r) => setTimeout(r, settleMs / 2));
  return { bytesPerConn: (after - before) / Math.max(greeted, 1), dropped: dropped + (n - greeted) };
}

/**
 * The STARTTLS-at-the-front load (bench/tls-load.ts, its own process): smtp-source's dialog with
 * STARTTLS and a full TLS handshake after the first EHLO. `ms` is the generator's own clock,
 * from its first connect to its last reply (not its start-up).
 */
export function runTlsSource(port: number, o: { sessions: number; messages: number; size: number }): Promise<SourceResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', new URL('./tls-load.ts', import.meta.url).pathname, String(port), String(o.sessions), String(o.messages), String(o.size)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('exit', (code) => {
      try {
        const r = JSON.parse(stdout) as { ms: number; sent: number; failed: number; errors: string[] };
        resolve({ ms: r.ms, code, failed: code !== 0 || r.failed > 0, stderr: `${r.failed} session(s) failed: ${r.errors.join('; ')}${stderr}` });
      } catch {
        resolve({ ms: NaN, code, failed: true, stderr: stdout + stderr });
      }
    });
  });
}
