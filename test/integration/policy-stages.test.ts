/**
 * Policy servers (checks.policy) at every stage, through a real Postern on loopback: scripted
 * policy servers on real TCP sockets speaking the Postfix policy protocol and answering by
 * protocol_state and the other attributes, a scripted back-end that records every byte, a raw client.
 * - connect: REJECT replaces the greeting with Postfix's `554 5.7.1 <unknown[127.0.0.1]>: Client
 *   host rejected: …` and closes; DEFER (and any 4NN) is said as 421 and closes; DUNNO greets.
 * - HELO/EHLO, MAIL, DATA (transaction mode): a refusal answers that command only, in Postfix's
 *   words; the session goes on, the back-end never sees what was refused; what was asked carries
 *   Postfix's attributes (protocol_state, helo_name, size, recipient_count = accepted recipients).
 * - OK from the first server skips the second at that stage; DUNNO goes on to it.
 * - PREPEND: added at the very top of the message, byte-exact and once, in transaction mode with
 *   `prepend: true`; otherwise logged (PSW_POLICY_PREPEND) and the message is untouched.
 * - A server that is down, hangs, answers garbage or closes mid-reply: `default: defer` gives
 *   Postfix's 451 4.3.5 at that command (421 and close at connect), `default: dunno` goes on; one
 *   PSW_POLICY_FAILED each; bounded by the timeout.
 * - Injection: a policy answer cannot add a reply line; a PREPEND with CR or NUL is not added,
 *   other control bytes become spaces and a leading dot is stuffed; a client's HELO, MAIL or AUTH
 *   cannot add an attribute line to a policy request.
 * - Each refusal, at connect, HELO, MAIL, RCPT or DATA, is in the access record's `checks.refused`.
 * - An 8-bit (SMTPUTF8) sender reaches the policy server as the bytes the client sent.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, it } from 'node:test';
import { POLICY_ATTRIBUTE_NAMES } from '../../src/checks/policy/protocol.js';
import { AuthStub } from '../helpers/auth-stub.js';
import { FakeBackend, type FakeBackendOptions } from '../helpers/fake-backend.js';
import { scriptedPolicyServer, type ReceivedRequest, type ScriptedServer } from '../helpers/policy-servers.js';
import { startPostern, type LogRecord, type RunningPostern } from '../helpers/postern.js';
import { replyText, SmtpClient } from '../helpers/smtp-client.js';

type Attrs = Map<string, string>;
/** A scripted answer: an action (sent as `action=<it>` and the empty line), raw bytes, or a fault. */
type Answer = string | { raw: string | Buffer } | 'hang' | 'close-mid-reply';

/** Bounded waits everywhere: no reply takes this long unless something hangs. */
const REPLY_MS = 3000;

async function policy(answer: (a: Attrs, req: ReceivedRequest) => Answer): Promise<ScriptedServer> {
  return scriptedPolicyServer((req, s) => {
    const a = answer(req.attrs, req);
    if (a === 'hang') return;
    if (a === 'close-mid-reply') {
      s.end('action=REJECT half a rep');
      return;
    }
    s.write(typeof a === 'string' ? `action=${a}\n\n` : a.raw);
  });
}

interface Rig {
  p: RunningPostern;
  backend: FakeBackend;
  stop(): Promise<void>;
}

/** A Postern routing statically to a fake back-end, with `config` on top (checks, proxy_mode…). */
async function rig(config: Record<string, unknown>, backendOpts: FakeBackendOptions = {}, extra: { close(): Promise<void> }[] = []): Promise<Rig> {
  const backend = await FakeBackend.start(backendOpts);
  let p: RunningPostern;
  try {
    p = await startPostern({ route: { static: `127.0.0.1:${backend.port}` }, ...config });
  } catch (err) {
    await backend.stop();
    for (const e of extra) await e.close();
    throw err;
  }
  return {
    p,
    backend,
    async stop() {
      await p.stop();
      await backend.stop();
      for (const e of extra) await e.close();
    },
  };
}

interface Client {
  c: SmtpClient;
  /** `127.0.0.1:PORT`, the access record's `client`. */
  id: string;
  localPort: number;
}

async function connect(port: number): Promise<Client> {
  const c = await SmtpClient.connect(port);
  const localPort = c.socket.localPort!;
  return { c, id: `127.0.0.1:${localPort}`, localPort };
}

/** Connected, greeted and past EHLO. */
async function greeted(port: number, helo = 'client.test'): Promise<Client> {
  const k = await connect(port);
  assert.equal((await k.c.reply(REPLY_MS)).code, 220);
  assert.match(await cmd(k.c, `EHLO ${helo}`), /^250 /);
  return k;
}

async function cmd(c: SmtpClient, line: string): Promise<string> {
  c.send(line);
  return replyText(await c.reply(REPLY_MS));
}

async function data(c: SmtpClient, body: string): Promise<string> {
  const r = await cmd(c, 'DATA');
  if (!r.startsWith('354')) return r;
  c.write(Buffer.from(`${body}.\r\n`, 'latin1'));
  return replyText(await c.reply(REPLY_MS));
}

async function quit(c: SmtpClient): Promise<void> {
  assert.match(await cmd(c, 'QUIT'), /^221 /);
  assert.ok(await c.waitClosed(REPLY_MS));
  c.close();
}

/** The access record of one client's session. */
const accessOf = (p: RunningPostern, k: Client): Promise<LogRecord> => p.waitForLog((l) => l.type === 'access' && l.client === k.id, REPLY_MS);

const refusedOf = (r: LogRecord): unknown => (r.checks as { refused?: unknown } | undefined)?.refused;

