/**
 * SMTP AUTH in front (RFC 4954) with nginx's auth_http semantics: each mechanism's dialog, the
 * request headers the auth service sees, failures with Auth-Wait, caps, and the hand-off after 235.
 */
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { AuthStub, okAnswer, type RecordedRequest } from '../helpers/auth-stub.js';
import { FakeBackend } from '../helpers/fake-backend.js';
import { startPostern, type RunningPostern } from '../helpers/postern.js';
import { hello } from '../helpers/preamble.js';
import { replyText, type SmtpClient } from '../helpers/smtp-client.js';

const b64 = (s: string): string => Buffer.from(s, 'latin1').toString('base64');
const PASSWORDS: Record<string, string> = { alice: 'secret', 'j\xfcrgen %1': 'p\xe4ss w%rd' };

let backend: FakeBackend;
let stub: AuthStub;
let p: RunningPostern;

/** An auth service that checks credentials as an nginx one would (percent-decoding Auth-User/Pass). */
function check(req: RecordedRequest): Record<string, string> {
  const unescape = (v: string): string => Buffer.from(v.replace(/%([0-9A-F]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16))), 'latin1').toString('latin1');
  const user = unescape(req.get('Auth-User') ?? '');
  const pass = unescape(req.get('Auth-Pass') ?? '');
  const method = req.get('Auth-Method');
  let ok = false;
  if (method === 'plain') ok = PASSWORDS[user] === pass;
  if (method === 'cram-md5') ok = createHmac('md5', PASSWORDS[user] ?? '').update(req.get('Auth-Salt') ?? '').digest('hex') === pass;
  if (method === 'xoauth2' || method === 'oauthbearer') ok = pass === 'token-123';
  if (method === 'external') ok = user === 'alice';
  return ok ? okAnswer(backend.port) : { 'Auth-Status': 'Invalid login or password' };
}

before(async () => {
  backend = await FakeBackend.start({ xclient: 'NAME ADDR PROTO HELO LOGIN' });
  stub = await AuthStub.start(check);
  p = await startPostern({
    listen: [{ address: '127.0.0.1:0', smtp_auth: ['plain', 'login', 'cram-md5', 'external', 'xoauth2', 'oauthbearer'], auth_plaintext: true }],
    route: { auth_http: { url: stub.url } },
    auth: { max_attempts: 2, max_failures_per_client: 50 },
  });
});
after(async () => {
  await p.stop();
  await stub.stop();
  await backend.stop();
});

async function ehlo(): Promise<{ c: SmtpClient; lines: string[] }> {
  const { c, ehlo: reply } = await hello(p.port, { hello: 'EHLO sub.client.test' });
  return { c, lines: reply.lines };
}

