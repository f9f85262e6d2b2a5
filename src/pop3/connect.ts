/**
 * Connects to one POP3 back-end and drives the {@link Pop3Login} over the socket, one timer
 * bounding connect plus login (nginx bounds both with its `timeout`). The one file under pop3/
 * with I/O: the login itself is ./login.ts. TLS to the back-end (implicit or STLS) is Postern's
 * own; nginx's mail proxy has none.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { BackendTlsOptions } from '../backend/connect.js';
import { PosternError } from '../errors.js';
import { LINE_TOO_LONG, LineReader } from '../smtp/line-reader.js';
import { Pop3Login, type LoginOptions, type LoginStep } from './login.js';

/** Longest back-end line accepted during the login (nginx: proxy_buffer_size, one page by default). */
const MAX_LINE = 8192;

export interface Pop3BackendReady {
  socket: net.Socket;
  /** The back-end's `+OK` to PASS (or AUTH): the client's reply. */
  final: Buffer;
  tls: string | null;
  /** XCLIENT was offered and accepted. */
  xclient: boolean;
  offersXclient: boolean;
}

export interface Pop3ConnectOptions {
  host: string;
  port: number;
  login: Omit<LoginOptions, 'tls'>;
  tls: BackendTlsOptions;
  /** Written first, before TLS or POP3 (an outgoing PROXY protocol header). */
  proxyHeader?: Buffer;
  timeoutMs: number;
}

/** Starts the connection; `done` is called exactly once. Returns an abort. */
export function connectPop3(o: Pop3ConnectOptions, done: (err: PosternError | null, ready?: Pop3BackendReady) => void): () => void {
  const where = `${o.host}:${o.port}`;
  const implicit = o.tls.mode === 'implicit';
  const secureOpts = (): tls.ConnectionOptions => ({
    host: o.host,
    // SNI carries a name, never an address; an address is still checked against the IP SANs.
    ...(o.tls.serverName ? { servername: o.tls.serverName } : net.isIP(o.host) ? {} : { servername: o.host }),
    ...(o.tls.ca ? { ca: o.tls.ca } : {}),
    rejectUnauthorized: o.tls.verify,
    minVersion: o.tls.minVersion,
  });
  const tcp = net.connect({ host: o.host, port: o.port, noDelay: true });
  // The PROXY header goes first, as one write, before a TLS ClientHello or the first command.
  if (o.proxyHeader) tcp.write(o.proxyHeader);
  let socket: net.Socket = implicit ? tls.connect({ ...secureOpts(), socket: tcp }) : tcp;
  const login = new Pop3Login({ ...o.login, tls: o.tls.mode === 'implicit' ? 'off' : o.tls.mode });
  const reader = new LineReader(MAX_LINE);
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

  const finish = (err: PosternError | null, final?: Buffer): void => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    unlisten(socket);
    if (err) {
      socket.on('error', ignore);
      // A back-end still talking gets its QUIT (RFC 1939 §6); a broken one is cut.
      if (socket.readyState === 'open' && !handshaking) {
        socket.end('QUIT\r\n');
        socket.setTimeout(5000, () => socket.destroy());
      } else socket.destroy();
      return done(err);
    }
    done(null, { socket, final: final!, tls: socket instanceof tls.TLSSocket ? socket.getProtocol() : null, xclient: login.xclientDone, offersXclient: login.offersXclient });
  };

  /** STLS accepted: the handshake over the same TCP connection, then the login goes on. */
  const startTls = (): void => {
    unlisten(socket);
    const plain = socket;
    plain.on('error', ignore);
    handshaking = true;
    const secure = tls.connect({ ...secureOpts(), socket: plain });
    socket = secure;
    secure.once('error', (err: NodeJS.ErrnoException) => finish(new PosternError('PST_BACKEND_TLS_FAILED', `${where}: ${err.code ?? err.message}`)));
    secure.once('secureConnect', () => {
      handshaking = false;
      secure.removeAllListeners('error');
      listen(secure);
      apply(login.tlsReady());
    });
  };

  /** Carries out one step; false when the login is over (done, failed) or waits for TLS. */
  const apply = (step: LoginStep): boolean => {
    switch (step.kind) {
      case 'send':
        socket.write(step.data);
        return true;
      case 'wait':
        return true;
      case 'fail':
        finish(new PosternError(step.code, `${where} ${step.detail}`, step.reply));
        return false;
      case 'starttls':
        // RFC 2595 §4: nothing the server sent before the handshake may be kept.
        if (reader.rest().length > 0) finish(new PosternError('PST_BACKEND_INVALID_REPLY', `${where}: bytes after the STLS reply`));
        else startTls();
        return false;
      case 'done':
        if (reader.rest().length > 0) finish(new PosternError('PST_BACKEND_INVALID_REPLY', `${where}: bytes after the login reply nobody asked for`));
        else finish(null, step.final);
        return false;
    }
  };

  const onData = (chunk: Buffer): void => {
    reader.push(chunk);
    for (;;) {
      const line = reader.next();
      if (line === null) return;
      if (line === LINE_TOO_LONG) return finish(new PosternError('PST_BACKEND_INVALID_REPLY', `${where} at ${login.step}: line over ${MAX_LINE} bytes`));
      // The client's copy of the final line is the line as sent, with CRLF (a bare LF made CRLF).
      if (!apply(login.onLine(line, Buffer.from(`${line.toString('latin1')}\r\n`, 'latin1')))) return;
    }
  };
  const onError = (err: NodeJS.ErrnoException): void => {
    if (err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN') return finish(new PosternError('PST_ROUTE_RESOLVE', `${where}: ${err.code}`));
    if (connected && handshaking) return finish(new PosternError('PST_BACKEND_TLS_FAILED', `${where}: ${err.code ?? err.message}`));
    finish(new PosternError(connected ? 'PST_BACKEND_CLOSED' : 'PST_BACKEND_UNREACHABLE', `${where} at ${login.step}: ${err.code ?? err.message}`));
  };
  const onEnd = (): void => finish(new PosternError('PST_BACKEND_CLOSED', `${where} closed the connection at ${login.step}`));
  const timer = setTimeout(() => finish(new PosternError('PST_BACKEND_TIMEOUT', `${where} at ${login.step} after ${o.timeoutMs} ms`)), o.timeoutMs);

  listen(socket);
  return () => finish(new PosternError('PST_CLIENT_LOST', 'aborted'));
}

function ignore(): void {}
