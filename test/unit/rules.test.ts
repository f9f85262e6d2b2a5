/**
 * The rule router (`route: { rules: … }`): each condition, first match, the default, the
 * hand-over to auth_http, sessions routed at AUTH, IPv6 and IPv4-mapped clients; and
 * check-config's checks of the rules (config/rules-check.ts).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RuleRouter } from '../../src/auth/rules.js';
import type { Router } from '../../src/auth/router.js';
import { checkRules } from '../../src/config/rules-check.js';
import { serverSchema, type RulesConfig, type ServerConfig } from '../../src/config/schema.js';
import type { Envelope, RouteDecision, RouteRequest } from '../../src/domain.js';

/** A server block parsed by the real schema, with `route: { rules }`. */
function server(rules: unknown, extra: Record<string, unknown> = {}): ServerConfig {
  return serverSchema.parse({ listen: ['127.0.0.1:2525'], ...extra, route: { rules } });
}

function rulesOf(rules: unknown): RulesConfig {
  const r = server(rules).route;
  assert.ok('rules' in r);
  return r.rules;
}

const router = (rules: unknown, inner: Router | null = null) => new RuleRouter(rulesOf(rules), inner);

interface Req {
  from?: string;
  to?: string;
  addr?: string;
  listener?: string;
  /** Routed at AUTH: credentials, no MAIL or RCPT yet. */
  atAuth?: boolean;
  /** Authenticated, routed at RCPT (an envelope and credentials). */
  auth?: boolean;
}

function req(o: Req = {}): RouteRequest {
  const creds = { method: 'plain' as const, user: 'u', pass: 'p' };
  const envelope: Envelope = o.atAuth
    ? { helo: 'h', esmtp: true, mailLine: '', rcptLine: '', mailFrom: '', rcptTo: '', attempt: 1, auth: creds }
    : {
      helo: 'h', esmtp: true,
      mailLine: `MAIL FROM:<${o.from ?? 'a@sender.test'}>`, rcptLine: `RCPT TO:<${o.to ?? 'b@rcpt.test'}>`,
      mailFrom: o.from ?? 'a@sender.test', rcptTo: o.to ?? 'b@rcpt.test', attempt: 1,
      ...(o.auth ? { auth: creds } : {}),
    };
  return {
    envelope,
    clientAddr: o.addr ?? '198.51.100.7',
    clientPort: 40000,
    clientHost: '[UNAVAILABLE]',
    ...(o.listener !== undefined ? { listener: o.listener } : {}),
  };
}

const A = { host: '192.0.2.10', port: 25 };
/** Routes synchronously and returns the back-end host, `pool <name>`, or the rejection reply. */
function where(r: RuleRouter, rq: RouteRequest): string {
  const d = r.route(rq);
  assert.ok(!(d instanceof Promise), 'a rule that is not auth_http answers synchronously');
  if (d.kind === 'ok') return d.pool !== undefined ? `pool ${d.pool}` : `${d.host}:${d.port}`;
  if (d.kind === 'reject') return d.reply;
  return `error ${d.code}`;
}
const NO = '550 5.7.1 Relaying denied';

