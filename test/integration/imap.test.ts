/**
 * IMAP end to end: Postern (protocol: imap) in front of an in-process scripted back-end on
 * loopback (./imap-backend.ts) with an auth_http stub — the full path to the blind relay, the
 * auth_http request nginx sends, ID with the client's address, back-end faults at every step,
 * failover within a pool, STARTTLS and implicit TLS in front, TLS and the PROXY header behind,
 * and bad input (overlong lines and literals, NUL, STARTTLS injection).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AuthStub, okAnswer } from '../helpers/auth-stub.js';
import { startPostern, type RunningPostern } from '../helpers/postern.js';
import { FakeImap, type FakeImapOptions } from './imap-backend.js';
import { ImapClient } from './imap-client.js';

const FIX = path.resolve(import.meta.dirname, '../fixtures/tls');
const CA = readFileSync(path.join(FIX, 'ca.pem'));
const CERTS = [{ cert: path.join(FIX, 'server.pem'), key: path.join(FIX, 'server.key') }];
const GREETING = '* OK IMAP4 ready';
const UNAVAILABLE = 'a1 NO [UNAVAILABLE] Internal server error';

let stub: AuthStub;
before(async () => {
  stub = await AuthStub.start(okAnswer(0));
});
after(() => stub.stop());

async function imapPostern(backendPort: number, extra: Record<string, unknown> = {}, answer: Record<string, string> = {}): Promise<RunningPostern> {
  stub.answer = { ...okAnswer(backendPort), ...answer };
  return startPostern({ protocol: 'imap', route: { auth_http: { url: stub.url } }, timeouts: { backend: '400ms' }, ...extra });
}

async function withBackend(o: FakeImapOptions, extra: Record<string, unknown>, f: (b: FakeImap, p: RunningPostern) => Promise<void>, answer: Record<string, string> = {}): Promise<void> {
  const b = await FakeImap.start(o);
  const p = await imapPostern(b.port, extra, answer);
  try {
    await f(b, p);
  } finally {
    await p.stop();
    await b.stop();
  }
}

async function greeted(port: number): Promise<ImapClient> {
  const c = await ImapClient.connect(port);
  assert.deepEqual(await c.read(/^\* /), [GREETING]);
  return c;
}

describe('IMAP: the full path', () => {
  it('LOGIN: nginx\'s auth_http request, ID then LOGIN with literals to the back-end, its OK to the client, then the relay', async () => {
    await withBackend({ greeting: '* OK [CAPABILITY IMAP4rev1 ID] ready' }, {}, async (b, p) => {
      stub.requests.length = 0;
      const c = await greeted(p.port);
      assert.deepEqual(await c.cmd('a1', 'LOGIN alice secret'), ['a1 OK [CAPABILITY IMAP4rev1 IDLE SORT] Logged in']);
      assert.deepEqual(await c.cmd('a2', 'SELECT INBOX'), ['* 1 EXISTS', 'a2 OK [READ-WRITE] Select completed.']);
      assert.deepEqual(await c.cmd('a3', 'LOGOUT'), ['* BYE Logging out', 'a3 OK Logout completed.']);
      assert.ok(await c.ended());
      const [id, login] = b.lines;
      assert.match(id!, /^I1 ID \("x-originating-ip" "127\.0\.0\.1" "x-originating-port" "\d+" "x-connected-ip" "127\.0\.0\.1" "x-connected-port" "\d+" "x-session-id" "[\w-]{12}"\)$/);
      assert.equal(login, 'L1 LOGIN {5}\r\nalice {6}\r\nsecret');
      assert.deepEqual(b.lines.slice(2), ['a2 SELECT INBOX', 'a3 LOGOUT']);
      const r = stub.requests[0]!;
      assert.equal(r.get('Auth-Protocol'), 'imap');
      assert.equal(r.get('Auth-Method'), 'plain');
      assert.equal(r.get('Auth-User'), 'alice');
      assert.equal(r.get('Auth-Pass'), 'secret');
      assert.equal(r.get('Client-Host'), undefined, 'nginx sends no Client-Host for IMAP');
      const rec = await p.waitForLog((l) => l.type === 'access');
      assert.equal(rec.user, 'alice');
      assert.equal(rec.outcome, 'relayed');
      assert.equal(rec.backend, `127.0.0.1:${b.port}`);
    });
  });

  it('LITERAL+ at the back-end: the login in one write; the client\'s CAPABILITY first gets Dovecot\'s untagged CAPABILITY forwarded', async () => {
    await withBackend({}, { xclient: false }, async (b, p) => {
      const c = await greeted(p.port);
      const caps = await c.cmd('a0', 'CAPABILITY');
      assert.deepEqual(caps, ['* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS ID SASL-IR AUTH=PLAIN', 'a0 OK completed']);
      assert.deepEqual(await c.cmd('a1', 'LOGIN alice secret'), ['a1 OK [CAPABILITY IMAP4rev1 IDLE SORT] Logged in']);
      assert.deepEqual(b.lines, ['L1 LOGIN {5+}\r\nalice {6+}\r\nsecret'], 'no ID without xclient');
      c.close();
    });
  });

  it('Auth-User and Auth-Pass from the auth service replace the client\'s; AUTHENTICATE PLAIN (backend_login: plain, SASL-IR)', async () => {
    await withBackend({ users: { 'real@x': 'p "w\\' } }, { imap: { backend_login: 'plain' } }, async (b, p) => {
      const c = await greeted(p.port);
      const ir = Buffer.from('\0alice\0secret').toString('base64');
      assert.deepEqual(await c.cmd('A', `AUTHENTICATE PLAIN ${ir}`), ['A OK [CAPABILITY IMAP4rev1 IDLE SORT] Logged in']);
      assert.equal(b.lines.at(-1), `L1 AUTHENTICATE PLAIN ${Buffer.from('\0real@x\0p "w\\').toString('base64')}`);
      c.close();
    }, { 'Auth-User': 'real@x', 'Auth-Pass': 'p "w\\' });
  });

  it('a password with CR, LF and quotes reaches the back-end only inside a literal', async () => {
    await withBackend({ greeting: '* OK ready', users: { alice: 'a\r\nL2 LOGOUT' } }, { xclient: false }, async (b, p) => {
      const c = await greeted(p.port);
      c.send('a1 LOGIN alice {12}\r\n');
      assert.deepEqual(await c.read('+'), ['+ OK']);
      c.send('a\r\nL2 LOGOUT\r\n');
      assert.deepEqual(await c.read('a1'), ['a1 OK [CAPABILITY IMAP4rev1 IDLE SORT] Logged in']);
      assert.deepEqual(b.lines, ['L1 LOGIN {5}\r\nalice {12}\r\na\r\nL2 LOGOUT']);
      c.close();
    });
  });

  it('pipelined LOGIN and LOGOUT: the LOGOUT reaches the back-end after the login', async () => {
    await withBackend({}, {}, async (_b, p) => {
      const c = await greeted(p.port);
      c.send('a01 LOGIN alice secret\r\na02 LOGOUT\r\n');
      assert.deepEqual(await c.read('a01'), ['a01 OK [CAPABILITY IMAP4rev1 IDLE SORT] Logged in']);
      assert.deepEqual(await c.read('a02'), ['* BYE Logging out', 'a02 OK Logout completed.']);
      assert.ok(await c.ended());
    });
  });
});

describe('IMAP: refusals', () => {
  it('a refusal is <tag> NO <Auth-Status>; with Auth-Wait the session goes on and logs in', async () => {
    await withBackend({}, {}, async (_b, p) => {
      stub.answer = (req) => (req.get('Auth-Pass') === 'secret' ? okAnswer(_b.port) : { 'Auth-Status': 'Invalid login or password', 'Auth-Wait': '0' });
      const c = await greeted(p.port);
      assert.deepEqual(await c.cmd('a02', 'LOGIN alice bad'), ['a02 NO Invalid login or password']);
      assert.ok(await c.ended(), 'closed without Auth-Wait');
      stub.answer = (req) => (req.get('Auth-Pass') === 'secret' ? okAnswer(_b.port) : { 'Auth-Status': 'Invalid login or password', 'Auth-Wait': '1' });
      const d = await greeted(p.port);
      assert.deepEqual(await d.cmd('a02', 'LOGIN alice bad', ), ['a02 NO Invalid login or password']);
      assert.deepEqual(await d.cmd('a03', 'LOGIN alice secret'), ['a03 OK [CAPABILITY IMAP4rev1 IDLE SORT] Logged in']);
      assert.equal(stub.requests.at(-1)!.get('Auth-Login-Attempt'), '2');
      d.close();
    });
  });

  it('CRAM-MD5 with no Auth-Pass fails the session as nginx does; with Auth-Pass it logs in', async () => {
    await withBackend({}, { imap: { auth: ['plain', 'cram-md5'] } }, async (_b, p) => {
      const c = await greeted(p.port);
      c.send('a1 AUTHENTICATE CRAM-MD5\r\n');
      const [chal] = await c.read('+');
      const salt = Buffer.from(chal!.slice(2), 'base64').toString();
      assert.match(salt, /^<\d+\.\d+@proxy\.test>$/);
      c.send(`${Buffer.from(`alice ${'0'.repeat(32)}`).toString('base64')}\r\n`);
      assert.deepEqual(await c.read('a1'), [UNAVAILABLE]);
      assert.equal(stub.requests.at(-1)!.get('Auth-Salt'), salt);
      await p.waitForLog((l) => l.code === 'PST_BACKEND_AUTH_FAILED');
      stub.answer = { ...okAnswer(_b.port), 'Auth-Pass': 'secret' };
      const d = await greeted(p.port);
      d.send('a1 AUTHENTICATE CRAM-MD5\r\n');
      await d.read('+');
      d.send(`${Buffer.from(`alice ${'0'.repeat(32)}`).toString('base64')}\r\n`);
      assert.deepEqual(await d.read('a1'), ['a1 OK [CAPABILITY IMAP4rev1 IDLE SORT] Logged in']);
      d.close();
    });
  });
});

describe('IMAP: back-end faults at every step', () => {
  const cases: [FakeImapOptions['fault'], string][] = [
    ['close-at-connect', 'PST_BACKEND_CLOSED'],
    ['greeting-bye', 'PST_BACKEND_REJECTED'],
    ['greeting-garbage', 'PST_BACKEND_INVALID_REPLY'],
    ['stall-greeting', 'PST_BACKEND_TIMEOUT'],
    ['stall-login', 'PST_BACKEND_TIMEOUT'],
    ['close-at-login', 'PST_BACKEND_CLOSED'],
    ['no-login', 'PST_BACKEND_AUTH_FAILED'],
  ];
  for (const [fault, code] of cases) {
    it(`${fault}: a clean tagged NO, a log line, and close`, async () => {
      await withBackend({ fault, greeting: '* OK ready' }, {}, async (_b, p) => {
        const c = await greeted(p.port);
        assert.deepEqual(await c.cmd('a1', 'LOGIN alice secret'), [UNAVAILABLE]);
        assert.ok(await c.ended());
        await p.waitForLog((l) => l.code === code);
      });
    });
  }

  it('a back-end that refuses ID still gets the login (warned once)', async () => {
    await withBackend({ fault: 'bad-id' }, {}, async (_b, p) => {
      const c = await greeted(p.port);
      assert.deepEqual(await c.cmd('a1', 'LOGIN alice secret'), ['a1 OK [CAPABILITY IMAP4rev1 IDLE SORT] Logged in']);
      await p.waitForLog((l) => l.code === 'PSW_NO_XCLIENT');
      c.close();
    });
  });

  it('with proxy_pass_error_message the back-end\'s NO reaches the client under its tag', async () => {
    await withBackend({ fault: 'no-login' }, { proxy_pass_error_message: true }, async (_b, p) => {
      const c = await greeted(p.port);
      assert.deepEqual(await c.cmd('x9', 'LOGIN alice secret'), ['x9 NO [AUTHENTICATIONFAILED] Authentication failed.']);
    });
  });

  it('an unreachable back-end', async () => {
    const gone = await FakeImap.start();
    const port = gone.port;
    await gone.stop();
    const p = await imapPostern(port);
    try {
      const c = await greeted(p.port);
      assert.deepEqual(await c.cmd('a1', 'LOGIN alice secret'), [UNAVAILABLE]);
      await p.waitForLog((l) => l.code === 'PST_BACKEND_UNREACHABLE');
    } finally {
      await p.stop();
    }
  });
});

describe('IMAP: pools and failover', () => {
  it('a server that fails before the client saw a byte is skipped; refused credentials are not failed over', async () => {
    const bad = await FakeImap.start({ fault: 'greeting-bye' });
    const good = await FakeImap.start();
    const p = await startPostern({ protocol: 'imap', pools: { imap: { servers: [`127.0.0.1:${bad.port}`, `127.0.0.1:${good.port}`], health: { enabled: false }, balance: 'round_robin' } }, route: { static: 'imap' }, timeouts: { backend: '400ms' } });
    try {
      for (let i = 0; i < 2; i++) {
        const c = await greeted(p.port);
        assert.deepEqual(await c.cmd('a1', 'LOGIN alice secret'), ['a1 OK [CAPABILITY IMAP4rev1 IDLE SORT] Logged in']);
        c.close();
      }
      await p.waitForLog((l) => l.code === 'PSW_POOL_FAILOVER');
      const before = bad.connections + good.connections;
      const c = await greeted(p.port);
      assert.deepEqual(await c.cmd('a1', 'LOGIN alice wrong'), [UNAVAILABLE]);
      assert.equal(bad.connections + good.connections, before + 1, 'one try only for a refused password');
    } finally {
      await p.stop();
      await bad.stop();
      await good.stop();
    }
  });
});

describe('IMAP: TLS in front and behind', () => {
  it('STARTTLS: LOGINDISABLED before, AUTH= after; bytes pipelined after STARTTLS are dropped (injection)', async () => {
    await withBackend({}, { listen: [{ address: '127.0.0.1:0', starttls: 'only' }], tls: { certificates: CERTS } }, async (b, p) => {
      const c = await greeted(p.port);
      assert.deepEqual(await c.cmd('a', 'CAPABILITY'), ['* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS ID STARTTLS LOGINDISABLED', 'a OK completed']);
      assert.deepEqual(await c.cmd('b', 'LOGIN alice secret'), ['b BAD invalid command']);
      c.send('c STARTTLS\r\nd LOGIN alice secret\r\n');
      assert.deepEqual(await c.read('c'), ['c OK completed']);
      await c.upgrade(CA);
      assert.deepEqual(await c.cmd('e', 'CAPABILITY'), ['* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS ID SASL-IR AUTH=PLAIN', 'e OK completed']);
      assert.deepEqual(await c.cmd('f', 'LOGIN alice secret'), ['f OK [CAPABILITY IMAP4rev1 IDLE SORT] Logged in']);
      assert.equal(b.lines.filter((l) => l.includes('LOGIN')).length, 1, 'the injected LOGIN never ran');
      await p.waitForLog((l) => l.code === 'PSW_STARTTLS_DISCARDED');
      c.close();
    });
  });

  it('implicit TLS (993 style): the greeting after the handshake', async () => {
    await withBackend({}, { listen: [{ address: '127.0.0.1:0', implicit_tls: true }], tls: { certificates: CERTS } }, async (_b, p) => {
      const c = await ImapClient.connect(p.port, { ca: CA });
      assert.deepEqual(await c.read(/^\* /), [GREETING]);
      assert.deepEqual(await c.cmd('a1', 'LOGIN alice secret'), ['a1 OK [CAPABILITY IMAP4rev1 IDLE SORT] Logged in']);
      c.close();
    });
  });

  it('STARTTLS to the back-end (backend_tls required) and implicit TLS to it', async () => {
    await withBackend({}, { backend_tls: { mode: 'required', ca: path.join(FIX, 'ca.pem'), server_name: 'backend.test' } }, async (b, p) => {
      const c = await greeted(p.port);
      assert.deepEqual(await c.cmd('a1', 'LOGIN alice secret'), ['a1 OK [CAPABILITY IMAP4rev1 IDLE SORT] Logged in']);
      assert.equal(b.lines[0], 'T1 STARTTLS');
      c.close();
      await p.waitForLog((l) => l.backend_tls === 'TLSv1.3');
    });
    await withBackend({ implicitTls: true }, { backend_tls: { mode: 'implicit', ca: path.join(FIX, 'ca.pem'), server_name: 'backend.test' } }, async (_b, p) => {
      const c = await greeted(p.port);
      assert.deepEqual(await c.cmd('a1', 'LOGIN alice secret'), ['a1 OK [CAPABILITY IMAP4rev1 IDLE SORT] Logged in']);
      c.close();
    });
  });

  it('a PROXY header goes to the back-end first (proxy_protocol v1 and v2)', async () => {
    for (const v of ['v1', 'v2']) {
      await withBackend({ proxy: true }, { proxy_protocol: v }, async (b, p) => {
        const c = await greeted(p.port);
        assert.deepEqual(await c.cmd('a1', 'LOGIN alice secret'), ['a1 OK [CAPABILITY IMAP4rev1 IDLE SORT] Logged in']);
        assert.match(b.proxyHeaders[0]!, v === 'v1' ? /^PROXY TCP4 127\.0\.0\.1 127\.0\.0\.1 \d+ \d+$/ : /^v2 28$/);
        c.close();
      });
    }
  });
});

describe('IMAP: bad input', () => {
  it('an overlong line and an overlong literal: BAD, BYE, close — the literal is never read', async () => {
    await withBackend({}, { max_line_length: 512 }, async (b, p) => {
      const c = await greeted(p.port);
      c.send(`a1 LOGIN ${'x'.repeat(600)} p\r\n`);
      assert.deepEqual(await c.read(/^\* BYE/), ['a1 BAD invalid command', '* BYE Line too long']);
      assert.ok(await c.ended());
      const d = await greeted(p.port);
      d.send('a1 LOGIN {100000}\r\n');
      assert.deepEqual(await d.read(/^\* BYE/), ['a1 BAD invalid command', '* BYE Line too long']);
      assert.ok(await d.ended());
      assert.equal(b.connections, 0);
    });
  });

  it('NUL is BAD and counts towards max_errors, then the session closes', async () => {
    await withBackend({}, { max_errors: 3 }, async (_b, p) => {
      const c = await greeted(p.port);
      c.send('a1 NO\0OP\r\na2 FOO\r\n\0\r\n');
      assert.deepEqual(await c.read(/^\* BYE/), ['a1 BAD invalid command', 'a2 BAD invalid command', '* BAD invalid command', '* BYE Too many invalid commands']);
      assert.ok(await c.ended());
    });
  });

  it('the idle timeout says BYE', async () => {
    await withBackend({}, { timeouts: { idle: '300ms', backend: '400ms' } }, async (_b, p) => {
      const c = await greeted(p.port);
      assert.deepEqual(await c.read(/^\* BYE/), ['* BYE Autologout; idle for too long']);
      assert.ok(await c.ended());
    });
  });
});
