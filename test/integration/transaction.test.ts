/**
 * Transaction-aware proxying (`proxy_mode: transaction`) end to end, in-process: an auth stub that
 * routes by recipient domain (a.test → back-end A, b.test → back-end B), scripted back-ends, a raw
 * client. Every later RCPT is routed; another back-end's recipient gets 452 4.5.3; the next
 * transaction moves to the other back-end (QUIT to the old one); router refusals refuse one
 * recipient only; replies leave in command order under pipelining; the body is relayed byte for
 * byte; and at every new step a back-end that refuses, stalls or dies never yields a false 250
 * nor a message delivered twice.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { AuthStub, okAnswer, type RecordedRequest } from '../helpers/auth-stub.js';
import { closedPort, FakeBackend, type FakeBackendOptions } from '../helpers/fake-backend.js';
import { startPostern, type RunningPostern } from '../helpers/postern.js';
import { SmtpClient } from '../helpers/smtp-client.js';

const domainOf = (req: RecordedRequest): string => /@([^>]+)>/.exec(req.get('Auth-SMTP-To') ?? '')?.[1] ?? '';

interface Rig {
  a: FakeBackend;
  b: FakeBackend;
  stub: AuthStub;
  p: RunningPostern;
  stop(): Promise<void>;
}

async function rig(opts: { a?: FakeBackendOptions; b?: FakeBackendOptions; bPort?: number; timeouts?: Record<string, string> } = {}): Promise<Rig> {
  const a = await FakeBackend.start(opts.a);
  const b = await FakeBackend.start(opts.b);
  const bPort = opts.bPort ?? b.port;
  const stub = await AuthStub.start((req) => {
    const d = domainOf(req);
    if (d === 'a.test') return okAnswer(a.port);
    if (d === 'b.test') return okAnswer(bPort);
    if (d === 'down.test') return 'destroy';
    return { 'Auth-Status': 'Mailbox unknown', 'Auth-Error-Code': '550 5.1.1' };
  });
  const p = await startPostern({ proxy_mode: 'transaction', route: { auth_http: { url: stub.url } }, ...(opts.timeouts ? { timeouts: opts.timeouts } : {}) });
  return {
    a, b, stub, p,
    async stop() {
      await p.stop();
      await stub.stop();
      await a.stop();
      await b.stop();
    },
  };
}

async function greet(port: number): Promise<SmtpClient> {
  const c = await SmtpClient.connect(port);
  assert.equal((await c.reply()).code, 220);
  assert.match(await c.cmd('EHLO client.test'), /^250 /);
  return c;
}

const BODY = 'Subject: t\r\n\r\n..leading dot\r\nbare\nLF and 8-bit \xe9\xff\r\n.x\r\n';

/** A dialog as a table: each command (`BODY` sends DATA and the body) and the reply it must get. */
async function expectReplies(c: SmtpClient, steps: readonly (readonly [string, string])[]): Promise<void> {
  for (const [cmd, want] of steps) assert.equal(cmd === 'BODY' ? await c.data(BODY) : await c.cmd(cmd), want, cmd);
}

const MAIL: readonly [string, string] = ['MAIL FROM:<s@x.test>', '250 2.1.0 OK'];
const QUEUED: readonly [string, string] = ['BODY', '250 2.0.0 Ok: queued'];
const TEMPFAIL = '451 4.3.2 Internal server error';
/** One message to a1@a.test, accepted by A. */
const FIRST_MESSAGE = [MAIL, ['RCPT TO:<a1@a.test>', '250 2.1.5 Ok'], QUEUED] as const;

