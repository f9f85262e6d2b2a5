/**
 * The rate rules (limits.rates and the connection_rate / recipient_rate shorthands): how they
 * are built from the config, the key of each key kind (IPv4 /32 and /24, IPv6 /64 and /48,
 * IPv4-mapped, users and senders lower-cased, the null sender, long and 8-bit keys hashed), the
 * schema's refusals by key path, and the three places they are asked — the message-rate stage
 * check (answering synchronously when its limiters do), the recipient layer and the AUTH-failure
 * rules — in memory and behind Promises.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { authFailureGuard, authFailureRules } from '../../src/auth/failure-guard.js';
import { composeRouter, type Router } from '../../src/auth/router.js';
import { messageRateCheck } from '../../src/checks/message-rate.js';
import { recipientRateLayer } from '../../src/checks/rate-layer.js';
import { ConfigError, parseConfig } from '../../src/config/load.js';
import type { RateKey } from '../../src/config/schema.js';
import type { CheckRequest, CheckVerdict, RouteDecision, RouteRequest } from '../../src/domain.js';
import type { Limiter, LimitVerdict } from '../../src/limits/limiter.js';
import { WindowLimiter } from '../../src/limits/limiter.js';
import { RateLimiter } from '../../src/limits/rate.js';
import { boundedKey, firstOver, lowerAscii, ruleKey, subjectOf, type RateRule } from '../../src/limits/rules.js';
import { buildLimits } from '../../src/limits/setup.js';
import { createLogger } from '../../src/log/logger.js';
import { stringify } from 'yaml';

/** A synchronous fixed-window rate: `max` per key, then refused (what an in-memory rate limiter answers). */
function syncRate(max: number): Limiter & { counts: Map<string, number> } {
  const counts = new Map<string, number>();
  const verdict = (n: number): LimitVerdict => ({ allowed: n <= max, count: n, limit: max });
  return {
    counts,
    take: (k, c = 1) => {
      const n = (counts.get(k) ?? 0) + c;
      counts.set(k, n);
      return verdict(n);
    },
    peek: (k) => ({ allowed: (counts.get(k) ?? 0) < max, count: counts.get(k) ?? 0, limit: max }),
    release: () => {},
  };
}

/** The same limiter behind Promises, as a shared store answers. */
function later(l: Limiter): Limiter {
  return { take: async (k, c) => l.take(k, c), peek: async (k) => l.peek(k), release: async () => {} };
}

const rule = (key: RateKey, limiter: Limiter, i = 0, count: RateRule['count'] = 'messages'): RateRule => ({ name: `limits.rates.${i}`, count, key, limiter });

