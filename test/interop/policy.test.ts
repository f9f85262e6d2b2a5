/**
 * The policy client against real Postfix policy servers on loopback (test/helpers/policy-servers.ts):
 * - postgrey 1.37 (greylisting, --delay=1): a new triplet is answered DEFER_IF_PERMIT with its help URL;
 *   the same triplet after the delay gets PREPEND X-Greylist; all on one kept-alive connection.
 * - policyd-spf (postfix-policyd-spf-python), resolving through a private dnsmasq: SPF pass → PREPEND
 *   Received-SPF: Pass, SPF fail → 550 5.7.23.
 * Peers missing → the test throws (never skips).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { PolicyClient } from '../../src/checks/policy/client.js';
import type { PolicyAttributes } from '../../src/checks/policy/protocol.js';
import { spawnPolicydSpf, startDnsmasq, startPostgrey, type Dnsmasq, type PolicydSpf, type Postgrey } from '../helpers/policy-servers.js';

const base = (o: PolicyAttributes): PolicyAttributes => ({
  protocol_state: 'RCPT', protocol_name: 'ESMTP', client_name: 'unknown', reverse_client_name: 'unknown',
  helo_name: 'mx.example.test', server_address: '127.0.0.1', server_port: 25, client_port: 40000,
  compatibility_level: '3.6', mail_version: '3.7.11', ...o,
});

describe('policy client ↔ postgrey', () => {
  let pg: Postgrey;
  let client: PolicyClient;
  before(async () => {
    pg = await startPostgrey({ delay: 1 });
    client = new PolicyClient({ server: pg.address, default: 'defer', timeoutMs: 30_000 });
  });
  after(async () => {
    await client?.close();
    await pg?.stop();
  });

  it('greylists a new triplet, passes it after the delay with X-Greylist, on one connection', async () => {
    const req = base({ client_address: '192.0.2.7', sender: 'a@example.test', recipient: 'b@y.test', instance: 'pg.1' });
    const first = await client.ask(req);
    // postgrey adds DSN 4.2.0 (its Exchange workaround) whenever the request has etrn_domain, which Postfix
    // (since 2.3) and we always send: Postfix's reply is then 450 4.2.0, not the default 4.7.1.
    assert.deepEqual(first, {
      kind: 'defer_if_permit', action: 'DEFER_IF_PERMIT', code: 450, dsn: '4.2.0',
      text: 'Greylisted, see http://postgrey.schweikert.ch/help/y.test.html',
      reply: '450 4.2.0 <b@y.test>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/y.test.html',
    });
    // No "still greylisted" check inside the delay: postgrey compares whole seconds (time()), so a retry
    // 0.1 s later may already pass when it crosses a second boundary. 2.1 s later it always passes.
    await sleep(2100);
    const retry = await client.ask({ ...req, instance: 'pg.3' });
    assert.equal(retry.kind, 'prepend', JSON.stringify(retry));
    assert.match(retry.kind === 'prepend' ? retry.header : '',
      /^X-Greylist: delayed \d+ seconds by postgrey-1\.\d+ at postgrey\.test; \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} \S+$/);
    // Another recipient is a new triplet.
    const other = await client.ask({ ...req, recipient: 'c@y.test', instance: 'pg.4' });
    assert.equal(other.kind, 'defer_if_permit');
    assert.equal(client.connectionsOpened, 1, 'postgrey kept the connection open for all requests');
    assert.match(pg.log(), /action=greylist, reason=new, client_name=unknown, client_address=192\.0\.2\.7, sender=a@example\.test, recipient=b@y\.test/);
    assert.match(pg.log(), /action=pass, reason=triplet found/);
  });

  it('concurrent asks over a pool of connections', async () => {
    const c = new PolicyClient({ server: pg.address, default: 'defer', timeoutMs: 30_000, maxConnections: 3 });
    try {
      const vs = await Promise.all(Array.from({ length: 12 }, (_, i) =>
        c.ask(base({ client_address: '198.51.100.9', sender: `s${i}@example.test`, recipient: `r${i}@y.test`, instance: `pgc.${i}` }))));
      vs.forEach((v, i) => assert.equal(v.kind === 'defer_if_permit' && v.text, `Greylisted, see http://postgrey.schweikert.ch/help/y.test.html`, `#${i}`));
      assert.ok(c.connectionsOpened <= 3);
    } finally {
      await c.close();
    }
  });
});

describe('policy client ↔ policyd-spf (DNS: private dnsmasq)', () => {
  let dns: Dnsmasq;
  let spf: PolicydSpf;
  let client: PolicyClient;
  before(async () => {
    dns = await startDnsmasq({ 'example.test': 'v=spf1 ip4:192.0.2.0/24 -all' });
    spf = await spawnPolicydSpf({ dnsPort: dns.port });
    client = new PolicyClient({ server: spf.address, default: 'defer', timeoutMs: 30_000 });
  });
  after(async () => {
    await client?.close();
    await spf?.stop();
    await dns?.stop();
  });

  it('SPF pass: PREPEND Received-SPF: Pass', async () => {
    const v = await client.ask(base({ client_address: '192.0.2.7', sender: 'a@example.test', recipient: 'b@y.test', instance: 'spf.1' }));
    assert.equal(v.kind, 'prepend', `${JSON.stringify(v)}\n${spf.log()}`);
    assert.equal(v.kind === 'prepend' && v.header,
      'Received-SPF: Pass (mailfrom) identity=mailfrom; client-ip=192.0.2.7; helo=mx.example.test; envelope-from=a@example.test; receiver=y.test');
  });

  it('SPF fail: 550 5.7.23, on the same connection', async () => {
    const v = await client.ask(base({ client_address: '198.51.100.9', sender: 'a@example.test', recipient: 'b@y.test', instance: 'spf.2' }));
    assert.equal(v.kind, 'reject', `${JSON.stringify(v)}\n${spf.log()}`);
    assert.equal(v.kind === 'reject' && v.reply,
      '550 5.7.23 <b@y.test>: Recipient address rejected: Message rejected due to: SPF fail - not authorized. '
      + 'Please see http://www.openspf.net/Why?s=mfrom;id=a@example.test;ip=198.51.100.9;r=y.test');
    assert.equal(spf.spawned(), 1, 'one policyd-spf process served both requests');
    assert.match(dns.log(), /query\[TXT\] example\.test from 127\.0\.0\.1/);
  });

  it('no SPF record: none → PREPEND Received-SPF: None', async () => {
    const v = await client.ask(base({ client_address: '192.0.2.7', sender: 'a@nospf.test', recipient: 'b@y.test', instance: 'spf.3' }));
    assert.equal(v.kind, 'prepend', `${JSON.stringify(v)}\n${spf.log()}`);
    assert.match(v.kind === 'prepend' ? v.header : '', /^Received-SPF: None \(mailfrom\) identity=mailfrom; client-ip=192\.0\.2\.7;/);
  });
});
