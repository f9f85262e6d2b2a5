/**
 * POP3 end to end: Postern (protocol: pop3) in front of an in-process scripted back-end on
 * loopback (./pop3-backend.ts) with an auth_http stub — the full path to the blind relay, the
 * auth_http request nginx sends, XCLIENT only when offered, back-end faults at every step,
 * failover within a pool, STLS and implicit TLS in front, TLS and PROXY headers behind, bad input.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AuthStub, okAnswer } from '../helpers/auth-stub.js';
import { startPostern, type RunningPostern } from '../helpers/postern.js';
import { FakePop3, type FakePop3Options } from './pop3-backend.js';
import { Pop3Client } from './pop3-client.js';

const FIX = path.resolve(import.meta.dirname, '../fixtures/tls');
const CA = readFileSync(path.join(FIX, 'ca.pem'));
const CERTS = [{ cert: path.join(FIX, 'server.pem'), key: path.join(FIX, 'server.key') }];
const ERR = '-ERR internal server error';

let stub: AuthStub;
before(async () => {
  stub = await AuthStub.start(okAnswer(0));
});
after(() => stub.stop());

/** Postern for POP3 in front of `backend`, asking the stub, with `extra` config. */
async function pop3Postern(backendPort: number, extra: Record<string, unknown> = {}, answer: Record<string, string> = {}): Promise<RunningPostern> {
  stub.answer = { ...okAnswer(backendPort), ...answer };
  return startPostern({ protocol: 'pop3', route: { auth_http: { url: stub.url } }, timeouts: { backend: '400ms' }, ...extra });
}

async function login(port: number, user = 'alice', pass = 'secret'): Promise<{ c: Pop3Client; greeting: string; reply: string }> {
  const c = await Pop3Client.connect(port);
  const greeting = await c.line();
  assert.equal(await c.cmd(`USER ${user}`), '+OK');
  return { c, greeting, reply: await c.cmd(`PASS ${pass}`) };
}

async function withBackend(o: FakePop3Options, extra: Record<string, unknown>, f: (b: FakePop3, p: RunningPostern) => Promise<void>, answer: Record<string, string> = {}): Promise<void> {
  const b = await FakePop3.start(o);
  const p = await pop3Postern(b.port, extra, answer);
  try {
    await f(b, p);
  } finally {
    await p.stop();
    await b.stop();
  }
}