describe('rate rule keys', () => {
  it('client and client_net: IPv4 /32 and /24, IPv6 /64 and /48, IPv4-mapped as IPv4', () => {
    const cases: [string, string, string][] = [
      ['192.0.2.77', '192.0.2.77/32', '192.0.2.0/24'],
      ['::ffff:192.0.2.77', '192.0.2.77/32', '192.0.2.0/24'],
      ['::ffff:c000:24d', '192.0.2.77/32', '192.0.2.0/24'],
      ['2001:db8:1:2:3:4:5:6', '2001:db8:1:2::/64', '2001:db8:1::/48'],
      ['2001:DB8:1:FFFF::1', '2001:db8:1:ffff::/64', '2001:db8:1::/48'],
      ['2001:db8:1:ffff:0:0:0:1%eth0', '2001:db8:1:ffff::/64', '2001:db8:1::/48'],
    ];
    for (const [addr, host, net] of cases) {
      assert.equal(ruleKey('client', { clientAddr: addr }), host, addr);
      assert.equal(ruleKey('client_net', { clientAddr: addr }), net, addr);
    }
    assert.equal(ruleKey('client_net', { clientAddr: 'not-an-ip' }), 'not-an-ip', 'not an address: the one key it is');
    assert.equal(subjectOf('client_net', { clientAddr: '::ffff:192.0.2.77' }), '192.0.2.77', 'replies name the IPv4 address');
  });

  it('user, sender and domains lower-cased (ASCII only); the null sender is <>; no user: the rule does not apply', () => {
    const f = { clientAddr: '192.0.2.1', user: 'Alice@Example.COM', sender: 'Bob.Smith@Example.ORG', rcpt: 'x@Sub.Example.NET' };
    assert.equal(ruleKey('user', f), 'alice@example.com');
    assert.equal(ruleKey('sender', f), 'bob.smith@example.org');
    assert.equal(ruleKey('sender_domain', f), 'example.org');
    assert.equal(ruleKey('rcpt_domain', f), 'sub.example.net');
    assert.equal(ruleKey('user', { clientAddr: '192.0.2.1' }), null, 'unauthenticated');
    assert.equal(ruleKey('user', { clientAddr: '192.0.2.1', user: '' }), null, 'EXTERNAL with an empty identity');
    assert.equal(ruleKey('sender', { clientAddr: '192.0.2.1', sender: '' }), '<>');
    assert.equal(ruleKey('sender_domain', { clientAddr: '192.0.2.1', sender: '' }), '<>');
    assert.equal(subjectOf('sender', { clientAddr: '192.0.2.1', sender: '' }), '<>');
    assert.equal(subjectOf('sender', f), '<Bob.Smith@Example.ORG>', 'the reply names the sender as given');
    assert.equal(ruleKey('rcpt_domain', { clientAddr: '192.0.2.1', rcpt: 'Postmaster' }), 'postmaster', 'no domain: the address stands for itself');
    assert.equal(lowerAscii('ÀB\xc3\x89'), 'Àb\xc3\x89', 'bytes above 0x7f are not folded');
  });

  it('long or 8-bit keys are hashed, deterministically, and cannot equal a plain key', () => {
    const long = `${'a'.repeat(300)}@example.org`;
    const k = ruleKey('sender', { clientAddr: '192.0.2.1', sender: long })!;
    assert.match(k, /^sha256 [A-Za-z0-9_-]{43}$/);
    assert.equal(ruleKey('sender', { clientAddr: '192.0.2.1', sender: long.toUpperCase() }), k, 'lower-cased before hashing');
    assert.equal(boundedKey('a'.repeat(200)), 'a'.repeat(200), '200 bytes are kept');
    assert.match(boundedKey('a'.repeat(201)), /^sha256 /);
    // SMTPUTF8 bytes (latin1-decoded), quoted local parts with spaces: hashed.
    assert.match(ruleKey('sender', { clientAddr: '192.0.2.1', sender: 'j\xc3\xb6rg@example.org' })!, /^sha256 /);
    assert.match(ruleKey('sender', { clientAddr: '192.0.2.1', sender: '"a b"@example.org' })!, /^sha256 /);
    assert.notEqual(ruleKey('sender', { clientAddr: '192.0.2.1', sender: '"a b"@example.org' }), ruleKey('sender', { clientAddr: '192.0.2.1', sender: '"a c"@example.org' }));
    assert.ok(subjectOf('sender', { clientAddr: '192.0.2.1', sender: long }).length <= 105, 'replies name at most 100 characters of it');
  });
});

