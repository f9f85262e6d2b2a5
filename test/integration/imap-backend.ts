/**
 * A scripted IMAP back-end for the integration tests, on loopback: Dovecot's greeting and
 * replies (beyond-nginx.md §8.5), literals `{n}` (answered `+ OK`) and `{n+}`, ID, LOGIN,
 * AUTHENTICATE PLAIN, STARTTLS with the test certificate, an optional PROXY header first, and a
 * fault at any step (refuse or drop the greeting, stall, close or NO at LOGIN).
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';

const FIX = path.resolve(import.meta.dirname, '../fixtures/tls');

export type Fault = 'none' | 'greeting-bye' | 'greeting-garbage' | 'close-at-connect' | 'stall-greeting' | 'stall-login' | 'close-at-login' | 'no-login' | 'bad-id';

export interface FakeImapOptions {
  greeting?: string;
  fault?: Fault;
  /** Accepted user → password (default alice/secret). */
  users?: Record<string, string>;
  /** Expect a PROXY header first. */
  proxy?: boolean;
  /** Implicit TLS on the listening socket. */
  implicitTls?: boolean;
}

export const DOVECOT_GREETING = '* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS AUTH=PLAIN AUTH=LOGIN] Dovecot (Debian) ready.';

export class FakeImap {
  readonly server: net.Server;
  /** Every command line received, literals inlined, per connection in order. */
  readonly lines: string[] = [];
  /** PROXY header lines (v1) or `v2 <n bytes>`. */
  readonly proxyHeaders: string[] = [];
  connections = 0;
  readonly #o: FakeImapOptions;
  readonly #sockets = new Set<net.Socket>();

  private constructor(o: FakeImapOptions) {
    this.#o = o;
    const handler = (s: net.Socket): void => this.#serve(s);
    this.server = o.implicitTls ? tls.createServer(tlsOptions(), handler) : net.createServer(handler);
  }

  static async start(o: FakeImapOptions = {}): Promise<FakeImap> {
    const f = new FakeImap(o);
    await new Promise<void>((r) => f.server.listen(0, '127.0.0.1', r));
    return f;
  }

  get port(): number {
    return (this.server.address() as net.AddressInfo).port;
  }

  async stop(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  #serve(sock: net.Socket): void {
    this.connections++;
    this.#sockets.add(sock);
    sock.on('close', () => this.#sockets.delete(sock));
    sock.on('error', () => {});
    const o = this.#o;
    if (o.fault === 'close-at-connect') return void sock.destroy();
    const conn = new Conn(this, sock, o);
    if (!o.proxy) conn.greet();
  }

  users(): Record<string, string> {
    return this.#o.users ?? { alice: 'secret' };
  }
}

function tlsOptions(): tls.TlsOptions {
  return { cert: readFileSync(path.join(FIX, 'backend.pem')), key: readFileSync(path.join(FIX, 'backend.key')) };
}

/** One back-end connection: a byte buffer read as IMAP commands, literals included. */
class Conn {
  #buf = Buffer.alloc(0);
  #loggedIn = false;
  #proxyPending: boolean;
  /** A literal being read: how many bytes, and the line so far. */
  #literal: { n: number; line: string } | null = null;
  #sasl: string | null = null;

  constructor(readonly f: FakeImap, public sock: net.Socket, readonly o: FakeImapOptions) {
    this.#proxyPending = o.proxy === true;
    sock.on('data', (c: Buffer) => this.#data(c));
  }

  greet(): void {
    const o = this.o;
    if (o.fault === 'stall-greeting') return;
    if (o.fault === 'greeting-bye') return this.#say('* BYE Server shutting down');
    if (o.fault === 'greeting-garbage') return this.#say('HELLO THERE');
    this.#say(o.greeting ?? DOVECOT_GREETING);
  }

  #say(...lines: string[]): void {
    if (!this.sock.destroyed) this.sock.write(lines.map((l) => `${l}\r\n`).join(''));
  }

