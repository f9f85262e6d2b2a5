/**
 * Drives a mailbox protocol's back-end login (IMAP's or POP3's pure login machine, src/imap/
 * login.ts and src/pop3/login.ts) over one socket: the connect, an outgoing PROXY header first,
 * TLS from the first byte or after STARTTLS/STLS, one timer bounding connect plus login (nginx
 * bounds both with its proxy `timeout`), and a polite goodbye (LOGOUT, QUIT) when a back-end that
 * is still talking has failed the login. TLS to the back-end is Postern's own: nginx's mail proxy
 * has none.
 */
import net from 'node:net';
import tls from 'node:tls';
import { backendTlsConnect, type BackendTlsOptions } from './connect.js';
import { PosternError, type ErrorCode } from '../errors.js';

/** What a login machine asks for after each back-end line; `D` is what its success carries. */
export type DriverStep<D> =
  | { kind: 'send'; data: Buffer }
  | { kind: 'wait' }
  | { kind: 'starttls' }
  | { kind: 'fail'; code: ErrorCode; detail: string; reply?: string }
  | ({ kind: 'done' } & D);

/** A reader of the back-end's lines: a line without its end, null for more, or `too-long`. */
export interface BackendLines {
  push(chunk: Buffer): void;
  next(): Buffer | null | 'too-long';
  rest(): Buffer;
}

export interface LoginDriveOptions<D> {
  host: string;
  port: number;
  /** The route's TLS; `implicit` means from the first byte (the machine then never asks STARTTLS). */
  tls: BackendTlsOptions;
  proxyHeader?: Buffer;
  timeoutMs: number;
  /** Longest back-end line, for the message. */
  maxLine: number;
  lines: () => BackendLines;
  machine: { readonly at: string; onLine(line: Buffer): DriverStep<D>; tlsReady(): DriverStep<D> };
  /** Said to a back-end still talking after a failed login (`p1 LOGOUT`, `QUIT`), CRLF included. */
  goodbye: string;
  /** The command whose acceptance starts TLS, for the messages (STARTTLS, STLS). */
  starttls: string;
  /** The success and what the back-end sent after it: the result, or why those bytes are refused. */
  finish(done: D, rest: Buffer): D | { refuse: string };
}

export interface LoginDriven<D> {
  socket: net.Socket;
  tls: string | null;
  done: D;
}

/** Starts the connection; `cb` is called exactly once. Returns an abort. */
export function driveLogin<D>(o: LoginDriveOptions<D>, cb: (err: PosternError | null, r?: LoginDriven<D>) => void): () => void {
  const where = `${o.host}:${o.port}`;
  const implicit = o.tls.mode === 'implicit';
  const secureOpts = (): tls.ConnectionOptions => backendTlsConnect(o.host, o.tls);
  const tcp = net.connect({ host: o.host, port: o.port, noDelay: true });
  // The PROXY header goes first, as one write, before a TLS ClientHello or the first command.
  if (o.proxyHeader) tcp.write(o.proxyHeader);
  let socket: net.Socket = implicit ? tls.connect({ ...secureOpts(), socket: tcp }) : tcp;
  let reader = o.lines();
  let finished = false;
  let connected = false;
  let handshaking = implicit;
  tcp.once('connect', () => (connected = true));
  if (implicit) socket.once('secureConnect', () => (handshaking = false));
  if (tcp !== socket) tcp.on('error', (err) => socket.destroy(err));

  const listen = (s: net.Socket): void => {
    s.on('data', onData);
    s.on('error', onError);
    s.on('end', onEnd);
  };
  const unlisten = (s: net.Socket): void => {
    s.removeListener('data', onData);
    s.removeListener('error', onError);
    s.removeListener('end', onEnd);
  };
  const fail = (code: ErrorCode, detail: string, reply?: string): void => finish(new PosternError(code, detail, reply));
  const finish = (err: PosternError | null, done?: D): void => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    unlisten(socket);
    if (err) {
      socket.on('error', ignore);
      // A back-end still talking is told goodbye (RFC 9051 §6.1.3, RFC 1939 §6); a broken one is cut.
      if (socket.readyState === 'open' && !handshaking) {
        socket.end(o.goodbye);
        socket.setTimeout(5000, () => socket.destroy());
      } else socket.destroy();
      return cb(err);
    }
    cb(null, { socket, tls: socket instanceof tls.TLSSocket ? socket.getProtocol() : null, done: done! });
  };

  /** STARTTLS accepted: the handshake over the same TCP connection, then the login goes on. */
  const startTls = (): void => {
    unlisten(socket);
    const plain = socket;
    plain.on('error', ignore);
    handshaking = true;
    const secure = tls.connect({ ...secureOpts(), socket: plain });
    socket = secure;
    reader = o.lines();
    secure.once('error', (err: NodeJS.ErrnoException) => fail('PST_BACKEND_TLS_FAILED', `${where}: ${err.code ?? err.message}`));
    secure.once('secureConnect', () => {
      handshaking = false;
      secure.removeAllListeners('error');
      listen(secure);
      apply(o.machine.tlsReady());
    });
  };

  /** Carries out one step; false when the login is over (done, failed) or waits for TLS. */
  const apply = (step: DriverStep<D>): boolean => {
    switch (step.kind) {
      case 'send':
        socket.write(step.data);
        return true;
      case 'wait':
        return true;
      case 'fail':
        fail(step.code, `${where} ${step.detail}`, step.reply);
        return false;
      case 'starttls':
        // RFC 9051 §6.2.1, RFC 2595 §4: nothing the server sent before the handshake may be kept.
        if (reader.rest().length > 0) fail('PST_BACKEND_INVALID_REPLY', `${where}: bytes after the ${o.starttls} reply`);
        else startTls();
        return false;
      case 'done': {
        const { kind: _k, ...done } = step;
        const r = o.finish(done as unknown as D, reader.rest());
        if (typeof r === 'object' && r !== null && 'refuse' in r) fail('PST_BACKEND_INVALID_REPLY', `${where}: ${(r as { refuse: string }).refuse}`);
        else finish(null, r as D);
        return false;
      }
    }
  };

  const onData = (chunk: Buffer): void => {
    reader.push(chunk);
    for (;;) {
      const line = reader.next();
      if (line === null) return;
      if (line === 'too-long') return fail('PST_BACKEND_INVALID_REPLY', `${where} at ${o.machine.at}: a line over ${o.maxLine} bytes`);
      if (!apply(o.machine.onLine(line))) return;
    }
  };
  const onError = (err: NodeJS.ErrnoException): void => {
    if (err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN') return fail('PST_ROUTE_RESOLVE', `${where}: ${err.code}`);
    if (connected && handshaking) return fail('PST_BACKEND_TLS_FAILED', `${where}: ${err.code ?? err.message}`);
    fail(connected ? 'PST_BACKEND_CLOSED' : 'PST_BACKEND_UNREACHABLE', `${where} at ${o.machine.at}: ${err.code ?? err.message}`);
  };
  const onEnd = (): void => fail('PST_BACKEND_CLOSED', `${where} closed the connection at ${o.machine.at}`);
  const timer = setTimeout(() => fail('PST_BACKEND_TIMEOUT', `${where} at ${o.machine.at} after ${o.timeoutMs} ms`), o.timeoutMs);

  listen(socket);
  return () => fail('PST_CLIENT_LOST', 'aborted');
}

function ignore(): void {}
