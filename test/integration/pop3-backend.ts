/**
 * A scripted POP3 back-end for the integration tests: answers like Dovecot by default (with
 * `[XCLIENT]` in the banner when asked), keeps a one-message mailbox after login, and misbehaves
 * on cue at any step (a reply of its own, stall, close, reset). STLS and implicit TLS use the
 * test CA's back-end certificate (test/fixtures/tls).
 */
import { readFileSync } from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import path from 'node:path';
import tls from 'node:tls';

export type Pop3Behaviour = string | 'stall' | 'close' | 'reset' | undefined;

export interface FakePop3Options {
  /** The banner, or a fault. Default `+OK Dovecot ready.` (with [XCLIENT] when `xclient`). */
  greeting?: Pop3Behaviour;
  xclient?: boolean;
  /** Offer STLS in CAPA and accept it. */
  stls?: boolean;
  /** Speak TLS from the first byte. */
  implicitTls?: boolean;
  /** The password USER/PASS and AUTH PLAIN accept (default `secret`). */
  password?: string;
  /** Called for each command line; a Behaviour overrides the default reply. */
  onCommand?: (line: string, s: FakePop3Session) => Pop3Behaviour;
}

export interface FakePop3Session {
  lines: string[];
  /** Bytes received before anything else, when they were a PROXY header. */
  proxyHeader?: string;
  user?: string;
  loggedIn: boolean;
}

const FIX = path.resolve(import.meta.dirname, '../fixtures/tls');
const CERT = { cert: readFileSync(path.join(FIX, 'backend.pem')), key: readFileSync(path.join(FIX, 'backend.key')) };

export class FakePop3 {
  readonly sessions: FakePop3Session[] = [];
  readonly #server: net.Server;
  readonly #o: FakePop3Options;

  private constructor(o: FakePop3Options) {
    this.#o = o;
    this.#server = o.implicitTls ? tls.createServer(CERT, (s) => this.#session(s)) : net.createServer((s) => this.#session(s));
  }

  static async start(o: FakePop3Options = {}): Promise<FakePop3> {
    const b = new FakePop3(o);
    await new Promise<void>((r) => b.#server.listen(0, '127.0.0.1', r));
    return b;
  }

  get port(): number {
    return (this.#server.address() as AddressInfo).port;
  }

  get lines(): string[] {
    return this.sessions.flatMap((s) => s.lines);
  }

  stop(): Promise<void> {
    return new Promise((r) => this.#server.close(() => r()));
  }

  #session(socket: net.Socket): void {
    const s: FakePop3Session = { lines: [], loggedIn: false };
    this.sessions.push(s);
    socket.on('error', () => {});
    const g = this.#o.greeting ?? (this.#o.xclient ? '+OK [XCLIENT] Dovecot ready.' : '+OK Dovecot ready.');
    if (!this.#act(socket, g)) return;
    this.#read(socket, s);
  }

  /** Writes a reply or carries out a fault; false when the connection is done for. */
  #act(socket: net.Socket, b: Pop3Behaviour): boolean {
    if (b === 'stall') return true;
    if (b === 'close') {
      socket.end();
      return false;
    }
    if (b === 'reset') {
      socket.resetAndDestroy();
      return false;
    }
    if (b !== undefined) socket.write(`${b}\r\n`);
    return true;
  }

  #read(socket: net.Socket, s: FakePop3Session): void {
    let buf = '';
    const onData = (chunk: Buffer): void => {
      buf += chunk.toString('latin1');
      if (s.lines.length === 0 && buf.startsWith('PROXY ')) {
        const end = buf.indexOf('\r\n');
        if (end < 0) return;
        s.proxyHeader = buf.slice(0, end);
        buf = buf.slice(end + 2);
      }
      for (let i = buf.indexOf('\r\n'); i >= 0; i = buf.indexOf('\r\n')) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 2);
        s.lines.push(line);
        const own = this.#o.onCommand?.(line, s);
        if (own !== undefined) {
          if (!this.#act(socket, own) || own === 'stall') return;
          continue;
        }
        if (/^QUIT$/i.test(line)) {
          socket.end('+OK Logging out.\r\n');
          return;
        }
        if (/^STLS$/i.test(line) && this.#o.stls) {
          socket.removeListener('data', onData);
          socket.write('+OK Begin TLS negotiation now.\r\n');
          const secure = new tls.TLSSocket(socket, { isServer: true, ...CERT });
          secure.on('error', () => {});
          this.#read(secure, s);
          return;
        }
        if (!this.#act(socket, this.#reply(line, s))) return;
      }
    };
    socket.on('data', onData);
  }

  /** Dovecot-like defaults. */
  #reply(line: string, s: FakePop3Session): string | 'close' {
    const [verb = '', ...rest] = line.split(' ');
    const arg = rest.join(' ');
    const pass = this.#o.password ?? 'secret';
    switch (verb.toUpperCase()) {
      case 'CAPA':
        return `+OK\r\nTOP\r\nUSER\r\nSASL PLAIN${this.#o.stls ? '\r\nSTLS' : ''}\r\n.`;
      case 'XCLIENT':
        return this.#o.xclient ? '+OK Updated' : '-ERR Unknown command.';
      case 'USER':
        s.user = arg;
        return '+OK';
      case 'PASS':
        if (s.user !== undefined && arg === pass) return this.#login(s);
        return '-ERR [AUTH] Authentication failed.';
      case 'AUTH': {
        const [user, pw] = Buffer.from(rest[1] ?? '', 'base64').toString('latin1').split('\0').slice(1);
        s.user = user;
        return rest[0]?.toUpperCase() === 'PLAIN' && pw === pass ? this.#login(s) : '-ERR [AUTH] Authentication failed.';
      }
      case 'STAT':
        return s.loggedIn ? '+OK 1 12' : '-ERR Unknown command.';
      case 'RETR':
        return s.loggedIn ? '+OK 12 octets\r\nSubject: hi\r\n.' : '-ERR Unknown command.';
      default:
        return '-ERR Unknown command.';
    }
  }

  #login(s: FakePop3Session): string {
    s.loggedIn = true;
    return '+OK Logged in.';
  }
}