describe('AUTH mechanisms', () => {
  it('EHLO advertises the mechanisms; MAIL before AUTH gets nginx\'s 530', async () => {
    const { c, lines } = await ehlo();
    assert.ok(lines.includes('AUTH PLAIN LOGIN CRAM-MD5 EXTERNAL XOAUTH2 OAUTHBEARER'), lines.join('|'));
    assert.equal(await c.cmd('MAIL FROM:<a@x.test>'), '530 5.7.1 Authentication required');
    c.close();
  });

  it('PLAIN with an initial response: 235 after the back-end replay, XCLIENT LOGIN= carries the user', async () => {
    const before = backend.sessions.length;
    const { c } = await ehlo();
    assert.equal(await c.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`), '235 2.0.0 OK');
    assert.equal(await c.cmd('MAIL FROM:<alice@x.test>'), '250 2.1.0 Ok', 'MAIL now goes to the back-end');
    assert.equal(await c.cmd('RCPT TO:<u@y.test>'), '250 2.1.5 Ok');
    assert.equal(await c.data('Subject: submitted\r\n\r\nhi\r\n'), '250 2.0.0 Ok: queued');
    c.close();
    const cmds = backend.sessions[before]!.commands;
    assert.equal(cmds[1], 'XCLIENT ADDR=127.0.0.1 LOGIN=alice NAME=[UNAVAILABLE] PROTO=ESMTP HELO=sub.client.test');
    assert.equal(cmds[2], 'EHLO sub.client.test');
    assert.equal(cmds[3], 'MAIL FROM:<alice@x.test>');
    const req = stub.requests.at(-1)!;
    assert.deepEqual(req.headers.map(([n]) => n), ['Host', 'Auth-Method', 'Auth-User', 'Auth-Pass', 'Auth-Protocol', 'Auth-Login-Attempt', 'Client-IP', 'Client-Host']);
    assert.equal(req.get('Auth-Method'), 'plain');
  });

  it('PLAIN without initial response: "334 " then the response', async () => {
    const { c } = await ehlo();
    c.send('AUTH PLAIN');
    assert.equal(replyText(await c.reply()), '334 ');
    assert.equal(await c.cmd(b64('\0alice\0secret')), '235 2.0.0 OK');
    c.close();
  });

  it('LOGIN: two 334 prompts, Auth-Method plain (as nginx); "AUTH LOGIN <user>" skips the first', async () => {
    const { c } = await ehlo();
    assert.equal(await c.cmd('AUTH LOGIN'), '334 VXNlcm5hbWU6');
    assert.equal(await c.cmd(b64('alice')), '334 UGFzc3dvcmQ6');
    assert.equal(await c.cmd(b64('secret')), '235 2.0.0 OK');
    c.close();
    assert.equal(stub.requests.at(-1)!.get('Auth-Method'), 'plain');
    const d = (await ehlo()).c;
    assert.equal(await d.cmd(`AUTH LOGIN ${b64('alice')}`), '334 UGFzc3dvcmQ6');
    assert.equal(await d.cmd(b64('secret')), '235 2.0.0 OK');
    d.close();
  });

  it('CRAM-MD5: the challenge is <random.time@server_name>, sent to the service as Auth-Salt', async () => {
    const { c } = await ehlo();
    c.send('AUTH CRAM-MD5');
    const challenge = Buffer.from((await c.reply()).lines[0]!, 'base64').toString();
    assert.match(challenge, /^<\d+\.\d+@proxy\.test>$/);
    const digest = createHmac('md5', 'secret').update(challenge).digest('hex');
    assert.equal(await c.cmd(b64(`alice ${digest}`)), '235 2.0.0 OK');
    c.close();
    const req = stub.requests.at(-1)!;
    assert.equal(req.get('Auth-Method'), 'cram-md5');
    assert.equal(req.get('Auth-Salt'), challenge);
    assert.equal(req.get('Auth-Pass'), digest);
    assert.deepEqual(req.headers.map(([n]) => n).slice(0, 6), ['Host', 'Auth-Method', 'Auth-User', 'Auth-Pass', 'Auth-Salt', 'Auth-Protocol']);
  });

  it('XOAUTH2 and OAUTHBEARER: the token is Auth-Pass, the method our documented value', async () => {
    let c = (await ehlo()).c;
    assert.equal(await c.cmd(`AUTH XOAUTH2 ${b64('user=alice\x01auth=Bearer token-123\x01\x01')}`), '235 2.0.0 OK');
    c.close();
    assert.equal(stub.requests.at(-1)!.get('Auth-Method'), 'xoauth2');
    c = (await ehlo()).c;
    assert.equal(await c.cmd(`AUTH OAUTHBEARER ${b64('n,a=alice,\x01host=x\x01auth=Bearer token-123\x01\x01')}`), '235 2.0.0 OK');
    c.close();
    assert.equal(stub.requests.at(-1)!.get('Auth-Method'), 'oauthbearer');
    assert.equal(stub.requests.at(-1)!.get('Auth-User'), 'alice');
  });

  it('EXTERNAL: the identity is Auth-User, Auth-Pass is empty', async () => {
    const { c } = await ehlo();
    assert.equal(await c.cmd(`AUTH EXTERNAL ${b64('alice')}`), '235 2.0.0 OK');
    c.close();
    assert.equal(stub.requests.at(-1)!.get('Auth-Method'), 'external');
    assert.equal(stub.requests.at(-1)!.get('Auth-Pass'), '');
  });

  it('credentials with spaces, % and 8-bit bytes are escaped exactly as nginx escapes them', async () => {
    const { c } = await ehlo();
    c.write(Buffer.from(`AUTH PLAIN ${b64('\0j\xfcrgen %1\0p\xe4ss w%rd')}\r\n`));
    assert.equal(replyText(await c.reply()), '235 2.0.0 OK');
    c.close();
    const req = stub.requests.at(-1)!;
    assert.equal(Buffer.from(req.get('Auth-User')!, 'latin1').toString('latin1'), 'j\xfcrgen%20%251');
    assert.equal(Buffer.from(req.get('Auth-Pass')!, 'latin1').toString('latin1'), 'p\xe4ss%20w%25rd');
  });
});

describe('AUTH bad input and failures', () => {
  it('malformed base64, wrong PLAIN shape, empty user, bad CRAM reply: 501, session goes on', async () => {
    const { c } = await ehlo();
    assert.equal(await c.cmd('AUTH PLAIN !!!notbase64'), '501 5.5.2 Cannot decode response');
    assert.equal(await c.cmd(`AUTH PLAIN ${b64('alice:secret')}`), '501 5.5.2 Cannot decode response');
    assert.equal(await c.cmd(`AUTH PLAIN ${b64('\0\0secret')}`), '501 5.5.2 Cannot decode response');
    c.send('AUTH CRAM-MD5');
    await c.reply();
    assert.equal(await c.cmd(b64('alice notadigest')), '501 5.5.2 Cannot decode response');
    assert.equal(await c.cmd('NOOP'), '250 2.0.0 OK');
    c.close();
  });

  it('"*" cancels an exchange; unknown mechanisms get 504; AUTH inside a transaction is refused', async () => {
    const { c } = await ehlo();
    assert.equal(await c.cmd('AUTH LOGIN'), '334 VXNlcm5hbWU6');
    assert.equal(await c.cmd('*'), '501 5.7.0 Authentication cancelled');
    assert.equal(await c.cmd('AUTH GSSAPI'), '504 5.5.4 Unrecognized authentication type');
    assert.equal(await c.cmd('AUTH'), '501 5.5.4 Invalid argument');
    c.close();
  });

  it('a refusal with Auth-Error-Code and Auth-Wait keeps the session for another try; the cap closes it', async () => {
    const saved = stub.answer;
    // Auth-Wait (nginx: a delay, and the session stays open for another try; without it, close).
    stub.answer = { 'Auth-Status': 'Invalid login or password', 'Auth-Error-Code': '535 5.7.8', 'Auth-Wait': '1' };
    try {
      const { c } = await ehlo();
      assert.equal(await c.cmd(`AUTH PLAIN ${b64('\0alice\0wrong')}`), '535 5.7.8 Invalid login or password');
      c.send(`AUTH PLAIN ${b64('\0alice\0wrong')}`);
      // The second refusal (auth.max_attempts: 2) is answered, then the session is closed.
      assert.equal(replyText(await c.reply()), '535 5.7.8 Invalid login or password');
      assert.equal(replyText(await c.reply()), '421 4.7.0 proxy.test Too many authentication failures');
      assert.ok(await c.waitClosed());
      const attempts = stub.requests.slice(-2).map((r) => r.get('Auth-Login-Attempt'));
      assert.deepEqual(attempts, ['1', '2']);
    } finally {
      stub.answer = saved;
    }
  });

  it('plaintext AUTH on a listener that forbids it: 538, and AUTH is not advertised before TLS', async () => {
    const q = await startPostern({ listen: [{ address: '127.0.0.1:0', smtp_auth: ['none', 'plain'] }], route: { auth_http: { url: stub.url } } });
    try {
      const { c, ehlo } = await hello(q.port);
      assert.ok(!ehlo.lines.some((l) => l.startsWith('AUTH')));
      assert.equal(await c.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`), '538 5.7.11 Encryption required for requested authentication mechanism');
      // smtp_auth: [none, …]: unauthenticated mail (the MX case) still works on the same listener.
      assert.equal(await c.cmd('MAIL FROM:<a@x.test>'), '250 2.1.0 OK');
      c.close();
    } finally {
      await q.stop();
    }
  });

  it('per-address cap: after max_failures_per_client refusals, AUTH from that address is refused at once', async () => {
    const q = await startPostern({
      listen: [{ address: '127.0.0.1:0', smtp_auth: ['plain'], auth_plaintext: true }],
      route: { auth_http: { url: stub.url } },
      auth: { max_attempts: 10, max_failures_per_client: 2 },
    });
    try {
      const before = stub.requests.length;
      for (let i = 0; i < 2; i++) {
        const { c } = await hello(q.port);
        assert.match(await c.cmd(`AUTH PLAIN ${b64('\0alice\0bad')}`), /^535 /);
        c.close();
      }
      const { c } = await hello(q.port);
      assert.equal(await c.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`), '421 4.7.0 proxy.test Too many authentication failures');
      assert.equal(stub.requests.length - before, 2, 'the capped attempt never reached the auth service');
      await q.waitForLog((r) => r.code === 'PST_AUTH_TOO_MANY');
    } finally {
      await q.stop();
    }
  });

  it('a SASL response over max_line_length: 500 and close', async () => {
    const { c } = await ehlo();
    c.send('AUTH PLAIN');
    await c.reply();
    c.send('A'.repeat(5000));
    assert.equal(replyText(await c.reply()), '500 5.5.2 Line too long');
    assert.ok(await c.waitClosed());
  });
});

describe('proxy_smtp_auth: AUTH to the back-end', () => {
  /** A back-end that wants AUTH (PLAIN or LOGIN) and records what it was given. */
  async function authBackend(): Promise<{ b: FakeBackend; seen: string[] }> {
    const seen: string[] = [];
    let login: 'user' | 'pass' | null = null;
    const b = await FakeBackend.start({
      xclient: 'NAME ADDR LOGIN',
      onCommand: (line) => {
        if (login === 'user') {
          seen.push(`user=${Buffer.from(line, 'base64').toString()}`);
          login = 'pass';
          return '334 UGFzc3dvcmQ6';
        }
        if (login === 'pass') {
          seen.push(`pass=${Buffer.from(line, 'base64').toString()}`);
          login = null;
          return seen.includes('pass=wrong') ? '535 5.7.8 Error: authentication failed' : '235 2.7.0 Authentication successful';
        }
        if (line === 'AUTH LOGIN') {
          login = 'user';
          return '334 VXNlcm5hbWU6';
        }
        if (line.startsWith('AUTH PLAIN ')) {
          seen.push(`plain=${Buffer.from(line.slice(11), 'base64').toString().replace(/\0/g, '|')}`);
          return '235 2.7.0 Authentication successful';
        }
        return undefined;
      },
    });
    return { b, seen };
  }

  async function submit(port: number, auth: string): Promise<{ c: SmtpClient; reply: string }> {
    const { c } = await hello(port, { hello: 'EHLO sub.client.test' });
    return { c, reply: await c.cmd(auth) };
  }

  it('PLAIN (nginx\'s only choice): the client\'s credentials, and no XCLIENT LOGIN=', async () => {
    const { b, seen } = await authBackend();
    const s = await AuthStub.start(okAnswer(b.port));
    const q = await startPostern({ listen: [{ address: '127.0.0.1:0', smtp_auth: ['plain'], auth_plaintext: true }], route: { auth_http: { url: s.url } }, proxy_smtp_auth: 'plain' });
    try {
      const { c, reply } = await submit(q.port, `AUTH PLAIN ${b64('\0alice\0secret')}`);
      assert.equal(reply, '235 2.0.0 OK');
      c.close();
      assert.deepEqual(seen, ['plain=|alice|secret']);
      assert.equal(b.commands[1], 'XCLIENT ADDR=127.0.0.1 NAME=[UNAVAILABLE]');
    } finally {
      await q.stop();
      await s.stop();
      await b.stop();
    }
  });

  it('LOGIN chosen by the auth service (X-Postern-Backend-Auth), with Auth-User/Auth-Pass replacing the credentials', async () => {
    const { b, seen } = await authBackend();
    const s = await AuthStub.start({ ...okAnswer(b.port), 'X-Postern-Backend-Auth': 'login', 'Auth-User': 'svc-relay', 'Auth-Pass': 'relay-pw' });
    const q = await startPostern({ listen: [{ address: '127.0.0.1:0', smtp_auth: ['plain', 'cram-md5'], auth_plaintext: true }], route: { auth_http: { url: s.url } } });
    try {
      const { c, reply } = await submit(q.port, `AUTH PLAIN ${b64('\0alice\0secret')}`);
      assert.equal(reply, '235 2.0.0 OK');
      c.close();
      assert.deepEqual(seen, ['user=svc-relay', 'pass=relay-pw']);
    } finally {
      await q.stop();
      await s.stop();
      await b.stop();
    }
  });

  it('CRAM-MD5 without Auth-Pass from the service: no password for the back-end, 451 (nginx: "no password available")', async () => {
    const { b } = await authBackend();
    const s = await AuthStub.start(okAnswer(b.port));
    const q = await startPostern({ listen: [{ address: '127.0.0.1:0', smtp_auth: ['cram-md5'], auth_plaintext: true }], route: { auth_http: { url: s.url } }, proxy_smtp_auth: 'plain' });
    try {
      const { c } = await hello(q.port);
      c.send('AUTH CRAM-MD5');
      await c.reply();
      assert.equal(await c.cmd(b64(`alice ${'0'.repeat(32)}`)), '451 4.3.2 Internal server error');
      await q.waitForLog((r) => r.code === 'PST_BACKEND_AUTH_FAILED' && /no password/.test(String(r.detail)));
    } finally {
      await q.stop();
      await s.stop();
      await b.stop();
    }
  });

  it('the back-end refuses the credentials: 451 to the client, never 235', async () => {
    const { b } = await authBackend();
    const s = await AuthStub.start({ ...okAnswer(b.port), 'Auth-Pass': 'wrong' });
    const q = await startPostern({ listen: [{ address: '127.0.0.1:0', smtp_auth: ['plain'], auth_plaintext: true }], route: { auth_http: { url: s.url } }, proxy_smtp_auth: 'login' });
    try {
      const { reply } = await submit(q.port, `AUTH PLAIN ${b64('\0alice\0secret')}`);
      assert.equal(reply, '451 4.3.2 Internal server error');
      await q.waitForLog((r) => r.code === 'PST_BACKEND_AUTH_FAILED');
    } finally {
      await q.stop();
      await s.stop();
      await b.stop();
    }
  });
});

describe('envelope_after_auth: the auth service sees the envelope of authenticated sessions too', () => {
  it('235 at AUTH without a back-end, then a second request at RCPT with Auth-SMTP-From/To routes the mail', async () => {
    const b = await FakeBackend.start({ xclient: 'NAME ADDR LOGIN HELO' });
    const s = await AuthStub.start((req: RecordedRequest) => {
      if (req.get('Auth-SMTP-To') === 'RCPT TO:<forbidden@y.test>') return { 'Auth-Status': 'Recipient not allowed for this user', 'Auth-Error-Code': '550 5.7.1', 'Auth-Wait': '1' };
      return okAnswer(b.port);
    });
    const q = await startPostern({
      listen: [{ address: '127.0.0.1:0', smtp_auth: ['plain'], auth_plaintext: true }],
      route: { auth_http: { url: s.url, envelope_after_auth: true } },
    });
    try {
      const { c } = await hello(q.port, { hello: 'EHLO sub.client.test' });
      assert.equal(await c.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`), '235 2.0.0 OK');
      assert.equal(b.sessions.length, 0, 'no back-end yet');
      assert.equal(await c.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`), '503 5.5.1 Already authenticated');
      assert.equal(await c.cmd('MAIL FROM:<alice@x.test>'), '250 2.1.0 OK');
      assert.equal(await c.cmd('RCPT TO:<forbidden@y.test>'), '550 5.7.1 Recipient not allowed for this user');
      assert.equal(await c.cmd('RCPT TO:<u@y.test>'), '250 2.1.5 Ok');
      assert.equal(await c.data('Subject: x\r\n\r\ny\r\n'), '250 2.0.0 Ok: queued');
      c.close();
      const [atAuth, refused, routed] = s.requests;
      assert.equal(atAuth!.get('Auth-SMTP-Helo'), 'sub.client.test');
      assert.equal(atAuth!.get('Auth-SMTP-From'), '');
      assert.equal(refused!.get('Auth-Method'), 'plain');
      assert.equal(refused!.get('Auth-User'), 'alice');
      assert.equal(routed!.get('Auth-SMTP-From'), 'MAIL FROM:<alice@x.test>');
      assert.equal(routed!.get('Auth-SMTP-To'), 'RCPT TO:<u@y.test>');
      assert.deepEqual(s.requests.map((r) => r.get('Auth-Login-Attempt')), ['1', '2', '3']);
      assert.deepEqual(b.commands.slice(1, 5), ['XCLIENT ADDR=127.0.0.1 LOGIN=alice NAME=[UNAVAILABLE] HELO=sub.client.test', 'EHLO sub.client.test', 'MAIL FROM:<alice@x.test>', 'RCPT TO:<u@y.test>']);
    } finally {
      await q.stop();
      await s.stop();
      await b.stop();
    }
  });
});

describe('listeners and AUTH together', () => {
  it('one config: an MX listener (none) and a submission listener (AUTH only) side by side', async () => {
    const q = await startPostern({
      listen: [
        { address: '127.0.0.1:0' },
        { address: '127.0.0.1:0', smtp_auth: ['none', 'plain'], auth_plaintext: true },
        { address: '127.0.0.1:0', smtp_auth: ['plain'], auth_plaintext: true },
      ],
      route: { auth_http: { url: stub.url } },
    });
    try {
      const addrs = q.server.addresses;
      const [mx, mixed, sub] = addrs.map((a) => a.port) as [number, number, number];
      const { c: c1, ehlo } = await hello(mx);
      assert.ok(!ehlo.lines.some((l) => l.startsWith('AUTH')));
      assert.equal(await c1.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`), '502 5.5.1 Command not implemented');
      assert.equal(await c1.cmd('MAIL FROM:<a@x.test>'), '250 2.1.0 OK');
      c1.close();
      const { c: c2 } = await hello(mixed);
      assert.equal(await c2.cmd('MAIL FROM:<a@x.test>'), '250 2.1.0 OK');
      assert.equal(await c2.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`), '503 5.5.1 AUTH not permitted during a mail transaction');
      c2.close();
      const { c: c3 } = await hello(sub);
      assert.equal(await c3.cmd('MAIL FROM:<a@x.test>'), '530 5.7.1 Authentication required');
      assert.equal(await c3.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`), '235 2.0.0 OK');
      c3.close();
    } finally {
      await q.stop();
    }
  });
});

