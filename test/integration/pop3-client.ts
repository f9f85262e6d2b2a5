/** A minimal POP3 client for the integration tests: lines in, lines out, STLS, implicit TLS, and the close. */
import net from 'node:net';
import tls from 'node:tls';

export class Pop3Client {
  socket: net.Socket;
  #buf = '';
  #waiters: (() => void)[] = [];
  closed = false;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    this.#attach(socket);
  }

  static connect(port: number, secure?: tls.ConnectionOptions): Promise<Pop3Client> {
    return new Promise((resolve, reject) => {
      const s = secure ? tls.connect({ port, host: '127.0.0.1', ...secure }) : net.connect({ port, host: '127.0.0.1' });
      s.once(secure ? 'secureConnect' : 'connect', () => resolve(new Pop3Client(s)));
      s.once('error', reject);
    });
  }

  #attach(s: net.Socket): void {
    s.on('data', (d: Buffer) => {
      this.#buf += d.toString('latin1');
      this.#wake();
    });
    s.on('close', () => {
      this.closed = true;
      this.#wake();
    });
    s.on('error', () => {});
  }

  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  /** The next line without CRLF; '' once the connection has closed with nothing left. */
  async line(timeoutMs = 3000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.#buf.indexOf('\r\n');
      if (i >= 0) {
        const l = this.#buf.slice(0, i);
        this.#buf = this.#buf.slice(i + 2);
        return l;
      }
      if (this.closed) return '';
      if (Date.now() > deadline) throw new Error(`no line within ${timeoutMs} ms (buffered ${JSON.stringify(this.#buf)})`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, 50);
        this.#waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** Lines up to the terminating "." (RFC 1939 §3), after the first. */
  async multiline(): Promise<string[]> {
    const out: string[] = [];
    for (let l = await this.line(); l !== '.'; l = await this.line()) {
      if (l === '' && this.closed) throw new Error('closed in a multi-line reply');
      out.push(l);
    }
    return out;
  }

  send(text: string): void {
    this.socket.write(`${text}\r\n`);
  }

  async cmd(text: string): Promise<string> {
    this.send(text);
    return this.line();
  }

  /** Resolves once the server has closed the connection. */
  async ended(timeoutMs = 3000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return this.closed;
  }

  /** After the server's +OK to STLS: the handshake over the same socket. */
  startTls(o: tls.ConnectionOptions): Promise<tls.TLSSocket> {
    const plain = this.socket;
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    return new Promise((resolve, reject) => {
      const s = tls.connect({ socket: plain, ...o }, () => resolve(s));
      s.once('error', reject);
      this.socket = s;
      this.#attach(s);
    });
  }

  close(): void {
    this.socket.destroy();
  }
}
