/**
 * How a session that the client ends is closed. After QUIT and nothing more, Postern closes the
 * socket as soon as the 221 is with the kernel — no half-close waiting for the client's FIN, as
 * nginx closes after its 221 — so its session is over (access record) while the client still
 * holds its end. With bytes pipelined after QUIT it half-closes instead (a plain close with
 * unread bytes would be a reset that may take the 221 with it), and waits for the client.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { FakeBackend } from '../helpers/fake-backend.js';
import { startPostern, type RunningPostern } from '../helpers/postern.js';
import { greeted } from '../helpers/preamble.js';
import { replyText } from '../helpers/smtp-client.js';

describe('closing after QUIT', () => {
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

  const record = (port: number) => p.logs.find((l) => l.type === 'access' && l.client === `127.0.0.1:${port}`);

  it('QUIT alone: 221, then closed at once — the session is over while the client still holds its end', async () => {
    // allowHalfOpen: the client does not answer the server's FIN with its own.
    const c = net.connect({ port: p.port, host: '127.0.0.1', allowHalfOpen: true });
    let text = '';
    c.on('data', (d: Buffer) => (text += d.toString('latin1')));
    const ended = new Promise<void>((r) => c.once('end', r));
    await new Promise<void>((r) => c.once('connect', r));
    const port = c.localPort!;
    for (let i = 0; i < 40 && !text.includes('\r\n'); i++) await sleep(25);
    c.write('QUIT\r\n');
    await ended;
    assert.match(text, /\r\n221 2\.0\.0 [^\r]*\r\n$/);
    // After a half-close Postern would wait for the client's FIN, or its 2 s linger: the record comes long before.
    for (let i = 0; i < 40 && !record(port); i++) await sleep(25);
    assert.equal(record(port)?.outcome, 'quit', 'the session ended without the client closing');
    assert.equal(record(port)?.code, 221);
    c.destroy();
  });

  it('QUIT with bytes after it: the 221 arrives whole (a half-close, not a reset that could take it along)', async () => {
    const { c } = await greeted(p.port);
    const port = c.socket.localPort!;
    c.write('QUIT\r\nNOOP\r\n');
    assert.match(replyText(await c.reply()), /^221 /);
    assert.ok(await c.waitClosed(1000), 'its FIN came');
    const r = await p.waitForLog((l) => l.type === 'access' && l.client === `127.0.0.1:${port}`);
    assert.equal(r.code, 221);
    c.close();
  });
});
