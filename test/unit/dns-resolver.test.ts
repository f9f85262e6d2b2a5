/**
 * ClientResolver and DnsblChecker against the crafted loopback DNS server (test/helpers/dns-servers.ts), which
 * answers exactly what each test says: malicious PTR names (CR, LF, spaces, `*`, dots inside a label),
 * SERVFAIL, REFUSED, silence. Loopback UDP only, ephemeral ports; every wait is bounded.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ClientResolver, TEMPUNAVAIL, UNAVAILABLE } from '../../src/checks/dns/resolver.js';
import { DnsblChecker } from '../../src/checks/dns/dnsbl.js';
import { startCraftedDns, startSilentDns, TYPE, type CraftedAnswer, type LoopbackDns } from '../helpers/dns-servers.js';

const rev = (last: number): string => `${last}.2.0.192.in-addr.arpa`;
const V6_PTR = '1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa';
const raw = (...labels: string[]): Buffer[] => labels.map((l) => Buffer.from(l, 'latin1'));

/** The crafted zone: PTR by last octet of 192.0.2.x, forward names under .test. */
const ZONE: Record<string, CraftedAnswer> = {
  [rev(1)]: { ptr: ['Good.Example.TEST.'] },
  'good.example.test': { a: ['192.0.2.1'], aaaa: ['2001:db8::1'], ttl: 5 },
  [rev(2)]: { ptr: [raw('evil\r\nX-Injected: y', 'test')] },
  'evil\r\nx-injected: y.test': { a: ['192.0.2.2'] },
  [rev(3)]: { ptr: [raw('a b', 'test')] },
  'a b.test': { a: ['192.0.2.3'] },
  [rev(4)]: { ptr: [raw('*', 'test')] },
  '*.test': { a: ['192.0.2.4'] },
  [rev(5)]: { ptr: [raw('a.b', 'test')] },
  [rev(6)]: { ptr: [raw('evil\rname', 'test'), 'second.test'] },
  'second.test': { a: ['192.0.2.6'] },
  [rev(7)]: { ptr: ['liar.test'] },
  'liar.test': { a: ['192.0.2.99'] },
  [rev(8)]: { rcode: 2 },
  [rev(9)]: { rcode: 5 },
  [rev(10)]: { ptr: [] },
  [rev(11)]: { ptr: ['sfail.test'] },
  'sfail.test': { rcode: 2 },
  [rev(12)]: { ptr: ['slow.test'] },
  'slow.test': { drop: true },
  [rev(13)]: { ptr: ['nxfwd.test', 'ok13.test'] },
  'ok13.test': { a: ['192.0.2.13'] },
  [rev(14)]: { ptr: ['192.0.2.14'] },
  '192.0.2.14': { a: ['192.0.2.14'] },
  [rev(15)]: { ptr: ['one.test', 'two.test', 'three.test', 'four.test'] },
  'four.test': { a: ['192.0.2.15'] },
  [rev(16)]: { ptr: ['localhost'] },
  localhost: { a: ['192.0.2.16'] },
  [rev(17)]: { ptr: ['host_17.dhcp.test'] },
  'host_17.dhcp.test': { a: ['192.0.2.17'] },
  [V6_PTR]: { ptr: ['good.example.test'] },
};

