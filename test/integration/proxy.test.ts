/**
 * End-to-end behaviour of the proxy with the static router and a scripted back-end:
 * the replay order, XCLIENT, the hand-off of pipelined bytes, and byte-exact relaying.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { FakeBackend } from '../helpers/fake-backend.js';
import { startPostern, type RunningPostern } from '../helpers/postern.js';
import { SmtpClient, replyText } from '../helpers/smtp-client.js';

describe('proxy with a static route', () => {
  let backend: FakeBackend;
  let p: RunningPostern;
  before(async () => {
    backend = await FakeBackend.start();
    p = await startPostern({ route: { static: `127.0.0.1:${backend.port}` } });
  });
  after(async () => {
    await p.stop();
    await backend.stop();
  });

  it('greets, answers EHLO with the configured capabilities and never CHUNKING', async () => {
    const c = await SmtpClient.connect(p.port);
    assert.equal(replyText(await c.reply()), '220 proxy.test ESMTP ready');
    c.send('EHLO client.test');
    const ehlo = await c.reply();
    assert.deepEqual(ehlo.lines, ['proxy.test', 'PIPELINING', '8BITMIME', 'SIZE 10485760', 'ENHANCEDSTATUSCODES']);
    assert.equal(await c.cmd('NOOP'), '250 2.0.0 OK');
    assert.equal(await c.cmd('QUIT'), '221 2.0.0 Bye');
    assert.ok(await c.waitClosed());
  });

  it('replays EHLO, XCLIENT, the client EHLO, MAIL and RCPT, then relays the message byte for byte', async () => {
    const before = backend.sessions.length;
    const c = await SmtpClient.connect(p.port);
    await c.reply();
    await c.cmd('EHLO client.test');
    assert.equal(await c.cmd('MAIL FROM:<a@x.test> SIZE=100'), '250 2.1.0 OK');
    assert.equal(await c.cmd('RCPT TO:<u@y.test>'), '250 2.1.5 Ok', 'the client gets the back-end\'s own RCPT reply');
    const body = 'Subject: hi\r\n\r\n..leading dot stays stuffed\r\n\x80\xff binary ok\r\n';
    assert.equal(await c.data(body), '250 2.0.0 Ok: queued');
    assert.equal(await c.cmd('QUIT'), '221 2.0.0 Bye');
    assert.ok(await c.waitClosed());
    const s = backend.sessions[before]!;
    assert.deepEqual(s.commands, [
      'EHLO proxy.test',
      'XCLIENT ADDR=127.0.0.1 PORT=' + s.commands[1]!.match(/PORT=(\d+)/)![1] + ' NAME=[UNAVAILABLE] PROTO=ESMTP HELO=client.test',
      'EHLO client.test',
      'MAIL FROM:<a@x.test> SIZE=100',
      'RCPT TO:<u@y.test>',
      'DATA',
      'QUIT',
    ]);
    assert.equal(backend.accepted.at(-1)!.toString('latin1'), body);
  });

  it('hands every byte pipelined after the RCPT to the back-end, in order (RFC 2920)', async () => {
    const before = backend.sessions.length;
    const c = await SmtpClient.connect(p.port);
    await c.reply();
    c.write('EHLO pipe.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<u1@y.test>\r\nRCPT TO:<u2@y.test>\r\nDATA\r\n');
    const replies = [];
    for (let i = 0; i < 5; i++) replies.push((await c.reply()).code);
    assert.deepEqual(replies, [250, 250, 250, 250, 354]);
    c.write('Subject: pipelined\r\n\r\nbody\r\n.\r\nQUIT\r\n');
    assert.equal(replyText(await c.reply()), '250 2.0.0 Ok: queued');
    assert.equal((await c.reply()).code, 221);
    assert.deepEqual(backend.sessions[before]!.commands.slice(3), ['MAIL FROM:<a@x.test>', 'RCPT TO:<u1@y.test>', 'RCPT TO:<u2@y.test>', 'DATA', 'QUIT']);
  });

  it('delivers what a client pipelined before half-closing its side', async () => {
    const before = backend.accepted.length;
    const c = await SmtpClient.connect(p.port);
    await c.reply();
    c.socket.end('HELO eof.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<u@y.test>\r\nDATA\r\nSubject: eof\r\n\r\nx\r\n.\r\nQUIT\r\n');
    assert.ok(await c.waitClosed());
    assert.match(c.transcript, /250 2\.0\.0 Ok: queued\r\n221 2\.0\.0 Bye\r\n$/);
    assert.equal(backend.accepted.length, before + 1);
  });

  it('writes one access-log record per session', async () => {
    const c = await SmtpClient.connect(p.port);
    await c.reply();
    await c.cmd('HELO log.test');
    await c.cmd('MAIL FROM:<log@x.test>');
    await c.cmd('RCPT TO:<u@y.test>');
    await c.data('Subject: x\r\n\r\ny\r\n');
    await c.cmd('QUIT');
    await c.waitClosed();
    const rec = await p.waitForLog((r) => r.type === 'access' && r.helo === 'log.test');
    assert.equal(rec.from, 'log@x.test');
    assert.equal(rec.to, 'u@y.test');
    assert.equal(rec.backend, `127.0.0.1:${backend.port}`);
    assert.equal(rec.outcome, 'relayed');
    assert.equal(rec.code, 221);
    assert.ok((rec.bytes_in as number) > 50 && (rec.bytes_out as number) > 50);
  });
});

describe('replay variants', () => {
  it('uses HELO with the back-end when it refuses EHLO, and skips XCLIENT it does not offer', async () => {
    const backend = await FakeBackend.start({ onCommand: (l) => (l.startsWith('EHLO') ? '502 5.5.2 Error: command not recognized' : undefined) });
    const p = await startPostern({ route: { static: `127.0.0.1:${backend.port}` } });
    try {
      const c = await SmtpClient.connect(p.port);
      await c.reply();
      await c.cmd('HELO old.test');
      await c.cmd('MAIL FROM:<a@x.test>');
      assert.equal(await c.cmd('RCPT TO:<u@y.test>'), '250 2.1.5 Ok');
      assert.deepEqual(backend.commands, ['EHLO proxy.test', 'HELO proxy.test', 'MAIL FROM:<a@x.test>', 'RCPT TO:<u@y.test>']);
      c.close();
    } finally {
      await p.stop();
      await backend.stop();
    }
  });

  it('sends no XCLIENT with xclient: false, and accepts smtp-sink\'s 250 answer to XCLIENT', async () => {
    const b1 = await FakeBackend.start();
    const p1 = await startPostern({ route: { static: `127.0.0.1:${b1.port}` }, xclient: false });
    const b2 = await FakeBackend.start({ xclient: 'NAME HELO', onCommand: (l) => (l.startsWith('XCLIENT') ? '250 2.0.0 Ok' : undefined) });
    const p2 = await startPostern({ route: { static: `127.0.0.1:${b2.port}` } });
    try {
      for (const p of [p1, p2]) {
        const c = await SmtpClient.connect(p.port);
        await c.reply();
        await c.cmd('EHLO c.test');
        await c.cmd('MAIL FROM:<a@x.test>');
        assert.equal(await c.cmd('RCPT TO:<u@y.test>'), '250 2.1.5 Ok');
        c.close();
      }
      assert.deepEqual(b1.commands, ['EHLO proxy.test', 'MAIL FROM:<a@x.test>', 'RCPT TO:<u@y.test>']);
      assert.deepEqual(b2.commands, ['EHLO proxy.test', 'XCLIENT NAME=[UNAVAILABLE] HELO=c.test', 'EHLO c.test', 'MAIL FROM:<a@x.test>', 'RCPT TO:<u@y.test>']);
    } finally {
      await p1.stop();
      await p2.stop();
      await b1.stop();
      await b2.stop();
    }
  });

  it('relays a back-end RCPT refusal and stays in relay mode for the next recipient', async () => {
    const backend = await FakeBackend.start({ onCommand: (l) => (l === 'RCPT TO:<nobody@y.test>' ? '550 5.1.1 <nobody@y.test>: Recipient address rejected' : undefined) });
    const p = await startPostern({ route: { static: `127.0.0.1:${backend.port}` } });
    try {
      const c = await SmtpClient.connect(p.port);
      await c.reply();
      await c.cmd('EHLO c.test');
      await c.cmd('MAIL FROM:<a@x.test>');
      assert.equal(await c.cmd('RCPT TO:<nobody@y.test>'), '550 5.1.1 <nobody@y.test>: Recipient address rejected');
      assert.equal(await c.cmd('RCPT TO:<u@y.test>'), '250 2.1.5 Ok');
      assert.equal(await c.data('Subject: x\r\n\r\nx\r\n'), '250 2.0.0 Ok: queued');
      c.close();
    } finally {
      await p.stop();
      await backend.stop();
    }
  });
});
