/**
 * POP3 through Postern to a real Dovecot (test/helpers/dovecot.ts), with real clients: curl (AUTH PLAIN, APOP,
 * STLS, pop3s), `openssl s_client -starttls pop3`, Python's poplib (USER/PASS, APOP, AUTH PLAIN) and a raw
 * client for pipelining. The server block is `protocol: pop3` with `pop3.auth: [plain, apop]`, routed by an
 * auth_http service that checks the password (or APOP digest against Auth-Salt) as a real one would and hands the
 * real password back for APOP (test/helpers/imap-pop3-auth.ts), with `xclient: true`: Dovecot's banner to a
 * trusted peer offers [XCLIENT], Postern sends `XCLIENT ADDR=…`, and Dovecot logs the original client as rip=.
 * A second block sends a PROXY v2 header (xclient off) to Dovecot's `haproxy = yes` listener; others speak TLS to
 * Dovecot (STLS when required or offered, implicit), verified against the test CA. Every message
 * retrieved is compared byte for byte with the one placed (on the wire: dot-stuffed, then ".").
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AuthStub, type RecordedRequest } from '../helpers/auth-stub.js';
import { DOVECOT_USERS, startDovecot, type DovecotInstance } from '../helpers/dovecot.js';
import { INVALID, mailboxAuth } from '../helpers/imap-pop3-auth.js';
import { curl, curlUser, LineClient, mailboxMessage, OpensslClient, pyPop3, TEST_CA } from '../helpers/imap-pop3-clients.js';
import { startPostern, type RunningPostern } from '../helpers/postern.js';
import { TLS_FIXTURES } from '../helpers/postfix.js';

const { alice, bob, erin, dora } = DOVECOT_USERS;
const CERTS = [{ cert: path.join(TLS_FIXTURES, 'server.pem'), key: path.join(TLS_FIXTURES, 'server.key') }];
/** nginx's greeting with APOP on: `+OK POP3 ready <random.time@server_name>`. */
const GREETING = /^\+OK POP3 ready <\d+\.\d+@proxy\.test>\r?$/;

/** A message as RETR sends it (RFC 1939 §3): every line that starts with "." gets another, then ".". */
function onTheWire(message: Buffer): Buffer {
  return Buffer.from(message.toString('latin1').replace(/(^|\r\n)\./g, '$1..') + '.\r\n', 'latin1');
}

