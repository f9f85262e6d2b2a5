/**
 * The Dovecot harness (test/helpers/dovecot.ts) against real clients and no Postern: what the IMAP and POP3
 * interop tests rely on — a placed message comes back byte for byte, the passdb's users (quoted and literal
 * passwords) log in and a wrong password does not, the log's `rip=` follows the client's address, an ID
 * x-originating-ip, a POP3 XCLIENT and a PROXY header from a trusted peer, TLS with the test CA, and two
 * instances side by side that leave nothing behind.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { DOVECOT_USERS, startDovecot, type DovecotInstance } from '../helpers/dovecot.js';
import { curl, curlUser, LineClient, mailboxMessage, pyImap, pyPop3, TEST_CA } from '../helpers/imap-pop3-clients.js';

const { alice, bob, erin, dora } = DOVECOT_USERS;

/** A PROXY v2 header for TCP over IPv4, built by hand (RFC-style layout, haproxy's proxy-protocol.txt §2.2). */
function proxyV2(src: string, srcPort: number, dst: string, dstPort: number): Buffer {
  const sig = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
  const body = Buffer.alloc(12);
  src.split('.').forEach((o, i) => body.writeUInt8(Number(o), i));
  dst.split('.').forEach((o, i) => body.writeUInt8(Number(o), 4 + i));
  body.writeUInt16BE(srcPort, 8);
  body.writeUInt16BE(dstPort, 10);
  const len = Buffer.alloc(2);
  len.writeUInt16BE(body.length);
  return Buffer.concat([sig, Buffer.from([0x21, 0x11]), len, body]);
}

