/**
 * A real redis-server on loopback, one private instance per call: its own port and temporary
 * directory, no persistence (`--save '' --appendonly no`), bound to 127.0.0.1 only. The system
 * Redis (if any) is never used or touched.
 *
 * - Throws if /usr/bin/redis-server is missing (Debian package redis-server, installed by .ci/run):
 *   the tests never skip a missing peer.
 * - Ready when it answers PING (a few ms after start).
 * - stop() ends it (SIGTERM, then SIGKILL after 3 s) and resolves when it has exited;
 *   start() starts it again on the same port (the tests use that for "Redis is back").
 * - pause()/resume() stop and continue the process (SIGSTOP/SIGCONT): Redis stalled, connections kept.
 * - A server still running when the test process exits is killed (SIGKILL), so none outlives a failed run.
 * - The port is one the kernel just gave out and released; if redis-server cannot bind it
 *   (taken in between), a new one is tried, up to 5 times.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export const REDIS_SERVER = '/usr/bin/redis-server';

export interface RedisInstance {
  readonly port: number;
  /** Starts it again (same port, empty data) after stop(). */
  start(): Promise<void>;
  stop(): Promise<void>;
  /** SIGSTOP: connections stay open, nothing is answered. */
  pause(): void;
  /** SIGCONT. */
  resume(): void;
  /** Stops it and removes its directory. */
  close(): Promise<void>;
}

const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of running) c.kill('SIGKILL');
});

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** One PING over a raw socket: +PONG within 500 ms. */
function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect({ host: '127.0.0.1', port });
    const done = (ok: boolean): void => {
      c.destroy();
      resolve(ok);
    };
    c.setTimeout(500, () => done(false));
    c.on('error', () => done(false));
    c.on('connect', () => c.write('PING\r\n'));
    c.on('data', (d) => done(d.toString().startsWith('+PONG')));
  });
}

export async function startRedis(): Promise<RedisInstance> {
  if (!existsSync(REDIS_SERVER)) throw new Error(`${REDIS_SERVER} is missing: apt-get install redis-server (the tests never skip a missing peer)`);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'postern-redis-'));
  let child: ChildProcess | null = null;
  let port = 0;

  const run = async (p: number): Promise<boolean> => {
    const args = ['--port', String(p), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--daemonize', 'no', '--protected-mode', 'yes', '--loglevel', 'warning'];
    const c = spawn(REDIS_SERVER, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    let exited = false;
    running.add(c);
    c.once('exit', () => {
      exited = true;
      running.delete(c);
    });
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      if (exited) {
        if (/Address already in use|bind/i.test(out)) return false;
        throw new Error(`redis-server exited at start:\n${out}`);
      }
      if (await ping(p)) {
        child = c;
        return true;
      }
      await sleep(20);
    }
    c.kill('SIGKILL');
    throw new Error(`redis-server did not answer PING within 10 s:\n${out}`);
  };

  for (let i = 0; i < 5 && !child; i++) {
    port = await freePort();
    await run(port);
  }
  if (!child) throw new Error('redis-server: no free port after 5 tries');

  const stop = async (): Promise<void> => {
    const c = child as ChildProcess | null;
    child = null;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((r) => c.once('exit', () => r()));
    c.kill('SIGCONT');
    c.kill('SIGTERM');
    const t = setTimeout(() => c.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(t);
  };

  return {
    get port() {
      return port;
    },
    start: async () => {
      if (child) return;
      if (!(await run(port))) throw new Error(`redis-server: port ${port} was taken while it was stopped`);
    },
    stop,
    pause: () => void (child as ChildProcess | null)?.kill('SIGSTOP'),
    resume: () => void (child as ChildProcess | null)?.kill('SIGCONT'),
    close: async () => {
      await stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
