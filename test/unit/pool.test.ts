/**
 * A pool's bookkeeping on a fake clock, and the failover loop with scripted attempts: usable
 * servers (active verdicts, passive max_fails/fail_timeout, max_connections), backups only when
 * no primary is usable, and the failover budget (distinct tries, one deadline, verdicts stop it,
 * exhaustion names every server tried).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseConfig } from '../../src/config/load.js';
import { PosternError } from '../../src/errors.js';
import { createLogger } from '../../src/log/logger.js';
import { failover, type Candidate } from '../../src/pools/failover.js';
import { Pool } from '../../src/pools/pool.js';
import { smtpRetryable } from '../../src/protocols/smtp.js';
import { Writable } from 'node:stream';

const logs: Record<string, unknown>[] = [];
const logger = createLogger('debug', new Writable({ write(c: Buffer, _e, cb) { for (const l of c.toString().split('\n')) if (l) logs.push(JSON.parse(l)); cb(); } }));

function pool(yaml: string, now: () => number): Pool {
  const c = parseConfig(`pools:\n  p:\n${yaml.replace(/^/gm, '    ')}\n`);
  return new Pool('p', c.pools.p!, logger, now);
}

describe('Pool', () => {
  it('backups only when no primary is usable; active verdicts and max_connections count', () => {
    const p = pool('servers: ["10.0.0.1:25", "10.0.0.2:25", { address: "10.0.0.9:25", backup: true }]\nhealth: { enabled: false }\n', () => 0);
    const picks = new Set([p.pick(null, new Set()), p.pick(null, new Set())]);
    assert.deepEqual([...picks].sort(), [0, 1]);
    p.setUp('10.0.0.1:25', false);
    p.setUp('10.0.0.2:25', false);
    assert.equal(p.pick(null, new Set()), 2, 'the backup, now that no primary is up');
    p.setUp('10.0.0.2:25', true);
    assert.equal(p.pick(null, new Set()), 1);
    assert.equal(p.pick(null, new Set([1])), 2, 'tried primaries are skipped, then the backup');
    assert.equal(p.pick(null, new Set([1, 2])), -1);
    const limited = pool('servers: [{ address: "10.0.0.1:25", max_connections: 1 }]\nhealth: { enabled: false }\n', () => 0);
    limited.acquire(0);
    assert.equal(limited.pick(null, new Set()), -1, 'at its connection limit');
    limited.release(0);
    assert.equal(limited.pick(null, new Set()), 0);
  });

  it('passive detection: max_fails failures within fail_timeout take a server out until fail_timeout has passed', () => {
    let now = 1000;
    const p = pool('servers: ["10.0.0.1:25", "10.0.0.2:25"]\nmax_fails: 2\nfail_timeout: 10s\nhealth: { enabled: false }\n', () => now);
    p.failed(0, 'x');
    assert.ok(p.usable(0), 'one failure of two allowed');
    now += 11_000;
    p.failed(0, 'x');
    assert.ok(p.usable(0), 'the first failure is older than fail_timeout and no longer counts');
    p.failed(0, 'x');
    assert.ok(!p.usable(0));
    assert.ok(logs.some((l) => l.code === 'PSW_POOL_SERVER_DOWN'), 'one log line when it goes out');
    now += 9_999;
    assert.ok(!p.usable(0));
    now += 1;
    assert.ok(p.usable(0), 'tried again after fail_timeout');
    p.succeeded(0);
    p.failed(0, 'x');
    assert.ok(p.usable(0), 'a success cleared the count');
  });

  it('hash pools report the server a key maps to (transaction affinity); others none', () => {
    const h = pool('servers: ["10.0.0.1:25", "10.0.0.2:25", "10.0.0.3:25"]\nbalance: hash\nhash: rcpt_domain\nhealth: { enabled: false }\n', () => 0);
    assert.equal(h.affinity('example.com'), h.affinity('example.com'));
    assert.equal(pool('servers: ["10.0.0.1:25"]\nhealth: { enabled: false }\n', () => 0).affinity('x'), undefined);
  });
});

describe('failover', () => {
  const cands = (ids: string[]): (() => Candidate | null) => {
    let i = 0;
    return () => (i < ids.length ? { id: ids[i]!, host: ids[i++]!, port: 25 } : null);
  };
  const run = (ids: string[], outcomes: Record<string, PosternError | 'ok'>, o: Partial<Parameters<typeof failover>[1]> = {}) =>
    new Promise<{ err: PosternError | null; tried: string[] }>((resolve) => {
      const tried: string[] = [];
      failover(cands(ids), { maxTries: 10, deadline: Date.now() + 10_000, attemptTimeout: 1000, exhausted: 'PST_POOL_EXHAUSTED', ...o }, (c, _t, cb) => {
        tried.push(c.id);
        const r = outcomes[c.id]!;
        queueMicrotask(() => (r === 'ok' ? cb(null, 'session') : cb(r)));
        return () => {};
      }, (e) => e.code !== 'PST_BACKEND_SENDER_REFUSED', (err) => resolve({ err, tried }));
    });
  const down = new PosternError('PST_BACKEND_UNREACHABLE', 'ECONNREFUSED');

  it('moves on until one succeeds', async () => {
    assert.deepEqual(await run(['a', 'b', 'c'], { a: down, b: down, c: 'ok' }), { err: null, tried: ['a', 'b', 'c'] });
  });

  it('a verdict stops it at once', async () => {
    const r = await run(['a', 'b'], { a: new PosternError('PST_BACKEND_SENDER_REFUSED', '553'), b: 'ok' });
    assert.equal(r.err?.code, 'PST_BACKEND_SENDER_REFUSED');
    assert.deepEqual(r.tried, ['a']);
  });

  it('stops after maxTries, or past the deadline, naming every server tried', async () => {
    const r = await run(['a', 'b', 'c'], { a: down, b: down, c: 'ok' }, { maxTries: 2 });
    assert.equal(r.err?.code, 'PST_POOL_EXHAUSTED');
    assert.equal(r.err?.detail, 'a PST_BACKEND_UNREACHABLE (ECONNREFUSED); b PST_BACKEND_UNREACHABLE (ECONNREFUSED)');
    const late = await run(['a'], { a: 'ok' }, { deadline: Date.now() - 1 });
    assert.deepEqual(late, { err: late.err, tried: [] });
    assert.equal(late.err?.detail, 'no usable server');
    const p = pool('servers: ["10.0.0.1:25", "10.0.0.2:25"]\nhealth: { enabled: false }\n', () => 0);
    p.setUp('10.0.0.1:25', false);
    p.failed(1, 'x');
    assert.equal(p.describe(), '10.0.0.1:25 down by the active checks; 10.0.0.2:25 out after failed sessions (fail_timeout)');
  });

  it('without a pool, one address keeps its own error; several name them all', async () => {
    const one = await run(['a'], { a: down }, { exhausted: null });
    assert.equal(one.err, down);
    const two = await run(['a', 'b'], { a: down, b: down }, { exhausted: null });
    assert.equal(two.err?.code, 'PST_BACKEND_UNREACHABLE');
    assert.match(two.err!.detail!, /^a .*; b /);
  });
});

describe('smtpRetryable: faults move on, verdicts stop', () => {
  it('every fault before the client saw a byte is retried; a 5xx to MAIL and refused credentials are not', () => {
    for (const code of ['PST_BACKEND_UNREACHABLE', 'PST_BACKEND_TIMEOUT', 'PST_BACKEND_CLOSED', 'PST_BACKEND_REJECTED', 'PST_BACKEND_INVALID_REPLY', 'PST_BACKEND_TLS_FAILED', 'PST_BACKEND_TLS_REQUIRED', 'PST_ROUTE_RESOLVE'] as const) {
      assert.equal(smtpRetryable(new PosternError(code, 'x')), true, code);
    }
    assert.equal(smtpRetryable(new PosternError('PST_BACKEND_SENDER_REFUSED', 'mail: 553', '553 5.7.1 no\r\n')), false);
    assert.equal(smtpRetryable(new PosternError('PST_BACKEND_AUTH_FAILED', 'auth: 535', '535 5.7.8 bad credentials\r\n')), false, 'a wrong password would fail everywhere');
    assert.equal(smtpRetryable(new PosternError('PST_BACKEND_AUTH_FAILED', 'no password available')), false);
    assert.equal(smtpRetryable(new PosternError('PST_BACKEND_AUTH_FAILED', 'auth: 454', '454 4.7.0 try later\r\n')), true);
    assert.equal(smtpRetryable(new PosternError('PST_CLIENT_LOST', 'aborted')), false);
  });
});
