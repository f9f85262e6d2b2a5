/**
 * IMAP through Postern to a real Dovecot (test/helpers/dovecot.ts), with real clients: curl (AUTHENTICATE PLAIN
 * with SASL-IR, APPEND), `openssl s_client -starttls imap`, Python's imaplib (LOGIN with quoted strings, LOGIN
 * with a literal, AUTHENTICATE PLAIN) and a raw client for literals. The server block is `protocol: imap`, routed
 * by an auth_http service that checks the password as a real one would (test/helpers/imap-pop3-auth.ts), with
 * `xclient: true`: Postern sends Dovecot `ID ("x-originating-ip" …)` and Dovecot (login_trusted_networks =
 * 127.0.0.0/8) logs the original client's address as rip=. A second block sends a PROXY v2 header (xclient off)
 * to Dovecot's `haproxy = yes` listener; others speak TLS to Dovecot (STARTTLS, implicit), verified against the
 * test CA. Every message fetched is compared byte for byte with the one placed.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { writeFile, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AuthStub, type RecordedRequest } from '../helpers/auth-stub.js';
import { DOVECOT_USERS, startDovecot, type DovecotInstance } from '../helpers/dovecot.js';
import { INVALID, mailboxAuth, oauthTokenOf } from '../helpers/imap-pop3-auth.js';
import { curl, curlUser, LineClient, mailboxMessage, OpensslClient, pyImap, TEST_CA } from '../helpers/imap-pop3-clients.js';
import { startPostern, type RunningPostern } from '../helpers/postern.js';
import { TLS_FIXTURES } from '../helpers/postfix.js';

const { alice, bob, erin, dora } = DOVECOT_USERS;
const CERTS = [{ cert: path.join(TLS_FIXTURES, 'server.pem'), key: path.join(TLS_FIXTURES, 'server.key') }];

describe('IMAP: Postern in front of a real Dovecot', { timeout: 180_000 }, () => {
  let d: DovecotInstance;
  let stub: AuthStub;
  let p: RunningPostern;
  let tmp: string;
  let trustAll = false;
  /** Postern's listeners: [STARTTLS on, implicit TLS, STARTTLS only, plain (PROXY v2 block)]. */
  let port: { starttls: number; implicit: number; only: number; proxied: number; certified: number };
  const messages = new Map<string, Buffer>();

  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'postern-imap-interop-'));
    d = await startDovecot({ tls: true });
    // The PROXY block says so in a header of its own (nginx auth_http_header): it goes to the haproxy listener.
    const routes: Record<string, () => number> = { proxied: () => d.ports.imapHaproxy, implicit: () => d.ports.imaps! };
    stub = await AuthStub.start(mailboxAuth({ port: (req) => (routes[req.get('X-Test-Block') ?? '']?.() ?? d.ports.imap), trustAll: () => trustAll }));
    for (const u of [alice, bob, erin, dora]) {
      const m = mailboxMessage(`imap-${u.user}`);
      messages.set(u.user, m);
      await d.place(u.user, m);
    }
    p = await startPostern({
      servers: [
        {
          protocol: 'imap',
          listen: [{ address: '127.0.0.1:0', starttls: 'on' }, { address: '127.0.0.1:0', implicit_tls: true }, { address: '127.0.0.1:0', starttls: 'only' }],
          imap: { auth: ['plain', 'xoauth2', 'oauthbearer'] },
          tls: { certificates: CERTS },
          route: { auth_http: { url: stub.url } },
          xclient: true,
        },
        {
          protocol: 'imap',
          listen: ['127.0.0.1:0'],
          route: { auth_http: { url: stub.url, headers: { 'X-Test-Block': 'proxied' } } },
          xclient: false,
          proxy_protocol: 'v2',
        },
        {
          protocol: 'imap',
          listen: [{ address: '127.0.0.1:0', implicit_tls: true }],
          tls: { certificates: CERTS, verify_client: 'on', client_ca: path.join(TLS_FIXTURES, 'ca.pem') },
          imap: { auth: ['external'] },
          route: { auth_http: { url: stub.url } },
        },
      ],
    });
    const [a, b, only, c, certified] = p.server.addresses;
    port = { starttls: a!.port, implicit: b!.port, only: only!.port, proxied: c!.port, certified: certified!.port };
  });
  after(async () => {
    await p?.stop();
    await stub?.stop();
    await d?.stop();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  /** The auth requests made while `f` ran. */
  async function asked<T>(f: () => Promise<T>): Promise<{ result: T; requests: RecordedRequest[] }> {
    const n = stub.requests.length;
    const result = await f();
    return { result, requests: stub.requests.slice(n) };
  }

  const body = (user: string) => messages.get(user)!;

  it('curl imap:// from 127.0.0.2 (AUTHENTICATE PLAIN): the message byte for byte; Dovecot logs rip=127.0.0.2 and Postern\'s session id', async () => {
    const since = d.logins().length;
    const { result: r, requests } = await asked(() =>
      curl([`imap://127.0.0.1:${port.starttls}/INBOX;UID=1`, ...curlUser(alice.user, alice.password), '--interface', '127.0.0.2', '-v']),
    );
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.equals(body(alice.user)), `fetched ${r.stdout.length} bytes, placed ${body(alice.user).length}`);
    assert.match(r.stderr, /^< \* OK IMAP4 ready\r?$/m, 'Postern\'s greeting, not Dovecot\'s');
    assert.match(r.stderr, /^> A\d+ AUTHENTICATE PLAIN \S+/m, 'curl used SASL-IR');
    const login = await d.waitForLogin(since, (l) => l.user === alice.user);
    assert.deepEqual([login.service, login.rip, login.lip, login.method], ['imap', '127.0.0.2', '127.0.0.1', 'PLAIN']);
    assert.equal(requests.length, 1);
    assert.deepEqual([requests[0]!.get('Auth-Protocol'), requests[0]!.get('Auth-Method'), requests[0]!.get('Client-IP')], ['imap', 'plain', '127.0.0.2']);
    const rec = await p.waitForLog((l) => l.type === 'access' && l.user === alice.user);
    assert.equal(rec.outcome, 'relayed', JSON.stringify(rec));
    // Dovecot took Postern's x-session-id as its own session id.
    await p.waitForLog((l) => l.msg === 'IMAP back-end login accepted' && l.session === login.session && l.id === true);
    // …and the access record names it: the two logs match without debug logging.
    assert.equal(rec.backend_session_id, login.session);
  });

  it('curl with STARTTLS (--ssl-reqd, the test CA) and imaps:// on the implicit-TLS listener: byte for byte, Auth-SSL: on', async () => {
    for (const url of [`imap://127.0.0.1:${port.starttls}/INBOX;UID=1`, `imaps://127.0.0.1:${port.implicit}/INBOX;UID=1`]) {
      const since = d.logins().length;
      const { result: r, requests } = await asked(() => curl([url, '--ssl-reqd', '--cacert', TEST_CA, ...curlUser(bob.user, bob.password), '--interface', '127.0.0.3']));
      assert.equal(r.code, 0, `${url}: ${r.stderr}`);
      assert.ok(r.stdout.equals(body(bob.user)), url);
      assert.equal(requests[0]?.get('Auth-SSL'), 'on', url);
      assert.equal((await d.waitForLogin(since, (l) => l.user === bob.user)).rip, '127.0.0.3', url);
    }
  });

  it('starttls: only — CAPABILITY says LOGINDISABLED and no AUTH=, LOGIN in the clear is refused and never asked about; curl --ssl-reqd gets the message', async () => {
    const c = await LineClient.connect(port.only);
    const n = stub.requests.length;
    try {
      await c.expect(/^\* OK IMAP4 ready\r\n/);
      c.send('c1 CAPABILITY');
      const [cap] = await c.expect(/^\* CAPABILITY [^\r]*\r\nc1 OK completed\r\n/);
      assert.match(cap!, / STARTTLS LOGINDISABLED/);
      assert.doesNotMatch(cap!, /AUTH=/);
      c.send(`c2 LOGIN ${alice.user} ${alice.password}`);
      assert.match((await c.expect(/^.*\r\n/m))[0]!, /^c2 (BAD|NO) /);
    } finally {
      c.close();
    }
    assert.equal(stub.requests.length, n, 'no auth request for a login in the clear');
    const since = d.logins().length;
    const r = await curl([`imap://127.0.0.1:${port.only}/INBOX;UID=1`, '--ssl-reqd', '--cacert', TEST_CA, ...curlUser(alice.user, alice.password)]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.equals(body(alice.user)));
    assert.equal((await d.waitForLogin(since, (l) => l.user === alice.user)).tls, false, 'TLS ends at Postern; the hop to Dovecot is plain here');
  });

  it('curl with an OAuth bearer token (OAUTHBEARER, RFC 7628): the auth service checks the token and hands Dovecot the password; byte for byte', async () => {
    // curl 7.88 picks OAUTHBEARER when both are offered (XOAUTH2 is proven in test/integration/imap.test.ts).
    const since = d.logins().length;
    const { result: r, requests } = await asked(() => curl([`imaps://127.0.0.1:${port.implicit}/INBOX;UID=1`, '--cacert', TEST_CA, '--oauth2-bearer', oauthTokenOf(bob.user), '--user', `${bob.user}:`]));
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.equals(body(bob.user)));
    assert.deepEqual([requests[0]?.get('Auth-Method'), requests[0]?.get('Auth-User'), requests[0]?.get('Auth-Pass')], ['oauthbearer', bob.user, oauthTokenOf(bob.user)]);
    assert.equal((await d.waitForLogin(since, (l) => l.user === bob.user)).method, 'PLAIN', 'Postern logs in to Dovecot with the password from Auth-Pass');
    // A token the provider never issued: refused, and Dovecot is never asked.
    const before = d.logins().length;
    const { result: forged, requests: asks } = await asked(() => curl([`imaps://127.0.0.1:${port.implicit}/INBOX;UID=1`, '--cacert', TEST_CA, '--oauth2-bearer', 'forged', '--user', `${bob.user}:`]));
    assert.notEqual(forged.code, 0);
    assert.equal(asks[0]?.get('Auth-Pass'), 'forged');
    assert.equal(d.logins().length, before);
  });

  it('AUTHENTICATE EXTERNAL with a client certificate (curl --cert): Auth-SSL-Verify SUCCESS and the subject go to the auth service, its Auth-Pass logs in', async () => {
    const since = d.logins().length;
    const key = path.join(TLS_FIXTURES, 'client.key');
    const cert = path.join(TLS_FIXTURES, 'client.pem');
    const { result: r, requests } = await asked(() => curl([`imaps://127.0.0.1:${port.certified}/INBOX;UID=1`, '--cacert', TEST_CA, '--cert', cert, '--key', key, '--login-options', 'AUTH=EXTERNAL', '--user', `${alice.user}:`]));
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.equals(body(alice.user)));
    const q = requests[0]!;
    assert.deepEqual([q.get('Auth-Method'), q.get('Auth-User'), q.get('Auth-Pass'), q.get('Auth-SSL-Verify')], ['external', alice.user, '', 'SUCCESS']);
    assert.match(q.get('Auth-SSL-Subject') ?? '', /CN=client\.test/);
    assert.equal((await d.waitForLogin(since, (l) => l.user === alice.user)).method, 'PLAIN');
    // Without a certificate the handshake is refused (verify_client: on, nginx's 'No required SSL certificate').
    const none = await curl([`imaps://127.0.0.1:${port.certified}/INBOX;UID=1`, '--cacert', TEST_CA, '--login-options', 'AUTH=EXTERNAL', '--user', `${alice.user}:`]);
    assert.notEqual(none.code, 0);
  });

  it('curl APPEND through the relay: the uploaded message lands in the maildir byte for byte', async () => {
    const upload = mailboxMessage('imap-append', 20_000);
    const file = path.join(tmp, 'append.eml');
    await writeFile(file, upload);
    const r = await curl([`imap://127.0.0.1:${port.starttls}/INBOX`, '-T', file, ...curlUser(erin.user, erin.password)]);
    assert.equal(r.code, 0, r.stderr);
    const dirs = ['new', 'cur'].map((s) => path.join(d.dir, 'home', erin.user, 'Maildir', s));
    const stored = dirs.flatMap((dir) => readdirSync(dir).map((f) => readFileSync(path.join(dir, f))));
    assert.ok(stored.some((m) => m.equals(upload)), `the appended message is stored unchanged (found ${stored.length} messages)`);
  });

  it('openssl s_client -starttls imap (certificate verified): LOGIN, SELECT, FETCH BODY[] byte for byte, LOGOUT', async () => {
    const since = d.logins().length;
    const c = await OpensslClient.start(port.starttls, 'imap');
    try {
      c.send(`t1 LOGIN ${alice.user} ${alice.password}`);
      assert.match((await c.expect(/^t1 .*\r\n/m))[0], /^t1 OK \[CAPABILITY IMAP4rev1 [^\]]*\] Logged in\r\n$/);
      c.send('t2 SELECT INBOX');
      await c.expect(/^t2 OK .*\r\n/m);
      c.send('t3 FETCH 1 BODY.PEEK[]');
      const size = Number((await c.expect(/^\* 1 FETCH \(BODY\[\] \{(\d+)\}\r\n/m))[1]);
      assert.equal(size, body(alice.user).length);
      await c.expect(/^t3 OK .*\r\n/m);
      const text = c.received;
      const start = text.indexOf('BODY[] {') + `BODY[] {${size}}\r\n`.length;
      assert.ok(text.subarray(start, start + size).equals(body(alice.user)), 'the literal holds the placed bytes');
      c.send('t4 LOGOUT');
      await c.expect(/^t4 OK .*\r\n/m);
    } finally {
      await c.stop();
    }
    assert.doesNotMatch(c.stderr, /verify error/, c.stderr);
    assert.equal((await d.waitForLogin(since)).user, alice.user);
  });

  it('imaplib LOGIN with quoted strings (space, quote, backslash) over STARTTLS, from 127.0.0.4', async () => {
    const since = d.logins().length;
    const { result: r, requests } = await asked(() =>
      pyImap({ port: port.starttls, tls: 'starttls', source: '127.0.0.4', user: erin.user, password: erin.password, mode: 'login', fetch: true }),
    );
    assert.equal(r.login?.[0], 'OK', JSON.stringify(r));
    assert.equal(r.greeting, '* OK IMAP4 ready');
    assert.ok(Buffer.from(r.body ?? '', 'base64').equals(body(erin.user)));
    // nginx escapes only bytes up to 0x20 and "%": the space, nothing else.
    assert.equal(requests[0]?.get('Auth-Pass'), erin.password.replaceAll(' ', '%20'));
    assert.equal((await d.waitForLogin(since, (l) => l.user === erin.user)).rip, '127.0.0.4');
  });

  it('imaplib LOGIN with the password as a {n} literal (UTF-8), and AUTHENTICATE PLAIN on imaps: both byte for byte', async () => {
    const since = d.logins().length;
    const lit = await pyImap({ port: port.starttls, source: '127.0.0.5', user: dora.user, password: dora.password, mode: 'literal', fetch: true });
    assert.equal(lit.login?.[0], 'OK', JSON.stringify(lit));
    assert.ok(Buffer.from(lit.body ?? '', 'base64').equals(body(dora.user)));
    const plain = await pyImap({ port: port.implicit, tls: 'implicit', source: '127.0.0.6', user: dora.user, password: dora.password, mode: 'plain', fetch: true });
    assert.equal(plain.login?.[0], 'OK', JSON.stringify(plain));
    assert.ok(Buffer.from(plain.body ?? '', 'base64').equals(body(dora.user)));
    const rips = d.logins().slice(since).filter((l) => l.user === dora.user).map((l) => l.rip);
    assert.deepEqual(rips, ['127.0.0.5', '127.0.0.6']);
  });

  it('a raw client: synchronising {n} and non-synchronising {n+} literals for user and password', async () => {
    const pw = Buffer.from(dora.password, 'utf8');
    for (const [sync, tag] of [[true, 's1'], [false, 'n1']] as const) {
      const c = await LineClient.connect(port.starttls, { localAddress: '127.0.0.7' });
      try {
        await c.expect(/^\* OK IMAP4 ready\r\n/);
        if (sync) {
          c.write(`${tag} LOGIN {${dora.user.length}}\r\n`);
          await c.expect(/^\+ OK\r\n/);
          c.write(`${dora.user} {${pw.length}}\r\n`);
          await c.expect(/^\+ OK\r\n/);
          c.write(Buffer.concat([pw, Buffer.from('\r\n')]));
        } else {
          c.write(Buffer.concat([Buffer.from(`${tag} LOGIN {${dora.user.length}+}\r\n${dora.user} {${pw.length}+}\r\n`), pw, Buffer.from('\r\n')]));
        }
        assert.match((await c.expect(/^.*\r\n/m))[0], new RegExp(`^${tag} OK \\[CAPABILITY [^\\]]+\\] Logged in\\r\\n$`));
        c.send(`${tag}b STATUS INBOX (MESSAGES)`);
        assert.match((await c.expect(new RegExp(`^${tag}b OK .*\\r\\n`, 'm'))).input, /\* STATUS INBOX \(MESSAGES 1\)/);
      } finally {
        c.close();
      }
    }
  });

  it('a wrong password: the auth service refuses and the client gets nginx\'s "<tag> NO <Auth-Status>"; Dovecot is never asked', async () => {
    const c = await LineClient.connect(port.starttls);
    const before = d.log().length;
    try {
      await c.expect(/^\* OK IMAP4 ready\r\n/);
      c.send(`w1 LOGIN ${alice.user} wrong`);
      assert.equal((await c.expect(/^.*\r\n/m))[0], `w1 NO ${INVALID}\r\n`);
    } finally {
      c.close();
    }
    const py = await pyImap({ port: port.starttls, user: bob.user, password: 'wrong', mode: 'login' });
    assert.equal(py.login, undefined);
    assert.match(py.error ?? '', new RegExp(INVALID), JSON.stringify(py));
    const cu = await curl([`imap://127.0.0.1:${port.starttls}/INBOX;UID=1`, ...curlUser(alice.user, 'wrong')]);
    assert.equal(cu.code, 67, `curl: login denied (${cu.stderr})`);
    await new Promise((r) => setTimeout(r, 300));
    assert.doesNotMatch(d.log().slice(before), /auth: Info: passwd-file/, 'no login reached Dovecot');
  });

  it('an auth service that accepts anything: Dovecot refuses the password, the client gets a tagged NO and nothing is relayed', async () => {
    trustAll = true;
    try {
      const before = d.log().length;
      const c = await LineClient.connect(port.starttls);
      try {
        await c.expect(/^\* OK IMAP4 ready\r\n/);
        c.send(`x1 LOGIN ${alice.user} not-the-password`);
        assert.match((await c.expect(/^.*\r\n/m))[0], /^x1 NO .*\r\n$/);
        assert.ok(await c.closed(5000), 'Postern closes after the refused back-end login');
      } finally {
        c.close();
      }
      await d.waitForLog((log) => /passwd-file\(alice,127\.0\.0\.1[^)]*\): Password mismatch/.test(log.slice(before)));
      await p.waitForLog((l) => l.code === 'PST_BACKEND_AUTH_FAILED');
    } finally {
      trustAll = false;
    }
  });

  it('proxy_protocol: v2 to Dovecot\'s haproxy listener (xclient off): rip= is the client from the PROXY header', async () => {
    const since = d.logins().length;
    const r = await curl([`imap://127.0.0.1:${port.proxied}/INBOX;UID=1`, ...curlUser(bob.user, bob.password), '--interface', '127.0.0.8']);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.equals(body(bob.user)));
    const login = await d.waitForLogin(since, (l) => l.user === bob.user);
    assert.equal(login.rip, '127.0.0.8');
    assert.equal(login.lip, '127.0.0.1');
    assert.doesNotMatch(d.log(), /haproxy: Client disconnected/, 'every connection to the haproxy listener had a valid header');
  });

  it('a client\'s own ID cannot claim another address or session: Dovecot still logs the real client', async () => {
    const since = d.logins().length;
    const c = await LineClient.connect(port.starttls, { localAddress: '127.0.0.9' });
    try {
      await c.expect(/^\* OK IMAP4 ready\r\n/);
      c.send('i1 ID ("name" "spoofer" "x-originating-ip" "203.0.113.66" "x-originating-port" "1" "x-session-id" "spoofed")');
      await c.expect(/^i1 OK .*\r\n/m);
      c.send(`i2 LOGIN ${alice.user} ${alice.password}`);
      assert.match((await c.expect(/^i2 .*\r\n/m))[0], /^i2 OK /);
    } finally {
      c.close();
    }
    const login = await d.waitForLogin(since, (l) => l.user === alice.user);
    assert.equal(login.rip, '127.0.0.9');
    assert.notEqual(login.session, 'spoofed');
  });

  for (const [mode, block] of [['required', 'starttls'], ['implicit', 'implicit']] as const) {
    it(`backend_tls: ${mode} — Postern speaks TLS to Dovecot (certificate verified), Dovecot logs TLS and the client's rip=`, async () => {
      const q = await startPostern({
        protocol: 'imap',
        route: { auth_http: { url: stub.url, headers: { 'X-Test-Block': block } } },
        backend_tls: { mode, ca: TEST_CA },
      });
      try {
        const since = d.logins().length;
        const r = await curl([`imap://127.0.0.1:${q.port}/INBOX;UID=1`, ...curlUser(bob.user, bob.password), '--interface', '127.0.0.10']);
        assert.equal(r.code, 0, r.stderr);
        assert.ok(r.stdout.equals(body(bob.user)));
        const login = await d.waitForLogin(since, (l) => l.user === bob.user);
        assert.deepEqual([login.tls, login.rip], [true, '127.0.0.10'], login.line);
      } finally {
        await q.stop();
      }
    });
  }

  it('proxy_pass_error_message: Dovecot\'s own NO for a refused password reaches the client under its tag', async () => {
    trustAll = true;
    const q = await startPostern({ protocol: 'imap', route: { auth_http: { url: stub.url } }, proxy_pass_error_message: true });
    try {
      const c = await LineClient.connect(q.port);
      try {
        await c.expect(/^\* OK IMAP4 ready\r\n/);
        c.send(`e1 LOGIN ${alice.user} not-the-password`);
        assert.equal((await c.expect(/^.*\r\n/m))[0], 'e1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n');
      } finally {
        c.close();
      }
    } finally {
      trustAll = false;
      await q.stop();
    }
  });
});