describe('RuleRouter conditions', () => {
  it('rcpt_domain: exact and case-insensitive; *.domain matches subdomains at any depth but not the domain', () => {
    const r = router({ rules: [{ rcpt_domain: ['Example.COM'], to: 'exact:25' }, { rcpt_domain: ['*.sub.test'], to: 'wild:25' }] });
    assert.equal(where(r, req({ to: 'x@example.com' })), 'exact:25');
    assert.equal(where(r, req({ to: 'x@EXAMPLE.com' })), 'exact:25', 'the recipient domain is lower-cased');
    assert.equal(where(r, req({ to: 'x@a.example.com' })), NO, 'an exact domain does not match its subdomains');
    assert.equal(where(r, req({ to: 'x@a.sub.test' })), 'wild:25');
    assert.equal(where(r, req({ to: 'x@b.A.Sub.Test' })), 'wild:25');
    assert.equal(where(r, req({ to: 'x@sub.test' })), NO, '*.sub.test does not match sub.test itself');
    assert.equal(where(r, req({ to: 'x@notsub.test' })), NO, 'a suffix that is not a label boundary');
    assert.equal(where(r, req({ to: '"a@example.com"@other.test' })), NO, 'the domain is after the last @');
    assert.equal(where(r, req({ to: 'postmaster' })), NO, 'a recipient without a domain matches none');
  });

  it('sender_domain: as rcpt_domain; "" matches the null sender only', () => {
    const r = router({ rules: [{ sender_domain: [''], to: 'bounce:25' }, { sender_domain: ['*.corp.test', 'corp.test'], to: 'corp:25' }] });
    assert.equal(where(r, req({ from: '' })), 'bounce:25');
    assert.equal(where(r, req({ from: 'u@corp.test' })), 'corp:25');
    assert.equal(where(r, req({ from: 'u@Mail.Corp.Test' })), 'corp:25');
    assert.equal(where(r, req({ from: 'u@other.test' })), NO);
    assert.equal(where(r, req({ from: 'nodomain' })), NO, 'a non-null sender without a domain is not the null sender');
  });

  it('client: IPv4 networks and bare addresses', () => {
    const r = router({ rules: [{ client: ['10.0.0.0/8', '192.0.2.77'], to: 'inside:25' }] });
    assert.equal(where(r, req({ addr: '10.200.3.4' })), 'inside:25');
    assert.equal(where(r, req({ addr: '192.0.2.77' })), 'inside:25', 'a bare address is a /32');
    assert.equal(where(r, req({ addr: '192.0.2.78' })), NO);
    assert.equal(where(r, req({ addr: '11.0.0.1' })), NO);
    assert.equal(where(r, req({ addr: 'not-an-ip' })), NO, 'a client address that is not an IP matches no network');
    assert.equal(where(r, req({ addr: '' })), NO);
  });

  it('client: IPv6 networks; IPv4-mapped clients match IPv4 networks and IPv4 clients match ::ffff: networks', () => {
    const r = router({ rules: [
      { client: ['2001:db8::/32'], to: 'v6:25' },
      { client: ['192.0.2.0/24'], to: 'v4:25' },
      { client: ['::ffff:203.0.113.0/120'], to: 'mapped:25' },
      { client: ['::1'], to: 'loop:25' },
    ] });
    assert.equal(where(r, req({ addr: '2001:db8:1::5' })), 'v6:25');
    assert.equal(where(r, req({ addr: '2001:DB8::1' })), 'v6:25', 'upper-case hex');
    assert.equal(where(r, req({ addr: '2001:db9::1' })), NO);
    assert.equal(where(r, req({ addr: '::ffff:192.0.2.9' })), 'v4:25', 'an IPv4-mapped client matches the IPv4 network');
    assert.equal(where(r, req({ addr: '::ffff:c000:209' })), 'v4:25', 'in hex form too');
    assert.equal(where(r, req({ addr: '203.0.113.5' })), 'mapped:25', 'an IPv4 client matches a ::ffff: network');
    assert.equal(where(r, req({ addr: '::1' })), 'loop:25', 'a bare IPv6 address is a /128');
    assert.equal(where(r, req({ addr: '::2' })), NO);
  });

  it('authenticated: true for sessions with credentials, false for the others', () => {
    const r = router({ rules: [{ authenticated: true, to: 'submission:25' }, { authenticated: false, to: 'mx:25' }] });
    assert.equal(where(r, req({ auth: true })), 'submission:25');
    assert.equal(where(r, req({ atAuth: true })), 'submission:25');
    assert.equal(where(r, req()), 'mx:25');
  });

  it('listener: as written, as host:port and, for IPv6, with or without brackets; no listener in the request matches none', () => {
    const r = router({ rules: [{ listener: ['127.0.0.1:25', '[::1]:587', 'LocalHost:2525'], to: 'l:25' }] });
    assert.equal(where(r, req({ listener: '127.0.0.1:25' })), 'l:25');
    assert.equal(where(r, req({ listener: '[::1]:587' })), 'l:25');
    assert.equal(where(r, req({ listener: '::1:587' })), 'l:25');
    assert.equal(where(r, req({ listener: 'localhost:2525' })), 'l:25');
    assert.equal(where(r, req({ listener: 'LocalHost:2525' })), 'l:25');
    assert.equal(where(r, req({ listener: '127.0.0.1:26' })), NO);
    assert.equal(where(r, req({ listener: '0.0.0.0:25' })), NO);
    assert.equal(where(r, req()), NO);
  });

  it('a rule matches only when every condition it has holds; any entry of one list will do', () => {
    const r = router({ rules: [{ rcpt_domain: ['a.test', 'b.test'], client: ['10.0.0.0/8'], authenticated: false, listener: ['127.0.0.1:25'], to: 'all:25' }] });
    const ok: Req = { to: 'x@b.test', addr: '10.1.1.1', listener: '127.0.0.1:25' };
    assert.equal(where(r, req(ok)), 'all:25');
    assert.equal(where(r, req({ ...ok, to: 'x@c.test' })), NO);
    assert.equal(where(r, req({ ...ok, addr: '11.1.1.1' })), NO);
    assert.equal(where(r, req({ ...ok, auth: true })), NO);
    assert.equal(where(r, req({ ...ok, listener: '127.0.0.1:587' })), NO);
  });
});

