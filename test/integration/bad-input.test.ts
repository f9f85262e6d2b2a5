/**
 * Hostile and broken clients before the hand-off. Each gets a clear SMTP reply (or a clean close
 * where SMTP says so) and a log line, and none of their bytes can reach the auth service or the
 * back-end as a new header or command.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { AuthStub, okAnswer } from '../helpers/auth-stub.js';
import { FakeBackend } from '../helpers/fake-backend.js';
import { startPostern, type RunningPostern } from '../helpers/postern.js';
import { greeted, hello } from '../helpers/preamble.js';
import { SmtpClient, replyText } from '../helpers/smtp-client.js';

describe('bad input', () => {
  let backend: FakeBackend;
  let stub: AuthStub;
  let p: RunningPostern;
  before(async () => {
    backend = await FakeBackend.start();
    stub = await AuthStub.start(okAnswer(0));
    stub.answer = okAnswer(backend.port);
    p = await startPostern({ route: { auth_http: { url: stub.url } }, max_errors: 3, max_line_length: 1024 });
  });
  after(async () => {
    await p.stop();
    await stub.stop();
    await backend.stop();
  });

  it('a line over max_line_length: 500 5.5.2 and close', async () => {
    const { c } = await greeted(p.port);
    c.write(`EHLO ${'a'.repeat(2000)}\r\n`);
    assert.equal(replyText(await c.reply()), '500 5.5.2 Line too long');
    assert.ok(await c.waitClosed());
    await p.waitForLog((r) => r.code === 'PST_LINE_TOO_LONG');
  });

  it('a 1 MB line without LF is cut off at the limit, not buffered', async () => {
    const { c } = await greeted(p.port);
    c.write(Buffer.alloc(1 << 20, 0x41));
    assert.equal(replyText(await c.reply()), '500 5.5.2 Line too long');
    assert.ok(await c.waitClosed());
  });

  it('NUL, bare CR and binary junk: 500 5.5.2, counted as errors', async () => {
    const { c } = await greeted(p.port);
    c.write(Buffer.from('EHLO a\0b\r\n'));
    assert.equal(replyText(await c.reply()), '500 5.5.2 Invalid character in command');
    c.write(Buffer.from('EHLO a\rQUIT\r\n'));
    assert.equal(replyText(await c.reply()), '500 5.5.2 Invalid character in command');
    c.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x0d, 0x0a])); // a TLS ClientHello on the plain port
    assert.equal((await c.reply()).code, 500);
    assert.equal(replyText(await c.reply()), '421 4.7.0 proxy.test Too many errors, closing connection');
    assert.ok(await c.waitClosed());
    await p.waitForLog((r) => r.code === 'PST_TOO_MANY_ERRORS');
  });

  it('unknown commands and out-of-order commands until max_errors', async () => {
    const { c } = await greeted(p.port);
    assert.equal(await c.cmd('FOO bar'), '500 5.5.1 Invalid command');
    assert.equal(await c.cmd('RCPT TO:<u@y.test>'), '503 5.5.1 Need MAIL command');
    assert.equal(await c.cmd('MAIL FROM:<a@x.test>'), '503 5.5.1 Send HELO/EHLO first');
    assert.equal(replyText(await c.reply()), '421 4.7.0 proxy.test Too many errors, closing connection');
    assert.ok(await c.waitClosed());
  });

  it('DATA, BDAT, VRFY, EXPN, HELP, STARTTLS and AUTH before a route get sensible replies', async () => {
    const { c } = await hello(p.port);
    assert.equal(await c.cmd('VRFY root'), '252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery');
    assert.equal(await c.cmd('HELP'), '214 2.0.0 See RFC 5321');
    assert.equal(await c.cmd('DATA'), '503 5.5.1 Need MAIL command');
    await c.cmd('MAIL FROM:<a@x.test>');
    c.write('BDAT 12 LAST\r\nQUIT\r\nQUIT\r\n'); // the 12-byte chunk is skipped, not executed
    assert.equal(replyText(await c.reply()), '503 5.5.1 Need RCPT command');
    assert.equal(await c.cmd('NOOP'), '250 2.0.0 OK');
    c.close();
  });

  it('an HTTP request to the SMTP port: 554 and close, not an error per header line', async () => {
    const { c } = await greeted(p.port);
    c.write('GET / HTTP/1.1\r\nHost: mx.example\r\nUser-Agent: curl\r\n\r\n');
    assert.equal(replyText(await c.reply()), '554 5.7.0 HTTP requests are not accepted here');
    assert.ok(await c.waitClosed());
    assert.doesNotMatch(c.transcript, /500/);
  });

  it('commands pipelined before the greeting are answered in order after it', async () => {
    const c = await SmtpClient.connect(p.port);
    c.write('EHLO early.test\r\nNOOP\r\nQUIT\r\n');
    assert.equal((await c.reply()).code, 220);
    assert.equal((await c.reply()).code, 250);
    assert.equal(replyText(await c.reply()), '250 2.0.0 OK');
    assert.equal(replyText(await c.reply()), '221 2.0.0 Bye');
    assert.ok(await c.waitClosed());
  });

  it('the client\'s own XCLIENT and XFORWARD are refused and never forwarded', async () => {
    const before = backend.commands.length;
    const { c } = await hello(p.port);
    assert.equal(await c.cmd('XCLIENT ADDR=10.9.9.9 NAME=spoofed.test'), '550 5.7.0 Command not permitted');
    assert.equal(await c.cmd('XFORWARD ADDR=10.9.9.9'), '550 5.7.0 Command not permitted');
    await c.cmd('MAIL FROM:<a@x.test>');
    assert.equal(await c.cmd('RCPT TO:<u@y.test>'), '250 2.1.5 Ok');
    c.close();
    const sent = backend.commands.slice(before);
    assert.ok(!sent.some((l) => l.includes('10.9.9.9') || l.includes('spoofed')), sent.join('\n'));
    await p.waitForLog((r) => r.code === 'PST_NOT_PERMITTED');
  });

  it('CR and LF smuggled into HELO/MAIL/RCPT never reach the auth request or the back-end as a new line', async () => {
    const beforeReq = stub.requests.length;
    const beforeCmd = backend.commands.length;
    const lenient = await startPostern({ route: { auth_http: { url: stub.url } } });
    after(() => lenient.stop());
    const { c } = await greeted(lenient.port);
    c.write('EHLO c.test\rX-Injected: 1\r\n');
    assert.equal((await c.reply()).code, 500);
    c.write('EHLO c.test\r\n');
    await c.reply();
    c.write('MAIL FROM:<a@x.test>\rRSET\r\n');
    assert.equal((await c.reply()).code, 500);
    // A bare LF ends the line: the second half is a command of its own, and a bad one.
    c.write('MAIL FROM:<a@x.test>\nAuth-Status: OK\r\n');
    assert.equal((await c.reply()).code, 250);
    assert.equal((await c.reply()).code, 500);
    c.write('RCPT TO:<u@y.test>\r\n');
    assert.equal((await c.reply()).code, 250);
    c.close();
    const req = stub.requests.slice(beforeReq);
    assert.equal(req.length, 1);
    assert.ok(!req[0]!.headers.some(([n]) => /injected|^auth-status$/i.test(n)));
    assert.equal(req[0]!.get('Auth-SMTP-From'), 'MAIL FROM:<a@x.test>');
    assert.ok(!backend.commands.slice(beforeCmd).some((l) => /RSET|Injected|Auth-Status/.test(l)));
  });

  it('a client that pipelines without reading is not read faster than it reads (backpressure)', async () => {
    const { c } = await greeted(p.port);
    c.send('EHLO backpressure.test');
    c.socket.pause();
    const burst = Buffer.from('NOOP\r\n'.repeat(20000));
    for (let i = 0; i < 100; i++) c.socket.write(burst); // 12 MB of commands, 28 MB of replies
    await new Promise((r) => setTimeout(r, 500));
    assert.ok(c.socket.writableLength > 0, 'Postern kept reading a client that does not read its replies');
    c.close();
    const rec = await p.waitForLog((r) => r.type === 'access' && r.helo === 'backpressure.test');
    assert.ok((rec.bytes_in as number) < 100 * burst.length / 2, `Postern read ${String(rec.bytes_in)} bytes`);
  });
});

describe('timeouts and the greeting', () => {
  it('an idle client gets 421 4.4.2 and is closed', async () => {
    const p = await startPostern({ route: { static: '127.0.0.1:1' }, timeouts: { idle: '300ms' } });
    try {
      const { c } = await hello(p.port, { hello: 'EHLO slow.test' });
      assert.equal(replyText(await c.reply(2000)), '421 4.4.2 proxy.test Error: timeout exceeded');
      assert.ok(await c.waitClosed());
      await p.waitForLog((r) => r.code === 'PST_IDLE_TIMEOUT');
    } finally {
      await p.stop();
    }
  });

  it('a slow client that sends one byte at a time is still served (each byte resets the timer)', async () => {
    const p = await startPostern({ route: { static: '127.0.0.1:1' }, timeouts: { idle: '2s' } });
    try {
      const { c } = await greeted(p.port);
      for (const ch of 'NOOP\r\n') {
        c.write(ch);
        await new Promise((r) => setTimeout(r, 30));
      }
      assert.equal(replyText(await c.reply()), '250 2.0.0 OK');
      c.close();
    } finally {
      await p.stop();
    }
  });

  it('with greeting_delay, a client that talks first is rejected like nginx does', async () => {
    const p = await startPostern({ route: { static: '127.0.0.1:1' }, greeting_delay: '300ms' });
    try {
      const early = await SmtpClient.connect(p.port);
      early.write('EHLO spam.test\r\n');
      assert.equal(replyText(await early.reply()), '503 5.5.0 Improper use of SMTP command pipelining');
      assert.ok(await early.waitClosed());
      await p.waitForLog((r) => r.code === 'PST_EARLY_TALKER');
      const patient = await SmtpClient.connect(p.port);
      assert.equal(replyText(await patient.reply()), '220 proxy.test ESMTP ready');
      patient.close();
    } finally {
      await p.stop();
    }
  });
});
