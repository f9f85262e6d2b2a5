/**
 * Rate limiters in memory (rate-limiter-flexible's RateLimiterMemory behind our Limiter), the
 * burst allowance, windows, the per-process concurrency limiter through the same factory, and
 * the client address keys. Windows that must not end during a check are a minute long; the ones
 * that must end are short and waited out with a wide margin.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { createConcurrencyLimiter } from '../../src/limits/concurrency.js';
import { clientKeys, prefixKey } from '../../src/limits/keys.js';
import { RateLimiter } from '../../src/limits/rate.js';

describe('RateLimiter (memory)', () => {
  it('allows points per window, then refuses with the time until the window ends', async () => {
    const l = new RateLimiter({ name: 'm1', points: 3, durationMs: 60_000 });
    for (let i = 1; i <= 3; i++) assert.deepEqual(await l.take('a'), { allowed: true, count: i, limit: 3 });
    const v = await l.take('a');
    assert.equal(v.allowed, false);
    assert.equal(v.count, 4, 'a refused take still counts');
    assert.ok(v.retryAfterMs! > 55_000 && v.retryAfterMs! <= 60_000, `retryAfterMs ${v.retryAfterMs}`);
    assert.equal((await l.take('b')).allowed, true, 'keys are separate');
    assert.deepEqual(await l.peek('b'), { allowed: true, count: 1, limit: 3 });
    const p = await l.peek('a');
    assert.equal(p.allowed, false);
    assert.equal(p.count, 4);
    assert.deepEqual(await l.peek('never'), { allowed: true, count: 0, limit: 3 });
    l.release();
  });

  it('counts cost', async () => {
    const l = new RateLimiter({ name: 'm2', points: 10, durationMs: 60_000 });
    assert.deepEqual(await l.take('a', 7), { allowed: true, count: 7, limit: 10 });
    assert.equal((await l.take('a', 4)).allowed, false);
  });

  it('forgets a key when its window is over', async () => {
    const l = new RateLimiter({ name: 'm3', points: 2, durationMs: 1000 });
    await l.take('a');
    await l.take('a');
    assert.equal((await l.take('a')).allowed, false);
    await sleep(1400);
    assert.deepEqual(await l.peek('a'), { allowed: true, count: 0, limit: 2 });
    assert.deepEqual(await l.take('a'), { allowed: true, count: 1, limit: 2 });
  });

  it('burst: over the steady rate a client draws on the burst allowance until it is spent', async () => {
    const l = new RateLimiter({ name: 'm4', points: 2, durationMs: 60_000, burst: { points: 3, durationMs: 600_000 } });
    const verdicts = [];
    for (let i = 0; i < 6; i++) verdicts.push(await l.take('a'));
    assert.deepEqual(
      verdicts.map((v) => v.allowed),
      [true, true, true, true, true, false],
      '2 steady + 3 burst, then refused',
    );
    assert.deepEqual(verdicts[3], { allowed: true, count: 4, limit: 2 }, 'count is the steady window, over its limit while bursting');
    assert.ok(verdicts[5]!.retryAfterMs! > 55_000 && verdicts[5]!.retryAfterMs! <= 60_000, 'the steady window ends first');
    const p = await l.peek('a');
    assert.equal(p.allowed, false);
    const fresh = await l.peek('b');
    assert.deepEqual(fresh, { allowed: true, count: 0, limit: 2 });
  });

  it('burst: the allowance is not refilled by the steady window, only by its own', async () => {
    const l = new RateLimiter({ name: 'm5', points: 1, durationMs: 1000, burst: { points: 1, durationMs: 60_000 } });
    assert.equal((await l.take('a')).allowed, true); // steady
    assert.equal((await l.take('a')).allowed, true); // burst
    assert.equal((await l.take('a')).allowed, false);
    await sleep(1400);
    assert.equal((await l.take('a')).allowed, true, 'a new steady window');
    assert.equal((await l.take('a')).allowed, false, 'the burst is still spent');
  });

  it('rejects bad specs; with Redis windows are whole seconds', () => {
    assert.throws(() => new RateLimiter({ name: 'x', points: 0, durationMs: 1000 }), /points/);
    assert.throws(() => new RateLimiter({ name: 'x', points: 1, durationMs: 0 }), /windows/);
    const client = {} as never;
    assert.throws(() => new RateLimiter({ name: 'x', points: 1, durationMs: 1500 }, { kind: 'redis', client }), /whole seconds/);
  });

  it("the cluster store outside a cluster worker is this process's memory", async () => {
    const l = new RateLimiter({ name: 'm6', points: 1, durationMs: 60_000 }, { kind: 'cluster' });
    assert.equal((await l.take('a')).allowed, true);
    assert.equal((await l.take('a')).allowed, false);
  });
});

describe('concurrency limiter (memory)', () => {
  it('is the synchronous ConcurrencyLimiter', () => {
    const l = createConcurrencyLimiter({ name: 'c', limit: 2 });
    assert.equal((l.take('a') as { allowed: boolean }).allowed, true);
    assert.equal((l.take('a') as { allowed: boolean }).allowed, true);
    assert.deepEqual(l.take('a'), { allowed: false, count: 2, limit: 2 });
    l.release('a');
    assert.deepEqual(l.take('a'), { allowed: true, count: 2, limit: 2 });
    l.close();
  });
});

describe('clientKeys', () => {
  it('IPv4: the host and its /24', () => {
    assert.deepEqual(clientKeys('192.0.2.77'), ['192.0.2.77/32', '192.0.2.0/24']);
    assert.deepEqual(clientKeys('10.255.255.255'), ['10.255.255.255/32', '10.255.255.0/24']);
  });

  it('IPv4-mapped IPv6 is the IPv4 address, dotted or hex', () => {
    assert.deepEqual(clientKeys('::ffff:192.0.2.77'), ['192.0.2.77/32', '192.0.2.0/24']);
    assert.deepEqual(clientKeys('::FFFF:c000:24d'), ['192.0.2.77/32', '192.0.2.0/24']);
    assert.deepEqual(clientKeys('0:0:0:0:0:ffff:192.0.2.77'), ['192.0.2.77/32', '192.0.2.0/24']);
  });

  it('IPv6: the /64 and /48, one key for every spelling', () => {
    const want = ['2001:db8:1:2::/64', '2001:db8:1::/48'];
    assert.deepEqual(clientKeys('2001:db8:1:2:3:4:5:6'), want);
    assert.deepEqual(clientKeys('2001:0DB8:0001:0002:ffff:0:0:1'), want);
    assert.deepEqual(clientKeys('2001:db8:1:2::1%eth0'), want);
    assert.deepEqual(clientKeys('2001:db8:1:3::1'), ['2001:db8:1:3::/64', '2001:db8:1::/48'], 'a neighbour /64 shares the /48');
    assert.deepEqual(clientKeys('2001:db8:0:0:1::1'), ['2001:db8::/64', '2001:db8::/48']);
    assert.deepEqual(clientKeys('::1'), ['::/64', '::/48']);
    assert.deepEqual(clientKeys('2001:db8:1:2:3:4:5:6').length, 2);
    assert.deepEqual(clientKeys('fe80:1:2:3:4::'), ['fe80:1:2:3::/64', 'fe80:1:2::/48']);
  });

  it('not an IP address: itself', () => {
    assert.deepEqual(clientKeys(''), ['']);
    assert.deepEqual(clientKeys('/run/postern.sock'), ['/run/postern.sock']);
    assert.deepEqual(clientKeys('1.2.3'), ['1.2.3']);
  });

  it('prefixKey: other prefix lengths', () => {
    assert.equal(prefixKey('192.0.2.77', 16), '192.0.0.0/16');
    assert.equal(prefixKey('192.0.2.77', 20), '192.0.0.0/20');
    assert.equal(prefixKey('2001:db8:abcd:1234::1', 56), '2001:db8:abcd:1200::/56');
    assert.equal(prefixKey('2001:db8::1', 128), '2001:db8::1/128');
    assert.equal(prefixKey('1:0:0:2:0:0:0:3', 128), '1:0:0:2::3/128', 'the longest zero run is compressed');
  });
});