describe('ClientResolver (crafted loopback DNS)', () => {
  let dns: LoopbackDns;
  let silent: LoopbackDns;
  let r: ClientResolver;
  before(async () => {
    dns = await startCraftedDns((q) => ZONE[q]);
    silent = await startSilentDns();
    r = new ClientResolver({ servers: [dns.server], timeoutMs: 300, tries: 1, deadlineMs: 3000 });
  });
  after(async () => {
    r?.close();
    await dns?.close();
    await silent?.close();
  });

  it('confirms a PTR name whose A record holds the address; lower-case, no trailing dot', async () => {
    assert.equal(await r.clientName('192.0.2.1'), 'good.example.test');
    assert.equal(await r.clientName('::ffff:192.0.2.1'), 'good.example.test');
  });

  it('confirms an IPv6 client through AAAA', async () => {
    assert.equal(await r.clientName('2001:db8::1'), 'good.example.test');
    assert.equal(await r.clientName('2001:DB8:0::0:1'), 'good.example.test');
  });

  it('never lets a malicious PTR name through: CR/LF, space, "*", a dot inside a label → [UNAVAILABLE]', async () => {
    for (const last of [2, 3, 4, 5]) assert.equal(await r.clientName(`192.0.2.${last}`), UNAVAILABLE, `192.0.2.${last}`);
    // The invalid names were never even looked up forward.
    assert.ok(!dns.queries.some((q) => /evil|a b|^\*/.test(q)), dns.queries.join(' | '));
  });

  it('skips an invalid PTR name and confirms the next one', async () => {
    assert.equal(await r.clientName('192.0.2.6'), 'second.test');
  });

  it('refuses numeric and single-label PTR names, accepts an underscore', async () => {
    assert.equal(await r.clientName('192.0.2.14'), UNAVAILABLE);
    assert.equal(await r.clientName('192.0.2.16'), UNAVAILABLE);
    assert.equal(await r.clientName('192.0.2.17'), 'host_17.dhcp.test');
  });

  it('is [UNAVAILABLE] when the forward lookup does not hold the address, or there is no PTR', async () => {
    assert.equal(await r.clientName('192.0.2.7'), UNAVAILABLE);
    assert.equal(await r.clientName('192.0.2.10'), UNAVAILABLE, 'NOERROR without PTR records');
    assert.equal(await r.clientName('192.0.2.200'), UNAVAILABLE, 'NXDOMAIN');
  });

  it('is [TEMPUNAVAIL] on SERVFAIL or REFUSED, for the PTR or the forward lookup', async () => {
    assert.equal(await r.clientName('192.0.2.8'), TEMPUNAVAIL);
    assert.equal(await r.clientName('192.0.2.9'), TEMPUNAVAIL);
    assert.equal(await r.clientName('192.0.2.11'), TEMPUNAVAIL);
  });

  it('tries the next name after an NXDOMAIN forward lookup, and at most maxNames names', async () => {
    assert.equal(await r.clientName('192.0.2.13'), 'ok13.test');
    assert.equal(await r.clientName('192.0.2.15'), UNAVAILABLE, 'four.test is the fourth name');
    const r5 = new ClientResolver({ servers: [dns.server], timeoutMs: 300, tries: 1, maxNames: 4 });
    try {
      assert.equal(await r5.clientName('192.0.2.15'), 'four.test');
    } finally {
      r5.close();
    }
  });

  it('is [TEMPUNAVAIL] by the deadline when a forward lookup never answers', async () => {
    const rd = new ClientResolver({ servers: [dns.server], timeoutMs: 5000, tries: 1, deadlineMs: 300 });
    try {
      const t0 = Date.now();
      assert.equal(await rd.clientName('192.0.2.12'), TEMPUNAVAIL);
      const ms = Date.now() - t0;
      assert.ok(ms >= 250 && ms < 2500, `${ms} ms`);
    } finally {
      rd.close();
    }
  });

  it('is [TEMPUNAVAIL] when the server never answers (c-ares timeout before the deadline)', async () => {
    const rs = new ClientResolver({ servers: [silent.server], timeoutMs: 100, tries: 1, deadlineMs: 5000 });
    try {
      const t0 = Date.now();
      assert.equal(await rs.clientName('192.0.2.1'), TEMPUNAVAIL);
      assert.ok(Date.now() - t0 < 5000);
      assert.ok(silent.queries.length >= 1);
    } finally {
      rs.close();
    }
  });

  it('never rejects: junk addresses are [UNAVAILABLE], a closed resolver is [TEMPUNAVAIL]', async () => {
    for (const junk of ['', 'not-an-ip', '192.0.2', '1.2.3.4.5', undefined, null, 7] as unknown[]) {
      assert.equal(await r.clientName(junk as string), UNAVAILABLE, String(junk));
    }
    const rc = new ClientResolver({ servers: [dns.server] });
    rc.close();
    assert.equal(await rc.clientName('192.0.2.1'), TEMPUNAVAIL);
  });

  it('refuses a bad configuration at construction', () => {
    assert.throws(() => new ClientResolver({ servers: [] }));
    assert.throws(() => new ClientResolver({ servers: ['dns.example'] }));
    assert.throws(() => new ClientResolver({ servers: ['127.0.0.1:99999'] }));
    new ClientResolver({ servers: ['127.0.0.1', '127.0.0.1:5353', '[::1]:5353', '::1'] }).close();
  });
});