describe('AUTH edge cases', () => {
  it('CRAM-MD5 with an initial response is refused (RFC 4954: the server speaks first)', async () => {
    const { c } = await ehlo();
    assert.equal(await c.cmd(`AUTH CRAM-MD5 ${b64('alice 0123')}`), '501 5.5.2 Cannot decode response');
    c.close();
  });

  it('a back-end whose XCLIENT has no LOGIN: a warning, once per back-end, that it does not learn the user', async () => {
    const b = await FakeBackend.start({ xclient: 'NAME ADDR' });
    const s = await AuthStub.start(okAnswer(b.port));
    const q = await startPostern({ listen: [{ address: '127.0.0.1:0', smtp_auth: ['plain'], auth_plaintext: true }], route: { auth_http: { url: s.url } } });
    try {
      for (let i = 0; i < 2; i++) {
        const { c } = await hello(q.port);
        assert.equal(await c.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`), '235 2.0.0 OK');
        c.close();
      }
      await q.waitForLog((r) => /has no LOGIN attribute/.test(r.msg));
      assert.equal(q.logs.filter((r) => /has no LOGIN attribute/.test(r.msg)).length, 1);
      assert.equal(b.commands[1], 'XCLIENT ADDR=127.0.0.1 NAME=[UNAVAILABLE]');
    } finally {
      await q.stop();
      await s.stop();
      await b.stop();
    }
  });
});
