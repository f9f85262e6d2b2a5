/**
 * The Redis store against a real redis-server (test/helpers/redis.ts: our own, on loopback).
 * Two limiter objects with their own ioredis clients stand for two Postern instances: together
 * they enforce one limit. Redis stopped mid-run: both keep answering from memory within the
 * deadline (one onDown each) and use Redis again once it is back (one onUp each), the
 * connection counts re-sent by their lease renewals. Redis stalled (SIGSTOP): the deadline answers.
 * And two Postern processes on one Redis enforce one `limits.rates` messages limit per sender.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { createConcurrencyLimiter } from '../../src/limits/concurrency.js';
import type { Limiter } from '../../src/limits/limiter.js';
import { RateLimiter, type RateSpec } from '../../src/limits/rate.js';
import { createRedisClient } from '../../src/limits/redis.js';
import { FakeBackend } from '../helpers/fake-backend.js';
import { startPosternProcess } from '../helpers/postern-process.js';
import { startRedis, type RedisInstance } from '../helpers/redis.js';
import { SmtpClient, replyText } from '../helpers/smtp-client.js';

const TIMEOUT_MS = 200;
const MAX_WAIT_MS = TIMEOUT_MS + 800;

let redis: RedisInstance;
const clients: Redis[] = [];
const closers: (() => void)[] = [];

/** A client as an instance would have it, connected (bounded wait). */
async function client(): Promise<Redis> {
  const c = createRedisClient({ port: redis.port, connectTimeoutMs: 500, commandTimeoutMs: 500, maxReconnectMs: 200 });
  clients.push(c);
  await until(() => c.status === 'ready', 5000, 'ioredis ready');
  return c;
}

async function until(cond: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(25);
  }
}

async function timed<T>(f: () => T | Promise<T>): Promise<{ v: T; ms: number }> {
  const t0 = performance.now();
  const v = await f();
  return { v, ms: performance.now() - t0 };
}

async function takes(l: Limiter, key: string, n: number): Promise<boolean[]> {
  const out: boolean[] = [];
  for (let i = 0; i < n; i++) out.push((await l.take(key)).allowed);
  return out;
}

interface Events {
  downs: number;
  ups: number;
}
const events = (): Events & { onDown: () => void; onUp: () => void } => {
  const e = { downs: 0, ups: 0, onDown: () => void e.downs++, onUp: () => void e.ups++ };
  return e;
};

