/**
 * The seams beside the core: limiters (in memory, answering at once; and the same interface
 * answering with Promises, as a limiter shared across machines will), router layers composing
 * in order, and the AUTH brute-force guard as a layer working with either kind of limiter.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { authFailureGuard } from '../../src/auth/failure-guard.js';
import { composeRouter, type Router, type RouterLayer } from '../../src/auth/router.js';
import type { RouteDecision, RouteRequest } from '../../src/domain.js';
import { ConcurrencyLimiter, WindowLimiter, type Limiter } from '../../src/limits/limiter.js';

describe('limiters', () => {
  it('WindowLimiter counts per key within the window, then forgets', () => {
    let now = 1000;
    const l = new WindowLimiter(3, 100, () => now);
    assert.deepEqual(l.take('k'), { allowed: true, count: 1, limit: 3 });
    l.take('k');
    assert.deepEqual(l.take('k'), { allowed: false, count: 3, limit: 3 });
    assert.deepEqual(l.peek('other'), { allowed: true, count: 0, limit: 3 });
    now += 100;
    assert.deepEqual(l.peek('k'), { allowed: true, count: 0, limit: 3 }, 'the window is over');
  });

  it('ConcurrencyLimiter takes only within the limit and gives back on release; 0 means no limit', () => {
    const l = new ConcurrencyLimiter(2);
    assert.equal(l.take('a').allowed, true);
    assert.equal(l.take('a').allowed, true);
    assert.deepEqual(l.take('a'), { allowed: false, count: 2, limit: 2 });
    l.release('a');
    assert.equal(l.take('a').allowed, true);
    l.release('a');
    l.release('a');
    assert.equal(l.size, 0, 'released keys are dropped');
    const open = new ConcurrencyLimiter(0);
    for (let i = 0; i < 100; i++) assert.equal(open.take('x').allowed, true);
  });
});

const req = (auth: boolean): RouteRequest => ({
  envelope: { helo: 'h', esmtp: true, mailLine: auth ? '' : 'MAIL FROM:<a@b>', rcptLine: auth ? '' : 'RCPT TO:<c@d>', mailFrom: '', rcptTo: '', attempt: 1, ...(auth ? { auth: { method: 'plain', user: 'u', pass: 'p' } } : {}) },
  clientAddr: '192.0.2.1',
  clientPort: 1,
  clientHost: '[UNAVAILABLE]',
});

const refusing: Router = { route: () => ({ kind: 'reject', reply: '535 5.7.8 no', waitMs: 0, reason: 'no' }), close: async () => {} };

/** The same in-memory limiter behind Promises: what a shared (Redis) limiter looks like to callers. */
function asyncLimiter(inner: Limiter): Limiter {
  return {
    take: async (k, c) => inner.take(k, c),
    peek: async (k) => inner.peek(k),
    release: async (k, c) => inner.release(k, c),
  };
}

describe('router layers', () => {
  it('compose in order, the first listed outermost', async () => {
    const trail: string[] = [];
    const tag = (name: string): RouterLayer => (inner) => ({
      route(r) {
        trail.push(name);
        return inner.route(r);
      },
      close: () => inner.close(),
    });
    const base: Router = { route: () => ({ kind: 'ok', host: 'h', port: 25 }), close: async () => {} };
    const r = composeRouter(base, [tag('outer'), tag('inner')]);
    assert.deepEqual(await r.route(req(false)), { kind: 'ok', host: 'h', port: 25 });
    assert.deepEqual(trail, ['outer', 'inner']);
  });

  for (const [name, make] of [['in memory', (l: Limiter) => l], ['behind Promises', asyncLimiter]] as const) {
    it(`the AUTH failure guard counts refused logins and then refuses before asking (${name})`, async () => {
      let asked = 0;
      const counting: Router = { route: (r) => (asked++, refusing.route(r)), close: async () => {} };
      const guarded = composeRouter(counting, [authFailureGuard(make(new WindowLimiter(2, 60_000)))]);
      assert.equal(((await guarded.route(req(true))) as RouteDecision).kind, 'reject');
      assert.equal(((await guarded.route(req(true))) as RouteDecision).kind, 'reject');
      assert.deepEqual(await guarded.route(req(true)), { kind: 'error', code: 'PST_AUTH_TOO_MANY', detail: '192.0.2.1 is over auth.max_failures_per_client' });
      assert.equal(asked, 2, 'the third login never reached the auth service');
      // Recipient routing is neither guarded nor counted.
      assert.equal(((await guarded.route(req(false))) as RouteDecision).kind, 'reject');
      assert.equal(asked, 3);
    });
  }

  it('with an in-memory limiter and a synchronous router the guard answers without a Promise', () => {
    const sync: Router = { route: () => ({ kind: 'ok', host: 'h', port: 25 }), close: async () => {} };
    const d = composeRouter(sync, [authFailureGuard(new WindowLimiter(2, 60_000))]).route(req(true));
    assert.ok(!(d instanceof Promise));
  });
});
