/**
 * The shared stores' insurance, without a Redis: a client pointed at a closed loopback port
 * (refused at once) and at a loopback server that accepts and never answers (a stalled Redis:
 * the deadline answers). Either way every call gets a verdict from memory within about the
 * timeout, the limits still hold, and onDown is called once.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, describe, it } from 'node:test';
import { createConcurrencyLimiter } from '../../src/limits/concurrency.js';
import { StoreGuard } from '../../src/limits/guard.js';
import { RateLimiter } from '../../src/limits/rate.js';
import { createRedisClient } from '../../src/limits/redis.js';

const TIMEOUT_MS = 200;
/** Generous: the point is "about the timeout", not seconds (a loaded CI machine adds some). */
const MAX_WAIT_MS = TIMEOUT_MS + 800;

async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** Accepts connections and never answers. */
async function silentServer(): Promise<{ port: number; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const s = net.createServer((c) => {
    sockets.add(c);
    c.on('error', () => {});
    c.on('close', () => sockets.delete(c));
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return {
    port: (s.address() as net.AddressInfo).port,
    close: async () => {
      for (const c of sockets) c.destroy();
      await new Promise<void>((r) => s.close(() => r()));
    },
  };
}

async function timed<T>(f: () => Promise<T>): Promise<{ v: T; ms: number }> {
  const t0 = performance.now();
  const v = await f();
  return { v, ms: performance.now() - t0 };
}

describe('insurance when Redis is unreachable (closed port)', async () => {
  const port = await closedPort();
  const client = createRedisClient({ port, connectTimeoutMs: 200, maxReconnectMs: 200 });
  after(() => client.disconnect());

  it('rate: verdicts come from memory at once, limits hold, one log line', async () => {
    const downs: string[] = [];
    const l = new RateLimiter({ name: 'fb-rate', points: 3, durationMs: 60_000 }, { kind: 'redis', client }, { timeoutMs: TIMEOUT_MS, onDown: (i) => downs.push(`${i.store} ${i.limiter}: ${i.error.message}`) });
    const verdicts = [];
    for (let i = 0; i < 5; i++) {
      const { v, ms } = await timed(() => l.take('192.0.2.1/32'));
      assert.ok(ms < MAX_WAIT_MS, `take ${i} waited ${ms} ms`);
      verdicts.push(v.allowed);
    }
    assert.deepEqual(verdicts, [true, true, true, false, false]);
    const { v, ms } = await timed(() => l.peek('192.0.2.1/32'));
    assert.ok(ms < MAX_WAIT_MS);
    assert.equal(v.count, 5);
    assert.equal(downs.length, 1, downs.join('\n'));
    assert.match(downs[0]!, /^redis fb-rate: /);
  });

  it('concurrency: decided on this process’s holds, one log line', async () => {
    const downs: unknown[] = [];
    const l = createConcurrencyLimiter({ name: 'fb-conc', limit: 2 }, { kind: 'redis', client }, { timeoutMs: TIMEOUT_MS, onDown: (i) => downs.push(i) });
    const take = async (): Promise<boolean> => {
      const { v, ms } = await timed(async () => l.take('k'));
      assert.ok(ms < MAX_WAIT_MS, `take waited ${ms} ms`);
      return v.allowed;
    };
    assert.deepEqual([await take(), await take(), await take()], [true, true, false]);
    await l.release('k');
    assert.equal(await take(), true, 'a released place is free again');
    assert.equal((await l.peek('k')).count, 2);
    await l.release('k');
    await l.release('k');
    assert.equal((await l.peek('k')).count, 0);
    assert.equal(downs.length, 1);
    l.close();
  });
});

describe('insurance when Redis stalls (accepts, never answers)', async () => {
  const server = await silentServer();
  // No ready check and no CLIENT SETINFO: the client counts as connected at once and sends commands that are never answered.
  const client = createRedisClient({ port: server.port, commandTimeoutMs: 400, extra: { enableReadyCheck: false, disableClientInfo: true } });
  after(async () => {
    client.disconnect();
    await server.close();
  });

  it('rate: the first call waits out the deadline, later ones are answered at once; one log line', async () => {
    await new Promise<void>((resolve, reject) => {
      if (client.status === 'ready') return resolve();
      const t = setTimeout(() => reject(new Error(`client not connected to the silent server: ${client.status}`)), 5000);
      client.once('ready', () => (clearTimeout(t), resolve()));
    });
    const downs: unknown[] = [];
    const l = new RateLimiter({ name: 'fb-stall', points: 2, durationMs: 60_000 }, { kind: 'redis', client }, { timeoutMs: TIMEOUT_MS, retryMs: 60_000, onDown: (i) => downs.push(i) });
    const first = await timed(() => l.take('a'));
    assert.equal(first.v.allowed, true);
    assert.ok(first.ms >= TIMEOUT_MS - 20 && first.ms < MAX_WAIT_MS, `first take ${first.ms} ms`);
    const rest = [];
    for (let i = 0; i < 3; i++) {
      const { v, ms } = await timed(() => l.take('a'));
      assert.ok(ms < TIMEOUT_MS, `a later take waited ${ms} ms: the stalled store is left alone for retryMs`);
      rest.push(v.allowed);
    }
    assert.deepEqual(rest, [true, false, false]);
    assert.equal(downs.length, 1);
  });
});

describe('StoreGuard', () => {
  it('logs one outage once, its end once, and again for the next outage', async () => {
    const events: string[] = [];
    const g = new StoreGuard('s', 'l', { timeoutMs: 1000, onDown: () => events.push('down'), onUp: () => events.push('up') });
    const fail = (): Promise<number> => Promise.reject(new Error('no'));
    const ok = (): Promise<number> => Promise.resolve(1);
    assert.equal(await g.run(ok, () => 0), 1);
    assert.equal(await g.run(fail, () => 0), 0);
    assert.equal(await g.run(fail, () => 0), 0);
    assert.equal(g.down, true);
    assert.equal(await g.run(ok, () => 0), 1);
    assert.equal(await g.run(fail, () => 0), 0);
    assert.deepEqual(events, ['down', 'up', 'down']);
  });
});