describe('Redis store (real redis-server)', () => {
  before(async () => {
    redis = await startRedis();
  });
  after(async () => {
    for (const c of closers) c();
    for (const c of clients) c.disconnect();
    await redis?.close();
  });

  it('two instances share one rate, burst included', async () => {
    const [ca, cb] = [await client(), await client()];
    const spec: RateSpec = { name: 'i-rate', points: 5, durationMs: 60_000 };
    const a = new RateLimiter(spec, { kind: 'redis', client: ca }, { timeoutMs: 2000 });
    const b = new RateLimiter(spec, { kind: 'redis', client: cb }, { timeoutMs: 2000 });
    assert.deepEqual(await takes(a, '192.0.2.1/32', 3), [true, true, true]);
    assert.deepEqual(await takes(b, '192.0.2.1/32', 3), [true, true, false]);
    const p = await a.peek('192.0.2.1/32');
    assert.equal(p.count, 6);
    assert.equal(p.allowed, false);
    assert.ok(p.retryAfterMs! > 50_000 && p.retryAfterMs! <= 60_000, `retryAfterMs ${p.retryAfterMs}`);
    assert.deepEqual(await takes(b, '192.0.2.0/24', 1), [true], 'another key');

    const burst: RateSpec = { name: 'i-burst', points: 2, durationMs: 60_000, burst: { points: 2, durationMs: 600_000 } };
    const ba = new RateLimiter(burst, { kind: 'redis', client: ca }, { timeoutMs: 2000 });
    const bb = new RateLimiter(burst, { kind: 'redis', client: cb }, { timeoutMs: 2000 });
    assert.deepEqual([...(await takes(ba, 'k', 3)), ...(await takes(bb, 'k', 2))], [true, true, true, true, false], '2 steady + 2 burst between them');
  });

  it('windows end in Redis too', async () => {
    const c = await client();
    const l = new RateLimiter({ name: 'i-window', points: 2, durationMs: 1000 }, { kind: 'redis', client: c }, { timeoutMs: 2000 });
    assert.deepEqual(await takes(l, 'k', 3), [true, true, false]);
    await sleep(1500);
    assert.deepEqual(await takes(l, 'k', 1), [true]);
  });

  it('two instances share one connection limit; a crashed one’s connections lapse with its lease', async () => {
    const [ca, cb] = [await client(), await client()];
    const spec = { name: 'i-conc', limit: 3 };
    const a = createConcurrencyLimiter(spec, { kind: 'redis', client: ca }, { timeoutMs: 2000, leaseMs: 1000 });
    const b = createConcurrencyLimiter(spec, { kind: 'redis', client: cb }, { timeoutMs: 2000, leaseMs: 1000 });
    closers.push(() => a.close(), () => b.close());
    assert.deepEqual(await takes(a, 'k', 2), [true, true]);
    assert.deepEqual(await takes(b, 'k', 2), [true, false]);
    assert.equal((await b.peek('k')).count, 3);
    await a.release('k');
    assert.deepEqual(await takes(b, 'k', 2), [true, false], 'a released one');
    // Leases are renewed while held: past several lease lengths, the counts are still there.
    await sleep(1500);
    assert.equal((await a.peek('k')).count, 3);
    // a "crashes": it stops renewing and never releases. Its one connection lapses after its lease.
    a.close();
    const t0 = Date.now();
    await until(async () => (await b.take('k')).allowed, 8000, "a's lease lapsing");
    const lapsed = Date.now() - t0;
    assert.ok(lapsed <= 4000, `lapsed after ${lapsed} ms (lease 1000 ms)`);
    assert.equal((await b.peek('k')).count, 3, 'b holds all three now');
    for (let i = 0; i < 3; i++) await b.release('k');
    await until(async () => (await b.peek('k')).count === 0, 2000, 'releases reaching Redis');
  });

  it('Redis stopped mid-run: answers from memory within the deadline, one log line each; back in use when Redis returns', { timeout: 60_000 }, async () => {
    const [ca, cb] = [await client(), await client()];
    const [ea, eb, eca, ecb] = [events(), events(), events(), events()];
    const spec: RateSpec = { name: 'i-outage', points: 3, durationMs: 60_000 };
    // retryMs short: a call that times out as Redis goes away must not keep the limiter off Redis after it is back.
    const a = new RateLimiter(spec, { kind: 'redis', client: ca }, { timeoutMs: TIMEOUT_MS, retryMs: 100, ...ea });
    const b = new RateLimiter(spec, { kind: 'redis', client: cb }, { timeoutMs: TIMEOUT_MS, retryMs: 100, ...eb });
    const conc = { name: 'i-outage-conc', limit: 3 };
    const xa = createConcurrencyLimiter(conc, { kind: 'redis', client: ca }, { timeoutMs: TIMEOUT_MS, retryMs: 100, leaseMs: 1500, ...eca });
    const xb = createConcurrencyLimiter(conc, { kind: 'redis', client: cb }, { timeoutMs: TIMEOUT_MS, retryMs: 100, leaseMs: 1500, ...ecb });
    closers.push(() => xa.close(), () => xb.close());

    assert.deepEqual(await takes(a, 'before', 2), [true, true]);
    assert.deepEqual(await takes(b, 'before', 2), [true, false], 'shared while Redis is up');

    await redis.stop();
    // Each instance now limits on its own, in memory, at once.
    for (const [l, want] of [
      [a, [true, true, true, false]],
      [b, [true, true, true, false]],
    ] as const) {
      const got: boolean[] = [];
      for (let i = 0; i < 4; i++) {
        const { v, ms } = await timed(() => l.take('during'));
        assert.ok(ms < MAX_WAIT_MS, `take waited ${ms} ms with Redis down`);
        got.push(v.allowed);
      }
      assert.deepEqual(got, want);
    }
    for (const l of [xa, xb]) {
      const { v, ms } = await timed(async () => [await l.take('c'), await l.take('c')]);
      assert.ok(ms < 2 * MAX_WAIT_MS, `concurrency takes waited ${ms} ms`);
      assert.deepEqual(
        v.map((x) => x.allowed),
        [true, true],
        'per instance: 2 of 3 each',
      );
    }
    assert.deepEqual([ea.downs, eb.downs, eca.downs, ecb.downs], [1, 1, 1, 1], 'one onDown per limiter');
    assert.deepEqual([ea.ups, eb.ups], [0, 0]);

    await redis.start();
    await until(() => ca.status === 'ready' && cb.status === 'ready', 10_000, 'clients reconnected');
    // Rates: the next call goes to Redis again (empty: no persistence), shared between the instances.
    assert.deepEqual(await takes(a, 'after', 2), [true, true]);
    assert.deepEqual(await takes(b, 'after', 2), [true, false]);
    assert.deepEqual([ea.ups, eb.ups], [1, 1], 'one onUp each');
    // Connections: the lease renewals re-send what each holds (2 + 2), so the shared count is 4 of 3.
    await until(async () => (await xa.peek('c')).count === 4, 5000, 'holds re-sent to Redis');
    assert.equal((await xb.take('c')).allowed, false);
    await xa.release('c');
    await xa.release('c');
    assert.equal((await xb.take('c')).allowed, true, "a's releases reached Redis");
    assert.deepEqual([eca.downs, ecb.downs], [1, 1], 'still one onDown each');
  });

  it('Redis stalled (SIGSTOP): the deadline answers, from memory', { timeout: 30_000 }, async () => {
    const c = await client();
    const e = events();
    const l = new RateLimiter({ name: 'i-stall', points: 2, durationMs: 60_000 }, { kind: 'redis', client: c }, { timeoutMs: TIMEOUT_MS, retryMs: 500, ...e });
    assert.equal((await l.take('k')).allowed, true);
    redis.pause();
    try {
      const got: boolean[] = [];
      for (let i = 0; i < 3; i++) {
        const { v, ms } = await timed(() => l.take('k'));
        assert.ok(ms < MAX_WAIT_MS, `take waited ${ms} ms with Redis stalled`);
        got.push(v.allowed);
      }
      assert.deepEqual(got, [true, true, false], 'the insurance counts afresh: 2 of 2, then refused');
      assert.equal(e.downs, 1);
    } finally {
      redis.resume();
    }
    await until(async () => (await l.take('probe'), e.ups === 1), 10_000, 'back in use after SIGCONT');
  });
});

