/**
 * The STARTTLS-at-the-front load (smtp-source has no TLS): `node --import tsx bench/tls-load.ts
 * PORT SESSIONS MESSAGES SIZE`. SESSIONS connections at a time, a new one per message, as
 * smtp-source does: read the 220, EHLO, STARTTLS, a full TLS handshake verified against the test
 * CA (test/fixtures/tls/ca.pem, server name proxy.test; no session resumption: every sender a
 * new one, as at an MX), EHLO again, MAIL, RCPT, DATA with a SIZE-byte body, QUIT. Its own
 * process, so its CPU stays off the bench's event loop and off the proxy's process tree. Prints
 * one JSON line: { ms, sent, failed, errors: [first few] }.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';

const ca = readFileSync(path.resolve(import.meta.dirname, '../test/fixtures/tls/ca.pem'));

/** Reads SMTP replies off whichever socket it is attached to. */
class Replies {
  private buf = '';
  private waiter: ((r: string) => void) | null = null;
  private failer: ((e: Error) => void) | null = null;
  private sock: net.Socket | null = null;
  private readonly onData = (d: Buffer): void => {
    this.buf += d.toString('latin1');
    this.check();
  };
  private readonly onEnd = (): void => this.failer?.(new Error(`connection closed; unread: ${JSON.stringify(this.buf.slice(0, 200))}`));
  private readonly onError = (e: Error): void => this.failer?.(e);
  attach(sock: net.Socket): void {
    this.detach();
    this.sock = sock;
    sock.on('data', this.onData).on('end', this.onEnd).on('close', this.onEnd).on('error', this.onError);
  }
  detach(): void {
    this.sock?.off('data', this.onData).off('end', this.onEnd).off('close', this.onEnd).off('error', this.onError);
    this.sock = null;
  }
  /** The next complete reply; rejects unless its code starts with `want`. */
  next(want: string): Promise<string> {
    return new Promise((resolve, reject) => {
      this.waiter = (r) => (r.startsWith(want) ? resolve(r) : reject(new Error(`expected ${want}xx, got ${JSON.stringify(r.slice(0, 200))}`)));
      this.failer = reject;
      this.check();
    });
  }
  private check(): void {
    if (!this.waiter) return;
    // A reply ends with a line "NNN text" (a space after the code), after any "NNN-text" lines.
    let at = 0;
    for (;;) {
      const nl = this.buf.indexOf('\r\n', at);
      if (nl === -1) return;
      if (this.buf[at + 3] !== '-') {
        const reply = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 2);
        const w = this.waiter;
        this.waiter = this.failer = null;
        return w(reply);
      }
      at = nl + 2;
    }
  }
}

async function session(port: number, body: string): Promise<void> {
  const r = new Replies();
  const plain = net.connect(port, '127.0.0.1');
  plain.setNoDelay(true);
  r.attach(plain);
  try {
    await r.next('220');
    plain.write('EHLO load.test\r\n');
    const ehlo = await r.next('250');
    if (!/[\n-]STARTTLS/.test(ehlo.replace(/^250 /m, '250-'))) throw new Error(`no STARTTLS in ${JSON.stringify(ehlo)}`);
    plain.write('STARTTLS\r\n');
    await r.next('220');
    r.detach();
    const s = tls.connect({ socket: plain, ca, servername: 'proxy.test' });
    await new Promise<void>((resolve, reject) => {
      s.once('secureConnect', resolve);
      s.once('error', reject);
    });
    r.attach(s);
    s.write('EHLO load.test\r\n');
    await r.next('250');
    s.write('MAIL FROM:<a@x.test>\r\n');
    await r.next('250');
    s.write('RCPT TO:<u@y.test>\r\n');
    await r.next('250');
    s.write('DATA\r\n');
    await r.next('354');
    s.write(body);
    await r.next('250');
    s.write('QUIT\r\n');
    await r.next('221');
    r.detach();
    s.end();
  } finally {
    r.detach();
    plain.destroy();
  }
}

/** A SIZE-byte message: headers, then lines of 78 characters and CRLF, then the end of data. */
function message(size: number): string {
  const head = 'From: <a@x.test>\r\nTo: <u@y.test>\r\nSubject: load\r\n\r\n';
  const line = 'x'.repeat(78) + '\r\n';
  const lines = Math.max(0, Math.ceil((size - head.length) / line.length));
  return head + line.repeat(lines) + '.\r\n';
}

async function main(): Promise<void> {
  const [port, sessions, messages, size] = process.argv.slice(2).map(Number);
  const body = message(size!);
  let next = 0;
  let sent = 0;
  let failed = 0;
  const errors: string[] = [];
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: Math.min(sessions!, messages!) }, async () => {
      while (next < messages!) {
        next++;
        try {
          await session(port!, body);
          sent++;
        } catch (e) {
          failed++;
          if (errors.length < 5) errors.push(String(e));
        }
      }
    }),
  );
  process.stdout.write(JSON.stringify({ ms: performance.now() - t0, sent, failed, errors }) + '\n');
}

void main();
