/**
 * Back-ends that refuse, stall, close or reset at every step of the replay and in the middle of
 * the relay. The invariant after each: the client saw 250 for a message only if the back-end
 * accepted it, and the session ended with the documented reply and log code.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FakeBackend, closedPort, type FakeBackendOptions } from '../helpers/fake-backend.js';
import { startPostern, type RunningPostern } from '../helpers/postern.js';
import { toRcpt } from '../helpers/preamble.js';
import type { SmtpClient } from '../helpers/smtp-client.js';

async function withBackend(opts: FakeBackendOptions, config: Record<string, unknown>, fn: (p: RunningPostern, b: FakeBackend) => Promise<void>): Promise<void> {
  const b = await FakeBackend.start(opts);
  const p = await startPostern({ route: { static: `127.0.0.1:${b.port}` }, timeouts: { backend: '1s' }, ...config });
  const socketsBefore = openSockets();
  try {
    await fn(p, b);
    // No session, socket or timer may outlive its client: the server must be empty again, and
    // every TCP socket of this process (client, Postern's both sides, back-end) closed.
    const deadline = Date.now() + 6000;
    while ((p.server.connections > 0 || openSockets() > socketsBefore) && Date.now() < deadline) {
      for (const s of b.sessions) s.socket.destroy(); // the fake back-end's own side
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(p.server.connections, 0, 'connections left open');
    assert.ok(openSockets() <= socketsBefore, `${openSockets() - socketsBefore} TCP sockets leaked`);
  } finally {
    await p.stop();
    await b.stop();
  }
}

/** Open TCP sockets of this process (libuv handles), servers excluded. */
function openSockets(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap').length;
}