describe('rate rules from the config', () => {
  const logger = createLogger('silent');
  const limitsOf = (limits: Record<string, unknown>) => parseConfig(stringify({ listen: ['127.0.0.1:0'], limits }));

  it('the shorthands first, then each rates entry with its own limiter, by count', () => {
    const config = limitsOf({
      connection_rate: { max: 5, per: '60s' },
      recipient_rate: { max: 50, per: '1h' },
      rates: [
        { count: 'messages', key: 'sender', max: 2, per: '60s' },
        { count: 'recipients', key: 'rcpt_domain', max: 100, per: '1h', burst: 10 },
        { count: 'messages', key: 'sender', max: 2, per: '60s' },
        { count: 'connections', key: 'client_net', max: 20, per: '60s' },
        { count: 'auth_failures', key: 'user', max: 5, per: '10m' },
      ],
    });
    const l = buildLimits(config, logger);
    try {
      const view = (rs: readonly RateRule[]) => rs.map((r) => `${r.name} ${r.key}`);
      assert.deepEqual(view(l.rates.connections), ['limits.connection_rate client', 'limits.rates.3 client_net']);
      assert.deepEqual(view(l.rates.messages), ['limits.rates.0 sender', 'limits.rates.2 sender']);
      assert.deepEqual(view(l.rates.recipients), ['limits.recipient_rate client', 'limits.rates.1 rcpt_domain']);
      assert.deepEqual(view(l.rates.auth_failures), ['limits.rates.4 user']);
      const [a, b] = l.rates.messages;
      assert.notEqual(a!.limiter, b!.limiter, 'two identical rules do not share counters');
    } finally {
      l.close();
    }
  });

  it('two identical rules count separately (rates.<index> prefixes)', async () => {
    const config = limitsOf({ rates: [{ count: 'messages', key: 'sender', max: 1, per: '60s' }, { count: 'messages', key: 'sender', max: 1, per: '60s' }] });
    const l = buildLimits(config, logger);
    try {
      const [a, b] = l.rates.messages;
      assert.equal((await a!.limiter.take('s@x')).allowed, true);
      assert.equal((await a!.limiter.take('s@x')).allowed, false);
      assert.equal((await b!.limiter.take('s@x')).allowed, true, "the second rule's counter is its own");
    } finally {
      l.close();
    }
  });

  it('refuses combinations that cannot be counted, naming the key path', () => {
    const bad: [Record<string, unknown>, string][] = [
      [{ count: 'connections', key: 'sender' }, 'limits.rates.1.key: connections are not counted per sender (one of: client, client_net)'],
      [{ count: 'messages', key: 'rcpt_domain' }, 'limits.rates.1.key: messages are not counted per rcpt_domain'],
      [{ count: 'auth_failures', key: 'sender_domain' }, 'limits.rates.1.key: auth_failures are not counted per sender_domain'],
      [{ count: 'connections', key: 'user' }, 'limits.rates.1.key: connections are not counted per user'],
    ];
    for (const [entry, message] of bad) {
      const rates = [{ count: 'recipients', key: 'client', max: 1, per: '60s' }, { ...entry, max: 1, per: '60s' }];
      assert.throws(() => limitsOf({ rates }), (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        assert.ok(err.problems.some((p) => p.startsWith(message)), `${JSON.stringify(err.problems)} should name ${message}`);
        return true;
      });
    }
    assert.throws(() => limitsOf({ rates: [{ count: 'mails', key: 'client', max: 1, per: '60s' }] }), /limits\.rates\.0\.count/);
    assert.throws(() => limitsOf({ rates: [{ count: 'messages', key: 'client', max: 1, per: '1.5s' }] }), /limits\.rates\.0\.per: a whole number of seconds/);
    assert.throws(() => limitsOf({ rates: [{ count: 'messages', key: 'client', max: 0, per: '60s' }] }), /limits\.rates\.0\.max/);
  });

  it('accepts every meaningful combination; burst defaults to 0', () => {
    const all = {
      connections: ['client', 'client_net'],
      messages: ['client', 'client_net', 'user', 'sender', 'sender_domain'],
      recipients: ['client', 'client_net', 'user', 'sender', 'sender_domain', 'rcpt_domain'],
      auth_failures: ['client', 'client_net', 'user'],
    };
    const rates = Object.entries(all).flatMap(([count, keys]) => keys.map((key) => ({ count, key, max: 3, per: '1m' })));
    const config = limitsOf({ rates });
    assert.equal(config.limits.rates!.length, 16);
    assert.deepEqual(config.limits.rates![0], { count: 'connections', key: 'client', max: 3, per: 60_000, burst: 0 });
  });
});

const mailReq = (sender: string, user?: string, clientAddr = '192.0.2.7'): CheckRequest => ({
  stage: 'mail',
  recipientCount: 0,
  envelope: { helo: 'h', esmtp: true, mailLine: `MAIL FROM:<${sender}>`, rcptLine: '', mailFrom: sender, rcptTo: '', attempt: 0, ...(user !== undefined ? { auth: { method: 'plain', user, pass: 'p' } } : {}) },
  clientAddr,
  clientPort: 1,
  clientHost: '[UNAVAILABLE]',
});

