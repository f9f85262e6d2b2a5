/**
 * Interop with real peers: swaks and nodemailer as clients, a real Postfix on loopback as the
 * back-end (XCLIENT authorised for 127.0.0.0/8), smtp-sink as a second back-end.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { requireBinary, startPostfix, type PostfixInstance } from '../helpers/postfix.js';
import { startPostern, type RunningPostern } from '../helpers/postern.js';
import { startSmtpSink } from '../helpers/smtp-sink.js';

const run = promisify(execFile);
const tmp = mkdtempSync(path.join(os.tmpdir(), 'postern-interop-'));

/** A message with what a relay most easily damages: 8-bit bytes, leading dots, long lines, a lone "." line. */
function testMessage(id: string): Buffer {
  const lines = [
    `Message-ID: <${id}@x.test>`,
    'Date: Wed, 25 Nov 2026 07:00:00 +0000',
    'From: Alice <a@x.test>',
    'To: <u@y.test>',
    `Subject: interop ${id}`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=iso-8859-1',
    'Content-Transfer-Encoding: 8bit',
    '',
    'J\xfcrgen says gr\xfc\xdfe.',
    '.a line that starts with a dot',
    '..two dots',
    'x'.repeat(990),
    '\tindented\t with tabs ',
    'last line',
  ];
  return Buffer.from(lines.join('\r\n') + '\r\n', 'latin1');
}

/** swaks reads the file as lines and sends each with CRLF: give it LF endings and no final newline. */
function forSwaks(msg: Buffer): Buffer {
  return Buffer.from(msg.toString('latin1').replace(/\r\n$/, '').replace(/\r\n/g, '\n'), 'latin1');
}

/** swaks dot-stuffs the file itself; it must arrive as written. */
async function swaks(port: number, file: string, extra: string[] = []): Promise<string> {
  const { stdout } = await run(await requireBinary('swaks', 'swaks'), [
    '--server', '127.0.0.1', '--port', String(port), '--from', 'a@x.test', '--to', 'u@y.test', '--data', `@${file}`, '--timeout', '20', ...extra,
  ]);
  return stdout;
}