describe('POP3: Postern in front of a real Dovecot', { timeout: 180_000 }, () => {
  let d: DovecotInstance;
  let stub: AuthStub;
  let p: RunningPostern;
  let trustAll = false;
  /** Postern's listeners: [STLS on, implicit TLS, plain (PROXY v2 block)]. */
  let port: { stls: number; implicit: number; only: number; proxied: number };
  const messages = new Map<string, Buffer>();

  before(async () => {
    d = await startDovecot({ tls: true });
    const routes: Record<string, () => number> = { proxied: () => d.ports.pop3Haproxy, implicit: () => d.ports.pop3s! };
    stub = await AuthStub.start(mailboxAuth({ port: (req) => (routes[req.get('X-Test-Block') ?? '']?.() ?? d.ports.pop3), trustAll: () => trustAll }));
    for (const u of [alice, bob, erin, dora]) {
      const m = mailboxMessage(`pop3-${u.user}`);
      messages.set(u.user, m);
      await d.place(u.user, m);
    }
    p = await startPostern({
      servers: [
        {
          protocol: 'pop3',
          listen: [{ address: '127.0.0.1:0', starttls: 'on' }, { address: '127.0.0.1:0', implicit_tls: true }, { address: '127.0.0.1:0', starttls: 'only' }],
          tls: { certificates: CERTS },
          pop3: { auth: ['plain', 'apop'] },
          route: { auth_http: { url: stub.url } },
          xclient: true,
        },
        {
          protocol: 'pop3',
          listen: ['127.0.0.1:0'],
          route: { auth_http: { url: stub.url, headers: { 'X-Test-Block': 'proxied' } } },
          xclient: false,
          proxy_protocol: 'v2',
        },
      ],
    });
    const [a, b, only, c] = p.server.addresses;
    port = { stls: a!.port, implicit: b!.port, only: only!.port, proxied: c!.port };
  });
  after(async () => {
    await p?.stop();
    await stub?.stop();
    await d?.stop();
  });

  async function asked<T>(f: () => Promise<T>): Promise<{ result: T; requests: RecordedRequest[] }> {
    const n = stub.requests.length;
    const result = await f();
    return { result, requests: stub.requests.slice(n) };
  }

  const body = (user: string) => messages.get(user)!;

  it('curl pop3:// from 127.0.0.2 (AUTH PLAIN): RETR byte for byte; Dovecot logs rip=127.0.0.2 and Postern\'s XCLIENT SESSION', async () => {
    const since = d.logins().length;
    const { result: r, requests } = await asked(() => curl([`pop3://127.0.0.1:${port.stls}/1`, ...curlUser(alice.user, alice.password), '--interface', '127.0.0.2', '-v']));
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.equals(body(alice.user)), `retrieved ${r.stdout.length} bytes, placed ${body(alice.user).length}`);
    const greeting = /^< (\+OK POP3 ready .*)$/m.exec(r.stderr)?.[1];
    assert.match(greeting ?? '', GREETING, 'Postern\'s greeting, not Dovecot\'s');
    assert.match(r.stderr, /^> AUTH PLAIN/m, r.stderr);
    const login = await d.waitForLogin(since, (l) => l.user === alice.user);
    assert.deepEqual([login.service, login.rip, login.lip, login.method], ['pop3', '127.0.0.2', '127.0.0.1', 'PLAIN']);
    // Dovecot took Postern's XCLIENT SESSION= as its own session id.
    await p.waitForLog((l) => l.msg === 'POP3 back-end login accepted' && l.session === login.session && l.xclient === true);
    const rec = await p.waitForLog((l) => l.type === 'access' && l.user === alice.user);
    assert.equal(rec.backend_session_id, login.session, 'the access record names the session id Dovecot logs');
    assert.equal(requests.length, 1);
    assert.deepEqual([requests[0]!.get('Auth-Protocol'), requests[0]!.get('Auth-Method'), requests[0]!.get('Client-IP')], ['pop3', 'plain', '127.0.0.2']);
    assert.equal(requests[0]!.get('Auth-Salt'), undefined, 'no salt for a plain login');
  });

  it('curl with STLS (--ssl-reqd, the test CA) and pop3s:// on the implicit-TLS listener: byte for byte, Auth-SSL: on', async () => {
    for (const url of [`pop3://127.0.0.1:${port.stls}/1`, `pop3s://127.0.0.1:${port.implicit}/1`]) {
      const since = d.logins().length;
      const { result: r, requests } = await asked(() => curl([url, '--ssl-reqd', '--cacert', TEST_CA, ...curlUser(bob.user, bob.password), '--interface', '127.0.0.3']));
      assert.equal(r.code, 0, `${url}: ${r.stderr}`);
      assert.ok(r.stdout.equals(body(bob.user)), url);
      assert.equal(requests[0]?.get('Auth-SSL'), 'on', url);
      assert.equal((await d.waitForLogin(since, (l) => l.user === bob.user)).rip, '127.0.0.3', url);
    }
  });

  it('starttls: only — CAPA lists STLS but neither USER nor SASL, USER in the clear is refused and never asked about; curl --ssl-reqd gets the message', async () => {
    const c = await LineClient.connect(port.only);
    const n = stub.requests.length;
    try {
      await c.expect(/^\+OK POP3 ready .*\r\n/);
      c.send('CAPA');
      const [capa] = await c.expect(/^\+OK[^\r]*\r\n(?:[^\r]*\r\n)*?\.\r\n/);
      assert.match(capa!, /\r\nSTLS\r\n/);
      assert.doesNotMatch(capa!, /\r\n(USER|SASL)\b/);
      c.send(`USER ${alice.user}`);
      assert.match((await c.expect(/^.*\r\n/m))[0]!, /^-ERR /);
    } finally {
      c.close();
    }
    assert.equal(stub.requests.length, n, 'no auth request for a login in the clear');
    const r = await curl([`pop3://127.0.0.1:${port.only}/1`, '--ssl-reqd', '--cacert', TEST_CA, ...curlUser(alice.user, alice.password)]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.equals(body(alice.user)));
  });

  it('curl APOP (AUTH=+APOP): Auth-Method apop with the greeting\'s timestamp as Auth-Salt; the auth service\'s Auth-Pass logs in', async () => {
    const since = d.logins().length;
    const { result: r, requests } = await asked(() =>
      curl([`pop3://127.0.0.1:${port.stls}/1`, '--login-options', 'AUTH=+APOP', ...curlUser(alice.user, alice.password), '--interface', '127.0.0.4', '-v']),
    );
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.equals(body(alice.user)));
    const salt = /^< \+OK POP3 ready (<[^>]+>)/m.exec(r.stderr)?.[1];
    assert.ok(salt, r.stderr);
    assert.match(r.stderr, new RegExp(`^> APOP ${alice.user} [0-9a-f]{32}`, 'm'));
    assert.equal(requests[0]?.get('Auth-Method'), 'apop');
    assert.equal(requests[0]?.get('Auth-Salt'), salt);
    assert.match(requests[0]?.get('Auth-Pass') ?? '', /^[0-9a-f]{32}$/, 'the digest, not the password');
    const login = await d.waitForLogin(since, (l) => l.user === alice.user);
    assert.equal(login.rip, '127.0.0.4');
  });

  it('openssl s_client -starttls pop3 (certificate verified): USER/PASS, RETR 1 dot-stuffed byte for byte, QUIT', async () => {
    const since = d.logins().length;
    const c = await OpensslClient.start(port.stls, 'pop3');
    try {
      c.send(`USER ${erin.user}`);
      await c.expect(/^\+OK.*\r\n/m);
      c.send(`PASS ${erin.password}`);
      assert.match((await c.expect(/^[+-].*\r\n/m))[0], /^\+OK Logged in\.\r\n$/);
      c.send('RETR 1');
      const head = await c.expect(/^\+OK (\d+) octets\r\n/m);
      assert.equal(Number(head[1]), body(erin.user).length);
      const start = c.received.indexOf(head[0]) + head[0].length;
      await c.expect(/\r\n\.\r\n/);
      const wire = onTheWire(body(erin.user));
      assert.ok(c.received.subarray(start, start + wire.length).equals(wire), 'the dot-stuffed message and its end');
      c.send('QUIT');
      await c.expect(/^\+OK.*\r\n/m);
    } finally {
      await c.stop();
    }
    assert.doesNotMatch(c.stderr, /verify error/, c.stderr);
    assert.equal((await d.waitForLogin(since)).user, erin.user);
  });

  it('poplib USER/PASS over STLS with the UTF-8 password (spaces, quote, backslash), from 127.0.0.5', async () => {
    const since = d.logins().length;
    const { result: r, requests } = await asked(() =>
      pyPop3({ port: port.stls, tls: 'starttls', source: '127.0.0.5', user: dora.user, password: dora.password, mode: 'user', fetch: true }),
    );
    assert.match(r.login ?? '', /^\+OK Logged in/, JSON.stringify(r));
    assert.match(r.greeting, GREETING);
    assert.ok(Buffer.from(r.body ?? '', 'base64').equals(body(dora.user)));
    // nginx escapes only bytes up to 0x20 and "%"; the UTF-8 bytes go raw (latin1 in Node's header strings).
    assert.equal(requests[0]?.get('Auth-Pass'), Buffer.from(dora.password.replaceAll(' ', '%20'), 'utf8').toString('latin1'));
    assert.equal((await d.waitForLogin(since, (l) => l.user === dora.user)).rip, '127.0.0.5');
  });

  it('poplib APOP (erin) and AUTH PLAIN on pop3s (dora): both byte for byte, each from its own address', async () => {
    const since = d.logins().length;
    const apop = await pyPop3({ port: port.stls, source: '127.0.0.6', user: erin.user, password: erin.password, mode: 'apop', fetch: true });
    assert.match(apop.login ?? '', /^\+OK Logged in/, JSON.stringify(apop));
    assert.ok(Buffer.from(apop.body ?? '', 'base64').equals(body(erin.user)));
    const plain = await pyPop3({ port: port.implicit, tls: 'implicit', source: '127.0.0.7', user: dora.user, password: dora.password, mode: 'plain', fetch: true });
    assert.match(plain.login ?? '', /^\+OK Logged in/, JSON.stringify(plain));
    assert.ok(Buffer.from(plain.body ?? '', 'base64').equals(body(dora.user)));
    const got = d.logins().slice(since).map((l) => `${l.user}@${l.rip}`);
    assert.deepEqual(got, ['erin@127.0.0.6', 'dora@127.0.0.7']);
  });

  it('pipelining: USER, PASS, STAT and QUIT in one write are answered in order, the last two by Dovecot', async () => {
    const c = await LineClient.connect(port.stls, { localAddress: '127.0.0.8' });
    try {
      await c.expect(/^\+OK POP3 ready .*\r\n/);
      c.write(`USER ${bob.user}\r\nPASS ${bob.password}\r\nSTAT\r\nQUIT\r\n`);
      await c.expect(/^\+OK\r\n/);
      await c.expect(/^\+OK Logged in\.\r\n/);
      assert.equal((await c.expect(/^.*\r\n/))[0], `+OK 1 ${body(bob.user).length}\r\n`);
      await c.expect(/^\+OK Logging out\.\r\n/);
      assert.ok(await c.closed(5000));
    } finally {
      c.close();
    }
  });

  it('a wrong password: the auth service refuses and the client gets nginx\'s "-ERR <Auth-Status>"; Dovecot is never asked', async () => {
    const before = d.log().length;
    const c = await LineClient.connect(port.stls);
    try {
      await c.expect(/^\+OK POP3 ready .*\r\n/);
      c.send(`USER ${alice.user}`);
      await c.expect(/^\+OK\r\n/);
      c.send('PASS wrong');
      assert.equal((await c.expect(/^.*\r\n/))[0], `-ERR ${INVALID}\r\n`);
    } finally {
      c.close();
    }
    const py = await pyPop3({ port: port.stls, user: bob.user, password: 'wrong', mode: 'user' });
    assert.equal(py.login, undefined);
    assert.equal(py.error, `-ERR ${INVALID}`, JSON.stringify(py));
    const apop = await pyPop3({ port: port.stls, user: bob.user, password: 'wrong', mode: 'apop' });
    assert.equal(apop.error, `-ERR ${INVALID}`, JSON.stringify(apop));
    const cu = await curl([`pop3://127.0.0.1:${port.stls}/1`, ...curlUser(alice.user, 'wrong')]);
    assert.equal(cu.code, 67, `curl: login denied (${cu.stderr})`);
    await new Promise((r) => setTimeout(r, 300));
    assert.doesNotMatch(d.log().slice(before), /auth: Info: passwd-file/, 'no login reached Dovecot');
  });

  it('an auth service that accepts anything: Dovecot refuses the password, the client gets -ERR and the close', async () => {
    trustAll = true;
    try {
      const before = d.log().length;
      const c = await LineClient.connect(port.stls);
      try {
        await c.expect(/^\+OK POP3 ready .*\r\n/);
        c.send(`USER ${alice.user}`);
        await c.expect(/^\+OK\r\n/);
        c.send('PASS not-the-password');
        assert.match((await c.expect(/^.*\r\n/))[0], /^-ERR .*\r\n$/);
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
    const r = await curl([`pop3://127.0.0.1:${port.proxied}/1`, ...curlUser(bob.user, bob.password), '--interface', '127.0.0.9']);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.equals(body(bob.user)));
    const login = await d.waitForLogin(since, (l) => l.user === bob.user);
    assert.deepEqual([login.rip, login.lip], ['127.0.0.9', '127.0.0.1']);
    assert.doesNotMatch(d.log(), /haproxy: Client disconnected/, 'every connection to the haproxy listener had a valid header');
  });

  it('a client\'s own XCLIENT is refused (-ERR invalid command): Dovecot still logs the real client', async () => {
    const since = d.logins().length;
    const c = await LineClient.connect(port.stls, { localAddress: '127.0.0.10' });
    try {
      await c.expect(/^\+OK POP3 ready .*\r\n/);
      c.send('XCLIENT ADDR=203.0.113.66 PORT=1 SESSION=spoofed');
      assert.equal((await c.expect(/^.*\r\n/))[0], '-ERR invalid command\r\n');
      c.send(`USER ${alice.user}`);
      await c.expect(/^\+OK\r\n/);
      c.send(`PASS ${alice.password}`);
      await c.expect(/^\+OK Logged in\.\r\n/);
    } finally {
      c.close();
    }
    const login = await d.waitForLogin(since, (l) => l.user === alice.user);
    assert.equal(login.rip, '127.0.0.10');
    assert.notEqual(login.session, 'spoofed');
  });

  for (const [mode, block] of [['required', 'stls'], ['opportunistic', 'stls'], ['implicit', 'implicit']] as const) {
    it(`backend_tls: ${mode} — Postern speaks TLS to Dovecot (certificate verified), Dovecot logs TLS and the client's rip=`, async () => {
      const q = await startPostern({
        protocol: 'pop3',
        route: { auth_http: { url: stub.url, headers: { 'X-Test-Block': block } } },
        backend_tls: { mode, ca: TEST_CA },
      });
      try {
        const since = d.logins().length;
        const r = await curl([`pop3://127.0.0.1:${q.port}/1`, ...curlUser(bob.user, bob.password), '--interface', '127.0.0.11']);
        assert.equal(r.code, 0, r.stderr);
        assert.ok(r.stdout.equals(body(bob.user)));
        const login = await d.waitForLogin(since, (l) => l.user === bob.user);
        assert.deepEqual([login.tls, login.rip], [true, '127.0.0.11'], login.line);
      } finally {
        await q.stop();
      }
    });
  }

  it('proxy_pass_error_message: Dovecot\'s own -ERR for a refused password reaches the client', async () => {
    trustAll = true;
    const q = await startPostern({ protocol: 'pop3', route: { auth_http: { url: stub.url } }, proxy_pass_error_message: true });
    try {
      const c = await LineClient.connect(q.port);
      try {
        await c.expect(/^\+OK POP3 ready\r\n/);
        c.send(`USER ${alice.user}`);
        await c.expect(/^\+OK\r\n/);
        c.send('PASS not-the-password');
        assert.equal((await c.expect(/^.*\r\n/))[0], '-ERR [AUTH] Authentication failed.\r\n');
      } finally {
        c.close();
      }
    } finally {
      trustAll = false;
      await q.stop();
    }
  });
});