describe('replay failures: 451 4.3.2 and a clean close', () => {
  it('connection refused', async () => {
    const p = await startPostern({ route: { static: `127.0.0.1:${await closedPort()}` } });
    try {
      const { c, rcpt } = await toRcpt(p.port);
      assert.equal(rcpt, '451 4.3.2 Internal server error');
      assert.ok(await c.waitClosed());
      await p.waitForLog((r) => r.code === 'PST_BACKEND_UNREACHABLE');
    } finally {
      await p.stop();
    }
  });

  const steps = ['greeting', 'EHLO', 'XCLIENT', 'MAIL'] as const;
  const behaviours = [
    ['refuses', (step: string) => (step === 'greeting' ? '554 5.3.2 go away' : '421 4.3.0 not now'), 'PST_BACKEND_REJECTED'],
    ['stalls', () => 'stall', 'PST_BACKEND_TIMEOUT'],
    ['closes', () => 'close', 'PST_BACKEND_CLOSED'],
    ['resets', () => 'reset', 'PST_BACKEND_CLOSED'],
    ['answers garbage', () => 'hello there', 'PST_BACKEND_INVALID_REPLY'],
  ] as const;
  for (const step of steps) {
    for (const [what, make, code] of behaviours) {
      it(`back-end ${what} at ${step}`, () => {
        const b = make(step);
        const opts: FakeBackendOptions =
          step === 'greeting' ? { greeting: b } : { onCommand: (l) => (l.toUpperCase().startsWith(step) && !(step === 'EHLO' && l !== 'EHLO proxy.test') ? b : undefined) };
        return withBackend(opts, {}, async (p) => {
          const { c, rcpt } = await toRcpt(p.port);
          assert.equal(rcpt, '451 4.3.2 Internal server error');
          assert.ok(await c.waitClosed());
          // A reset racing the TCP handshake may surface as a failed connect.
          const alt = step === 'greeting' && what === 'resets' ? 'PST_BACKEND_UNREACHABLE' : code;
          await p.waitForLog((r) => r.code === code || r.code === alt);
        });
      });
    }
  }

  // At RCPT a refusal is the client's own answer (relayed); every other fault is a 451.
  for (const [what, behaviour, code] of [
    ['stalls', 'stall', 'PST_BACKEND_TIMEOUT'],
    ['closes', 'close', 'PST_BACKEND_CLOSED'],
    ['resets', 'reset', 'PST_BACKEND_CLOSED'],
    ['answers garbage', 'hello there', 'PST_BACKEND_INVALID_REPLY'],
  ] as const) {
    it(`back-end ${what} at RCPT`, () =>
      withBackend({ onCommand: (l) => (l.startsWith('RCPT') ? behaviour : undefined) }, {}, async (p) => {
        const { c, rcpt } = await toRcpt(p.port);
        assert.equal(rcpt, '451 4.3.2 Internal server error');
        assert.ok(await c.waitClosed());
        await p.waitForLog((r) => r.code === code);
      }));
  }

  it('proxy_pass_error_message: the back-end\'s own refusal text reaches the client', () =>
    withBackend({ onCommand: (l) => (l.startsWith('MAIL') ? '553 5.7.1 <a@x.test>: Sender address rejected: not owned' : undefined) }, { proxy_pass_error_message: true }, async (p) => {
      const { c, rcpt } = await toRcpt(p.port);
      assert.equal(rcpt, '553 5.7.1 <a@x.test>: Sender address rejected: not owned');
      assert.ok(await c.waitClosed());
    }));

  it('Postern says QUIT to a back-end that refused a step', () =>
    withBackend({ onCommand: (l) => (l.startsWith('MAIL') ? '451 4.3.0 busy' : undefined) }, {}, async (p, b) => {
      const { c } = await toRcpt(p.port);
      await c.waitClosed();
      const deadline = Date.now() + 2000;
      while (!b.commands.includes('QUIT') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.equal(b.commands.at(-1), 'QUIT');
    }));
});

describe('relay failures: the client never sees 250 for a message the back-end did not accept', () => {
  async function sendMessage(p: RunningPostern): Promise<{ c: SmtpClient; final: string | null }> {
    const { c, rcpt } = await toRcpt(p.port);
    assert.equal(rcpt, '250 2.1.5 Ok');
    assert.equal(await c.cmd('DATA'), '354 End data with <CR><LF>.<CR><LF>');
    c.write(`Subject: t\r\n\r\n${'line of text\r\n'.repeat(2000)}.\r\n`);
    try {
      const r = await c.reply(3000);
      return { c, final: `${r.code}` };
    } catch {
      return { c, final: null };
    }
  }

  for (const fault of ['close', 'reset'] as const) {
    it(`back-end ${fault}s in the middle of DATA`, () =>
      withBackend({ onDataChunk: () => fault }, {}, async (p, b) => {
        const { c, final } = await sendMessage(p);
        assert.equal(final, null, `the client got a reply: ${c.transcript}`);
        assert.ok(await c.waitClosed());
        assert.equal(b.accepted.length, 0);
        if (fault === 'reset') await p.waitForLog((r) => r.type === 'access' && r.outcome === 'PST_BACKEND_LOST');
      }));

    it(`back-end ${fault}s after the final dot, before its reply`, () =>
      withBackend({ onMessage: () => fault }, {}, async (p, b) => {
        const { c, final } = await sendMessage(p);
        assert.equal(final, null, `the client got a reply: ${c.transcript}`);
        assert.ok(await c.waitClosed());
        assert.equal(b.accepted.length, 0);
      }));
  }

  it('back-end stalls after the final dot: relay_idle closes both sides, no reply invented', () =>
    withBackend({ onMessage: () => 'stall' }, { timeouts: { backend: '1s', relay_idle: '500ms' } }, async (p) => {
      const { c, final } = await sendMessage(p);
      assert.equal(final, null);
      assert.ok(await c.waitClosed());
      await p.waitForLog((r) => r.type === 'access' && r.outcome === 'PST_RELAY_IDLE_TIMEOUT');
    }));

  it('the back-end\'s temporary refusal of the message reaches the client unchanged', () =>
    withBackend({ onMessage: () => '451 4.3.0 queue file write error' }, {}, async (p, b) => {
      const { c, final } = await sendMessage(p);
      assert.equal(final, '451');
      assert.equal(b.accepted.length, 0);
      c.close();
    }));
});