describe('Postern in front of a real Postfix', () => {
  let postfix: PostfixInstance;
  let p: RunningPostern;
  before(async () => {
    postfix = await startPostfix();
    p = await startPostern({ route: { static: `127.0.0.1:${postfix.port}` }, xclient: true });
  });
  after(async () => {
    await p?.stop();
    await postfix?.stop();
  });

  it('swaks: the message arrives byte for byte, and Received names the real client (XCLIENT)', async () => {
    const msg = testMessage('swaks1');
    const file = path.join(tmp, 'swaks1.eml');
    writeFileSync(file, forSwaks(msg));
    const out = await swaks(p.port, file, ['--helo', 'my.client.test', '--local-interface', '127.0.0.2']);
    assert.match(out, /<[-~] +250 2\.0\.0 Ok: queued as/);
    const [delivered] = await postfix.waitForMessages(1, 20000);
    const stored = readFileSync(delivered!);
    // Postfix prepends Return-Path, Delivered-To and Received; everything after them is the client's.
    const at = stored.indexOf('Message-ID: <swaks1@x.test>');
    assert.ok(at > 0, stored.toString('latin1'));
    const body = stored.subarray(at).toString('latin1').replace(/\n/g, '\r\n');
    assert.equal(body, msg.toString('latin1'));
    const received = stored.subarray(0, at).toString('latin1');
    assert.match(received, /Received: from my\.client\.test \(unknown \[127\.0\.0\.2\]\)/, received);
    assert.doesNotMatch(received, /proxy\.test/, 'the back-end saw the client, not the proxy');
    const log = postfix.log();
    assert.match(log, /connect from unknown\[127\.0\.0\.2\]|client=unknown\[127\.0\.0\.2\]/);
  });

  it('nodemailer: a message with attachments goes through and arrives intact', async () => {
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: p.port, secure: false, ignoreTLS: true, name: 'nodemailer.client.test' });
    const attachment = Buffer.alloc(50_000);
    for (let i = 0; i < attachment.length; i++) attachment[i] = (i * 31) & 0xff;
    const info = await transport.sendMail({
      from: 'a@x.test', to: 'u@y.test', subject: 'nodemailer interop', text: 'hello through Postern',
      attachments: [{ filename: 'bin.dat', content: attachment }],
    });
    assert.match(info.response, /^250 2\.0\.0 Ok: queued/);
    transport.close();
    const files = await postfix.waitForMessages(2, 20000);
    const stored = readFileSync(files.find((f) => readFileSync(f, 'latin1').includes('nodemailer interop'))!, 'latin1');
    assert.match(stored, /Received: from nodemailer\.client\.test \(unknown \[127\.0\.0\.1\]\)/);
    const b64 = /filename=bin\.dat[\s\S]*?\n\n([A-Za-z0-9+/=\n]+)\n/.exec(stored)![1]!;
    assert.deepEqual(Buffer.from(b64.replace(/\n/g, ''), 'base64'), attachment);
  });

  it('a recipient Postfix rejects: the client gets Postfix\'s own reply', async () => {
    const file = path.join(tmp, 'rej.eml');
    writeFileSync(file, forSwaks(testMessage('rej')));
    // Postfix refuses a syntactically bad domain literal at RCPT with its own 501 text.
    await assert.rejects(swaks(p.port, file, ['--to', 'u@[300.1.1.1]']), (err: { stdout: string }) => {
      assert.match(err.stdout, /<\*\* +501 5\.1\.3 Bad recipient address syntax/);
      return true;
    });
    // The refusal is Postfix's, not Postern's: Postfix logged it for the replayed RCPT.
    assert.match(postfix.log(), /Illegal address syntax from unknown\[127\.0\.0\.1\] in RCPT command: <u@\[300\.1\.1\.1\]>/);
  });
});

describe('Postern with xclient off in front of Postfix', () => {
  it('Received names Postern itself (the control for the XCLIENT test)', async () => {
    const postfix = await startPostfix();
    const p = await startPostern({ route: { static: `127.0.0.1:${postfix.port}` }, xclient: false });
    try {
      const file = path.join(tmp, 'noxc.eml');
      writeFileSync(file, forSwaks(testMessage('noxc')));
      await swaks(p.port, file, ['--helo', 'my.client.test', '--local-interface', '127.0.0.2']);
      const [delivered] = await postfix.waitForMessages(1, 20000);
      assert.match(readFileSync(delivered!, 'latin1'), /Received: from proxy\.test \(localhost \[127\.0\.0\.1\]\)/);
    } finally {
      await p.stop();
      await postfix.stop();
    }
  });
});

describe('Postern in front of smtp-sink', () => {
  it('accepts smtp-sink\'s 250 reply to XCLIENT and relays a message intact', async () => {
    const sink = await startSmtpSink({ dumpDir: true });
    const p = await startPostern({ route: { static: `127.0.0.1:${sink.port}` } });
    try {
      const msg = testMessage('sink1');
      const file = path.join(tmp, 'sink1.eml');
      writeFileSync(file, forSwaks(msg));
      const out = await swaks(p.port, file, ['--helo', 'sink.client.test']);
      assert.match(out, /<[-~] +250 2\.0\.0 Ok/);
      let files: string[] = [];
      for (let i = 0; i < 100 && files.length === 0; i++) {
        files = await sink.files();
        if (files.length === 0) await new Promise((r) => setTimeout(r, 50));
      }
      const dumped = readFileSync(files[0]!);
      assert.match(dumped.toString('latin1'), /X-Helo-Args: sink\.client\.test/);
      // smtp-sink stores lines with LF and dots unstuffed.
      const expected = msg.toString('latin1').replace(/\r\n/g, '\n');
      assert.ok(dumped.toString('latin1').includes(expected), 'message intact in the sink dump');
    } finally {
      await p.stop();
      await sink.stop();
    }
  });
});
