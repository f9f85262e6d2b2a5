/**
 * The pure parts of the DNS checks: which PTR names may leave Postern, query names for v4 and v6,
 * DNSBL filters and scoring. No sockets here.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { dnsblName, ipv6Hex, normalizeHostName, parseAddress, ptrName, sameAddress } from '../../src/checks/dns/names.js';
import { compileMatch, parseDnsblSite, score, type DnsblHit } from '../../src/checks/dns/dnsbl.js';

describe('normalizeHostName', () => {
  it('accepts LDH names, lower-cases them and strips one trailing dot', () => {
    assert.equal(normalizeHostName('mx.example.com'), 'mx.example.com');
    assert.equal(normalizeHostName('MX1.Example.COM.'), 'mx1.example.com');
    assert.equal(normalizeHostName('a-b.c-d.test'), 'a-b.c-d.test');
    assert.equal(normalizeHostName('123.45.example.net'), '123.45.example.net');
    assert.equal(normalizeHostName('xn--caf-dma.example'), 'xn--caf-dma.example');
    assert.equal(normalizeHostName('host_1.dhcp.example'), 'host_1.dhcp.example', 'underscore, as Postfix valid_hostname()');
  });

  it('refuses CR, LF, NUL, spaces and other bytes, raw or as c-ares escapes', () => {
    for (const bad of [
      'evil.test\r\nX-Header: y', 'evil\r.test', 'evil\n.test', 'a b.test', 'a\tb.test', 'a\0b.test',
      'evil\\013\\010X: y.test', 'a\\.b.test', 'caf\\195\\169.test', 'café.test', 'İ.test', '*.test', 'a*.test',
      'a"b.test', 'a:b.test', 'a/b.test', 'a@b.test', '[UNAVAILABLE]', '[TEMPUNAVAIL]', 'a;b.test', 'a,b.test',
    ]) assert.equal(normalizeHostName(bad), undefined, JSON.stringify(bad));
  });

  it('refuses bad structure: empty, single label, empty labels, hyphens at label ends, numeric last label', () => {
    for (const bad of ['', '.', '..', 'localhost', 'localhost.', 'a..b', '.a.b', 'a.b..', '-a.test', 'a-.test', 'a.-b', 'a.b-',
      '1.2.3.4', '10.0.0.1.', 'a.123', '0x7f.1']) assert.equal(normalizeHostName(bad), undefined, JSON.stringify(bad));
  });

  it('enforces 63-character labels and 253 characters in all', () => {
    const l63 = 'a'.repeat(63);
    assert.equal(normalizeHostName(`${l63}.test`), `${l63}.test`);
    assert.equal(normalizeHostName(`${'a'.repeat(64)}.test`), undefined);
    const exact = [l63, l63, l63, 'a'.repeat(57), 'tld'].join('.'); // 3×63 + 57 + 3 + 4 dots
    assert.equal(exact.length, 253);
    assert.equal(normalizeHostName(exact), exact);
    assert.equal(normalizeHostName(exact + '.'), exact, 'the trailing dot does not count');
    assert.equal(normalizeHostName(exact + 'a'), undefined);
  });

  it('never returns a non-string and never throws on junk', () => {
    for (const junk of [undefined, null, 42, {}, []] as unknown[]) assert.equal(normalizeHostName(junk as string), undefined);
  });
});

describe('addresses and query names', () => {
  it('builds in-addr.arpa and DNSBL names from reversed IPv4 octets', () => {
    const a = parseAddress('192.0.2.10')!;
    assert.equal(ptrName(a), '10.2.0.192.in-addr.arpa');
    assert.equal(dnsblName(a, 'zen.example'), '10.2.0.192.zen.example');
  });

  it('builds ip6.arpa and DNSBL names from 32 reversed nibbles, whatever the spelling', () => {
    const want = '1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2';
    for (const spelling of ['2001:db8::1', '2001:DB8:0:0:0:0:0:1', '2001:0db8:0000::0001', '2001:db8::1%eth0']) {
      const a = parseAddress(spelling)!;
      assert.equal(a.family, 6, spelling);
      assert.equal(ptrName(a), `${want}.ip6.arpa`, spelling);
      assert.equal(dnsblName(a, 'bl6.example'), `${want}.bl6.example`, spelling);
    }
    assert.equal(ptrName(parseAddress('::')!), `${Array(32).fill('0').join('.')}.ip6.arpa`);
    assert.equal(ipv6Hex('::1'), '0'.repeat(31) + '1');
    assert.equal(ipv6Hex('64:ff9b::192.0.2.1'), '0064ff9b0000000000000000c0000201');
  });

  it('queries an IPv4-mapped IPv6 client as IPv4', () => {
    const a = parseAddress('::ffff:192.0.2.10')!;
    assert.equal(a.family, 4);
    assert.equal(ptrName(a), '10.2.0.192.in-addr.arpa');
    assert.equal(parseAddress('::ffff:c000:020a')!.text, '192.0.2.10');
  });

  it('refuses what is not an address', () => {
    for (const bad of ['', 'example.com', '192.0.2', '192.0.2.256', '1.2.3.4.5', '2001:db8:::1', '::ffff:1.2.3', 'x'] as string[]) {
      assert.equal(parseAddress(bad), undefined, bad);
    }
  });

  it('compares addresses by value', () => {
    assert.ok(sameAddress('2001:db8::1', '2001:0DB8:0:0::1'));
    assert.ok(sameAddress('192.0.2.1', '::ffff:192.0.2.1'));
    assert.ok(!sameAddress('192.0.2.1', '192.0.2.10'));
    assert.ok(!sameAddress('2001:db8::1', '2001:db8::2'));
    assert.ok(!sameAddress('junk', 'junk'));
  });
});

describe('DNSBL filters and scoring', () => {
  it('matches exact answers and postscreen octet patterns', () => {
    assert.ok(compileMatch('127.0.0.2')('127.0.0.2'));
    assert.ok(!compileMatch('127.0.0.2')('127.0.0.3'));
    const range = compileMatch('127.0.0.[2..11]');
    assert.ok(range('127.0.0.2') && range('127.0.0.11') && !range('127.0.0.1') && !range('127.0.0.12'));
    const list = compileMatch('127.0.[0..255].[2;4]');
    assert.ok(list('127.0.9.2') && list('127.0.0.4') && !list('127.0.0.3'));
    assert.ok(!range('127.0.0.2.1') && !range('x'));
    for (const bad of ['127.0.0', '127.0.0.256', '127.0.0.[1-2]', '127.0.0.*']) assert.throws(() => compileMatch(bad), bad);
  });

  it('parses postscreen_dnsbl_sites entries', () => {
    assert.deepEqual(parseDnsblSite('zen.example*3'), { zone: 'zen.example', weight: 3, allow: false });
    assert.deepEqual(parseDnsblSite('bl.example'), { zone: 'bl.example', weight: 1, allow: false });
    assert.deepEqual(parseDnsblSite('list.dnswl.org=127.0.[0..255].[1..3]*-5'),
      { zone: 'list.dnswl.org', weight: -5, allow: true, match: ['127.0.[0..255].[1..3]'] });
    assert.throws(() => parseDnsblSite('bl.example*x'));
  });

  const hit = (zone: string, weight: number, allow = false): DnsblHit => ({ zone, answer: '127.0.0.2', weight, allow });

  it('sums the weights of the listing entries against the threshold', () => {
    assert.deepEqual(score([], 1), { listed: false, allowlisted: false, score: 0 });
    assert.deepEqual(score([hit('a', 1)], 1), { listed: true, allowlisted: false, score: 1 });
    assert.deepEqual(score([hit('a', 1)], 2), { listed: false, allowlisted: false, score: 1 });
    assert.deepEqual(score([hit('a', 1), hit('b', 1)], 2), { listed: true, allowlisted: false, score: 2 });
  });

  it('never blocks an allowlisted client, even when the sum reaches the threshold', () => {
    assert.deepEqual(score([hit('a', 3), hit('b', 3), hit('wl', -5, true)], 1), { listed: false, allowlisted: true, score: 1 });
    assert.deepEqual(score([hit('a', 3), hit('wl', -5, true)], 1), { listed: false, allowlisted: true, score: -2 });
  });
});
