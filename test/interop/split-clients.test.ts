/**
 * The real SMTP clients the transaction-aware proxy relies on, checked against a scripted server of our own:
 * the server answers `452 4.5.3` to every RCPT whose domain differs from the transaction's first accepted
 * recipient's domain (what Postern's transaction mode does when a recipient routes to another back-end), and
 * records every transaction. Both clients must deliver every recipient exactly once with the message intact:
 * - Exim re-sends the 452'd recipients at once, in a new MAIL transaction on the same connection;
 * - Postfix defers them and re-sends them later, over a new connection, after its (shortened) backoff.
 * If these fail, test/interop/transaction.test.ts cannot pass whatever Postern does.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, it } from 'node:test';
import { eximSend } from '../helpers/exim.js';
import { clientPart, interopMessage } from '../helpers/interop-message.js';
import { startPostfix } from '../helpers/postfix.js';
import { submitMessage } from '../helpers/submit.js';

interface Rcpt {
  address: string;
  reply: string;
}

interface Txn {
  /** 1-based number of the connection it came on. */
  conn: number;
  mail: string;
  rcpts: Rcpt[];
  /** The message as sent, dot-unstuffed, CRLF line ends, without the final ".". */
  data?: Buffer;
  mailAt: number;
  dataEndAt?: number;
}

const domainOf = (a: string) => a.slice(a.lastIndexOf('@') + 1).toLowerCase();
const accepted = (t: Txn) => t.rcpts.filter((r) => r.reply.startsWith('250')).map((r) => r.address);
const refused = (t: Txn) => t.rcpts.filter((r) => !r.reply.startsWith('250')).map((r) => r.address);

/** Unstuffs the lines of a DATA section (CRLF-separated, ending with CRLF) as RFC 5321 §4.5.2 says. */
function unstuff(raw: Buffer): Buffer {
  return Buffer.from(raw.toString('latin1').replace(/(^|\r\n)\./g, '$1'), 'latin1');
}

/** The scripted server: PIPELINING and 8BITMIME, no CHUNKING (so both clients use DATA), no STARTTLS. */
class SplitServer {
  readonly txns: Txn[] = [];
  /** Per connection: when it was accepted and closed. */
  readonly conns: { openedAt: number; closedAt?: number }[] = [];
  readonly #server = net.createServer((s) => this.#session(s));
  readonly #sockets = new Set<net.Socket>();

  static async start(): Promise<SplitServer> {
    const srv = new SplitServer();
    await new Promise<void>((r) => srv.#server.listen(0, '127.0.0.1', r));
    return srv;
  }

  get port(): number {
    return (this.#server.address() as net.AddressInfo).port;
  }

  #session(socket: net.Socket): void {
    this.#sockets.add(socket);
    const conn = this.conns.push({ openedAt: Date.now() });
    socket.on('error', () => {});
    socket.on('close', () => {
      this.conns[conn - 1]!.closedAt = Date.now();
      this.#sockets.delete(socket);
    });
    let buf = Buffer.alloc(0);
    let txn: Txn | undefined;
    let inData = false;
    const say = (line: string) => socket.write(`${line}\r\n`);
    say('220 split.test ESMTP scripted');
    // Pipelined commands arrive together: handle every complete line (or DATA section) in order.
    socket.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      for (;;) {
        if (inData) {
          // The section ends with CRLF "." CRLF; a leading CRLF lets an empty message end at ".\r\n".
          const hay = Buffer.concat([Buffer.from('\r\n'), buf]);
          const end = hay.indexOf('\r\n.\r\n');
          if (end < 0) return;
          txn!.data = unstuff(hay.subarray(2, end + 2));
          txn!.dataEndAt = Date.now();
          buf = hay.subarray(end + 5);
          inData = false;
          txn = undefined;
          say('250 2.0.0 Ok: queued');
          continue;
        }
        const nl = buf.indexOf('\r\n');
        if (nl < 0) return;
        const line = buf.subarray(0, nl).toString('latin1');
        buf = buf.subarray(nl + 2);
        const verb = line.split(' ', 1)[0]!.toUpperCase();
        if (verb === 'EHLO') say('250-split.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES');
        else if (verb === 'HELO') say('250 split.test');
        else if (verb === 'MAIL') {
          txn = { conn, mail: line, rcpts: [], mailAt: Date.now() };
          this.txns.push(txn);
          say('250 2.1.0 Ok');
        } else if (verb === 'RCPT') {
          const address = /<([^>]*)>/.exec(line)?.[1] ?? '';
          if (!txn) say('503 5.5.1 Need MAIL');
          else {
            const first = accepted(txn)[0];
            const reply = first === undefined || domainOf(first) === domainOf(address) ? '250 2.1.5 Ok' : '452 4.5.3 Another domain in a later transaction';
            txn.rcpts.push({ address, reply });
            say(reply);
          }
        } else if (verb === 'DATA') {
          if (!txn || accepted(txn).length === 0) say('554 5.5.1 No valid recipients');
          else {
            inData = true;
            say('354 End data with <CR><LF>.<CR><LF>');
          }
        } else if (verb === 'RSET') {
          txn = undefined;
          say('250 2.0.0 Ok');
        } else if (verb === 'QUIT') {
          say('221 2.0.0 Bye');
          socket.end();
          return;
        } else if (verb === 'NOOP') say('250 2.0.0 Ok');
        else say('502 5.5.2 Command not recognized');
      }
    });
  }

  /** Recipients accepted across all transactions, in order; each must appear once. */
  delivered(): string[] {
    return this.txns.filter((t) => t.data).flatMap(accepted);
  }

  async stop(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((r) => this.#server.close(() => r()));
  }
}