describe('POP3: the full path', () => {
  it('USER/PASS: nginx\'s auth_http request, USER/PASS to the back-end, its +OK to the client, then the relay', async () => {
    await withBackend({}, {}, async (b, p) => {
      stub.requests.length = 0;
      const { c, greeting, reply } = await login(p.port);
      assert.equal(greeting, '+OK POP3 ready');
      assert.equal(reply, '+OK Logged in.');
      assert.equal(await c.cmd('STAT'), '+OK 1 12');
      assert.equal(await c.cmd('QUIT'), '+OK Logging out.');
      assert.ok(await c.ended());
      assert.deepEqual(b.lines, ['USER alice', 'PASS secret', 'STAT', 'QUIT']);
      const r = stub.requests[0]!;
      assert.equal(r.get('Auth-Protocol'), 'pop3');
      assert.equal(r.get('Auth-Method'), 'plain');
      assert.equal(r.get('Auth-User'), 'alice');
      assert.equal(r.get('Client-Host'), undefined, 'nginx sends no Client-Host for POP3');
      assert.equal(r.get('Auth-SMTP-Helo'), undefined);
    });
  });

  it('APOP: the greeting\'s timestamp as Auth-Salt; the back-end gets USER/PASS with Auth-Pass', async () => {
    await withBackend({}, { pop3: { auth: ['plain', 'apop'] } }, async (b, p) => {
      stub.requests.length = 0;
      const c = await Pop3Client.connect(p.port);
      const greeting = await c.line();
      const salt = /^\+OK POP3 ready (<\d+\.\d+@proxy\.test>)$/.exec(greeting)?.[1];
      assert.ok(salt, greeting);
      const digest = createHash('md5').update(`${salt}secret`).digest('hex');
      assert.equal(await c.cmd(`APOP alice ${digest}`), '+OK Logged in.');
      assert.equal(stub.requests[0]!.get('Auth-Salt'), salt);
      assert.equal(stub.requests[0]!.get('Auth-Method'), 'apop');
      assert.deepEqual(b.lines, ['USER alice', 'PASS secret']);
      c.close();
    }, { 'Auth-Pass': 'secret' });
  });

  it('APOP without Auth-Pass fails as nginx does, with a log line', async () => {
    await withBackend({}, { pop3: { auth: ['apop'] } }, async (b, p) => {
      const c = await Pop3Client.connect(p.port);
      await c.line();
      assert.equal(await c.cmd(`APOP alice ${'0'.repeat(32)}`), ERR);
      assert.ok(await c.ended());
      await p.waitForLog((r) => r.code === 'PST_BACKEND_AUTH_FAILED');
      assert.equal(b.sessions.length, 0);
    });
  });

  it('Auth-User and Auth-Pass replace the client\'s; backend_login plain sends AUTH PLAIN', async () => {
    await withBackend({ password: 'real' }, { pop3: { backend_login: 'plain' } }, async (b, p) => {
      const { c, reply } = await login(p.port, 'alias', 'typed');
      assert.equal(reply, '+OK Logged in.');
      assert.deepEqual(b.lines, [`AUTH PLAIN ${Buffer.from('\0mailbox\0real').toString('base64')}`]);
      c.close();
    }, { 'Auth-User': 'mailbox', 'Auth-Pass': 'real' });
  });

  it('AUTH PLAIN and LOGIN from the client log in with USER/PASS (nginx)', async () => {
    await withBackend({}, {}, async (b, p) => {
      const c = await Pop3Client.connect(p.port);
      await c.line();
      assert.equal(await c.cmd(`AUTH PLAIN ${Buffer.from('\0alice\0secret').toString('base64')}`), '+OK Logged in.');
      c.close();
      const d = await Pop3Client.connect(p.port);
      await d.line();
      d.send('AUTH LOGIN');
      d.send(Buffer.from('alice').toString('base64'));
      d.send(Buffer.from('secret').toString('base64'));
      d.send('STAT');
      assert.deepEqual([await d.line(), await d.line(), await d.line(), await d.line()], ['+ VXNlcm5hbWU6', '+ UGFzc3dvcmQ6', '+OK Logged in.', '+OK 1 12']);
      d.close();
      assert.deepEqual(b.lines.slice(0, 4), ['USER alice', 'PASS secret', 'USER alice', 'PASS secret']);
    });
  });

  it('Auth-Wait: the -ERR after the wait, then the session goes on (mail_pop3.t "apop error")', async () => {
    await withBackend({}, {}, async (_b, p) => {
      stub.answer = (req) => (req.get('Auth-Pass') === 'secret' ? okAnswer(_b.port) : { 'Auth-Status': 'Invalid login', 'Auth-Wait': '1' });
      const c = await Pop3Client.connect(p.port);
      await c.line();
      c.socket.write('USER alice\r\nPASS wrong\r\nUSER alice\r\nPASS secret\r\n');
      const t0 = Date.now();
      assert.deepEqual([await c.line(), await c.line()], ['+OK', '-ERR Invalid login']);
      assert.ok(Date.now() - t0 >= 900, 'the refusal waited for Auth-Wait');
      assert.deepEqual([await c.line(), await c.line()], ['+OK', '+OK Logged in.']);
      assert.equal(stub.requests.at(-1)!.get('Auth-Login-Attempt'), '2');
      c.close();
    });
  });

  it('the idle timeout closes without a reply (RFC 1939 §3)', async () => {
    await withBackend({}, { timeouts: { idle: '300ms', backend: '400ms' } }, async (_b, p) => {
      const c = await Pop3Client.connect(p.port);
      await c.line();
      assert.equal(await c.line(), '');
      assert.ok(await c.ended());
      await p.waitForLog((r) => r.code === 'PST_IDLE_TIMEOUT');
    });
  });

  it('a client that pipelines its whole session and half-closes gets every reply (mail_pop3.t "pipelined quit")', async () => {
    await withBackend({}, {}, async (b, p) => {
      const c = await Pop3Client.connect(p.port);
      await c.line();
      c.socket.end('USER alice\r\nPASS secret\r\nSTAT\r\nQUIT\r\n');
      assert.deepEqual([await c.line(), await c.line(), await c.line(), await c.line()], ['+OK', '+OK Logged in.', '+OK 1 12', '+OK Logging out.']);
      assert.ok(await c.ended());
      assert.deepEqual(b.lines, ['USER alice', 'PASS secret', 'STAT', 'QUIT']);
    });
  });

  it('an auth_http refusal is "-ERR <Auth-Status>"', async () => {
    await withBackend({}, {}, async (_b, p) => {
      const { c, reply } = await login(p.port);
      assert.equal(reply, '-ERR Invalid login or password');
      assert.ok(await c.ended());
    }, { 'Auth-Status': 'Invalid login or password' });
  });
});

