/**
 * The active checks of IMAP and POP3 pools (`health.protocol: imap|pop3`, src/pools/mailbox-probe.ts):
 * against a real Dovecot (plain and implicit TLS) a check is good and ends with a clean LOGOUT/QUIT
 * in Dovecot's log; against scripted servers, every way a server can fail — a refusing greeting,
 * a stall, a close, a NO to LOGOUT, garbage, an endless line — is a failure naming the step; and the
 * checker uses the probe of the pool's protocol (an SMTP check would mark a Dovecot down).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { HealthChecker } from '../../src/pools/checker.js';
import type { HealthChange } from '../../src/pools/types.js';
import { probeMailbox } from '../../src/pools/mailbox-probe.js';
import { startDovecot, type DovecotInstance } from '../helpers/dovecot.js';
import { TLS_FIXTURES } from '../helpers/postfix.js';

const CA = readFileSync(path.join(TLS_FIXTURES, 'ca.pem'));

/** A scripted server: `greet` is written on connect, `answer(line)` is written for each line read. */
async function scripted(greet: string | null, answer: (line: string) => string | null = () => null): Promise<{ port: number; lines: string[]; close(): Promise<void> }> {
  const lines: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    if (greet !== null) s.write(greet);
    let buf = '';
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const line = buf.slice(0, i).replace(/\r$/, '');
        buf = buf.slice(i + 1);
        lines.push(line);
        const a = answer(line);
        if (a === 'CLOSE') s.destroy();
        else if (a !== null) s.write(a);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    lines,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((r) => server.close(() => r()));
    },
  };
}

const probe = (proto: 'imap' | 'pop3', port: number, extra = {}) => probeMailbox(proto, { host: '127.0.0.1', port, ehloName: 'unused', timeoutMs: 1000, ...extra });

