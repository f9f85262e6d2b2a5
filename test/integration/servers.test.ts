/**
 * Server blocks in one process: an MX block (static route, xclient off, session mode) and a
 * second block (auth_http, transaction mode, its own server_name), each with its own listener.
 * Each block's sessions see only their block's settings; the rest is inherited from the top.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { AuthStub, okAnswer } from '../helpers/auth-stub.js';
import { FakeBackend } from '../helpers/fake-backend.js';
import { startPostern, type RunningPostern } from '../helpers/postern.js';
import { SmtpClient } from '../helpers/smtp-client.js';

describe('servers: two blocks, two behaviours, one process', () => {
  let mx: FakeBackend;
  let sub: FakeBackend;
  let stub: AuthStub;
  let p: RunningPostern;
  let ports: number[];

  before(async () => {
    mx = await FakeBackend.start();
    sub = await FakeBackend.start();
    stub = await AuthStub.start(() => okAnswer(sub.port));
    p = await startPostern({
      server_name: 'top.test',
      servers: [
        { listen: ['127.0.0.1:0'], route: { static: `127.0.0.1:${mx.port}` }, xclient: false },
        { listen: ['127.0.0.1:0'], server_name: 'submit.test', proxy_mode: 'transaction', route: { auth_http: { url: stub.url } } },
      ],
    });
    ports = p.server.addresses.map((a) => a.port);
  });
  after(async () => {
    await p.stop();
    await stub.stop();
    await mx.stop();
    await sub.stop();
  });

  async function send(port: number): Promise<string> {
    const c = await SmtpClient.connect(port);
    const greeting = (await c.reply()).lines[0]!;
    await c.cmd('EHLO client.test');
    await c.cmd('MAIL FROM:<s@x.test>');
    assert.equal(await c.cmd('RCPT TO:<r@y.test>'), '250 2.1.5 Ok');
    assert.equal(await c.data('Subject: s\r\n\r\nhi\r\n'), '250 2.0.0 Ok: queued');
    await c.cmd('QUIT');
    c.close();
    return greeting;
  }

  it('the first block: its static route, its server_name inherited from the top level, no XCLIENT', async () => {
    assert.equal(await send(ports[0]!), 'top.test ESMTP ready');
    assert.equal(mx.accepted.length, 1);
    assert.ok(!mx.commands.some((l) => l.startsWith('XCLIENT')), 'xclient: false in this block');
    assert.equal(stub.requests.length, 0, 'the static block never asks the auth service');
  });

  it('the second block: its own server_name, auth_http route and transaction mode (one access record per message)', async () => {
    assert.equal(await send(ports[1]!), 'submit.test ESMTP ready');
    assert.equal(sub.accepted.length, 1);
    assert.ok(sub.commands.some((l) => l.startsWith('XCLIENT')), 'xclient inherited (default on)');
    assert.equal(stub.requests.length, 1);
    assert.equal(stub.requests[0]!.get('X-Postern-Recipient'), '1');
    const m = await p.waitForLog((l) => l.type === 'message');
    assert.equal(m.backend, `127.0.0.1:${sub.port}`);
  });
});
