/**
 * A raw SMTP client for protocol tests: writes exact bytes, reads whole replies, sees EOF.
 */
import net from 'node:net';
import tls from 'node:tls';
import { ReplyError, ReplyReader, type Reply } from '../../src/smtp/reply-reader.js';

export class SmtpClient {
  socket: net.Socket;
  readonly #reader = new ReplyReader(1 << 20);
  readonly #queue: Reply[] = [];
  #waiter: (() => void) | null = null;
  #ended = false;
  #raw: Buffer[] = [];
  /** Resolves when the server has closed its side (FIN or reset). */
  readonly closed: Promise<void>;

  readonly #onData = (chunk: Buffer): void => {
    this.#raw.push(chunk);
    this.#reader.push(chunk);
    for (;;) {
      const r = this.#reader.next();
      if (r === null || r instanceof ReplyError) break;
      this.#queue.push(r);
    }
    this.#wake();
  };

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.setNoDelay(true);
    socket.on('data', this.#onData);
    this.closed = new Promise((resolve) => {
      const done = (): void => {
        this.#ended = true;
        this.#wake();
        resolve();
      };
      socket.once('end', done);
      socket.once('close', done);
    });
    socket.on('error', () => {});
  }

  #wake(): void {
    this.#waiter?.();
  }

  static connect(port: number, host = '127.0.0.1', localAddress?: string): Promise<SmtpClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ port, host, ...(localAddress ? { localAddress } : {}) }, () => resolve(new SmtpClient(s)));
      s.once('error', reject);
    });
  }

  /** Implicit TLS: the handshake first, then SMTP. */
  static connectTls(port: number, options: tls.ConnectionOptions): Promise<SmtpClient> {
    return new Promise((resolve, reject) => {
      const s = tls.connect({ port, host: '127.0.0.1', ...options }, () => resolve(new SmtpClient(s)));
      s.once('error', reject);
    });
  }

  /** After a 220 to STARTTLS: the client side of the handshake over the same connection. */
  startTls(options: tls.ConnectionOptions): Promise<tls.TLSSocket> {
    const plain = this.socket;
    plain.removeListener('data', this.#onData);
    return new Promise((resolve, reject) => {
      const secure = tls.connect({ socket: plain, ...options }, () => resolve(secure));
      secure.once('error', reject);
      secure.on('data', this.#onData);
      secure.on('error', () => {});
      this.socket = secure;
    });
  }

  /** Everything received so far, as text. */
  get transcript(): string {
    return Buffer.concat(this.#raw).toString('latin1');
  }

  write(data: string | Buffer): void {
    this.socket.write(data);
  }

  /** Sends one command line (CRLF appended). */
  send(line: string): void {
    this.socket.write(`${line}\r\n`);
  }

  /** The next reply; rejects on EOF or after `timeoutMs`. */
  async reply(timeoutMs = 5000): Promise<Reply> {
    const deadline = Date.now() + timeoutMs;
    while (this.#queue.length === 0) {
      if (this.#ended) throw new Error(`connection closed; received: ${JSON.stringify(this.transcript)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no reply within ${timeoutMs} ms; received: ${JSON.stringify(this.transcript)}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.#waiter = null;
    }
    return this.#queue.shift()!;
  }

  /** Sends a command and returns the reply's first line as `code text`. */
  async cmd(line: string): Promise<string> {
    this.send(line);
    return replyText(await this.reply());
  }

  /** Resolves true if the server closes within `timeoutMs`. */
  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    let t: NodeJS.Timeout | undefined;
    const r = await Promise.race([this.closed.then(() => true), new Promise<boolean>((res) => (t = setTimeout(() => res(false), timeoutMs)))]);
    clearTimeout(t);
    return r;
  }

  /** Sends a whole message after DATA's 354 (the body must be dot-stuffed and end with CRLF). */
  async data(body: string): Promise<string> {
    const r = await this.cmd('DATA');
    if (!r.startsWith('354')) return r;
    this.write(Buffer.from(`${body}.\r\n`, 'latin1'));
    return replyText(await this.reply());
  }

  close(): void {
    this.socket.destroy();
  }
}

export function replyText(r: Reply): string {
  return `${r.code} ${r.lines[r.lines.length - 1]}`;
}

/** The first line a new connection to `port` gets (its greeting), then QUIT; rejects when none comes within 5 s. */
export function greetingLine(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    s.setTimeout(5000, () => s.destroy(new Error('no greeting')));
    s.once('data', (d: Buffer) => {
      resolve(d.toString('latin1').split('\r\n')[0]!);
      s.end('QUIT\r\n');
    });
    s.once('error', reject);
  });
}