  #data(chunk: Buffer): void {
    this.#buf = Buffer.concat([this.#buf, chunk]);
    if (this.#proxyPending) {
      if (this.#buf.subarray(0, 5).toString() === 'PROXY') {
        const lf = this.#buf.indexOf('\r\n');
        if (lf < 0) return;
        this.f.proxyHeaders.push(this.#buf.subarray(0, lf).toString());
        this.#buf = this.#buf.subarray(lf + 2);
      } else {
        if (this.#buf.length < 16) return;
        const n = 16 + this.#buf.readUInt16BE(14);
        if (this.#buf.length < n) return;
        this.f.proxyHeaders.push(`v2 ${n}`);
        this.#buf = this.#buf.subarray(n);
      }
      this.#proxyPending = false;
      this.greet();
    }
    this.#lines();
  }

  #lines(): void {
    for (;;) {
      if (this.#literal) {
        if (this.#buf.length < this.#literal.n) return;
        // The line goes on after the literal's bytes, up to its end.
        this.#pending = this.#literal.line + this.#buf.subarray(0, this.#literal.n).toString('latin1');
        this.#buf = this.#buf.subarray(this.#literal.n);
        this.#literal = null;
        continue;
      }
      const lf = this.#buf.indexOf('\n');
      if (lf < 0) return;
      const part = this.#buf.subarray(0, lf).toString('latin1').replace(/\r$/, '');
      this.#buf = this.#buf.subarray(lf + 1);
      this.#partial(part);
    }
  }

  /** A piece of a command line: either it ends in a literal header or the command is complete. */
  #partial(text: string): void {
    const prev = this.#pending ?? '';
    const line = prev + text;
    const m = /\{(\d+)(\+?)\}$/.exec(text);
    if (m && this.#sasl === null) {
      this.#pending = null;
      this.#literal = { n: Number(m[1]), line: `${line}\r\n` };
      if (m[2] === '') this.#continuation();
      return;
    }
    this.#pending = null;
    this.#command(line);
  }

  #pending: string | null = null;

  /** `+ OK` for a synchronising literal; faults at LOGIN show here. */
  #continuation(): void {
    if (this.o.fault === 'stall-login') return;
    if (this.o.fault === 'close-at-login') return void this.sock.destroy();
    this.#say('+ OK');
  }

  #command(line: string): void {
    this.f.lines.push(line);
    if (this.#sasl !== null) return this.#plainResponse(line);
    const [tag, name = '', ...rest] = line.split(' ');
    const cmd = name.toUpperCase();
    if (this.#loggedIn) return this.#after(tag!, cmd);
    switch (cmd) {
      case 'ID':
        if (this.o.fault === 'bad-id') return this.#say(`${tag} BAD Unknown command`);
        return this.#say('* ID ("name" "Dovecot")', `${tag} OK ID completed.`);
      case 'STARTTLS':
        this.#say(`${tag} OK Begin TLS negotiation now.`);
        return this.#upgrade();
      case 'CAPABILITY':
        return this.#say('* CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN', `${tag} OK Pre-login capabilities listed, post-login capabilities have more.`);
      case 'LOGIN':
        if (this.o.fault === 'stall-login') return;
        if (this.o.fault === 'close-at-login') return void this.sock.destroy();
        return this.#login(tag!, literalArgs(line));
      case 'AUTHENTICATE':
        if (rest[1] !== undefined) return this.#plain(tag!, rest[1]);
        this.#sasl = tag!;
        return this.#say('+ ');
      case 'LOGOUT':
        this.#say('* BYE Logging out', `${tag} OK Logout completed.`);
        return void this.sock.end();
      default:
        return this.#say(`${tag} BAD Error in IMAP command received by server.`);
    }
  }

  #plainResponse(line: string): void {
    const tag = this.#sasl!;
    this.#sasl = null;
    this.#plain(tag, line);
  }

  #plain(tag: string, b64: string): void {
    const [, user = '', pass = ''] = Buffer.from(b64, 'base64').toString('latin1').split('\0');
    this.#login(tag, [user, pass]);
  }

  #login(tag: string, [user, pass]: string[]): void {
    if (this.o.fault === 'no-login' || this.f.users()[user ?? ''] !== pass) return this.#say(`${tag} NO [AUTHENTICATIONFAILED] Authentication failed.`);
    this.#loggedIn = true;
    this.#say(`${tag} OK [CAPABILITY IMAP4rev1 IDLE SORT] Logged in`);
  }

  #after(tag: string, cmd: string): void {
    if (cmd === 'LOGOUT') {
      this.#say('* BYE Logging out', `${tag} OK Logout completed.`);
      this.sock.end();
      return;
    }
    if (cmd === 'SELECT') return this.#say('* 1 EXISTS', `${tag} OK [READ-WRITE] Select completed.`);
    this.#say(`${tag} OK ${cmd} completed.`);
  }

  #upgrade(): void {
    const plain = this.sock;
    plain.removeAllListeners('data');
    const secure = new tls.TLSSocket(plain, { isServer: true, ...tlsOptions() });
    secure.on('error', () => {});
    this.sock = secure;
    this.#buf = Buffer.alloc(0);
    secure.on('data', (c: Buffer) => this.#data(c));
  }
}

/** The two arguments of `tag LOGIN {n}\r\nuser {n}\r\npass` (literals inlined by the reader) or of `tag LOGIN u p`. */
function literalArgs(line: string): string[] {
  const m = /^\S+ LOGIN \{\d+\+?\}\r\n([\s\S]*) \{\d+\+?\}\r\n([\s\S]*)$/i.exec(line);
  if (m) return [m[1]!, m[2]!];
  return line.split(' ').slice(2);
}
