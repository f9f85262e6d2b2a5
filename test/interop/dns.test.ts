/**
 * ClientResolver and DnsblChecker against real DNS servers on loopback: Debian's dnsmasq (2.90) serving
 * PTR/A/AAAA records from its command line, and Debian's rbldnsd serving DNSBL zones from files
 * (test/helpers/dns-servers.ts). Nothing is asked of any server outside the machine: dnsmasq runs with
 * --no-resolv and answers `test` and the 192.0.2/2001:db8 reverse zones from local data only; its one
 * forwarded zone goes to a silent socket on loopback.
 *
 * dnsmasq refuses CR or LF in a --ptr-record ("bad PTR record"), so those are tested with the crafted server
 * (test/unit/dns-resolver.test.ts); here dnsmasq serves the bad names it does accept: a space, `*`.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ClientResolver, TEMPUNAVAIL, UNAVAILABLE } from '../../src/checks/dns/resolver.js';
import { DnsblChecker, parseDnsblSite } from '../../src/checks/dns/dnsbl.js';
import { parseAddress, ptrName } from '../../src/checks/dns/names.js';
import { startDnsmasq, startRbldnsd, startSilentDns, type DaemonDns, type LoopbackDns } from '../helpers/dns-servers.js';

const V6_REV = (last: string): string => `${last.split('').reverse().join('.')}.${'0.'.repeat(32 - last.length - 8)}8.b.d.0.1.0.0.2.ip6.arpa`;

describe('ClientResolver against dnsmasq', () => {
  let dnsmasq: DaemonDns;
  let silent: LoopbackDns;
  let r: ClientResolver;
  before(async () => {
    silent = await startSilentDns();
    // slow.forward: dnsmasq forwards the forward/ zone to a loopback socket that never answers.
    dnsmasq = await startDnsmasq({
      local: ['test', '2.0.192.in-addr.arpa', '8.b.d.0.1.0.0.2.ip6.arpa'],
      forward: [`/forward/127.0.0.1#${silent.port}`],
      hostRecords: ['mx.good.test,192.0.2.10,2001:db8::10', 'liar.test,192.0.2.99', 'MiXeD.Case.test,192.0.2.14', 'host_15.dhcp.test,192.0.2.15'],
      ptrRecords: [
        '11.2.0.192.in-addr.arpa,liar.test', '12.2.0.192.in-addr.arpa,a b.test', '13.2.0.192.in-addr.arpa,*.test',
        '16.2.0.192.in-addr.arpa,slow.forward', `${V6_REV('11')},liar.test`,
      ],
    });
    r = new ClientResolver({ servers: [dnsmasq.server], timeoutMs: 500, tries: 2, deadlineMs: 4000 });
  });
  after(async () => {
    r?.close();
    await dnsmasq?.close();
    await silent?.close();
  });

  it('confirms a name whose PTR and A/AAAA agree (IPv4 and IPv6)', async () => {
    assert.equal(await r.clientName('192.0.2.10'), 'mx.good.test');
    assert.equal(await r.clientName('2001:db8::10'), 'mx.good.test');
  });

  it('lower-cases the name and accepts an underscore', async () => {
    assert.equal(await r.clientName('192.0.2.14'), 'mixed.case.test');
    assert.equal(await r.clientName('192.0.2.15'), 'host_15.dhcp.test');
  });

  it('is [UNAVAILABLE] for a PTR whose forward lookup does not hold the address', async () => {
    assert.deepEqual(await r.lookup('PTR', ptrName(parseAddress('192.0.2.11')!)), { kind: 'ok', values: ['liar.test'] });
    assert.deepEqual(await r.lookup('PTR', ptrName(parseAddress('2001:db8::11')!)), { kind: 'ok', values: ['liar.test'] });
    assert.equal(await r.clientName('192.0.2.11'), UNAVAILABLE);
    assert.equal(await r.clientName('2001:db8::11'), UNAVAILABLE);
  });

  it('is [UNAVAILABLE] for PTR names with a space or "*"', async () => {
    // dnsmasq does serve them; the validation drops them.
    assert.deepEqual(await r.lookup('PTR', '12.2.0.192.in-addr.arpa'), { kind: 'ok', values: ['a b.test'] });
    assert.deepEqual(await r.lookup('PTR', '13.2.0.192.in-addr.arpa'), { kind: 'ok', values: ['*.test'] });
    assert.equal(await r.clientName('192.0.2.12'), UNAVAILABLE);
    assert.equal(await r.clientName('192.0.2.13'), UNAVAILABLE);
  });

  it('is [UNAVAILABLE] without a PTR (NXDOMAIN from a local zone)', async () => {
    assert.equal(await r.clientName('192.0.2.200'), UNAVAILABLE);
    assert.equal(await r.clientName('2001:db8::200'), UNAVAILABLE);
  });

  it('is [TEMPUNAVAIL] by the deadline when the forward lookup is never answered', async () => {
    const rd = new ClientResolver({ servers: [dnsmasq.server], timeoutMs: 2000, tries: 1, deadlineMs: 500 });
    try {
      const t0 = Date.now();
      assert.equal(await rd.clientName('192.0.2.16'), TEMPUNAVAIL);
      const ms = Date.now() - t0;
      assert.ok(ms >= 400 && ms < 3000, `${ms} ms`);
      assert.ok(silent.queries.some((q) => q.startsWith('slow.forward/')), `dnsmasq forwarded: ${silent.queries.join(' ')}`);
    } finally {
      rd.close();
    }
  });

  it('is [TEMPUNAVAIL] when the configured server does not answer at all', async () => {
    const rs = new ClientResolver({ servers: [silent.server], timeoutMs: 200, tries: 1, deadlineMs: 3000 });
    try {
      assert.equal(await rs.clientName('192.0.2.10'), TEMPUNAVAIL);
    } finally {
      rs.close();
    }
  });
});

describe('DnsblChecker against rbldnsd', () => {
  let rbl: DaemonDns;
  let silent: LoopbackDns;
  let r: ClientResolver;
  before(async () => {
    silent = await startSilentDns();
    rbl = await startRbldnsd([
      { name: 'bl.test', type: 'ip4set', lines: [':127.0.0.2:Listed in bl: $', '192.0.2.20', '192.0.2.21 :127.0.0.4:Other', '192.0.2.23'] },
      { name: 'bl2.test', type: 'ip4set', lines: [':127.0.0.2:Listed in bl2', '192.0.2.20', '192.0.2.22', '192.0.2.23'] },
      { name: 'wl.test', type: 'ip4set', lines: [':127.0.10.2:Allowlisted', '192.0.2.23'] },
      { name: 'bl6.test', type: 'ip6trie', lines: [':127.0.0.2:Listed v6', '2001:db8::20/128'] },
    ]);
    r = new ClientResolver({ servers: [rbl.server], timeoutMs: 500, tries: 2, deadlineMs: 4000 });
  });
  after(async () => {
    r?.close();
    await rbl?.close();
    await silent?.close();
  });

  const sites = (): DnsblChecker => new DnsblChecker(r, {
    lists: [parseDnsblSite('bl.test*2'), parseDnsblSite('bl2.test'), parseDnsblSite('wl.test=127.0.[0..255].[1..3]*-5'), parseDnsblSite('bl6.test*3')],
    threshold: 3,
  });

  it('blocks when the weights of the listing zones reach the threshold', async () => {
    const res = await sites().check('192.0.2.20');
    assert.equal(res.listed, true);
    assert.equal(res.score, 3);
    assert.deepEqual(res.hits.map((h) => `${h.zone}=${h.answer}*${h.weight}`), ['bl.test=127.0.0.2*2', 'bl2.test=127.0.0.2*1']);
    assert.deepEqual(res.errors, []);
  });

  it('does not block below the threshold, nor a client no zone lists', async () => {
    const below = await sites().check('192.0.2.22');
    assert.deepEqual([below.listed, below.score, below.errors], [false, 1, []]);
    const clean = await sites().check('192.0.2.99');
    assert.deepEqual(clean, { listed: false, allowlisted: false, score: 0, hits: [], errors: [] });
  });

  it('never blocks a client an allowlist lists', async () => {
    const res = await new DnsblChecker(r, {
      lists: [{ zone: 'bl.test', weight: 5 }, { zone: 'bl2.test', weight: 5 }, { zone: 'wl.test', weight: -5, allow: true, match: ['127.0.10.2'] }],
      threshold: 3,
    }).check('192.0.2.23');
    assert.equal(res.allowlisted, true);
    assert.equal(res.listed, false);
    assert.equal(res.score, 5);
  });

  it('scores each filter of one zone on its own, with one query', async () => {
    const c = new DnsblChecker(r, {
      lists: [{ zone: 'bl.test', match: ['127.0.0.2'], weight: 1 }, { zone: 'bl.test', match: ['127.0.0.[3..4]'], weight: 4 }],
      threshold: 3,
    });
    const res = await c.check('192.0.2.21');
    assert.deepEqual([res.listed, res.score, res.hits.map((h) => h.answer)], [true, 4, ['127.0.0.4']]);
    const res20 = await c.check('192.0.2.20');
    assert.deepEqual([res20.listed, res20.score], [false, 1]);
  });

  it('queries IPv6 clients by nibbles', async () => {
    const res = await sites().check('2001:db8::20');
    assert.deepEqual([res.listed, res.score, res.hits.map((h) => h.zone)], [true, 3, ['bl6.test']]);
    assert.equal((await sites().check('2001:db8::21')).score, 0);
  });

  it('counts a list that never answers as not listed and still answers by the deadline', async () => {
    const both = new ClientResolver({ servers: [silent.server], timeoutMs: 200, tries: 1, deadlineMs: 600 });
    try {
      const c = new DnsblChecker(both, { lists: [{ zone: 'bl.test' }] });
      const t0 = Date.now();
      const res = await c.check('192.0.2.20');
      const ms = Date.now() - t0;
      assert.ok(ms < 3000, `${ms} ms`);
      assert.equal(res.listed, false);
      assert.equal(res.errors.length, 1);
      assert.match(res.errors[0]!, /^bl\.test: (ETIMEOUT|EDEADLINE)$/);
    } finally {
      both.close();
    }
  });

  it('reports a zone rbldnsd does not serve (REFUSED) as an error, not a listing', async () => {
    const res = await new DnsblChecker(r, { lists: [{ zone: 'bl.test' }, { zone: 'unknown.example' }] }).check('192.0.2.20');
    assert.equal(res.listed, true);
    assert.equal(res.errors.length, 1);
    assert.match(res.errors[0]!, /^unknown\.example: E[A-Z]+$/);
  });
});