describe('POP3: XCLIENT and the PROXY header', () => {
  it('XCLIENT in Dovecot\'s form only when the banner shows [XCLIENT]', async () => {
    await withBackend({ xclient: true }, {}, async (b, p) => {
      const { c, reply } = await login(p.port);
      assert.equal(reply, '+OK Logged in.');
      const port = (c.socket.address() as { port: number }).port;
      assert.match(b.lines[0]!, new RegExp(`^XCLIENT ADDR=127\\.0\\.0\\.1 PORT=${port} SESSION=[A-Za-z0-9_-]+ TTL=5$`));
      assert.deepEqual(b.lines.slice(1), ['USER alice', 'PASS secret']);
      c.close();
    });
    await withBackend({}, {}, async (b, p) => {
      const { c } = await login(p.port);
      assert.deepEqual(b.lines, ['USER alice', 'PASS secret']);
      await p.waitForLog((r) => r.code === 'PSW_NO_XCLIENT');
      c.close();
    });
    await withBackend({ xclient: true }, { xclient: false }, async (b, p) => {
      const { c } = await login(p.port);
      assert.deepEqual(b.lines, ['USER alice', 'PASS secret'], 'xclient: false never sends it');
      c.close();
    });
  });

  it('proxy_protocol v1 puts the PROXY header first', async () => {
    await withBackend({}, { proxy_protocol: 'v1' }, async (b, p) => {
      const { c, reply } = await login(p.port);
      assert.equal(reply, '+OK Logged in.');
      assert.match(b.sessions[0]!.proxyHeader ?? '', /^PROXY TCP4 127\.0\.0\.1 127\.0\.0\.1 \d+ \d+$/);
      c.close();
    });
  });
});

describe('POP3: back-end faults at every step', () => {
  const cases: [string, FakePop3Options, string][] = [
    ['greeting -ERR', { greeting: '-ERR [SYS/TEMP] busy' }, 'PST_BACKEND_REJECTED'],
    ['greeting stall', { greeting: 'stall' }, 'PST_BACKEND_TIMEOUT'],
    ['greeting close', { greeting: 'close' }, 'PST_BACKEND_CLOSED'],
    ['greeting reset', { greeting: 'reset' }, 'PST_BACKEND_(CLOSED|UNREACHABLE)'],
    ['garbage greeting', { greeting: 'HTTP/1.1 400 Bad Request' }, 'PST_BACKEND_REJECTED'],
    ['XCLIENT -ERR', { xclient: true, onCommand: (l) => (l.startsWith('XCLIENT') ? '-ERR no' : undefined) }, 'PST_BACKEND_REJECTED'],
    ['XCLIENT close', { xclient: true, onCommand: (l) => (l.startsWith('XCLIENT') ? 'close' : undefined) }, 'PST_BACKEND_CLOSED'],
    ['USER -ERR', { onCommand: (l) => (l.startsWith('USER') ? '-ERR no such user' : undefined) }, 'PST_BACKEND_AUTH_FAILED'],
    ['USER stall', { onCommand: (l) => (l.startsWith('USER') ? 'stall' : undefined) }, 'PST_BACKEND_TIMEOUT'],
    ['PASS -ERR', { password: 'other' }, 'PST_BACKEND_AUTH_FAILED'],
    ['PASS close', { onCommand: (l) => (l.startsWith('PASS') ? 'close' : undefined) }, 'PST_BACKEND_CLOSED'],
    ['PASS reset', { onCommand: (l) => (l.startsWith('PASS') ? 'reset' : undefined) }, 'PST_BACKEND_CLOSED'],
    ['PASS stall', { onCommand: (l) => (l.startsWith('PASS') ? 'stall' : undefined) }, 'PST_BACKEND_TIMEOUT'],
    ['bytes after +OK to PASS', { onCommand: (l) => (l.startsWith('PASS') ? '+OK Logged in.\r\n+OK extra' : undefined) }, 'PST_BACKEND_INVALID_REPLY'],
  ];
  for (const [name, o, code] of cases) {
    it(`${name}: "${ERR}", a log line, the close`, async () => {
      await withBackend(o, {}, async (_b, p) => {
        const c = await Pop3Client.connect(p.port);
        await c.line();
        await c.cmd('USER alice');
        assert.equal(await c.cmd('PASS secret'), ERR);
        assert.ok(await c.ended());
        await p.waitForLog((r) => new RegExp(`^${code}$`).test(r.code ?? ''));
      });
    });
  }

  it('unreachable back-end', async () => {
    const b = await FakePop3.start();
    const port = b.port;
    await b.stop();
    const p = await pop3Postern(port);
    const { c, reply } = await login(p.port);
    assert.equal(reply, ERR);
    c.close();
    await p.waitForLog((r) => r.code === 'PST_BACKEND_UNREACHABLE');
    await p.stop();
  });

  it('proxy_pass_error_message: the back-end\'s own -ERR reaches the client', async () => {
    await withBackend({ password: 'other' }, { proxy_pass_error_message: true }, async (_b, p) => {
      const { reply } = await login(p.port);
      assert.equal(reply, '-ERR [AUTH] Authentication failed.');
    });
  });
});