describe('ClientResolver cache', () => {
  let dns: LoopbackDns;
  let clock = 1_000_000;
  const count = (name: string, type: number): number => dns.queries.filter((q) => q === `${name}/${type}`).length;
  before(async () => {
    dns = await startCraftedDns((q) => ZONE[q]);
  });
  after(async () => {
    await dns?.close();
  });

  it('keeps A answers for their TTL and PTR answers for ptrTtlSec', async () => {
    const r = new ClientResolver({ servers: [dns.server], timeoutMs: 300, tries: 1, ptrTtlSec: 20, now: () => clock });
    try {
      assert.equal(await r.clientName('192.0.2.1'), 'good.example.test');
      assert.equal(await r.clientName('192.0.2.1'), 'good.example.test');
      assert.equal(count(rev(1), TYPE.PTR), 1);
      assert.equal(count('good.example.test', TYPE.A), 1);
      clock += 6000; // past the A record's TTL (5 s), within the PTR's (20 s)
      assert.equal(await r.clientName('192.0.2.1'), 'good.example.test');
      assert.equal(count(rev(1), TYPE.PTR), 1);
      assert.equal(count('good.example.test', TYPE.A), 2);
      clock += 15_000;
      await r.clientName('192.0.2.1');
      assert.equal(count(rev(1), TYPE.PTR), 2);
    } finally {
      r.close();
    }
  });

  it('caches NXDOMAIN for negativeTtlSec, never a temporary failure', async () => {
    const r = new ClientResolver({ servers: [dns.server], timeoutMs: 300, tries: 1, negativeTtlSec: 10, now: () => clock });
    try {
      await r.clientName('192.0.2.201');
      await r.clientName('192.0.2.201');
      assert.equal(count(rev(201), TYPE.PTR), 1);
      clock += 11_000;
      await r.clientName('192.0.2.201');
      assert.equal(count(rev(201), TYPE.PTR), 2);
      await r.clientName('192.0.2.8');
      await r.clientName('192.0.2.8');
      assert.ok(count(rev(8), TYPE.PTR) >= 2, 'SERVFAIL is asked again');
    } finally {
      r.close();
    }
  });

  it('holds at most cacheSize entries, evicting the least recently used', async () => {
    const r = new ClientResolver({ servers: [dns.server], timeoutMs: 300, tries: 1, cacheSize: 2, now: () => clock });
    try {
      await r.lookup('A', 'second.test');
      await r.lookup('A', 'ok13.test');
      await r.lookup('A', 'second.test'); // now the most recent
      await r.lookup('A', 'liar.test'); // evicts ok13.test
      assert.equal(r.cacheEntries, 2);
      const before13 = count('ok13.test', TYPE.A);
      const beforeSecond = count('second.test', TYPE.A);
      await r.lookup('A', 'second.test');
      await r.lookup('A', 'ok13.test');
      assert.equal(count('second.test', TYPE.A), beforeSecond);
      assert.equal(count('ok13.test', TYPE.A), before13 + 1);
    } finally {
      r.close();
    }
  });

  it('sends one query for identical lookups in flight', async () => {
    const r = new ClientResolver({ servers: [dns.server], timeoutMs: 300, tries: 1, cacheSize: 0 });
    try {
      const before1 = count(rev(1), TYPE.PTR);
      const names = await Promise.all([r.clientName('192.0.2.1'), r.clientName('192.0.2.1'), r.clientName('192.0.2.1')]);
      assert.deepEqual(names, ['good.example.test', 'good.example.test', 'good.example.test']);
      assert.equal(count(rev(1), TYPE.PTR), before1 + 1);
    } finally {
      r.close();
    }
  });
});