const Y = ['u1@y.test', 'u2@y.test'];
const Z = ['v1@z.test', 'v2@z.test'];
/** Interleaved, so the client meets a 452 between two accepted recipients. */
const RECIPIENTS = [Y[0]!, Z[0]!, Y[1]!, Z[1]!];

/** Two transactions: one domain accepted and the other 452'd in the first, the 452'd ones alone in the second. */
function assertSplit(srv: SplitServer, msg: Buffer, id: string): void {
  const dump = JSON.stringify(srv.txns.map(({ data, ...t }) => ({ ...t, bytes: data?.length })), null, 1);
  assert.equal(srv.txns.length, 2, dump);
  const [first, second] = srv.txns as [Txn, Txn];
  const firstDomain = domainOf(accepted(first)[0]!);
  const [same, other] = firstDomain === 'y.test' ? [Y, Z] : [Z, Y];
  assert.deepEqual(accepted(first).sort(), same, dump);
  assert.deepEqual(refused(first).sort(), other, dump);
  assert.ok(first.rcpts.filter((r) => !r.reply.startsWith('250')).every((r) => r.reply.startsWith('452 4.5.3')), dump);
  assert.deepEqual(second.rcpts.map((r) => r.address).sort(), other, dump);
  assert.deepEqual(refused(second), [], dump);
  assert.equal(first.mail, second.mail, 'the same envelope sender both times');
  assert.deepEqual(srv.delivered().sort(), [...RECIPIENTS].sort(), 'each recipient accepted exactly once');
  for (const t of [first, second]) {
    assert.ok(t.data, dump);
    assert.equal(clientPart(t.data, id), msg.toString('latin1'), 'message intact after the client\'s trace headers');
  }
}

describe('real SMTP clients meet 452 4.5.3 on a later RCPT', () => {
  it('Exim: the 452\'d recipients at once, in a new transaction on the same connection', async (t) => {
    const srv = await SplitServer.start();
    try {
      const id = `exim-split-${process.pid}`;
      const msg = interopMessage(id, RECIPIENTS);
      const started = Date.now();
      const r = await eximSend({ port: srv.port, from: 'a@x.test', to: RECIPIENTS, message: msg });
      t.diagnostic(`exim took ${Date.now() - started} ms`);
      assert.equal(r.status, 0, r.output);
      assert.equal(r.paniclog, '', r.paniclog);
      assertSplit(srv, msg, id);
      const [first, second] = srv.txns as [Txn, Txn];
      assert.equal(srv.conns.length, 1, 'one connection');
      assert.equal(second.conn, first.conn);
      // "At once": Exim's MAIL follows the 250 to the first message's dot, with no retry delay in between.
      assert.ok(second.mailAt - first.dataEndAt! < 2000, `second MAIL ${second.mailAt - first.dataEndAt!} ms after the first dot`);
      // Exim's own account: all four delivered, the second transaction's over the continued connection ("]*").
      assert.deepEqual(r.deliveries.map((d) => [d.address, d.outcome]).sort(), RECIPIENTS.map((a) => [a, 'delivered']).sort(), r.mainlog);
      for (const d of r.deliveries.filter((x) => second.rcpts.some((rc) => rc.address === x.address))) assert.ok(d.continued, d.line);
    } finally {
      await srv.stop();
    }
  });

  it('Postfix: the 452\'d recipients deferred, then re-sent over a new connection after the backoff', async (t) => {
    const srv = await SplitServer.start();
    const pf = await startPostfix({ relayTo: { host: '127.0.0.1', port: srv.port } });
    try {
      const id = `postfix-split-${process.pid}`;
      const msg = interopMessage(id, RECIPIENTS);
      const started = Date.now();
      const queueId = await submitMessage(pf.port, { from: 'a@x.test', to: RECIPIENTS, message: msg });
      const allSent = (log: string) => RECIPIENTS.every((a) => new RegExp(`${queueId}: to=<${a}>.*status=sent`).test(log));
      // Two backoff rounds plus a busy CI machine: the retry has been seen to need more than 30 s there.
      const log = await pf.waitForLog(allSent, 60_000);
      t.diagnostic(`postfix took ${Date.now() - started} ms from submission to the last status=sent`);
      assertSplit(srv, msg, id);
      const [first, second] = srv.txns as [Txn, Txn];
      assert.equal(srv.conns.length, 2, 'one connection per delivery attempt');
      assert.notEqual(second.conn, first.conn);
      const firstConn = srv.conns[first.conn - 1]!;
      assert.ok(firstConn.closedAt !== undefined && srv.conns[second.conn - 1]!.openedAt >= firstConn.closedAt, 'the retry comes after the first attempt ended');
      t.diagnostic(`retry connection ${srv.conns[second.conn - 1]!.openedAt - firstConn.closedAt} ms after the first closed`);
      // Postfix's own account: each 452'd recipient deferred once with the server's reply, then sent.
      for (const a of second.rcpts.map((x) => x.address)) {
        assert.match(log, new RegExp(`${queueId}: to=<${a}>.*dsn=4\\.5\\.3, status=deferred .*452 4\\.5\\.3`), log);
      }
    } finally {
      await pf.stop();
      await srv.stop();
    }
  });
});