describe('messages per period (stage check at MAIL)', () => {
  it('answers synchronously while its limiters do: 450 4.7.1 naming the sender, another sender passes', () => {
    const check = messageRateCheck([rule('sender', syncRate(2))]);
    assert.deepEqual(check.stages, ['mail']);
    const answers: CheckVerdict[] = [];
    for (const s of ['A@x.test', 'a@X.test', 'a@x.test', 'b@x.test']) {
      const v = check.check(mailReq(s));
      assert.ok(!(v instanceof Promise), 'no Promise for an in-memory limiter');
      answers.push(v);
    }
    assert.deepEqual(answers.map((v) => v.kind), ['pass', 'pass', 'reject', 'pass']);
    assert.deepEqual(answers[2], { kind: 'reject', reply: '450 4.7.1 Error: too much mail from <a@x.test>', code: 'PST_RATE_MESSAGES', reason: 'limits.rates.0 (sender <a@x.test>)' });
  });

  it('names the address for client rules, the domain, the user; a user rule skips unauthenticated sessions', () => {
    const v1 = messageRateCheck([rule('client_net', syncRate(0))]).check(mailReq('a@x.test', undefined, '::ffff:192.0.2.7'));
    assert.equal((v1 as { reply: string }).reply, '450 4.7.1 Error: too much mail from 192.0.2.7');
    const v2 = messageRateCheck([rule('sender_domain', syncRate(0))]).check(mailReq('a@X.test'));
    assert.equal((v2 as { reply: string }).reply, '450 4.7.1 Error: too much mail from x.test');
    const v3 = messageRateCheck([rule('sender', syncRate(0))]).check(mailReq(''));
    assert.equal((v3 as { reply: string }).reply, '450 4.7.1 Error: too much mail from <>');
    const byUser = messageRateCheck([rule('user', syncRate(0))]);
    assert.equal((byUser.check(mailReq('a@x.test')) as CheckVerdict).kind, 'pass', 'no user: not counted');
    assert.equal((byUser.check(mailReq('a@x.test', 'Alice')) as { reply: string }).reply, '450 4.7.1 Error: too much mail from alice');
  });

  it('rules in order: the first over its limit answers, the later ones are not counted', async () => {
    const first = syncRate(1);
    const second = syncRate(10);
    const rules = [rule('client', first, 0), rule('sender', later(second), 1)];
    assert.equal((await firstOver(rules, { clientAddr: '192.0.2.7', sender: 's@x' })), null);
    const o = await firstOver(rules, { clientAddr: '192.0.2.7', sender: 's@x' });
    assert.equal(o?.rule.name, 'limits.rates.0');
    assert.equal(second.counts.get('s@x'), 1, 'the refused MAIL did not count against the sender');
  });

  it('behind Promises (a shared store), and over the real RateLimiter with a burst', async () => {
    const check = messageRateCheck([rule('sender', new RateLimiter({ name: 'mr-burst', points: 1, durationMs: 60_000, burst: { points: 1, durationMs: 600_000 } }))]);
    const kinds: string[] = [];
    for (let i = 0; i < 3; i++) kinds.push((await check.check(mailReq('s@x.test'))).kind);
    assert.deepEqual(kinds, ['pass', 'pass', 'reject'], 'one steady, one from the burst, then refused');
  });

  it('a limiter that fails lets the MAIL through', async () => {
    const broken: Limiter = { take: async () => Promise.reject(new Error('down')), peek: async () => Promise.reject(new Error('down')), release: () => {} };
    assert.deepEqual(await messageRateCheck([rule('sender', broken)]).check(mailReq('s@x.test')), { kind: 'pass' });
  });
});

const rcptReq = (rcpt: string, clientAddr = '192.0.2.7'): RouteRequest => ({
  envelope: { helo: 'h', esmtp: true, mailLine: 'MAIL FROM:<s@x.test>', rcptLine: `RCPT TO:<${rcpt}>`, mailFrom: 's@x.test', rcptTo: rcpt, attempt: 1 },
  clientAddr,
  clientPort: 1,
  clientHost: '[UNAVAILABLE]',
});
const accepting: Router = { route: () => ({ kind: 'ok', host: 'h', port: 25 }), close: async () => {} };

