/**
 * Runs Postern in-process on an ephemeral loopback port with a config built from YAML-shaped
 * overrides, capturing its log records for assertions.
 */
import { Writable } from 'node:stream';
import { parseConfig } from '../../src/config/load.js';
import { createLogger } from '../../src/log/logger.js';
import { PosternServer } from '../../src/net/server.js';
import { stringify } from 'yaml';

export interface LogRecord {
  level: string;
  msg: string;
  code?: string;
  type?: string;
  [k: string]: unknown;
}

export interface RunningPostern {
  port: number;
  server: PosternServer;
  logs: LogRecord[];
  /** Resolves with the first log record matching, within `timeoutMs`. */
  waitForLog(pred: (r: LogRecord) => boolean, timeoutMs?: number): Promise<LogRecord>;
  stop(): Promise<void>;
}

export async function startPostern(overrides: Record<string, unknown>): Promise<RunningPostern> {
  // With server blocks each block has its own listen; otherwise one ephemeral loopback port.
  const base = 'servers' in overrides ? { server_name: 'proxy.test' } : { server_name: 'proxy.test', listen: ['127.0.0.1:0'] };
  const config = parseConfig(stringify({ ...base, ...overrides }));
  const logs: LogRecord[] = [];
  const waiters = new Set<() => void>();
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line) logs.push(JSON.parse(line) as LogRecord);
      for (const w of waiters) w();
      cb();
    },
  });
  const server = new PosternServer(config, createLogger('debug', sink));
  const [addr] = await server.start();
  return {
    port: addr!.port,
    server,
    logs,
    async waitForLog(pred, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const hit = logs.find(pred);
        if (hit) return hit;
        if (Date.now() > deadline) throw new Error(`no matching log record; got ${JSON.stringify(logs.slice(-10))}`);
        await new Promise<void>((r) => {
          const t = setTimeout(r, 50);
          waiters.add(() => {
            clearTimeout(t);
            r();
          });
        });
        waiters.clear();
      }
    },
    stop: () => server.stop(1000),
  };
}
