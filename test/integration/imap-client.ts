/** A line-reading IMAP client for the integration tests: plain, implicit TLS, or upgraded after STARTTLS. */
import net from 'node:net';
import tls from 'node:tls';

export class ImapClient {
  socket: net.Socket;
  #buf = '';
  #closed = false;
  #waiters: (() => void)[] = [];

  private constructor(socket: net.Socket) {
    this.socket = socket;
    this.#listen(socket);
  }

  static async connect(port: number, secure?: { ca: Buffer }): Promise<ImapClient> {
    const s = secure ? tls.connect({ port, host: '127.0.0.1', ca: secure.ca, servername: 'localhost' }) : net.connect({ port, host: '127.0.0.1' });
    await new Promise<void>((resolve, reject) => {
      s.once(secure ? 'secureConnect' : 'connect', () => resolve());
      s.once('error', reject);
    });
    return new ImapClient(s);
  }

  #listen(s: net.Socket): void {
    s.setEncoding('latin1');
    s.on('data', (d: string) => {
      this.#buf += d;
      this.#wake();
    });
    s.on('error', () => {});
    s.on('close', () => {
      this.#closed = true;
      this.#wake();
    });
  }

  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  send(text: string | Buffer): void {
    this.socket.write(typeof text === 'string' ? Buffer.from(text, 'latin1') : text);
  }

  /** Lines up to and including the first that starts with `tag ` (or matches `until`); rejects after `ms`. */
  async read(until: string | RegExp, ms = 3000): Promise<string[]> {
    const done = (l: string): boolean => (typeof until === 'string' ? l.startsWith(`${until} `) : until.test(l));
    const deadline = Date.now() + ms;
    for (;;) {
      const lines = this.#buf.split('\r\n');
      const i = lines.slice(0, -1).findIndex(done);
      if (i >= 0) {
        this.#buf = lines.slice(i + 1).join('\r\n');
        return lines.slice(0, i + 1);
      }
      if (this.#closed) throw new Error(`closed before ${String(until)}; got ${JSON.stringify(this.#buf)}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${String(until)}; got ${JSON.stringify(this.#buf)}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, 50);
        this.#waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** Sends `tag cmd` and returns the lines up to its tagged answer. */
  async cmd(tag: string, command: string): Promise<string[]> {
    this.send(`${tag} ${command}\r\n`);
    return this.read(tag);
  }

  /** STARTTLS accepted: the handshake over this connection. */
  async upgrade(ca: Buffer): Promise<void> {
    const plain = this.socket;
    plain.removeAllListeners('data');
    const secure = tls.connect({ socket: plain, ca, servername: 'localhost' });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', () => resolve());
      secure.once('error', reject);
    });
    this.socket = secure;
    this.#buf = '';
    this.#listen(secure);
  }

  /** Resolves true once the server has closed the connection (within `ms`). */
  async ended(ms = 3000): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (!this.#closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return this.#closed;
  }

  /** Whatever arrived and was not read yet. */
  get pending(): string {
    return this.#buf;
  }

  close(): void {
    this.socket.destroy();
  }
}