describe('DnsblChecker (crafted loopback DNS)', () => {
  let dns: LoopbackDns;
  let r: ClientResolver;
  before(async () => {
    dns = await startCraftedDns((q) => {
      if (q === '20.2.0.192.bl.test') return { a: ['127.0.0.2'] };
      if (q === '20.2.0.192.quota.test') return { a: ['127.255.255.254'] };
      if (q === '20.2.0.192.odd.test') return { a: ['10.0.0.1'] };
      if (q.endsWith('.sf.test')) return { rcode: 2 };
      if (q.endsWith('.slow.test')) return { drop: true };
      return undefined;
    });
    r = new ClientResolver({ servers: [dns.server], timeoutMs: 5000, tries: 1, deadlineMs: 400 });
  });
  after(async () => {
    r?.close();
    await dns?.close();
  });

  it('counts a timed-out or failing list as not listed, reports it, and answers by the deadline', async () => {
    const c = new DnsblChecker(r, { lists: [{ zone: 'bl.test' }, { zone: 'slow.test', weight: 5 }, { zone: 'sf.test', weight: 5 }], threshold: 1 });
    const t0 = Date.now();
    const res = await c.check('192.0.2.20');
    const ms = Date.now() - t0;
    assert.ok(ms >= 350 && ms < 2500, `${ms} ms`);
    assert.equal(res.listed, true);
    assert.equal(res.score, 1);
    assert.deepEqual(res.hits, [{ zone: 'bl.test', answer: '127.0.0.2', weight: 1, allow: false }]);
    assert.deepEqual(res.errors.sort(), ['sf.test: ESERVFAIL', 'slow.test: EDEADLINE']);
  });

  it('ignores 127.255.255.x "refused/quota" answers and reports answers outside 127/8', async () => {
    const c = new DnsblChecker(r, { lists: [{ zone: 'quota.test' }, { zone: 'odd.test' }] });
    const res = await c.check('192.0.2.20');
    assert.equal(res.listed, false);
    assert.equal(res.score, 0);
    assert.deepEqual(res.errors, ['odd.test: unexpected answer 10.0.0.1']);
  });

  it('never rejects on a junk address', async () => {
    const c = new DnsblChecker(r, { lists: [{ zone: 'bl.test' }] });
    assert.deepEqual(await c.check('junk'), { listed: false, allowlisted: false, score: 0, hits: [], errors: ['invalid client address'] });
  });

  it('refuses a bad zone or filter at construction', () => {
    assert.throws(() => new DnsblChecker(r, { lists: [{ zone: 'bad zone' }] }));
    assert.throws(() => new DnsblChecker(r, { lists: [{ zone: 'bl.test', match: ['127.0.0'] }] }));
  });
});

describe('ClientResolver and DnsblChecker: a DNS server that answers garbage', () => {
  // Replies carry the query's ID (so the resolver cannot drop them as strays) followed by junk:
  // random bytes, a header that promises answers never sent, a packet cut in the middle of a name.
  let server: import('node:dgram').Socket;
  let addr = '';
  let n = 0;
  before(async () => {
    const dgram = await import('node:dgram');
    server = dgram.createSocket('udp4');
    server.on('message', (msg, rinfo) => {
      const id = msg.subarray(0, 2);
      const junk = [
        Buffer.concat([id, Buffer.from([0x81, 0x80, 0, 1, 0, 5, 0, 0, 0, 0])]), // 5 answers promised, none there
        Buffer.concat([id, Buffer.from('\xff\xfe\x00\x01garbage\r\nX-Injected: y', 'latin1')]),
        Buffer.concat([id, msg.subarray(2, 12), msg.subarray(12, 20)]), // the question cut short
      ][n++ % 3]!;
      server.send(junk, rinfo.port, rinfo.address);
    });
    await new Promise<void>((resolve) => server.bind(0, '127.0.0.1', resolve));
    addr = `127.0.0.1:${server.address().port}`;
  });
  after(() => server?.close());

  it('a client name is [TEMPUNAVAIL] (never a name made of junk), within the deadline, for each kind of junk', async () => {
    const r = new ClientResolver({ servers: [addr], timeoutMs: 300, tries: 1, deadlineMs: 2000 });
    try {
      for (let i = 0; i < 3; i++) {
        const t0 = Date.now();
        const name = await r.clientName(`192.0.2.${40 + i}`);
        assert.equal(name, TEMPUNAVAIL, `junk kind ${i}`);
        assert.ok(Date.now() - t0 < 2500);
      }
    } finally {
      r.close();
    }
  });

  it('a blocklist that answers junk does not list the client, and says why', async () => {
    const r = new ClientResolver({ servers: [addr], timeoutMs: 300, tries: 1, deadlineMs: 2000 });
    try {
      const res = await new DnsblChecker(r, { lists: [{ zone: 'bl.test' }] }).check('192.0.2.50');
      assert.equal(res.listed, false);
      assert.equal(res.score, 0);
      assert.equal(res.errors.length, 1, JSON.stringify(res.errors));
      assert.match(res.errors[0]!, /^bl\.test: /);
      assert.doesNotMatch(res.errors[0]!, /[\r\n]/);
    } finally {
      r.close();
    }
  });
});