describe('probeMailbox against a real Dovecot', () => {
  let d: DovecotInstance;
  before(async () => {
    d = await startDovecot({ tls: true });
  });
  after(async () => {
    await d.stop();
  });

  it('IMAP and POP3, plain and implicit TLS: ok; Dovecot logs each check as a client that logged out', async () => {
    assert.deepEqual(await probe('imap', d.ports.imap).then((r) => [r.ok, r.reason]), [true, 'ok']);
    assert.deepEqual(await probe('pop3', d.ports.pop3).then((r) => [r.ok, r.reason]), [true, 'ok']);
    const tlsOpts = { tls: 'implicit', tlsOptions: { ca: CA, verify: true, serverName: 'backend.test', minVersion: 'TLSv1.2' } };
    const imaps = await probe('imap', d.ports.imaps!, tlsOpts);
    assert.equal(imaps.ok, true, imaps.reason);
    assert.match(imaps.reason, /^ok \(TLSv1\.[23]\)$/);
    assert.equal((await probe('pop3', d.ports.pop3s!, tlsOpts)).ok, true);
    // The wrong CA: the check fails at TLS instead of trusting the server.
    const wrong = await probe('imap', d.ports.imaps!, { tls: 'implicit', tlsOptions: { verify: true, serverName: 'backend.test', minVersion: 'TLSv1.2' } });
    assert.equal(wrong.ok, false);
    assert.match(wrong.reason, /^tls /);
    // Each check is a session that ended without a login, the client closing after its goodbye:
    // "Disconnected: Connection closed (no auth attempts …)", never a protocol error.
    const log = await d.waitForLog((l) => (l.match(/imap-login: Info: Disconnected: Connection closed \(no auth attempts/g) ?? []).length >= 2
      && (l.match(/pop3-login: Info: Disconnected: Connection closed \(no auth attempts/g) ?? []).length >= 2);
    assert.doesNotMatch(log, /(imap|pop3)-login: (Error|Warning)/);
  });

  it('the checker uses the pool\'s protocol: a Dovecot pool stays up with imap checks, and an SMTP check would take it down', async () => {
    const server = { id: `127.0.0.1:${d.ports.imap}`, host: '127.0.0.1', port: d.ports.imap, weight: 1, backup: false, maxConnections: 0 };
    const health = { enabled: true, interval: 40, timeout: 500, rise: 1, fall: 1, starttls: false };
    const run = async (protocol: 'smtp' | 'imap'): Promise<{ changes: HealthChange[]; oks: boolean[] }> => {
      const checker = new HealthChecker({ pools: { mail: { servers: [server], health: { ...health, protocol } } }, ehloName: 'proxy.test' });
      const changes: HealthChange[] = [];
      const oks: boolean[] = [];
      checker.on('change', (c) => changes.push(c));
      checker.on('check', (c) => oks.push(c.ok));
      checker.start();
      for (let i = 0; i < 60 && oks.length < 3; i++) await new Promise((r) => setTimeout(r, 50));
      checker.stop();
      return { changes, oks };
    };
    const imap = await run('imap');
    assert.ok(imap.oks.length >= 3 && imap.oks.every(Boolean), JSON.stringify(imap));
    assert.deepEqual(imap.changes, []);
    const smtp = await run('smtp');
    assert.equal(smtp.oks.some(Boolean), false);
    assert.equal(smtp.changes.at(-1)?.up, false);
  });
});

describe('probeMailbox against broken servers', () => {
  it('IMAP: BYE greeting, NO to LOGOUT, a close before the tagged answer: failures; untagged lines before it are fine', async () => {
    const bye = await scripted('* BYE too busy\r\n');
    assert.deepEqual(await probe('imap', bye.port).then((r) => [r.ok, r.reason]), [false, 'greeting * BYE too busy']);
    await bye.close();
    const no = await scripted('* OK ready\r\n', (l) => (l === 'p1 LOGOUT' ? '* BYE\r\np1 NO not now\r\n' : null));
    assert.deepEqual(await probe('imap', no.port).then((r) => [r.ok, r.reason]), [false, 'logout p1 NO not now']);
    await no.close();
    const cut = await scripted('* OK ready\r\n', (l) => (l === 'p1 LOGOUT' ? 'CLOSE' : null));
    assert.equal((await probe('imap', cut.port)).ok, false);
    await cut.close();
    const good = await scripted('* OK [CAPABILITY IMAP4rev1] ready\r\n', (l) => (l === 'p1 LOGOUT' ? '* BYE logging out\r\n* OK one more\r\np1 OK done\r\n' : null));
    assert.deepEqual(await probe('imap', good.port).then((r) => [r.ok, r.reason]), [true, 'ok']);
    assert.deepEqual(good.lines, ['p1 LOGOUT']);
    await good.close();
  });

  it('POP3: -ERR greeting (and still a QUIT), -ERR to QUIT, garbage: failures', async () => {
    const err = await scripted('-ERR go away\r\n');
    assert.deepEqual(await probe('pop3', err.port).then((r) => [r.ok, r.reason]), [false, 'greeting -ERR go away']);
    for (let i = 0; i < 20 && err.lines.length === 0; i++) await new Promise((r) => setTimeout(r, 25));
    assert.deepEqual(err.lines, ['QUIT'], 'a goodbye after the refusal');
    await err.close();
    const q = await scripted('+OK hi\r\n', (l) => (l === 'QUIT' ? '-ERR no\r\n' : null));
    assert.deepEqual(await probe('pop3', q.port).then((r) => [r.ok, r.reason]), [false, 'quit -ERR no']);
    await q.close();
    const junk = await scripted('\x00\xff junk\r\n');
    const r = await probe('pop3', junk.port);
    assert.equal(r.ok, false);
    assert.doesNotMatch(r.reason, /[\x00\xff]/, 'control bytes never reach the log line');
    await junk.close();
  });

  it('a stall, an endless line, a closed port: failures naming the step, within the timeout', async () => {
    const silent = await scripted(null);
    const t0 = Date.now();
    assert.deepEqual(await probe('imap', silent.port, { timeoutMs: 300 }).then((r) => [r.ok, r.reason]), [false, 'timeout after 300 ms at greeting']);
    assert.ok(Date.now() - t0 < 1000);
    await silent.close();
    const endless = await scripted(`* OK ${'x'.repeat(20000)}`);
    assert.deepEqual(await probe('imap', endless.port).then((r) => [r.ok, r.reason]), [false, 'greeting: a line over 8192 bytes']);
    await endless.close();
    const closed = await scripted(null);
    await closed.close();
    const r = await probe('pop3', closed.port);
    assert.equal(r.ok, false);
    assert.match(r.reason, /^connect ECONNREFUSED$/);
  });
});