describe('POP3: pools and failover', () => {
  it('a fault before the client saw a back-end byte moves to the next server; a refused login does not', async () => {
    const dead = await FakePop3.start({ greeting: '-ERR [SYS/TEMP] going down' });
    const good = await FakePop3.start();
    const pools = { mbox: { servers: [`127.0.0.1:${dead.port}`, `127.0.0.1:${good.port}`], health: { enabled: false }, max_fails: 0 } };
    const p = await startPostern({ protocol: 'pop3', pools, route: { static: 'mbox' }, timeouts: { backend: '400ms' } });
    try {
      for (let i = 0; i < 2; i++) {
        const { c, reply } = await login(p.port);
        assert.equal(reply, '+OK Logged in.');
        c.close();
      }
      assert.equal(good.sessions.length, 2);
    } finally {
      await p.stop();
    }
    // Two servers that both refuse the password: the refusal is the user's, not a server's fault.
    const other = await FakePop3.start();
    const q = await startPostern({ protocol: 'pop3', pools: { mbox: { servers: [`127.0.0.1:${good.port}`, `127.0.0.1:${other.port}`], health: { enabled: false } } }, route: { static: 'mbox' } });
    try {
      const { reply } = await login(q.port, 'alice', 'wrong');
      assert.equal(reply, ERR);
      assert.equal(good.sessions.length + other.sessions.length, 3, 'a refused password is tried on one server only');
      const { reply: again } = await login(q.port);
      assert.equal(again, '+OK Logged in.', 'and takes no server out');
    } finally {
      await q.stop();
      await dead.stop();
      await good.stop();
      await other.stop();
    }
  });
});

