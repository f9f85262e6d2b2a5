/**
 * Abuse: connection floods, slowloris, connection caps, PROXY/XCLIENT injection from the client.
 * Bounded so they run in `npm test`; the soak test (test/soak) runs the long mix.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, it } from 'node:test';
import { FakeBackend } from '../helpers/fake-backend.js';
import { startPostern } from '../helpers/postern.js';
import { greeted } from '../helpers/preamble.js';
import { SmtpClient, replyText } from '../helpers/smtp-client.js';

function rssOfThisProcess(): number {
  return process.memoryUsage().rss;
}

describe('connection floods and caps', () => {
  it('2,000 concurrent connections are all greeted and held; closing them leaves nothing behind', async () => {
    const p = await startPostern({ route: { static: '127.0.0.1:1' } });
    const sockets: net.Socket[] = [];
    try {
      let greeted = 0;
      for (let i = 0; i < 2000; i += 250) {
        await Promise.all(Array.from({ length: 250 }, () => new Promise<void>((resolve, reject) => {
          const s = net.connect(p.port, '127.0.0.1');
          sockets.push(s);
          s.once('data', (d) => {
            if (d.toString().startsWith('220 ')) greeted++;
            resolve();
          });
          s.once('error', reject);
        })));
      }
      assert.equal(greeted, 2000);
      assert.equal(p.server.connections, 2000);
      const before = rssOfThisProcess();
      for (const s of sockets) s.destroy();
      const deadline = Date.now() + 5000;
      while (p.server.connections > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.equal(p.server.connections, 0);
      assert.ok(rssOfThisProcess() < before + 64 * 2 ** 20);
    } finally {
      for (const s of sockets) s.destroy();
      await p.stop();
    }
  });

  it('limits.max_connections: the next client is told 421 and closed', async () => {
    const p = await startPostern({ route: { static: '127.0.0.1:1' }, limits: { max_connections: 3 } });
    const held: SmtpClient[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        held.push((await greeted(p.port)).c);
      }
      const extra = await SmtpClient.connect(p.port);
      assert.equal(replyText(await extra.reply()), '421 4.7.0 proxy.test Too many connections, try again later');
      assert.ok(await extra.waitClosed());
      held.pop()!.close();
      await new Promise((r) => setTimeout(r, 100));
      const again = await SmtpClient.connect(p.port);
      assert.equal((await again.reply()).code, 220, 'a slot freed up');
      again.close();
    } finally {
      for (const c of held) c.close();
      await p.stop();
    }
  });

  it('slowloris (one byte a second) is bounded by max_connections_per_client while others are served', async () => {
    const p = await startPostern({ route: { static: '127.0.0.1:1' }, limits: { max_connections_per_client: 5 } });
    const slow: net.Socket[] = [];
    try {
      const drip = setInterval(() => {
        for (const s of slow) s.write('N');
      }, 1000);
      for (let i = 0; i < 5; i++) {
        const s = net.connect(p.port, '127.0.0.1');
        s.on('error', () => {});
        slow.push(s);
      }
      await new Promise((r) => setTimeout(r, 1200));
      // The same address is now at its cap…
      const sixth = await SmtpClient.connect(p.port);
      assert.equal(replyText(await sixth.reply()), '421 4.7.0 proxy.test Too many connections from your address');
      // …while a client from another address is served normally.
      const other = await SmtpClient.connect(p.port, '127.0.0.1', '127.0.0.2');
      assert.equal(replyText(await other.reply()), '220 proxy.test ESMTP ready');
      assert.equal(await other.cmd('NOOP'), '250 2.0.0 OK');
      other.close();
      clearInterval(drip);
      await p.waitForLog((r) => r.code === 'PST_CLIENT_CONNECTIONS');
    } finally {
      for (const s of slow) s.destroy();
      await p.stop();
    }
  });
});

describe('injection from the client side', () => {
  it('a PROXY protocol header, XCLIENT and XFORWARD sent by the client are refused and never reach the back-end', async () => {
    const b = await FakeBackend.start();
    const p = await startPostern({ route: { static: `127.0.0.1:${b.port}` } });
    try {
      const { c } = await greeted(p.port);
      assert.equal(await c.cmd('PROXY TCP4 203.0.113.9 192.0.2.1 4444 25'), '500 5.5.1 Invalid command');
      await c.cmd('EHLO c.test');
      assert.equal(await c.cmd('XCLIENT ADDR=203.0.113.9'), '550 5.7.0 Command not permitted');
      assert.equal(await c.cmd('XFORWARD ADDR=203.0.113.9'), '550 5.7.0 Command not permitted');
      await c.cmd('MAIL FROM:<a@x.test>');
      assert.equal(await c.cmd('RCPT TO:<u@y.test>'), '250 2.1.5 Ok');
      c.close();
      assert.ok(!b.commands.some((l) => l.includes('203.0.113.9')), b.commands.join('\n'));
    } finally {
      await p.stop();
      await b.stop();
    }
  });
});