/** A body that shows any change: a leading dot (stuffed), 8-bit bytes, a bare LF. */
const BODY = 'Subject: policy\r\n\r\n..stuffed line\r\n8-bit \xe9\xff and a bare\nLF\r\n';

/**
 * A loopback address where nothing listens. Not an ephemeral port that was free a moment ago
 * (closedPort): with many servers starting at once in this file, one of them may be given that very
 * port. Port 1 (tcpmux) is below the ephemeral range and never served on a test machine.
 */
async function refusedAddress(): Promise<string> {
  const code = await new Promise<string>((resolve) => {
    const s = net.connect(1, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve('connected');
    });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
  assert.equal(code, 'ECONNREFUSED', 'something listens on 127.0.0.1:1');
  return 'tcp:127.0.0.1:1';
}

const server = (address: string, o: Record<string, unknown>): Record<string, unknown> => ({ server: address, timeout: '2s', ...o });

describe('policy servers at every stage, through Postern', { concurrency: true, timeout: 20_000 }, () => {
  describe('connect', { concurrency: true }, () => {
    const refusals: [string, string, string][] = [
      ['REJECT', 'REJECT Go away', '554 5.7.1 <unknown[127.0.0.1]>: Client host rejected: Go away'],
      ['REJECT without text', 'REJECT', '554 5.7.1 <unknown[127.0.0.1]>: Client host rejected: Access denied'],
      ['DEFER: said as 421', 'DEFER Try later', '421 4.7.1 <unknown[127.0.0.1]>: Client host rejected: Try later'],
      ['450 with its own code: said as 421', '450 4.7.2 Slow down', '421 4.7.2 <unknown[127.0.0.1]>: Client host rejected: Slow down'],
      ['DEFER_IF_PERMIT: said as 421', 'DEFER_IF_PERMIT', '421 4.7.1 <unknown[127.0.0.1]>: Client host rejected: Service unavailable'],
      ['550 with its own code', '550 5.7.0 Not here', '550 5.7.0 <unknown[127.0.0.1]>: Client host rejected: Not here'],
    ];
    for (const [name, action, want] of refusals) {
      it(`${name}: the reply replaces the greeting and the connection is closed`, async () => {
        const srv = await policy(() => action);
        const r = await rig({ checks: { policy: [server(srv.address, { stages: ['connect'] })] } }, {}, [srv]);
        try {
          const k = await connect(r.p.port);
          const greeting = await k.c.reply(REPLY_MS);
          assert.equal(replyText(greeting), want);
          assert.equal(greeting.lines.length, 1);
          assert.ok(await k.c.waitClosed(REPLY_MS), 'closed after the refusal');
          assert.equal(k.c.transcript, `${want}\r\n`, 'nothing but the refusal');
          assert.equal(r.backend.sessions.length, 0);
          const a = srv.requests[0]!.attrs;
          assert.equal(srv.requests.length, 1);
          assert.equal(a.get('request'), 'smtpd_access_policy');
          assert.equal(a.get('protocol_state'), 'CONNECT');
          assert.equal(a.get('protocol_name'), 'SMTP');
          assert.equal(a.get('client_address'), '127.0.0.1');
          assert.equal(a.get('client_port'), String(k.localPort));
          assert.equal(a.get('client_name'), 'unknown');
          assert.equal(a.get('reverse_client_name'), 'unknown');
          assert.equal(a.get('server_address'), '127.0.0.1');
          assert.equal(a.get('server_port'), String(r.p.port));
          for (const empty of ['helo_name', 'sender', 'recipient']) assert.equal(a.get(empty), '', empty);
          assert.equal(a.get('recipient_count'), '0');
          const log = await r.p.waitForLog((l) => l.code === 'PST_POLICY_CONNECT_REFUSED', REPLY_MS);
          assert.match(String(log.detail), new RegExp(`at CONNECT: ${action.split(' ')[0]}`));
          const rec = await accessOf(r.p, k);
          assert.equal(rec.outcome, 'PST_POLICY_CONNECT_REFUSED');
          assert.equal(rec.code, Number(want.slice(0, 3)));
        } finally {
          await r.stop();
        }
      });
    }

    // docs/errors.md: `checks.refused` lists "each refusal by a check or the router", connect-time ones too.
    it('a connect refusal is listed in the access record\'s checks.refused', async () => {
      const srv = await policy(() => 'REJECT Go away');
      const r = await rig({ checks: { policy: [server(srv.address, { stages: ['connect'] })] } }, {}, [srv]);
      try {
        const k = await connect(r.p.port);
        await k.c.waitClosed(REPLY_MS);
        const rec = await accessOf(r.p, k);
        assert.deepEqual(refusedOf(rec), ['PST_POLICY_CONNECT_REFUSED: 554']);
      } finally {
        await r.stop();
      }
    });

    it('DUNNO: the normal greeting, and the message goes through', async () => {
      const srv = await policy(() => 'DUNNO');
      const r = await rig({ checks: { policy: [server(srv.address, { stages: ['connect'] })] } }, {}, [srv]);
      try {
        const k = await greeted(r.p.port);
        assert.match(k.c.transcript, /^220 proxy\.test /);
        assert.equal(await cmd(k.c, 'MAIL FROM:<s@x.test>'), '250 2.1.0 OK');
        assert.equal(await cmd(k.c, 'RCPT TO:<r@y.test>'), '250 2.1.5 Ok');
        assert.equal(await data(k.c, BODY), '250 2.0.0 Ok: queued');
        await quit(k.c);
        assert.equal(r.backend.accepted[0]!.toString('latin1'), BODY);
        assert.equal(srv.requests.length, 1, 'asked once, at connect only');
        const a = srv.requests[0]!.attrs;
        assert.equal(a.get('protocol_state'), 'CONNECT');
        assert.equal(a.get('client_port'), String(k.localPort));
        assert.equal(a.get('server_port'), String(r.p.port));
        const rec = await accessOf(r.p, k);
        assert.equal(refusedOf(rec), undefined);
      } finally {
        await r.stop();
      }
    });
  });

  describe('HELO/EHLO', { concurrency: true }, () => {
    it('a refusal answers that EHLO or HELO only; the session goes on and a later EHLO passes', async () => {
      const srv = await policy((a) => (a.get('helo_name') === 'bad.test' ? 'REJECT Bad HELO' : 'DUNNO'));
      const r = await rig({ checks: { policy: [server(srv.address, { stages: ['helo'] })] } }, {}, [srv]);
      try {
        const k = await connect(r.p.port);
        const c = k.c;
        assert.equal((await c.reply(REPLY_MS)).code, 220);
        assert.equal(await cmd(c, 'EHLO bad.test'), '554 5.7.1 <bad.test>: Helo command rejected: Bad HELO');
        assert.equal(await cmd(c, 'MAIL FROM:<s@x.test>'), '503 5.5.1 Send HELO/EHLO first', 'the refused EHLO did not count');
        assert.equal(await cmd(c, 'HELO bad.test'), '554 5.7.1 <bad.test>: Helo command rejected: Bad HELO');
        assert.equal(await cmd(c, 'NOOP'), '250 2.0.0 OK');
        c.send('EHLO good.test');
        const ehlo = await c.reply(REPLY_MS);
        assert.equal(ehlo.code, 250);
        assert.ok(ehlo.lines.length > 1, 'the EHLO reply with its extensions');
        assert.equal(await cmd(c, 'MAIL FROM:<s@x.test>'), '250 2.1.0 OK');
        assert.equal(await cmd(c, 'RCPT TO:<r@y.test>'), '250 2.1.5 Ok');
        assert.equal(await data(c, BODY), '250 2.0.0 Ok: queued');
        await quit(c);
        assert.deepEqual(srv.requests.map((q) => [q.attrs.get('protocol_state'), q.attrs.get('protocol_name'), q.attrs.get('helo_name')]), [
          ['EHLO', 'ESMTP', 'bad.test'],
          ['HELO', 'SMTP', 'bad.test'],
          ['EHLO', 'ESMTP', 'good.test'],
        ]);
        for (const q of srv.requests) {
          assert.equal(q.attrs.get('client_address'), '127.0.0.1');
          assert.equal(q.attrs.get('server_port'), String(r.p.port));
          assert.equal(q.attrs.get('sender'), '');
        }
        assert.ok(r.backend.commands.some((l) => /^XCLIENT .*HELO=good\.test/.test(l)), r.backend.commands.join(' | '));
        assert.ok(!r.backend.commands.some((l) => l.includes('bad.test')), 'the back-end never heard of the refused name');
        const rec = await accessOf(r.p, k);
        assert.deepEqual(refusedOf(rec), ['PST_POLICY_REFUSED: 554', 'PST_POLICY_REFUSED: 554']);
        assert.equal(r.p.logs.filter((l) => l.code === 'PST_POLICY_REFUSED').length, 2);
      } finally {
        await r.stop();
      }
    });
  });

  describe('MAIL', { concurrency: true }, () => {
    for (const mode of ['session', 'transaction'] as const) {
      it(`${mode} mode: a refusal answers that MAIL with the sender named; the back-end never sees it; a later MAIL passes`, async () => {
        const srv = await policy((a) => {
          if (a.get('sender') === 'bad@x.test') return 'REJECT Not you';
          if (a.get('sender') === '') return 'DEFER No bounces now';
          return 'DUNNO';
        });
        const r = await rig({ proxy_mode: mode, checks: { policy: [server(srv.address, { stages: ['mail'] })] } }, {}, [srv]);
        try {
          const k = await greeted(r.p.port);
          const c = k.c;
          assert.equal(await cmd(c, 'MAIL FROM:<bad@x.test> SIZE=12345'), '554 5.7.1 <bad@x.test>: Sender address rejected: Not you');
          assert.equal(await cmd(c, 'RCPT TO:<r@y.test>'), '503 5.5.1 Need MAIL command', 'no transaction was opened');
          assert.equal(await cmd(c, 'MAIL FROM:<>'), '450 4.7.1 <>: Sender address rejected: No bounces now');
          assert.equal(await cmd(c, 'MAIL FROM:<s@x.test> SIZE=99'), '250 2.1.0 OK');
          assert.equal(await cmd(c, 'RCPT TO:<r@y.test>'), '250 2.1.5 Ok');
          assert.equal(await data(c, BODY), '250 2.0.0 Ok: queued');
          await quit(c);
          assert.deepEqual(srv.requests.map((q) => [q.attrs.get('protocol_state'), q.attrs.get('sender'), q.attrs.get('size')]), [
            ['MAIL', 'bad@x.test', '12345'],
            ['MAIL', '', '0'],
            ['MAIL', 's@x.test', '99'],
          ]);
          for (const q of srv.requests) {
            assert.equal(q.attrs.get('helo_name'), 'client.test');
            assert.equal(q.attrs.get('protocol_name'), 'ESMTP');
            assert.equal(q.attrs.get('recipient'), '');
          }
          assert.deepEqual(r.backend.commands.filter((l) => l.startsWith('MAIL')), ['MAIL FROM:<s@x.test> SIZE=99']);
          assert.equal(r.backend.accepted[0]!.toString('latin1'), BODY);
          const rec = await accessOf(r.p, k);
          assert.deepEqual(refusedOf(rec), ['PST_POLICY_REFUSED: 554', 'PST_POLICY_REFUSED: 450']);
        } finally {
          await r.stop();
        }
      });
    }
  });

  describe('DATA (transaction mode)', { concurrency: true }, () => {
    it('a refusal answers DATA; the back-end never receives DATA; recipient_count is the accepted recipients', async () => {
      const srv = await policy((a) => (a.get('sender') === 'bad@x.test' ? 'REJECT No data for you' : 'DUNNO'));
      const r = await rig(
        { proxy_mode: 'transaction', checks: { policy: [server(srv.address, { stages: ['data'] })] } },
        { onCommand: (l) => (l === 'RCPT TO:<nobody@y.test>' ? '550 5.1.1 <nobody@y.test>: Recipient address rejected: User unknown' : undefined) },
        [srv],
      );
      try {
        const k = await greeted(r.p.port);
        const c = k.c;
        assert.equal(await cmd(c, 'MAIL FROM:<bad@x.test>'), '250 2.1.0 OK');
        assert.equal(await cmd(c, 'RCPT TO:<a@y.test>'), '250 2.1.5 Ok');
        assert.equal(await cmd(c, 'RCPT TO:<nobody@y.test>'), '550 5.1.1 <nobody@y.test>: Recipient address rejected: User unknown');
        assert.equal(await cmd(c, 'RCPT TO:<c@y.test>'), '250 2.1.5 Ok');
        assert.equal(await cmd(c, 'DATA'), '554 5.7.1 <DATA>: Data command rejected: No data for you');
        assert.ok(!r.backend.commands.includes('DATA'), 'the back-end never received DATA');
        assert.equal(await cmd(c, 'RSET'), '250 2.0.0 Ok', 'the back-end\'s own reply to RSET');
        assert.equal(await cmd(c, 'MAIL FROM:<s@x.test>'), '250 2.1.0 OK');
        assert.equal(await cmd(c, 'RCPT TO:<a@y.test>'), '250 2.1.5 Ok');
        assert.equal(await data(c, BODY), '250 2.0.0 Ok: queued');
        await quit(c);
        assert.deepEqual(srv.requests.map((q) => [q.attrs.get('protocol_state'), q.attrs.get('sender'), q.attrs.get('recipient_count'), q.attrs.get('recipient')]), [
          ['DATA', 'bad@x.test', '2', ''],
          ['DATA', 's@x.test', '1', ''],
        ]);
        assert.deepEqual(r.backend.commands.filter((l) => /^(MAIL|RCPT|DATA|RSET)/.test(l)), [
          'MAIL FROM:<bad@x.test>', 'RCPT TO:<a@y.test>', 'RCPT TO:<nobody@y.test>', 'RCPT TO:<c@y.test>', 'RSET',
          'MAIL FROM:<s@x.test>', 'RCPT TO:<a@y.test>', 'DATA',
        ]);
        assert.equal(r.backend.accepted.length, 1);
        assert.equal(r.backend.accepted[0]!.toString('latin1'), BODY);
        const rec = await accessOf(r.p, k);
        assert.deepEqual(refusedOf(rec), ['PST_POLICY_REFUSED: 554']);
        assert.equal(rec.messages, 1);
      } finally {
        await r.stop();
      }
    });
  });

  describe('two servers', { concurrency: true }, () => {
    it('OK from the first skips the second at that stage; DUNNO goes on to the second', async () => {
      // A: OK for senders and recipients named ok…, else DUNNO. B: refuses everything it is asked.
      const a = await policy((x) => {
        const who = x.get('protocol_state') === 'MAIL' ? x.get('sender') : x.get('recipient');
        return who?.startsWith('ok') ? 'OK' : 'DUNNO';
      });
      const b = await policy(() => 'REJECT B says no');
      const r = await rig({ proxy_mode: 'transaction', checks: { policy: [server(a.address, { stages: ['mail', 'rcpt'] }), server(b.address, { stages: ['mail', 'rcpt'] })] } }, {}, [a, b]);
      try {
        const k = await greeted(r.p.port);
        assert.equal(await cmd(k.c, 'MAIL FROM:<ok@x.test>'), '250 2.1.0 OK');
        assert.equal(await cmd(k.c, 'RCPT TO:<ok1@y.test>'), '250 2.1.5 Ok');
        assert.equal(b.requests.length, 0, 'B was not asked after A\'s OK');
        assert.equal(await cmd(k.c, 'RCPT TO:<other@y.test>'), '554 5.7.1 <other@y.test>: Recipient address rejected: B says no');
        assert.equal(await cmd(k.c, 'RCPT TO:<ok2@y.test>'), '250 2.1.5 Ok');
        assert.equal(await data(k.c, BODY), '250 2.0.0 Ok: queued');
        assert.equal(await cmd(k.c, 'MAIL FROM:<plain@x.test>'), '554 5.7.1 <plain@x.test>: Sender address rejected: B says no');
        await quit(k.c);
        assert.deepEqual(a.requests.map((q) => `${q.attrs.get('protocol_state')} ${q.attrs.get('sender')} ${q.attrs.get('recipient')}`), [
          'MAIL ok@x.test ', 'RCPT ok@x.test ok1@y.test', 'RCPT ok@x.test other@y.test', 'RCPT ok@x.test ok2@y.test', 'MAIL plain@x.test ',
        ]);
        assert.deepEqual(b.requests.map((q) => `${q.attrs.get('protocol_state')} ${q.attrs.get('sender')} ${q.attrs.get('recipient')}`), [
          'RCPT ok@x.test other@y.test', 'MAIL plain@x.test ',
        ]);
        assert.deepEqual(r.backend.commands.filter((l) => l.startsWith('RCPT')), ['RCPT TO:<ok1@y.test>', 'RCPT TO:<ok2@y.test>']);
        const rec = await accessOf(r.p, k);
        assert.deepEqual(refusedOf(rec), ['PST_POLICY_REFUSED: 554', 'PST_POLICY_REFUSED: 554']);
      } finally {
        await r.stop();
      }
    });
  });

  describe('PREPEND', { concurrency: true }, () => {
    /** A server that asks for one header at every stage (the same one for every recipient). */
    const prepender = (): Promise<ScriptedServer> => policy((a) => {
      switch (a.get('protocol_state')) {
        case 'CONNECT':
          return 'PREPEND X-Policy-Connect: ok';
        case 'EHLO':
          return `PREPEND X-Policy-Helo: ${a.get('helo_name')}`;
        case 'MAIL':
          return `PREPEND X-Policy-Mail: ${a.get('sender')}`;
        case 'RCPT':
          return 'PREPEND X-Policy-Rcpt: seen';
        default:
          return `PREPEND X-Policy-Data: ${a.get('recipient_count')}`;
      }
    });
    const ALL = ['connect', 'helo', 'mail', 'rcpt', 'data'];

    it('transaction mode, prepend: true: every stage\'s header at the very top of the body, in stage order, each once, the rest byte for byte', async () => {
      const srv = await prepender();
      const r = await rig({ proxy_mode: 'transaction', checks: { policy: [server(srv.address, { stages: ALL, prepend: true })] } }, {}, [srv]);
      try {
        const k = await greeted(r.p.port);
        const c = k.c;
        assert.equal(await cmd(c, 'MAIL FROM:<s1@x.test>'), '250 2.1.0 OK');
        assert.equal(await cmd(c, 'RCPT TO:<a@y.test>'), '250 2.1.5 Ok');
        assert.equal(await cmd(c, 'RCPT TO:<b@y.test>'), '250 2.1.5 Ok');
        assert.equal(await data(c, BODY), '250 2.0.0 Ok: queued');
        // The next message of the session: the connect and HELO headers again, its own for the rest.
        const body2 = 'Subject: second\r\n\r\nagain\r\n';
        assert.equal(await cmd(c, 'MAIL FROM:<s2@x.test>'), '250 2.1.0 OK');
        assert.equal(await cmd(c, 'RCPT TO:<c@y.test>'), '250 2.1.5 Ok');
        assert.equal(await data(c, body2), '250 2.0.0 Ok: queued');
        await quit(c);
        const top1 = ['X-Policy-Connect: ok', 'X-Policy-Helo: client.test', 'X-Policy-Mail: s1@x.test', 'X-Policy-Rcpt: seen', 'X-Policy-Data: 2'];
        const top2 = ['X-Policy-Connect: ok', 'X-Policy-Helo: client.test', 'X-Policy-Mail: s2@x.test', 'X-Policy-Rcpt: seen', 'X-Policy-Data: 1'];
        assert.equal(r.backend.accepted.length, 2);
        assert.equal(r.backend.accepted[0]!.toString('latin1'), top1.map((h) => `${h}\r\n`).join('') + BODY);
        assert.equal(r.backend.accepted[1]!.toString('latin1'), top2.map((h) => `${h}\r\n`).join('') + body2);
        // `accepted` is every byte the back-end got after its 354: the headers come first, nothing before them.
        assert.equal(r.backend.sessions.length, 1);
        assert.equal(r.backend.sessions[0]!.commands.filter((l) => l === 'DATA').length, 2, 'one DATA per message, nothing sent ahead of it');
        const msgs = r.p.logs.filter((l) => l.type === 'message');
        assert.deepEqual(msgs.map((m) => m.prepended), [top1, top2]);
        assert.ok(!r.p.logs.some((l) => l.code === 'PSW_POLICY_PREPEND'), 'applied, so not logged as not applied');
      } finally {
        await r.stop();
      }
    });

    for (const [name, mode, stages] of [
      ['transaction mode, prepend: false', 'transaction', ALL],
      ['session mode (prepend: false, the only choice)', 'session', ['connect', 'helo', 'mail', 'rcpt']],
    ] as const) {
      it(`${name}: the body is unchanged and each PREPEND is logged as not applied`, async () => {
        const srv = await prepender();
        const r = await rig({ proxy_mode: mode, checks: { policy: [server(srv.address, { stages: [...stages] })] } }, {}, [srv]);
        try {
          const k = await greeted(r.p.port);
          assert.equal(await cmd(k.c, 'MAIL FROM:<s1@x.test>'), '250 2.1.0 OK');
          assert.equal(await cmd(k.c, 'RCPT TO:<a@y.test>'), '250 2.1.5 Ok');
          assert.equal(await data(k.c, BODY), '250 2.0.0 Ok: queued');
          await quit(k.c);
          assert.equal(r.backend.accepted[0]!.toString('latin1'), BODY, 'byte for byte, nothing added');
          const logged = r.p.logs.filter((l) => l.code === 'PSW_POLICY_PREPEND');
          assert.deepEqual(logged.map((l) => [l.stage, l.header, l.server]), [
            ['connect', 'X-Policy-Connect: ok', srv.address],
            ['helo', 'X-Policy-Helo: client.test', srv.address],
            ['mail', 'X-Policy-Mail: s1@x.test', srv.address],
            ['rcpt', 'X-Policy-Rcpt: seen', srv.address],
            ...(mode === 'transaction' ? [['data', 'X-Policy-Data: 1', srv.address]] : []),
          ]);
          assert.ok(logged.every((l) => l.level === 'info'));
        } finally {
          await r.stop();
        }
      });
    }
  });

  describe('a failing policy server', { concurrency: true }, () => {
    const SCRIPT = ['connect', 'helo', 'mail', 'rcpt', 'data'] as const;
    type Stage = (typeof SCRIPT)[number];
    /** What the client hears at `stage` when the server's default is defer (Postfix's smtpd_policy_service_default_action). */
    const DEFERRED: Record<Stage, string> = {
      connect: '421 4.3.5 <unknown[127.0.0.1]>: Client host rejected: Server configuration problem',
      helo: '451 4.3.5 <client.test>: Helo command rejected: Server configuration problem',
      mail: '451 4.3.5 <s@x.test>: Sender address rejected: Server configuration problem',
      rcpt: '451 4.3.5 <r@y.test>: Recipient address rejected: Server configuration problem',
      data: '451 4.3.5 <DATA>: Data command rejected: Server configuration problem',
    };
    const faults: { name: string; detail: RegExp; server: () => Promise<{ address: string; close(): Promise<void> }> }[] = [
      { name: 'down (connection refused)', detail: /ECONNREFUSED/, server: async () => ({ address: await refusedAddress(), close: async () => {} }) },
      { name: 'hanging', detail: /no answer within 300 ms/, server: async () => { const s = await policy(() => 'hang'); return s; } },
      { name: 'answering garbage', detail: /malformed reply line/, server: async () => { const s = await policy(() => ({ raw: 'HTTP/1.1 200 OK\r\n\r\n' })); return s; } },
      { name: 'closing mid-reply', detail: /in the middle of a reply/, server: async () => { const s = await policy(() => 'close-mid-reply'); return s; } },
    ];

    /**
     * The whole dialog, up to a delivered message; `deferred` is the stage whose command gets the
     * defer reply, after which the session goes on (NOOP) and the client quits (at connect: closed).
     */
    async function dialog(port: number, deferred: Stage | null): Promise<{ k: Client; ms: number }> {
      const t0 = Date.now();
      const k = await connect(port);
      const c = k.c;
      const done = async (): Promise<{ k: Client; ms: number }> => {
        assert.equal(await cmd(c, 'NOOP'), '250 2.0.0 OK', 'the session goes on');
        await quit(c);
        return { k, ms: Date.now() - t0 };
      };
      const greeting = replyText(await c.reply(REPLY_MS));
      if (deferred === 'connect') {
        assert.equal(greeting, DEFERRED.connect);
        assert.ok(await c.waitClosed(REPLY_MS), 'closed after the connect refusal');
        return { k, ms: Date.now() - t0 };
      }
      assert.match(greeting, /^220 /);
      const steps: [Stage, string, RegExp][] = [
        ['helo', 'EHLO client.test', /^250 /],
        ['mail', 'MAIL FROM:<s@x.test>', /^250 2\.1\.0 /],
        ['rcpt', 'RCPT TO:<r@y.test>', /^250 2\.1\.5 /],
      ];
      for (const [s, line, normal] of steps) {
        const got = await cmd(c, line);
        if (s !== deferred) {
          assert.match(got, normal, s);
          continue;
        }
        assert.equal(got, DEFERRED[s]);
        return done();
      }
      if (deferred === 'data') {
        assert.equal(await cmd(c, 'DATA'), DEFERRED.data);
        return done();
      }
      assert.equal(await data(c, BODY), '250 2.0.0 Ok: queued');
      await quit(c);
      return { k, ms: Date.now() - t0 };
    }

    for (const f of faults) {
      for (const def of ['defer', 'dunno'] as const) {
        for (const stage of SCRIPT) {
          for (const mode of stage === 'data' ? ['transaction'] as const : ['session', 'transaction'] as const) {
            it(`${f.name}, default ${def}, at ${stage} (${mode} mode)`, async () => {
              const s = await f.server();
              // Only the hanging server waits for the timeout; the others fail at once, and a short
              // timeout would make a busy machine's slow answer look like a hang (the wrong detail).
              const timeout = f.name === 'hanging' ? '300ms' : '2s';
              const r = await rig({ proxy_mode: mode, checks: { policy: [{ server: s.address, default: def, timeout, stages: [stage] }] } }, {}, [s]);
              try {
                const { k, ms } = await dialog(r.p.port, def === 'defer' ? stage : null);
                assert.ok(ms < 2500, `bounded: ${ms} ms`);
                if (f.name === 'hanging') assert.ok(ms >= 290, `the timeout was waited for: ${ms} ms`);
                const failed = await r.p.waitForLog((l) => l.code === 'PSW_POLICY_FAILED', REPLY_MS);
                assert.equal(failed.stage, stage);
                assert.equal(failed.server, s.address);
                assert.match(String(failed.detail), f.detail);
                const rec = await r.p.waitForLog((l) => l.type === 'access' && l.client === k.id, REPLY_MS);
                assert.equal(r.p.logs.filter((l) => l.code === 'PSW_POLICY_FAILED').length, 1, 'one failed request, one warning');
                assert.equal(r.backend.accepted.length, def === 'dunno' ? 1 : 0);
                if (def === 'dunno') {
                  assert.equal(r.backend.accepted[0]!.toString('latin1'), BODY);
                  assert.equal(refusedOf(rec), undefined);
                } else if (stage !== 'connect') assert.deepEqual(refusedOf(rec), ['PST_POLICY_REFUSED: 451']);
                else assert.equal(rec.outcome, 'PST_POLICY_CONNECT_REFUSED');
              } finally {
                await r.stop();
              }
            });
          }
        }
      }
    }
  });

  describe('injection', { concurrency: true }, () => {
    it('a policy answer cannot add a reply line: CR becomes a space, a second line or a continuation makes it garbage, bytes after it are dropped', async () => {
      const raw: Record<string, string | Buffer> = {
        'cr@x.test': 'action=REJECT first\r550 5.7.1 smuggled\n\n',
        'lf@x.test': 'action=REJECT first\n250 2.1.0 smuggled\n\n',
        'after@x.test': 'action=REJECT first\r\n\r\n250 2.1.0 smuggled\r\n\r\n',
        'cont@x.test': 'action=550-5.7.1 smuggled\n\n',
        'ctl@x.test': Buffer.from('action=REJECT a\x00b\x1bc\x7fd\xc3\xa9e\tf\n\n', 'latin1'),
        'long@x.test': `action=REJECT ${'x'.repeat(2000)}\n\n`,
      };
      const srv = await policy((a) => ({ raw: raw[a.get('sender')!] ?? 'action=DUNNO\n\n' }));
      const r = await rig({ checks: { policy: [server(srv.address, { stages: ['mail'] })] } }, {}, [srv]);
      try {
        const k = await greeted(r.p.port);
        const c = k.c;
        const replies: string[] = [];
        for (const from of Object.keys(raw)) {
          c.send(`MAIL FROM:<${from}>`);
          const rep = await c.reply(REPLY_MS);
          assert.equal(rep.lines.length, 1, `${from}: one line`);
          replies.push(replyText(rep));
          assert.equal(await cmd(c, 'NOOP'), '250 2.0.0 OK', `${from}: the next reply is the next command's`);
        }
        assert.deepEqual(replies.slice(0, 5), [
          '554 5.7.1 <cr@x.test>: Sender address rejected: first 550 5.7.1 smuggled',
          '451 4.3.5 <lf@x.test>: Sender address rejected: Server configuration problem',
          '554 5.7.1 <after@x.test>: Sender address rejected: first',
          '451 4.3.5 <cont@x.test>: Sender address rejected: Server configuration problem',
          '554 5.7.1 <ctl@x.test>: Sender address rejected: a b c d e f',
        ]);
        assert.match(replies[5]!, /^554 5\.7\.1 <long@x\.test>: Sender address rejected: x+$/);
        assert.equal(replies[5]!.length, 510, 'cut at 510 characters, as Postfix cuts');
        await quit(c);
        // Every line the client got is a reply line of its own command.
        const lines = c.transcript.split('\r\n').slice(0, -1);
        assert.ok(lines.every((l) => /^\d{3}[ -]/.test(l) && /^[\x20-\x7e]*$/.test(l)), JSON.stringify(lines));
        assert.ok(!lines.some((l) => /^(250|550)[ -].*smuggled|^550-/.test(l)), JSON.stringify(lines));
        const failed = r.p.logs.filter((l) => l.code === 'PSW_POLICY_FAILED');
        assert.equal(failed.length, 2);
        assert.match(String(failed[0]!.detail), /malformed reply line/);
        assert.match(String(failed[1]!.detail), /unknown action/);
      } finally {
        await r.stop();
      }
    });

    it('a PREPEND with CR, LF or NUL is not added; other control bytes become spaces; a leading dot is stuffed', async () => {
      const raw: Record<string, string | Buffer> = {
        'cr@x.test': 'action=PREPEND X-Bad: a\rX-Evil: b\n\n',
        'nul@x.test': Buffer.from('action=PREPEND X-Bad: a\x00b\n\n', 'latin1'),
        'lf@x.test': 'action=PREPEND X-A: 1\nX-Injected: 2=3\n\n',
        'ctl@x.test': Buffer.from('action=PREPEND X-Ctl: a\x01b\x1bc\x7fd\te\n\n', 'latin1'),
        'utf8@x.test': 'action=PREPEND X-U: caf\u00e9 ok\n\n',
        'dot@x.test': 'action=PREPEND .X-Dot: y\n\n',
        'noheader@x.test': 'action=PREPEND not a header\n\n',
      };
      const expected: Record<string, string> = {
        'cr@x.test': '',
        'nul@x.test': '',
        'lf@x.test': 'X-A: 1\r\n',
        'ctl@x.test': 'X-Ctl: a b c d e\r\n',
        'utf8@x.test': 'X-U: caf  ok\r\n',
        'dot@x.test': '..X-Dot: y\r\n',
        'noheader@x.test': '',
      };
      const srv = await policy((a) => ({ raw: raw[a.get('sender')!] ?? 'action=DUNNO\n\n' }));
      const r = await rig({ proxy_mode: 'transaction', checks: { policy: [server(srv.address, { stages: ['mail'], prepend: true })] } }, {}, [srv]);
      try {
        const k = await greeted(r.p.port);
        const senders = Object.keys(raw);
        for (const from of senders) {
          assert.equal(await cmd(k.c, `MAIL FROM:<${from}>`), '250 2.1.0 OK', from);
          assert.equal(await cmd(k.c, 'RCPT TO:<r@y.test>'), '250 2.1.5 Ok', from);
          assert.equal(await data(k.c, BODY), '250 2.0.0 Ok: queued', from);
        }
        await quit(k.c);
        assert.equal(r.backend.accepted.length, senders.length);
        senders.forEach((from, i) => assert.equal(r.backend.accepted[i]!.toString('latin1'), expected[from] + BODY, from));
        const all = r.backend.accepted.map((m) => m.toString('latin1')).join('');
        assert.doesNotMatch(all, /X-Evil|X-Injected|X-Bad/);
      } finally {
        await r.stop();
      }
    });

    /** A request block is exactly Postfix's lines, each attribute once, in order. */
    function assertWellFormed(q: ReceivedRequest): void {
      const text = q.raw.toString('utf8');
      assert.ok(text.endsWith('\n\n'));
      const names = text.slice(0, -2).split('\n').map((l) => l.slice(0, l.indexOf('=')));
      assert.deepEqual(names, ['request', ...POLICY_ATTRIBUTE_NAMES], text);
    }

    it('a HELO or MAIL argument cannot add an attribute line to the policy request', async () => {
      const srv = await policy(() => 'DUNNO');
      const r = await rig({ checks: { policy: [server(srv.address, { stages: ['helo', 'mail'] })] } }, {}, [srv]);
      try {
        const k = await connect(r.p.port);
        const c = k.c;
        assert.equal((await c.reply(REPLY_MS)).code, 220);
        // A bare LF ends the command (as in Postfix): the rest is a command of its own, and unknown.
        c.write('EHLO evil.test\nsender=smuggled@x.test\r\n');
        assert.equal((await c.reply(REPLY_MS)).code, 250);
        assert.equal(replyText(await c.reply(REPLY_MS)), '500 5.5.1 Invalid command');
        // A bare CR, NUL or another control byte: refused before anyone is asked.
        c.write('EHLO a.test\rprotocol_state=RCPT\r\n');
        assert.equal(replyText(await c.reply(REPLY_MS)), '500 5.5.2 Invalid character in command');
        c.write('MAIL FROM:<s@x.test>\x00recipient=smuggled@y.test\r\n');
        assert.equal(replyText(await c.reply(REPLY_MS)), '500 5.5.2 Invalid character in command');
        c.write('MAIL FROM:<s@x.test> SIZE=10\x0brecipient=smuggled@y.test\r\n');
        assert.equal(replyText(await c.reply(REPLY_MS)), '500 5.5.2 Invalid character in command');
        // What a line may hold: an '=' stays inside its value.
        c.write('MAIL FROM:<"recipient=x"@x.test> SIZE=10\r\n');
        assert.equal(replyText(await c.reply(REPLY_MS)), '250 2.1.0 OK');
        await quit(c);
        assert.deepEqual(srv.requests.map((q) => q.attrs.get('protocol_state')), ['EHLO', 'MAIL']);
        for (const q of srv.requests) {
          assertWellFormed(q);
          assert.doesNotMatch(q.raw.toString('latin1'), /smuggled|protocol_state=RCPT/);
        }
        assert.equal(srv.requests[0]!.attrs.get('helo_name'), 'evil.test');
        assert.equal(srv.requests[1]!.attrs.get('sender'), '"recipient=x"@x.test');
        assert.equal(srv.requests[1]!.attrs.get('recipient'), '');
        assert.equal(srv.requests[1]!.attrs.get('size'), '10');
      } finally {
        await r.stop();
      }
    });

    // Postfix passes the client's bytes through (attr_print writes the strings as they are); Postern's
    // envelope holds them as latin1 strings, decoded before the UTF-8 request is built, so "δ" (CE B4)
    // arrives as CE B4, not double-encoded as C3 8E C2 B4.
    it('an 8-bit sender reaches the policy server as the bytes the client sent', async () => {
      const srv = await policy(() => 'DUNNO');
      const r = await rig({ checks: { policy: [server(srv.address, { stages: ['mail'] })] } }, {}, [srv]);
      try {
        const k = await greeted(r.p.port);
        const from = Buffer.from('\u03b4@x.test', 'utf8');
        k.c.write(Buffer.concat([Buffer.from('MAIL FROM:<'), from, Buffer.from('> SMTPUTF8\r\n')]));
        assert.equal(replyText(await k.c.reply(REPLY_MS)), '250 2.1.0 OK');
        await quit(k.c);
        const raw = srv.requests[0]!.raw;
        assert.ok(raw.includes(Buffer.concat([Buffer.from('\nsender='), from, Buffer.from('\n')])), JSON.stringify(raw.toString('latin1').split('\n').find((l) => l.startsWith('sender='))));
      } finally {
        await r.stop();
      }
    });

    it('an AUTH user name with LF inside stays on its one sasl_username line', async () => {
      const srv = await policy(() => 'DUNNO');
      const stub = await AuthStub.start(() => ({ 'Auth-Status': 'OK', 'Auth-Server': '127.0.0.1', 'Auth-Port': '9' }));
      const r = await rig({
        listen: [{ address: '127.0.0.1:0', smtp_auth: ['plain'], auth_plaintext: true }],
        route: { auth_http: { url: stub.url, envelope_after_auth: true } },
        checks: { policy: [server(srv.address, { stages: ['mail'] })] },
      }, {}, [srv, { close: () => stub.stop() }]);
      const p = r.p;
      try {
        const k = await greeted(p.port);
        const user = 'alice\nsender=smuggled@x.test\r\nrecipient=smuggled@y.test';
        const b64 = Buffer.from(`\0${user}\0secret`, 'latin1').toString('base64');
        assert.match(await cmd(k.c, `AUTH PLAIN ${b64}`), /^235 /);
        assert.equal(await cmd(k.c, 'MAIL FROM:<alice@x.test>'), '250 2.1.0 OK');
        await quit(k.c);
        assert.equal(srv.requests.length, 1);
        const q = srv.requests[0]!;
        assertWellFormed(q);
        assert.equal(q.attrs.get('sasl_method'), 'PLAIN');
        assert.equal(q.attrs.get('sasl_username'), 'alice sender=smuggled@x.test  recipient=smuggled@y.test');
        assert.equal(q.attrs.get('sender'), 'alice@x.test');
        assert.equal(q.attrs.get('recipient'), '');
      } finally {
        await r.stop();
      }
    });
  });
});