describe('two Postern processes on one Redis', () => {
  it('enforce one messages limit per sender together, counted under the rule\'s own keys', { timeout: 60_000 }, async () => {
    const own = await startRedis();
    const backend = await FakeBackend.start();
    const cfg = {
      route: { static: `127.0.0.1:${backend.port}` },
      proxy_mode: 'transaction',
      limits: { store: { redis: `127.0.0.1:${own.port}` }, rates: [{ count: 'messages', key: 'sender', max: 3, per: '60s' }] },
    };
    const [a, b] = await Promise.all([startPosternProcess(cfg), startPosternProcess(cfg)]);
    const session = async (port: number): Promise<SmtpClient> => {
      const c = await SmtpClient.connect(port);
      assert.match(replyText(await c.reply()), /^220 /);
      assert.match(await c.cmd('EHLO client.test'), /^250 /);
      return c;
    };
    const mail = async (c: SmtpClient, from: string): Promise<string> => {
      const r = await c.cmd(`MAIL FROM:<${from}>`);
      if (r.startsWith('250')) assert.equal(await c.cmd('RSET'), '250 2.0.0 OK');
      return r;
    };
    const probe = createRedisClient({ port: own.port });
    try {
      const [ca, cb] = [await session(a.port), await session(b.port)];
      assert.equal(await mail(ca, 's@x.test'), '250 2.1.0 OK');
      assert.equal(await mail(cb, 'S@x.test'), '250 2.1.0 OK');
      assert.equal(await mail(ca, 's@x.test'), '250 2.1.0 OK');
      assert.equal(await mail(cb, 's@x.test'), '450 4.7.1 Error: too much mail from <s@x.test>', 'the fourth, on either instance, is over the shared limit');
      assert.equal(await mail(ca, 's@X.TEST'), '450 4.7.1 Error: too much mail from <s@X.TEST>');
      assert.equal(await mail(cb, 't@x.test'), '250 2.1.0 OK', 'another sender');
      await b.waitForLog((l) => l.code === 'PST_RATE_MESSAGES');
      await a.waitForLog((l) => l.code === 'PST_RATE_MESSAGES');
      ca.close();
      cb.close();
      await until(() => probe.status === 'ready', 5000, 'probe client ready');
      assert.deepEqual((await probe.keys('postern:rates.0:*')).sort(), ['postern:rates.0:s@x.test', 'postern:rates.0:t@x.test']);
      assert.ok(!a.logs.some((l) => l.code === 'PSW_LIMITS_STORE_DOWN') && !b.logs.some((l) => l.code === 'PSW_LIMITS_STORE_DOWN'), 'counted in Redis, not in the fallback');
    } finally {
      probe.disconnect();
      await Promise.all([a.stop(), b.stop()]);
      await backend.stop();
      await own.close();
    }
  });
});
