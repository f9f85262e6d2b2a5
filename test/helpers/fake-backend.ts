/**
 * A scripted back-end MTA for fault injection: answers like Postfix by default and misbehaves on
 * cue (stall, close or reset at any command, in the middle of DATA, or after the final dot).
 * Real-peer tests use Postfix and smtp-sink; this one exists to make faults repeatable.
 */
import net from 'node:net';
import type { AddressInfo } from 'node:net';

/** What to do instead of the default reply: a reply text (CRLF added), or a fault. */
export type Behaviour = string | 'stall' | 'close' | 'reset' | undefined;

export interface FakeBackendOptions {
  /** Greeting line, or a fault. Default `220 fake.backend ESMTP`. */
  greeting?: Behaviour;
  /** Advertise XCLIENT with these attributes (default `NAME ADDR PROTO HELO PORT`); null for none. */
  xclient?: string | null;
  /** Called for each command line; return a Behaviour to override the default reply. */
  onCommand?: (line: string, session: FakeSession) => Behaviour;
  /** Called when a message's final dot arrives; default reply `250 2.0.0 Ok: queued`. */
  onMessage?: (data: Buffer, session: FakeSession) => Behaviour;
  /** Called for each chunk received while in DATA, e.g. to die in the middle of a message. */
  onDataChunk?: (chunk: Buffer, session: FakeSession) => Behaviour;
}

export interface FakeSession {
  commands: string[];
  socket: net.Socket;
}

export class FakeBackend {
  readonly sessions: FakeSession[] = [];
  /** Messages accepted with 250 (the proof of delivery). */
  readonly accepted: Buffer[] = [];
  readonly #server: net.Server;
  readonly #opts: FakeBackendOptions;

  private constructor(opts: FakeBackendOptions) {
    this.#opts = opts;
    this.#server = net.createServer((s) => this.#session(s));
  }

  static async start(opts: FakeBackendOptions = {}): Promise<FakeBackend> {
    const b = new FakeBackend(opts);
    await new Promise<void>((r) => b.#server.listen(0, '127.0.0.1', r));
    return b;
  }

  get port(): number {
    return (this.#server.address() as AddressInfo).port;
  }

  /** Every command line received, across sessions. */
  get commands(): string[] {
    return this.sessions.flatMap((s) => s.commands);
  }

  #session(socket: net.Socket): void {
    const session: FakeSession = { commands: [], socket };
    this.sessions.push(session);
    socket.on('error', () => {});
    const o = this.#opts;
    if (!this.#act(socket, o.greeting ?? '220 fake.backend ESMTP')) return;
    let buf = Buffer.alloc(0);
    let inData = false;
    socket.on('data', (chunk: Buffer) => {
      if (inData && o.onDataChunk && !this.#act(socket, o.onDataChunk(chunk, session))) return;
      buf = Buffer.concat([buf, chunk]);
      for (;;) {
        if (inData) {
          const end = buf.indexOf('\r\n.\r\n');
          const atStart = buf.subarray(0, 3).toString() === '.\r\n';
          if (end === -1 && !atStart) return;
          const cut = atStart ? 0 : end + 2;
          const msg = buf.subarray(0, cut);
          buf = buf.subarray(cut + 3);
          inData = false;
          const r = o.onMessage?.(msg, session) ?? '250 2.0.0 Ok: queued';
          if (r.startsWith('250')) this.accepted.push(Buffer.from(msg));
          if (!this.#act(socket, r)) return;
          continue;
        }
        const lf = buf.indexOf('\n');
        if (lf === -1) return;
        const line = buf.subarray(0, lf).toString('latin1').replace(/\r$/, '');
        buf = buf.subarray(lf + 1);
        session.commands.push(line);
        const custom = o.onCommand?.(line, session);
        const verb = line.split(' ')[0]!.toUpperCase();
        const r = custom ?? this.#default(verb);
        if (!this.#act(socket, r)) return;
        if (verb === 'DATA' && r.startsWith('354')) inData = true;
        if (verb === 'QUIT') socket.end();
      }
    });
  }

  #default(verb: string): string {
    const xclient = this.#opts.xclient === undefined ? 'NAME ADDR PROTO HELO PORT' : this.#opts.xclient;
    switch (verb) {
      case 'EHLO':
        return ['250-fake.backend', '250-PIPELINING', '250-8BITMIME', ...(xclient ? [`250-XCLIENT ${xclient}`] : []), '250 ENHANCEDSTATUSCODES'].join('\r\n');
      case 'HELO':
        return '250 fake.backend';
      case 'XCLIENT':
        return '220 fake.backend ESMTP';
      case 'MAIL':
        return '250 2.1.0 Ok';
      case 'RCPT':
        return '250 2.1.5 Ok';
      case 'DATA':
        return '354 End data with <CR><LF>.<CR><LF>';
      case 'RSET':
      case 'NOOP':
        return '250 2.0.0 Ok';
      case 'QUIT':
        return '221 2.0.0 Bye';
      default:
        return '502 5.5.2 Error: command not recognized';
    }
  }

  /** Carries out a behaviour; false when the session is over (or stalled). */
  #act(socket: net.Socket, b: Behaviour): boolean {
    if (b === undefined) return true;
    if (b === 'stall') return true;
    if (b === 'close') {
      socket.end();
      return false;
    }
    if (b === 'reset') {
      socket.resetAndDestroy();
      return false;
    }
    socket.write(`${b}\r\n`);
    return true;
  }

  async stop(): Promise<void> {
    for (const s of this.sessions) s.socket.destroy();
    await new Promise<void>((r) => this.#server.close(() => r()));
  }
}

/** A loopback port with nothing listening (connection refused). */
export async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}