describe('transaction mode: routing every recipient and every message', () => {
  let r: Rig;
  before(async () => (r = await rig()));
  after(async () => r.stop());

  it('recipients of one transaction split across back-ends: 452 4.5.3 for the others; the next transaction moves', async () => {
    const c = await greet(r.p.port);
    assert.equal(await c.cmd('MAIL FROM:<s@x.test>'), '250 2.1.0 OK');
    assert.equal(await c.cmd('RCPT TO:<a1@a.test>'), '250 2.1.5 Ok');
    assert.equal(await c.cmd('RCPT TO:<b1@b.test>'), '452 4.5.3 Too many recipients for this transaction, send the rest separately');
    assert.equal(await c.cmd('RCPT TO:<a2@a.test>'), '250 2.1.5 Ok');
    assert.equal(await c.data(BODY), '250 2.0.0 Ok: queued');
    // Exim's fast retry: a new transaction for the deferred recipient, on the same connection.
    assert.equal(await c.cmd('MAIL FROM:<s@x.test>'), '250 2.1.0 OK');
    assert.equal(await c.cmd('RCPT TO:<b1@b.test>'), '250 2.1.5 Ok');
    assert.equal(await c.data(BODY), '250 2.0.0 Ok: queued');
    assert.equal(await c.cmd('QUIT'), '221 2.0.0 Bye');
    await c.waitClosed();
    assert.equal(r.a.accepted.length, 1);
    assert.equal(r.b.accepted.length, 1);
    assert.equal(r.a.accepted[0]!.toString('latin1'), BODY, 'A got the body byte for byte');
    assert.equal(r.b.accepted[0]!.toString('latin1'), BODY, 'B got the body byte for byte');
    const aCmds = r.a.commands.filter((l) => /^(MAIL|RCPT|DATA|QUIT|RSET)/.test(l));
    assert.deepEqual(aCmds, ['MAIL FROM:<s@x.test>', 'RCPT TO:<a1@a.test>', 'RCPT TO:<a2@a.test>', 'DATA', 'QUIT'], 'A saw only its recipients, then a clean QUIT at the switch');
    assert.deepEqual(r.b.commands.filter((l) => /^(MAIL|RCPT|DATA|QUIT)/.test(l)), ['MAIL FROM:<s@x.test>', 'RCPT TO:<b1@b.test>', 'DATA', 'QUIT']);
    // One auth request per RCPT, each with that recipient, and our header numbering it in its transaction.
    const asked = r.stub.requests.map((q) => [q.get('Auth-SMTP-To'), q.get('X-Postern-Recipient')]);
    assert.deepEqual(asked, [['RCPT TO:<a1@a.test>', '1'], ['RCPT TO:<b1@b.test>', '2'], ['RCPT TO:<a2@a.test>', '3'], ['RCPT TO:<b1@b.test>', '1']]);
    const msgs = await r.p.waitForLog((l) => l.type === 'message' && l.backend === `127.0.0.1:${r.b.port}`);
    assert.equal(msgs.size, Buffer.byteLength(BODY, 'latin1') + 3);
    const first = r.p.logs.find((l) => l.type === 'message' && l.backend === `127.0.0.1:${r.a.port}`)!;
    assert.deepEqual(first.recipients, [
      { to: 'a1@a.test', backend: `127.0.0.1:${r.a.port}`, code: 250 },
      { to: 'b1@b.test', code: 452 },
      { to: 'a2@a.test', backend: `127.0.0.1:${r.a.port}`, code: 250 },
    ]);
    assert.equal(first.code, 250);
    const session = await r.p.waitForLog((l) => l.type === 'access');
    assert.equal(session.messages, 2);
  });

  it('a router refusal refuses that recipient only; the transaction goes on', async () => {
    const before = r.a.accepted.length;
    const c = await greet(r.p.port);
    await expectReplies(c, [MAIL, ['RCPT TO:<nobody@unknown.test>', '550 5.1.1 Mailbox unknown'], ['RCPT TO:<a1@a.test>', '250 2.1.5 Ok'], ['RCPT TO:<ghost@unknown.test>', '550 5.1.1 Mailbox unknown'], QUEUED]);
    assert.equal(r.a.accepted.length, before + 1);
    c.close();
  });

  it('DATA after recipients that all failed: 554 no valid recipients, nothing sent anywhere', async () => {
    const c = await greet(r.p.port);
    await expectReplies(c, [MAIL, ['RCPT TO:<nobody@unknown.test>', '550 5.1.1 Mailbox unknown'], ['DATA', '554 5.5.1 Error: no valid recipients'], ['RSET', '250 2.0.0 OK'], ['QUIT', '221 2.0.0 Bye']]);
    c.close();
  });

  it('an auth service failing for a later recipient defers that one (451), the transaction goes on', async () => {
    const before = r.a.accepted.length;
    const c = await greet(r.p.port);
    await expectReplies(c, [MAIL, ['RCPT TO:<a1@a.test>', '250 2.1.5 Ok'], ['RCPT TO:<x@down.test>', TEMPFAIL], QUEUED]);
    assert.equal(r.a.accepted.length, before + 1);
    c.close();
  });

  it('pipelined: replies leave in command order, Postern\'s and the back-end\'s mixed; commands after the dot are kept', async () => {
    const before = { a: r.a.accepted.length, b: r.b.accepted.length };
    const c = await SmtpClient.connect(r.p.port);
    await c.reply();
    c.write('EHLO client.test\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<a1@a.test>\r\nRCPT TO:<b1@b.test>\r\nNOOP\r\nRCPT TO:<a2@a.test>\r\nDATA\r\n');
    const codes: number[] = [];
    for (let i = 0; i < 7; i++) codes.push((await c.reply()).code);
    assert.deepEqual(codes, [250, 250, 250, 452, 250, 250, 354]);
    // The end of data and a whole second transaction in one write.
    c.write(Buffer.from(`${BODY}.\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<b1@b.test>\r\nDATA\r\n`, 'latin1'));
    const next: number[] = [];
    for (let i = 0; i < 4; i++) next.push((await c.reply()).code);
    assert.deepEqual(next, [250, 250, 250, 354]);
    c.write(Buffer.from(`${BODY}.\r\nQUIT\r\n`, 'latin1'));
    assert.equal((await c.reply()).code, 250);
    assert.equal((await c.reply()).code, 221);
    await c.waitClosed();
    assert.equal(r.a.accepted.length, before.a + 1);
    assert.equal(r.b.accepted.length, before.b + 1);
    assert.equal(r.b.accepted.at(-1)!.toString('latin1'), BODY);
  });

  it('RSET mid-transaction is the back-end\'s; the next transaction starts clean', async () => {
    const before = r.a.accepted.length;
    const c = await greet(r.p.port);
    await c.cmd('MAIL FROM:<s@x.test>');
    await c.cmd('RCPT TO:<a1@a.test>');
    assert.equal(await c.cmd('RSET'), '250 2.0.0 Ok');
    assert.equal(await c.cmd('DATA'), '503 5.5.1 Need MAIL command');
    await c.cmd('MAIL FROM:<t@x.test>');
    assert.equal(await c.cmd('RCPT TO:<a2@a.test>'), '250 2.1.5 Ok');
    assert.equal(await c.data(BODY), '250 2.0.0 Ok: queued');
    assert.equal(r.a.accepted.length, before + 1);
    assert.ok(r.a.commands.includes('MAIL FROM:<t@x.test>'));
    c.close();
  });

  it('a large body straddling many reads is relayed intact', async () => {
    const big = `Subject: big\r\n\r\n${'0123456789abcdef.\r\n..'.repeat(60_000)}end\r\n`;
    const c = await greet(r.p.port);
    await c.cmd('MAIL FROM:<s@x.test>');
    await c.cmd('RCPT TO:<a1@a.test>');
    assert.equal(await c.data(big), '250 2.0.0 Ok: queued');
    assert.equal(r.a.accepted.at(-1)!.toString('latin1'), big);
    c.close();
  });

  it('SMTP smuggling: a dot line framed by a bare LF is refused; the back-end never completes the message', async () => {
    const before = r.a.accepted.length;
    const c = await greet(r.p.port);
    await c.cmd('MAIL FROM:<s@x.test>');
    await c.cmd('RCPT TO:<a1@a.test>');
    assert.match(await c.cmd('DATA'), /^354/);
    c.write('Subject: x\r\n\r\nhello\n.\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@a.test>\r\nDATA\r\nforged\r\n.\r\n');
    assert.equal((await c.reply()).code, 554);
    assert.ok(await c.waitClosed());
    await new Promise((res) => setTimeout(res, 100));
    assert.equal(r.a.accepted.length, before, 'nothing was accepted');
    assert.ok(!r.a.commands.includes('MAIL FROM:<evil@x.test>'), 'the smuggled command never reached the back-end');
    await r.p.waitForLog((l) => l.code === 'PST_DATA_BARE_LF');
    // The closing error is the session's outcome, even after messages were relayed.
    await r.p.waitForLog((l) => l.type === 'access' && l.outcome === 'PST_DATA_BARE_LF');
  });
});