describe('RuleRouter decisions', () => {
  it('the first matching rule decides, in order', () => {
    const r = router({ rules: [
      { rcpt_domain: ['vip.test'], to: 'vip:25' },
      { client: ['10.0.0.0/8'], reject: '554 5.7.1 Not from in here' },
      { rcpt_domain: ['vip.test', 'other.test'], to: 'late:25' },
      { to: 'rest:25' },
    ] });
    assert.equal(where(r, req({ to: 'x@vip.test', addr: '10.0.0.1' })), 'vip:25');
    assert.equal(where(r, req({ to: 'x@other.test', addr: '10.0.0.1' })), '554 5.7.1 Not from in here');
    assert.equal(where(r, req({ to: 'x@other.test' })), 'late:25');
    assert.equal(where(r, req({ to: 'x@vip.test' })), 'vip:25');
    assert.equal(where(r, req({ to: 'x@anything.test' })), 'rest:25', 'a rule without conditions matches every session');
  });

  it('to: host:port and to: a pool; the same frozen decision every time', () => {
    const r = router({ rules: [{ rcpt_domain: ['p.test'], to: 'inbound' }, { rcpt_domain: ['h.test'], to: '[2001:db8::25]:2525' }] });
    const pool = r.route(req({ to: 'x@p.test' }));
    assert.deepEqual(pool, { kind: 'ok', host: '', port: 0, pool: 'inbound' });
    assert.equal(r.route(req({ to: 'y@p.test' })), pool);
    assert.ok(Object.isFrozen(pool));
    assert.deepEqual(r.route(req({ to: 'x@h.test' })), { kind: 'ok', host: '2001:db8::25', port: 2525 });
  });

  it('reject: the reply, no wait, and the rule counted from 0 as the reason', () => {
    const r = router({ rules: [{ rcpt_domain: ['a.test'], to: 'a:25' }, { client: ['0.0.0.0/0'], reject: '450 4.7.1 Try later' }] });
    assert.deepEqual(r.route(req()), { kind: 'reject', reply: '450 4.7.1 Try later', waitMs: 0, reason: 'rule 1' });
  });

  it('no match: the default, which refuses with 550 5.7.1 unless set', () => {
    const only = [{ rcpt_domain: ['a.test'], to: 'a:25' }];
    assert.deepEqual(router({ rules: only }).route(req()), { kind: 'reject', reply: NO, waitMs: 0, reason: 'default' });
    assert.deepEqual(router({ rules: only, default: { reject: '554 5.7.1 Go away' } }).route(req()), { kind: 'reject', reply: '554 5.7.1 Go away', waitMs: 0, reason: 'default' });
    assert.equal(where(router({ rules: only, default: { to: 'fallback' } }), req()), 'pool fallback');
    assert.equal(where(router({ rules: only, default: { to: '192.0.2.10:25' } }), req()), '192.0.2.10:25');
  });

  it('auth_http: true hands the request to the inner router and returns its answer; close closes it', async () => {
    const seen: RouteRequest[] = [];
    let closed = 0;
    const inner: Router = {
      route: async (rq) => {
        seen.push(rq);
        return { kind: 'ok', host: A.host, port: A.port, user: 'u' };
      },
      close: async () => { closed++; },
    };
    const r = router({ rules: [{ authenticated: true, auth_http: true }, { to: 'mx:25' }], auth_http: { url: 'http://127.0.0.1:9/auth' } }, inner);
    const rq = req({ atAuth: true });
    const d = r.route(rq);
    assert.ok(d instanceof Promise, 'the hand-over is the one asynchronous answer');
    assert.deepEqual(await d, { kind: 'ok', host: A.host, port: A.port, user: 'u' });
    assert.equal(seen[0], rq, 'the request is passed on unchanged');
    assert.equal(where(r, req()), 'mx:25', 'the inner router is asked only when its rule matches');
    assert.equal(seen.length, 1);
    await r.close();
    assert.equal(closed, 1);
  });

  it('the inner router\'s refusals and errors come back as they are', async () => {
    const refusal: RouteDecision = { kind: 'reject', reply: '535 5.7.8 Bad credentials', waitMs: 3000, reason: 'bad' };
    const r = router({ rules: [{ auth_http: true }], auth_http: { url: 'http://127.0.0.1:9/auth' } }, { route: () => refusal, close: async () => {} });
    assert.equal(await r.route(req({ atAuth: true })), refusal);
  });

  it('a session routed at AUTH has no envelope: rcpt_domain and sender_domain rules (even "") never match it', () => {
    const r = router({ rules: [
      { sender_domain: [''], to: 'bounce:25' },
      { rcpt_domain: ['rcpt.test'], authenticated: true, to: 'rcpt:25' },
      { client: ['198.51.100.0/24'], authenticated: true, reject: '535 5.7.8 Not from there' },
    ], default: { to: 'default:25' } });
    assert.equal(where(r, req({ atAuth: true })), '535 5.7.8 Not from there');
    assert.equal(where(r, req({ atAuth: true, addr: '192.0.2.1' })), 'default:25');
    assert.equal(where(r, req({ auth: true })), 'rcpt:25', 'an authenticated session routed at RCPT has its envelope');
  });

  it('the constructor refuses what cannot be compiled: no action, two actions, auth_http without a router', () => {
    assert.throws(() => router({ rules: [{ rcpt_domain: ['a.test'] }] }), /rules\.0: needs exactly one of to, auth_http or reject/);
    assert.throws(() => router({ rules: [{ to: 'a:25' }, { to: 'a:25', reject: '550 5.7.1 no' }] }), /rules\.1: needs exactly one/);
    assert.throws(() => router({ rules: [{ auth_http: true }] }), /auth_http: true needs route\.rules\.auth_http/);
    assert.throws(() => router({ rules: [{ client: ['10.0.0.0/33'], to: 'a:25' }] }), /rules\.0\.client: can never match/);
  });
});