describe('POP3: TLS', () => {
  it('STLS in front: offered in CAPA, the login inside TLS, and bytes pipelined after STLS dropped', async () => {
    await withBackend({}, { listen: [{ address: '127.0.0.1:0', starttls: 'on' }], tls: { certificates: CERTS } }, async (b, p) => {
      stub.requests.length = 0;
      const c = await Pop3Client.connect(p.port);
      await c.line();
      c.send('CAPA');
      assert.equal(await c.line(), '+OK Capability list follows');
      assert.deepEqual(await c.multiline(), ['TOP', 'USER', 'UIDL', 'SASL PLAIN LOGIN', 'STLS']);
      // STLS injection: commands after STLS in the same write must never be read.
      c.socket.write('STLS\r\nUSER evil\r\nPASS evil\r\n');
      assert.equal(await c.line(), '+OK');
      const s = await c.startTls({ ca: CA, servername: 'proxy.test' });
      assert.equal(s.authorized, true);
      assert.equal(await c.cmd('USER alice'), '+OK');
      assert.equal(await c.cmd('PASS secret'), '+OK Logged in.');
      assert.deepEqual(stub.requests.map((r) => r.get('Auth-User')), ['alice']);
      assert.equal(stub.requests[0]!.get('Auth-SSL'), 'on');
      assert.deepEqual(b.lines, ['USER alice', 'PASS secret']);
      await p.waitForLog((r) => r.code === 'PSW_STARTTLS_DISCARDED');
      c.close();
    });
  });

  it('starttls only: no login before TLS', async () => {
    await withBackend({}, { listen: [{ address: '127.0.0.1:0', starttls: 'only' }], tls: { certificates: CERTS } }, async (_b, p) => {
      const c = await Pop3Client.connect(p.port);
      await c.line();
      assert.equal(await c.cmd('USER alice'), '-ERR invalid command');
      assert.equal(await c.cmd('STLS'), '+OK');
      await c.startTls({ ca: CA, servername: 'proxy.test' });
      assert.equal(await c.cmd('USER alice'), '+OK');
      assert.equal(await c.cmd('PASS secret'), '+OK Logged in.');
      c.close();
    });
  });

  it('implicit TLS in front (995 style): the greeting after the handshake', async () => {
    await withBackend({}, { listen: [{ address: '127.0.0.1:0', implicit_tls: true }], tls: { certificates: CERTS } }, async (_b, p) => {
      const c = await Pop3Client.connect(p.port, { ca: CA, servername: 'proxy.test' });
      assert.equal(await c.line(), '+OK POP3 ready');
      assert.equal(await c.cmd('USER alice'), '+OK');
      assert.equal(await c.cmd('PASS secret'), '+OK Logged in.');
      assert.equal(await c.cmd('STAT'), '+OK 1 12');
      c.close();
    });
  });

  it('TLS to the back-end: implicit, STLS when offered (opportunistic), STLS or fail (required)', async () => {
    const backendTls = { ca: path.join(FIX, 'ca.pem'), server_name: 'backend.test' };
    await withBackend({ implicitTls: true }, { backend_tls: { mode: 'implicit', ...backendTls } }, async (b, p) => {
      const { c, reply } = await login(p.port);
      assert.equal(reply, '+OK Logged in.');
      assert.deepEqual(b.lines, ['USER alice', 'PASS secret']);
      c.close();
    });
    await withBackend({ stls: true }, { backend_tls: { mode: 'required', ...backendTls } }, async (b, p) => {
      const { c, reply } = await login(p.port);
      assert.equal(reply, '+OK Logged in.');
      assert.deepEqual(b.lines, ['STLS', 'USER alice', 'PASS secret']);
      c.close();
    });
    for (const stls of [true, false]) {
      await withBackend({ stls }, { backend_tls: { mode: 'opportunistic', ...backendTls } }, async (b, p) => {
        const { c, reply } = await login(p.port);
        assert.equal(reply, '+OK Logged in.');
        assert.deepEqual(b.lines, stls ? ['CAPA', 'STLS', 'USER alice', 'PASS secret'] : ['CAPA', 'USER alice', 'PASS secret'], 'opportunistic: STLS when CAPA lists it');
        c.close();
      });
    }
    await withBackend({}, { backend_tls: { mode: 'required', ...backendTls } }, async (b, p) => {
      const { reply } = await login(p.port);
      assert.equal(reply, ERR);
      assert.deepEqual(b.lines.filter((l) => !/^(STLS|QUIT)$/.test(l)), [], 'no credentials in the clear');
      await p.waitForLog((r) => r.code === 'PST_BACKEND_TLS_REQUIRED');
    });
  });
});

describe('POP3: bad input', () => {
  it('an overlong line: "-ERR invalid command" and the close; NUL: refused, the session goes on', async () => {
    await withBackend({}, {}, async (_b, p) => {
      const c = await Pop3Client.connect(p.port);
      await c.line();
      assert.equal(await c.cmd('USER a\0b'), '-ERR invalid command');
      assert.equal(await c.cmd('NOOP'), '+OK');
      assert.equal(await c.cmd(`USER ${'a'.repeat(5000)}`), '-ERR invalid command');
      assert.ok(await c.ended());
    });
  });

  it('max_errors closes the session after its last -ERR', async () => {
    await withBackend({}, { max_errors: 2 }, async (_b, p) => {
      const c = await Pop3Client.connect(p.port);
      await c.line();
      c.socket.write('FOO\r\nBAR\r\nBAZZ\r\n');
      assert.deepEqual([await c.line(), await c.line()], ['-ERR invalid command', '-ERR invalid command']);
      assert.equal(await c.line(), '');
      assert.ok(await c.ended());
    });
  });
});