describe('transaction mode: faults at the new steps never yield a false 250', () => {
  async function oneMessage(r: Rig, steps: (c: SmtpClient) => Promise<void>): Promise<void> {
    const c = await greet(r.p.port);
    try {
      await steps(c);
    } finally {
      c.close();
      await r.stop();
    }
  }

  it('back-end A dies at a later RCPT: 451 and close, nothing delivered', async () => {
    const r = await rig({ a: { onCommand: (l) => (l === 'RCPT TO:<a2@a.test>' ? 'close' : undefined) } });
    await oneMessage(r, async (c) => {
      await expectReplies(c, [MAIL, ['RCPT TO:<a1@a.test>', '250 2.1.5 Ok'], ['RCPT TO:<a2@a.test>', TEMPFAIL]]);
      assert.ok(await c.waitClosed());
      assert.equal(r.a.accepted.length, 0);
      await r.p.waitForLog((l) => l.code === 'PST_BACKEND_LOST_REPLY');
    });
  });

  it('back-end A stalls at a later RCPT: timeouts.backend, 451, close', async () => {
    const r = await rig({ a: { onCommand: (l) => (l === 'RCPT TO:<a2@a.test>' ? 'stall' : undefined) }, timeouts: { backend: '300ms' } });
    await oneMessage(r, async (c) => {
      await expectReplies(c, [MAIL, ['RCPT TO:<a1@a.test>', '250 2.1.5 Ok'], ['RCPT TO:<a2@a.test>', TEMPFAIL]]);
      assert.ok(await c.waitClosed());
      assert.equal(r.a.accepted.length, 0);
    });
  });

  it('back-end closes after the dot without a reply: the client is closed with no reply at all', async () => {
    const r = await rig({ a: { onMessage: () => 'close' } });
    await oneMessage(r, async (c) => {
      await c.cmd('MAIL FROM:<s@x.test>');
      await c.cmd('RCPT TO:<a1@a.test>');
      assert.match(await c.cmd('DATA'), /^354/);
      c.write(Buffer.from(`${BODY}.\r\n`, 'latin1'));
      assert.ok(await c.waitClosed());
      assert.doesNotMatch(c.transcript.split('354')[1] ?? '', /\r\n250/);
      await r.p.waitForLog((l) => l.code === 'PST_BACKEND_LOST');
    });
  });

  it('back-end dies mid-body: the client is closed, no reply stands in for the back-end\'s', async () => {
    let n = 0;
    const r = await rig({ a: { onDataChunk: () => (++n === 2 ? 'reset' : undefined) } });
    await oneMessage(r, async (c) => {
      await c.cmd('MAIL FROM:<s@x.test>');
      await c.cmd('RCPT TO:<a1@a.test>');
      assert.match(await c.cmd('DATA'), /^354/);
      c.write('part one\r\n');
      await new Promise((res) => setTimeout(res, 50));
      c.write('part two\r\n');
      await new Promise((res) => setTimeout(res, 50));
      c.write('.\r\n');
      assert.ok(await c.waitClosed());
      assert.doesNotMatch(c.transcript.split('354')[1] ?? '', /250/);
      assert.equal(r.a.accepted.length, 0);
    });
  });

  it('the switch target refuses MAIL: 451 and close; the first message stays delivered once', async () => {
    const r = await rig({ b: { onCommand: (l) => (l.startsWith('MAIL') ? '451 4.3.0 Try later' : undefined) } });
    await oneMessage(r, async (c) => {
      await expectReplies(c, [...FIRST_MESSAGE, MAIL, ['RCPT TO:<b1@b.test>', TEMPFAIL]]);
      assert.ok(await c.waitClosed());
      assert.equal(r.a.accepted.length, 1);
      assert.equal(r.b.accepted.length, 0);
      assert.ok(r.a.commands.includes('QUIT'), 'the old back-end session was ended cleanly');
    });
  });

  it('the switch target is unreachable: 451 and close', async () => {
    const r = await rig({ bPort: await closedPort() });
    await oneMessage(r, async (c) => {
      await expectReplies(c, [...FIRST_MESSAGE, MAIL, ['RCPT TO:<b1@b.test>', TEMPFAIL]]);
      assert.ok(await c.waitClosed());
      assert.equal(r.a.accepted.length, 1);
    });
  });

  it('back-end A refuses a later RCPT: its refusal is relayed, the transaction goes on', async () => {
    const r = await rig({ a: { onCommand: (l) => (l === 'RCPT TO:<a2@a.test>' ? '550 5.1.1 No such user' : undefined) } });
    await oneMessage(r, async (c) => {
      await c.cmd('MAIL FROM:<s@x.test>');
      await c.cmd('RCPT TO:<a1@a.test>');
      assert.equal(await c.cmd('RCPT TO:<a2@a.test>'), '550 5.1.1 No such user');
      assert.equal(await c.data(BODY), '250 2.0.0 Ok: queued');
      assert.equal(r.a.accepted.length, 1);
      const m = await r.p.waitForLog((l) => l.type === 'message');
      assert.deepEqual((m.recipients as { code: number }[]).map((x) => x.code), [250, 550]);
    });
  });

  it('back-end A answers garbage to a later RCPT: 451 and close, nothing delivered', async () => {
    const r = await rig({ a: { onCommand: (l) => (l === 'RCPT TO:<a2@a.test>' ? 'hello there' : undefined) } });
    await oneMessage(r, async (c) => {
      await expectReplies(c, [MAIL, ['RCPT TO:<a1@a.test>', '250 2.1.5 Ok'], ['RCPT TO:<a2@a.test>', TEMPFAIL]]);
      assert.ok(await c.waitClosed());
      assert.equal(r.a.accepted.length, 0);
      await r.p.waitForLog((l) => l.code === 'PST_BACKEND_INVALID_REPLY');
    });
  });

  it('the switch target stalls at its greeting: timeouts.backend, 451, close; the first message stays delivered once', async () => {
    const r = await rig({ b: { greeting: 'stall' }, timeouts: { backend: '300ms' } });
    await oneMessage(r, async (c) => {
      await expectReplies(c, [...FIRST_MESSAGE, MAIL, ['RCPT TO:<b1@b.test>', TEMPFAIL]]);
      assert.ok(await c.waitClosed());
      assert.equal(r.a.accepted.length, 1);
      assert.equal(r.b.accepted.length, 0);
      await r.p.waitForLog((l) => l.code === 'PST_BACKEND_TIMEOUT');
    });
  });

  it('the switch target dies at the replayed RCPT: 451 and close', async () => {
    const r = await rig({ b: { onCommand: (l) => (l.startsWith('RCPT') ? 'reset' : undefined) } });
    await oneMessage(r, async (c) => {
      await expectReplies(c, [...FIRST_MESSAGE, MAIL, ['RCPT TO:<b1@b.test>', TEMPFAIL]]);
      assert.ok(await c.waitClosed());
      assert.equal(r.a.accepted.length, 1);
      assert.equal(r.b.accepted.length, 0);
    });
  });

  it('the same back-end refuses the second transaction\'s MAIL: 451 and close, the first message delivered once', async () => {
    let mails = 0;
    const r = await rig({ a: { onCommand: (l) => (l.startsWith('MAIL') && ++mails === 2 ? '452 4.3.1 Insufficient system storage' : undefined) } });
    await oneMessage(r, async (c) => {
      await expectReplies(c, [...FIRST_MESSAGE, MAIL, ['RCPT TO:<a2@a.test>', TEMPFAIL]]);
      assert.ok(await c.waitClosed());
      assert.equal(r.a.accepted.length, 1);
      await r.p.waitForLog((l) => l.code === 'PST_BACKEND_REJECTED');
    });
  });

  it('a back-end that closes while idle between transactions is replaced without the client noticing', async () => {
    const r = await rig({ a: { onMessage: (_d, s) => { setTimeout(() => s.socket.end('421 4.4.2 idle\r\n'), 20); return undefined; } } });
    await oneMessage(r, async (c) => {
      await c.cmd('MAIL FROM:<s@x.test>');
      await c.cmd('RCPT TO:<a1@a.test>');
      assert.equal(await c.data(BODY), '250 2.0.0 Ok: queued');
      await new Promise((res) => setTimeout(res, 100));
      await c.cmd('MAIL FROM:<s@x.test>');
      assert.equal(await c.cmd('RCPT TO:<a2@a.test>'), '250 2.1.5 Ok');
      assert.equal(await c.data(BODY), '250 2.0.0 Ok: queued');
      assert.equal(r.a.accepted.length, 2);
      assert.equal(r.a.sessions.length, 2, 'a second back-end session was opened');
      await r.p.waitForLog((l) => l.code === 'PSW_BACKEND_IDLE_CLOSED');
    });
  });
});
