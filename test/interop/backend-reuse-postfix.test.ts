/**
 * Back-end session reuse against a real Postfix: three client sessions from three addresses
 * through Postern (transaction mode, backend_reuse) use one smtpd connection — RSET, then XCLIENT
 * for each new client, which Postfix takes as a new session — and each delivered message's
 * Received header names its own client, never the one before (the identity does not leak).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startPostern, type RunningPostern } from '../helpers/postern.js';
import { startPostfix, type PostfixInstance } from '../helpers/postfix.js';
import { SmtpClient } from '../helpers/smtp-client.js';

describe('backend_reuse in front of a real Postfix', () => {
  let postfix: PostfixInstance;
  let p: RunningPostern;
  before(async () => {
    postfix = await startPostfix();
    p = await startPostern({ proxy_mode: 'transaction', route: { static: `127.0.0.1:${postfix.port}` }, xclient: true, backend_reuse: { enabled: true } });
  });
  after(async () => {
    await p?.stop();
    await postfix?.stop();
  });

  it('three sessions, one smtpd connection, each message received from its own client', { timeout: 60_000 }, async () => {
    const before = postfix.log().length;
    for (let i = 1; i <= 3; i++) {
      const c = await SmtpClient.connect(p.port, '127.0.0.1', `127.0.0.${40 + i}`);
      try {
        assert.equal((await c.reply()).code, 220);
        assert.match(await c.cmd(`EHLO client${i}.test`), /^250 /);
        assert.equal(await c.cmd('MAIL FROM:<a@x.test>'), '250 2.1.0 OK');
        assert.match(await c.cmd('RCPT TO:<u@y.test>'), /^250 /);
        assert.match(await c.data(`Message-ID: <reuse${i}@x.test>\r\nSubject: ${i}\r\n\r\nbody ${i}\r\n`), /^250 2\.0\.0 Ok: queued/);
        assert.match(await c.cmd('QUIT'), /^221 /);
      } finally {
        c.close();
      }
      await sleep(100);
    }
    const files = await postfix.waitForMessages(3, 20_000);
    const byId = new Map(files.map((f) => {
      const text = readFileSync(f, 'latin1');
      return [/Message-ID: <(reuse\d)@x\.test>/.exec(text)?.[1] ?? '?', text];
    }));
    for (let i = 1; i <= 3; i++) {
      const text = byId.get(`reuse${i}`)!;
      assert.ok(text, `message ${i} delivered`);
      const received = text.slice(0, text.indexOf('Message-ID:'));
      assert.match(received, new RegExp(`\\[127\\.0\\.0\\.${40 + i}\\]`), received);
      for (const j of [1, 2, 3].filter((x) => x !== i)) assert.doesNotMatch(received, new RegExp(`\\[127\\.0\\.0\\.${40 + j}\\]`));
    }
    // One smtpd connection from Postern carried all three (Postfix logs each TCP connection once).
    const log = postfix.log().slice(before);
    assert.equal((log.match(/smtpd\[\d+\]: connect from /g) ?? []).length, 1, log.slice(-3000));
  });
});