describe('recipients per period (router layer at RCPT)', () => {
  it('rcpt_domain: 452 4.7.1 … to <domain>, other domains pass; the session goes on', () => {
    const r = composeRouter(accepting, [recipientRateLayer([rule('rcpt_domain', syncRate(1), 0, 'recipients')])]);
    assert.equal((r.route(rcptReq('a@Big.test')) as RouteDecision).kind, 'ok');
    assert.deepEqual(r.route(rcptReq('b@big.test')), { kind: 'reject', reply: '452 4.7.1 Error: too many recipients to big.test', waitMs: 0, reason: 'limits.rates.0 (rcpt_domain big.test)', keepOpen: true, code: 'PST_RATE_RECIPIENTS' });
    assert.equal((r.route(rcptReq('c@small.test')) as RouteDecision).kind, 'ok');
  });

  it('client: from <address>, as recipient_rate always said', async () => {
    const r = composeRouter(accepting, [recipientRateLayer([{ name: 'limits.recipient_rate', count: 'recipients', key: 'client', limiter: later(syncRate(1)) }])]);
    await r.route(rcptReq('a@x.test'));
    assert.equal(((await r.route(rcptReq('b@x.test'))) as { reply: string }).reply, '452 4.7.1 Error: too many recipients from 192.0.2.7');
  });
});

const authReq = (user: string, clientAddr: string): RouteRequest => ({
  envelope: { helo: 'h', esmtp: true, mailLine: '', rcptLine: '', mailFrom: '', rcptTo: '', attempt: 1, auth: { method: 'plain', user, pass: 'p' } },
  clientAddr,
  clientPort: 1,
  clientHost: '[UNAVAILABLE]',
});

describe('refused logins per user or network (router layer at AUTH)', () => {
  for (const [name, wrap] of [['in memory', (l: Limiter) => l], ['behind Promises', later]] as const) {
    it(`a user guessed at from many addresses is refused before the auth service is asked (${name})`, async () => {
      let asked = 0;
      const refusing: Router = { route: () => (asked++, { kind: 'reject', reply: '535 5.7.8 no', waitMs: 0, reason: 'no' }), close: async () => {} };
      const perClient = new WindowLimiter(100, 60_000);
      const r = composeRouter(refusing, [authFailureGuard(perClient), authFailureRules([rule('user', wrap(new WindowLimiter(2, 60_000)), 3, 'auth_failures')], 'mx.test')]);
      assert.equal(((await r.route(authReq('Alice', '192.0.2.1'))) as RouteDecision).kind, 'reject');
      assert.equal(((await r.route(authReq('alice', '198.51.100.2'))) as RouteDecision).kind, 'reject');
      assert.deepEqual(await r.route(authReq('ALICE', '203.0.113.3')), { kind: 'reject', reply: '421 4.7.0 mx.test Too many authentication failures', waitMs: 0, code: 'PST_AUTH_TOO_MANY', reason: 'limits.rates.3 (user alice)' });
      assert.equal(asked, 2, 'the third login never reached the auth service');
      assert.equal(perClient.peek('auth-fail:203.0.113.3').count, 0, "the guard's own refusal is not counted as a failed login");
      assert.equal(((await r.route(authReq('bob', '203.0.113.3'))) as RouteDecision).kind, 'reject', 'another user is asked');
      assert.equal(asked, 3);
    });
  }

  it('client_net: the /24 is refused together', async () => {
    const refusing: Router = { route: () => ({ kind: 'reject', reply: '535 5.7.8 no', waitMs: 0, reason: 'no' }), close: async () => {} };
    const r = composeRouter(refusing, [authFailureRules([rule('client_net', new WindowLimiter(2, 60_000), 0, 'auth_failures')], 'mx.test')]);
    await r.route(authReq('a', '192.0.2.1'));
    await r.route(authReq('b', '192.0.2.2'));
    assert.equal(((await r.route(authReq('c', '192.0.2.3'))) as { code?: string }).code, 'PST_AUTH_TOO_MANY');
    assert.equal(((await r.route(authReq('c', '192.0.3.3'))) as { code?: string }).code, undefined, 'another /24');
  });
});

describe('burst counters', () => {
  it('a steady key "burst:x" is not the burst counter of "x"', async () => {
    const l = new RateLimiter({ name: 'bk', points: 1, durationMs: 60_000, burst: { points: 1, durationMs: 600_000 } });
    for (let i = 0; i < 5; i++) await l.take('burst:x');
    assert.deepEqual([(await l.take('x')).allowed, (await l.take('x')).allowed, (await l.take('x')).allowed], [true, true, false]);
  });
});
