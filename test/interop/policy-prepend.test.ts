/**
 * The real Debian postgrey (test/helpers/policy-servers.ts startPostgrey, --delay=1) through Postern
 * in transaction mode, asked at RCPT with `prepend: true`: the first attempt is greylisted with
 * postgrey's own 450 (the session goes on, the back-end never sees the recipient); the retry after
 * the delay is accepted, and the message the back-end receives starts with postgrey's
 * `X-Greylist: delayed N seconds by postgrey-… at postgrey.test; <date>` line, exactly once, the
 * rest byte for byte the client's. The back-end is the scripted one (test/helpers/fake-backend.ts),
 * which records the bytes after its 354 as they came, as policy-proxy.test.ts uses it.
 * postgrey missing → the test throws (never skips), in CI and out of it.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { FakeBackend } from '../helpers/fake-backend.js';
import { startPostgrey } from '../helpers/policy-servers.js';
import { startPostern } from '../helpers/postern.js';
import { replyText, SmtpClient } from '../helpers/smtp-client.js';

const REPLY_MS = 5_000;

/** Leading dot (stuffed on the wire), 8-bit bytes, a bare LF, a header block of its own. */
const BODY = 'From: s@x.test\r\nTo: b@y.test\r\nSubject: greylisted once\r\n\r\n..a stuffed line\r\n8-bit \xe9\xff, a bare\nLF\r\nbye\r\n';

async function cmd(c: SmtpClient, line: string): Promise<string> {
  c.send(line);
  return replyText(await c.reply(REPLY_MS));
}

async function open(port: number): Promise<SmtpClient> {
  const c = await SmtpClient.connect(port);
  assert.equal((await c.reply(REPLY_MS)).code, 220);
  assert.match(await cmd(c, 'EHLO client.test'), /^250 /);
  assert.equal(await cmd(c, 'MAIL FROM:<s@x.test>'), '250 2.1.0 OK');
  return c;
}

describe('postgrey PREPEND through Postern (transaction mode, prepend: true)', { timeout: 20_000 }, () => {
  it('greylisted first (postgrey\'s 450), accepted after the delay with X-Greylist at the very top, once, the rest byte for byte', async () => {
    const grey = await startPostgrey({ delay: 1 });
    const backend = await FakeBackend.start();
    let p: Awaited<ReturnType<typeof startPostern>> | undefined;
    try {
      p = await startPostern({
        proxy_mode: 'transaction',
        route: { static: `127.0.0.1:${backend.port}` },
        checks: { policy: [{ server: grey.address, stages: ['rcpt'], prepend: true, timeout: '5s' }] },
      });
      const context = (): string => `\npostgrey: ${grey.log()}\npostern: ${JSON.stringify(p!.logs.slice(-8))}`;

      const first = await open(p.port);
      const greylisted = await cmd(first, 'RCPT TO:<b@y.test>');
      assert.match(greylisted, /^450 4\.2\.0 <b@y\.test>: Recipient address rejected: Greylisted, see http:\/\/postgrey\.schweikert\.ch\/help\/y\.test\.html$/, context());
      assert.equal(await cmd(first, 'NOOP'), '250 2.0.0 OK', 'a greylisted recipient does not end the session');
      assert.equal(await cmd(first, 'DATA'), '554 5.5.1 Error: no valid recipients');
      assert.match(await cmd(first, 'QUIT'), /^221 /);
      first.close();
      assert.equal(backend.sessions.length, 0, 'the back-end never saw the greylisted attempt');
      await p.waitForLog((l) => l.code === 'PST_POLICY_REFUSED' && /DEFER_IF_PERMIT/.test(String(l.detail)), REPLY_MS);

      // postgrey compares whole seconds (time()): wait until more than --delay has surely passed.
      await sleep(2100);
      const retry = await open(p.port);
      assert.equal(await cmd(retry, 'RCPT TO:<b@y.test>'), '250 2.1.5 Ok', context());
      assert.match(await cmd(retry, 'DATA'), /^354 /);
      retry.write(Buffer.from(`${BODY}.\r\n`, 'latin1'));
      assert.equal(replyText(await retry.reply(REPLY_MS)), '250 2.0.0 Ok: queued');
      assert.match(await cmd(retry, 'QUIT'), /^221 /);
      retry.close();

      assert.equal(backend.accepted.length, 1);
      const got = backend.accepted[0]!.toString('latin1');
      const eol = got.indexOf('\r\n');
      const header = got.slice(0, eol);
      assert.match(header, /^X-Greylist: delayed \d+ seconds by postgrey-1\.\d+ at postgrey\.test; \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} \S+$/, got.slice(0, 200));
      assert.ok(Number(/delayed (\d+) seconds/.exec(header)![1]) >= 1, header);
      assert.equal(got.slice(eol + 2), BODY, 'after the one added line, the client\'s message byte for byte');
      assert.equal(got.split('X-Greylist').length - 1, 1, 'exactly once');
      assert.equal(backend.accepted[0]!.length, Buffer.byteLength(`${header}\r\n`, 'latin1') + Buffer.byteLength(BODY, 'latin1'));
      const msg = await p.waitForLog((l) => l.type === 'message', REPLY_MS);
      assert.deepEqual(msg.prepended, [header]);
      assert.ok(!p.logs.some((l) => l.code === 'PSW_POLICY_PREPEND' || l.code === 'PSW_POLICY_FAILED'), context());
      assert.match(grey.log(), /action=greylist, reason=new/);
      assert.match(grey.log(), /action=pass, reason=triplet found/);
    } finally {
      await p?.stop();
      await backend.stop();
      await grey.stop();
    }
  });
});