describe('Dovecot harness', { timeout: 120_000 }, () => {
  let d: DovecotInstance;
  let other: DovecotInstance;
  const msg = mailboxMessage('harness-1');
  before(async () => {
    // Two at once: the tests that run concurrently must not collide.
    [d, other] = await Promise.all([startDovecot({ tls: true }), startDovecot()]);
    await d.place(alice.user, msg);
  });
  after(async () => {
    await Promise.all([d?.stop(), other?.stop()]);
  });

  it('curl imap:// from 127.0.0.2 fetches the placed message byte for byte; the log names 127.0.0.2', async () => {
    const since = d.logins().length;
    const r = await curl([`imap://127.0.0.1:${d.ports.imap}/INBOX;UID=1`, ...curlUser(alice.user, alice.password), '--interface', '127.0.0.2']);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.equals(msg), `fetched ${r.stdout.length} bytes, placed ${msg.length}`);
    const login = await d.waitForLogin(since, (l) => l.user === alice.user);
    assert.deepEqual([login.service, login.rip, login.lip, login.tls], ['imap', '127.0.0.2', '127.0.0.1', false]);
  });

  it('curl pop3:// from 127.0.0.3: RETR gives the same bytes (dot-stuffing undone); rip=127.0.0.3', async () => {
    const since = d.logins().length;
    const r = await curl([`pop3://127.0.0.1:${d.ports.pop3}/1`, ...curlUser(alice.user, alice.password), '--interface', '127.0.0.3']);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.equals(msg), `retrieved ${r.stdout.length} bytes, placed ${msg.length}`);
    const login = await d.waitForLogin(since, (l) => l.user === alice.user);
    assert.deepEqual([login.service, login.rip], ['pop3', '127.0.0.3']);
  });

  it('a wrong password is refused (curl: login denied) and logged as an auth failure', async () => {
    const imap = await curl([`imap://127.0.0.1:${d.ports.imap}/INBOX;UID=1`, ...curlUser(bob.user, 'wrong')]);
    assert.equal(imap.code, 67, `curl exit ${imap.code}: ${imap.stderr}`);
    const pop = await curl([`pop3://127.0.0.1:${d.ports.pop3}/1`, ...curlUser(bob.user, 'wrong')]);
    assert.equal(pop.code, 67, `curl exit ${pop.code}: ${pop.stderr}`);
    await d.waitForLog((log) => /passwd-file\(bob,127\.0\.0\.1[^)]*\): Password mismatch/.test(log));
  });

  it('imaplib: LOGIN with a quoted password (space, quote, backslash); LOGIN with a literal holding UTF-8', async () => {
    const quoted = await pyImap({ port: d.ports.imap, user: erin.user, password: erin.password, mode: 'login' });
    assert.equal(quoted.login?.[0], 'OK', JSON.stringify(quoted));
    const literal = await pyImap({ port: d.ports.imap, user: dora.user, password: dora.password, mode: 'literal' });
    assert.equal(literal.login?.[0], 'OK', JSON.stringify(literal));
    const wrong = await pyImap({ port: d.ports.imap, user: dora.user, password: dora.password.slice(0, -1), mode: 'literal' });
    assert.equal(wrong.login?.[0], 'NO', JSON.stringify(wrong));
  });

  it('poplib: USER/PASS and AUTH PLAIN with the UTF-8 password, RETR byte for byte', async () => {
    await d.place(dora.user, msg);
    const user = await pyPop3({ port: d.ports.pop3, user: dora.user, password: dora.password, mode: 'user', fetch: true });
    assert.match(user.login ?? '', /^\+OK Logged in/, JSON.stringify(user));
    assert.ok(Buffer.from(user.body ?? '', 'base64').equals(msg));
    const plain = await pyPop3({ port: d.ports.pop3, user: dora.user, password: dora.password, mode: 'plain' });
    assert.match(plain.login ?? '', /^\+OK Logged in/, JSON.stringify(plain));
  });

  it('IMAP ID x-originating-ip from a trusted peer sets rip= (and the session id)', async () => {
    const since = d.logins().length;
    const c = await LineClient.connect(d.ports.imap);
    try {
      await c.expect(/^\* OK .*\r\n/);
      c.send('a1 ID ("x-originating-ip" "192.0.2.7" "x-originating-port" "5555" "x-session-id" "harness42")');
      await c.expect(/a1 OK .*\r\n/);
      c.send(`a2 LOGIN ${alice.user} ${alice.password}`);
      await c.expect(/a2 OK .*\r\n/);
    } finally {
      c.close();
    }
    const login = await d.waitForLogin(since);
    assert.deepEqual([login.user, login.rip, login.session], [alice.user, '192.0.2.7', 'harness42']);
  });

  it('POP3 XCLIENT from a trusted peer: [XCLIENT] in the banner, +OK, rip= the ADDR', async () => {
    const since = d.logins().length;
    const c = await LineClient.connect(d.ports.pop3);
    try {
      await c.expect(/^\+OK \[XCLIENT\] .*\r\n/);
      c.send('XCLIENT ADDR=192.0.2.8 PORT=6666 SESSION=harness43 TTL=4');
      await c.expect(/^\+OK .*\r\n/m);
      c.send(`USER ${alice.user}`);
      await c.expect(/\+OK.*\r\n/);
      c.send(`PASS ${alice.password}`);
      await c.expect(/\+OK Logged in.*\r\n/);
    } finally {
      c.close();
    }
    const login = await d.waitForLogin(since);
    assert.deepEqual([login.service, login.rip, login.session], ['pop3', '192.0.2.8', 'harness43']);
  });

  it('the haproxy listeners take the client from a PROXY v2 (IMAP) or v1 (POP3) header; none: no banner', async () => {
    let since = d.logins().length;
    const c = await LineClient.connect(d.ports.imapHaproxy, { preamble: proxyV2('203.0.113.9', 4242, '198.51.100.1', 143) });
    try {
      await c.expect(/^\* OK .*\r\n/);
      c.send(`a1 LOGIN ${alice.user} ${alice.password}`);
      await c.expect(/a1 OK .*\r\n/);
    } finally {
      c.close();
    }
    let login = await d.waitForLogin(since);
    assert.deepEqual([login.service, login.rip, login.lip], ['imap', '203.0.113.9', '198.51.100.1']);

    since = d.logins().length;
    const p = await LineClient.connect(d.ports.pop3Haproxy, { preamble: Buffer.from('PROXY TCP4 203.0.113.10 198.51.100.2 4243 110\r\n') });
    try {
      await p.expect(/^\+OK .*\r\n/);
      p.send(`USER ${alice.user}`);
      await p.expect(/\+OK.*\r\n/);
      p.send(`PASS ${alice.password}`);
      await p.expect(/\+OK Logged in.*\r\n/);
    } finally {
      p.close();
    }
    login = await d.waitForLogin(since);
    assert.deepEqual([login.service, login.rip], ['pop3', '203.0.113.10']);

    const bare = await LineClient.connect(d.ports.imapHaproxy);
    bare.send('a1 CAPABILITY');
    assert.ok(await bare.closed(5000), 'Dovecot closes a connection without a PROXY header');
    assert.doesNotMatch(bare.received.toString('latin1'), /\* OK/);
  });

  it('TLS with the test CA: imaps://, pop3s://, and STARTTLS/STLS with --ssl-reqd; the log says TLS', async () => {
    for (const url of [`imaps://127.0.0.1:${d.ports.imaps}/INBOX;UID=1`, `pop3s://127.0.0.1:${d.ports.pop3s}/1`]) {
      const since = d.logins().length;
      const r = await curl([url, '--cacert', TEST_CA, ...curlUser(alice.user, alice.password)]);
      assert.equal(r.code, 0, `${url}: ${r.stderr}`);
      assert.ok(r.stdout.equals(msg), url);
      assert.equal((await d.waitForLogin(since)).tls, true, url);
    }
    for (const url of [`imap://127.0.0.1:${d.ports.imap}/INBOX;UID=1`, `pop3://127.0.0.1:${d.ports.pop3}/1`]) {
      const since = d.logins().length;
      const r = await curl([url, '--ssl-reqd', '--cacert', TEST_CA, ...curlUser(alice.user, alice.password)]);
      assert.equal(r.code, 0, `${url}: ${r.stderr}`);
      assert.ok(r.stdout.equals(msg), url);
      assert.equal((await d.waitForLogin(since)).tls, true, url);
    }
    // The certificate is checked: without the CA curl refuses.
    const untrusted = await curl([`imaps://127.0.0.1:${d.ports.imaps}/`, ...curlUser(alice.user, alice.password)]);
    assert.equal(untrusted.code, 60, untrusted.stderr);
  });

  it('a second instance is its own: other ports, other mail, other log; stop() leaves nothing', async () => {
    const ports = new Set([...Object.values(d.ports), ...Object.values(other.ports)]);
    assert.equal(ports.size, Object.values(d.ports).length + Object.values(other.ports).length);
    assert.equal(other.ports.imaps, undefined);
    const r = await curl([`imap://127.0.0.1:${other.ports.imap}/INBOX`, '--request', 'EXAMINE INBOX', ...curlUser(alice.user, alice.password)]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout.toString('latin1'), /\* 0 EXISTS/);
    assert.equal(other.logins().length, 1);

    const pidFile = `${other.dir}/run/master.pid`;
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    await other.stop();
    assert.equal(existsSync(other.dir), false, 'the instance directory is removed');
    assert.throws(() => process.kill(pid, 0), 'the master is gone');
    assert.match(other.log(), /Dovecot v2\.3\.\d+.* starting up for imap, pop3/);
  });
});