describe('checkRules', () => {
  const submission = { address: '127.0.0.1:587', starttls: 'on', smtp_auth: ['plain'] };
  const check = (rules: unknown, extra: Record<string, unknown> = {}, pools: string[] = ['inbound'], at = '') =>
    checkRules(server(rules, extra), new Set(pools), at);

  it('passes a sound rule set, and other routes', () => {
    assert.deepEqual(check({
      rules: [
        { authenticated: true, auth_http: true },
        { rcpt_domain: ['example.com', '*.example.com'], client: ['10.0.0.0/8', '2001:db8::/32'], to: 'inbound' },
        { sender_domain: [''], listener: ['127.0.0.1:2525'], reject: '550 5.7.1 No bounces here' },
      ],
      auth_http: { url: 'http://127.0.0.1:9/auth' },
      default: { to: 'inbound' },
    }, { listen: ['127.0.0.1:2525', submission] }), []);
    assert.deepEqual(checkRules(serverSchema.parse({ route: { static: 'inbound' } }), new Set(), ''), []);
  });

  it('a rule after one without conditions can never match', () => {
    assert.deepEqual(check({ rules: [{ rcpt_domain: ['a.test'], to: 'a:25' }, { to: 'b:25' }, { client: ['10.0.0.0/8'], to: 'c:25' }, { reject: '550 5.7.1 no' }] }), [
      'route.rules.rules.2: can never match: rule 1 before it has no conditions and matches every session',
      'route.rules.rules.3: can never match: rule 1 before it has no conditions and matches every session',
    ]);
  });

  it('networks: an IPv4 prefix over 32, an IPv6 prefix over 128, a malformed network', () => {
    assert.deepEqual(check({ rules: [{ client: ['10.0.0.0/32', '10.0.0.0/33', '::/128', '2001:db8::/129', '1.2.3/8', '::ffff:1.2.3.4/96', '1.2.3.4.5'], to: 'a:25' }] }), [
      'route.rules.rules.0.client.1: can never match: "10.0.0.0/33" has a prefix longer than the 32 bits of an IPv4 address',
      'route.rules.rules.0.client.3: can never match: "2001:db8::/129" has a prefix longer than the 128 bits of an IPv6 address',
      'route.rules.rules.0.client.4: not an IPv4 or IPv6 address or network: "1.2.3/8"',
      'route.rules.rules.0.client.6: not an IPv4 or IPv6 address or network: "1.2.3.4.5"',
    ]);
  });

  it('exactly one action', () => {
    assert.deepEqual(check({ rules: [{ client: ['10.0.0.0/8'] }, { client: ['10.0.0.0/8'], to: 'a:25', reject: '550 5.7.1 no' }] }), [
      'route.rules.rules.0: needs exactly one of to, auth_http or reject (it has none)',
      'route.rules.rules.1: needs exactly one of to, auth_http or reject (it has to and reject)',
    ]);
  });

  it('auth_http: true needs route.rules.auth_http', () => {
    assert.deepEqual(check({ rules: [{ client: ['10.0.0.0/8'], auth_http: true }] }), ['route.rules.rules.0.auth_http: needs route.rules.auth_http, the auth service to hand over to']);
  });

  it('to: a pool that does not exist, in a rule or the default', () => {
    assert.deepEqual(check({ rules: [{ client: ['10.0.0.0/8'], to: 'inbound' }, { client: ['10.0.0.0/8'], to: 'nosuch' }], default: { to: 'missing' } }), [
      'route.rules.rules.1.to: no pool named "nosuch" (pools has "inbound")',
      'route.rules.default.to: no pool named "missing" (pools has "inbound")',
    ]);
    assert.deepEqual(check({ rules: [{ client: ['10.0.0.0/8'], to: 'nosuch' }] }, {}, []), ['route.rules.rules.0.to: no pool named "nosuch" (no pools are configured)']);
  });

  it('a listener that is not one of the server\'s, or not host:port, can never match', () => {
    assert.deepEqual(check({ rules: [{ listener: ['127.0.0.1:2525', '[::1]:25', 'nonsense'], to: 'a:25' }] }), [
      'route.rules.rules.0.listener.1: can never match: "[::1]:25" is not in this server\'s listen',
      'route.rules.rules.0.listener.2: can never match: expected host:port or [ipv6]:port, got "nonsense"',
    ]);
    assert.deepEqual(check({ rules: [{ listener: ['[::1]:25'], to: 'a:25' }] }, { listen: ['[::1]:25'] }), []);
  });

  it('a domain with an empty label can never match', () => {
    assert.deepEqual(check({ rules: [{ rcpt_domain: ['a..test', '*.b.test', 'c.test.'], sender_domain: ['', '.d.test'], to: 'a:25' }] }), [
      'route.rules.rules.0.rcpt_domain.0: can never match: "a..test" is not a domain (an empty label)',
      'route.rules.rules.0.rcpt_domain.2: can never match: "c.test." is not a domain (an empty label)',
      'route.rules.rules.0.sender_domain.1: can never match: ".d.test" is not a domain (an empty label)',
    ]);
  });

  it('authenticated: true where no listener offers AUTH, false where every listener requires it', () => {
    assert.deepEqual(check({ rules: [{ authenticated: true, to: 'a:25' }] }), ['route.rules.rules.0.authenticated: can never match: no listener of this server offers AUTH (smtp_auth)']);
    const extra = { listen: ['127.0.0.1:2525', { ...submission, smtp_auth: ['plain'] }] };
    const rules = { rules: [{ authenticated: false, listener: ['127.0.0.1:587'], to: 'a:25' }, { authenticated: true, listener: ['127.0.0.1:2525'], rcpt_domain: ['x.test'], to: 'a:25' }] };
    assert.deepEqual(check(rules, extra), [
      'route.rules.rules.0.authenticated: can never match: every listener of the rule requires AUTH (smtp_auth without none)',
      'route.rules.rules.1.authenticated: can never match: no listener of the rule offers AUTH (smtp_auth)',
    ]);
  });

  it('to: reachable by sessions routed at AUTH would accept any password', () => {
    const extra = { listen: ['127.0.0.1:2525', submission] };
    const bypass = 'would let AUTH succeed with any password';
    const r1 = check({ rules: [{ authenticated: true, to: 'inbound' }] }, extra);
    assert.equal(r1.length, 1);
    assert.ok(r1[0]!.startsWith(`route.rules.rules.0.to: ${bypass}`), r1[0]);
    const r2 = check({ rules: [{ client: ['10.0.0.0/8'], to: 'a:25' }, { rcpt_domain: ['a.test'], to: 'a:25' }], default: { to: 'inbound' } }, extra);
    assert.deepEqual(r2.map((p) => p.slice(0, p.indexOf(':', p.indexOf(': ') + 2))), [`route.rules.rules.0.to: ${bypass}`, `route.rules.default.to: ${bypass}`]);
    // Safe: an auth_http rule for authenticated sessions first, authenticated: false, rules that need an envelope, or proxy_smtp_auth.
    const authFirst = { rules: [{ authenticated: true, auth_http: true }, { client: ['10.0.0.0/8'], to: 'a:25' }], auth_http: { url: 'http://127.0.0.1:9/a' }, default: { to: 'inbound' } };
    assert.deepEqual(check(authFirst, extra), []);
    assert.deepEqual(check({ rules: [{ authenticated: false, to: 'a:25' }, { rcpt_domain: ['a.test'], to: 'a:25' }, { authenticated: true, reject: '535 5.7.8 No' }] }, extra), []);
    assert.deepEqual(check({ rules: [{ authenticated: true, to: 'inbound' }] }, { ...extra, proxy_smtp_auth: 'plain' }), []);
    assert.deepEqual(check({ rules: [{ listener: ['127.0.0.1:2525'], to: 'a:25' }], default: { reject: '535 5.7.8 No' } }, extra), [], 'a listener without AUTH');
    // A rule that matches only some AUTH sessions does not protect the default.
    const partial = check({ rules: [{ client: ['10.0.0.0/8'], auth_http: true }], auth_http: { url: 'http://127.0.0.1:9/a' }, default: { to: 'inbound' } }, extra);
    assert.equal(partial.length, 1);
    assert.ok(partial[0]!.startsWith(`route.rules.default.to: ${bypass}`));
  });

  it('prefixes the key paths with `at`', () => {
    assert.deepEqual(check({ rules: [{ to: 'a:25' }, { to: 'b:25' }] }, {}, [], 'servers.1.'), ['servers.1.route.rules.rules.1: can never match: rule 0 before it has no conditions and matches every session']);
  });
});
