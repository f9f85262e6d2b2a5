/**
 * Connects to one IMAP back-end and drives the {@link ImapLogin} over the socket, one timer
 * bounding connect plus login (nginx bounds both with its proxy `timeout`). The one file under
 * imap/ with I/O. A PROXY header goes first when asked for; TLS to the back-end (implicit, or
 * STARTTLS) is Postern's own: nginx's mail proxy has none.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { BackendTlsOptions } from '../backend/connect.js';
import { PosternError } from '../errors.js';
import { ImapLogin, ResponseReader, TAGS, type ImapLoginOptions, type LoginStep } from './login.js';

/** Longest back-end response line during the login, literals included (nginx: proxy_buffer_size, one page). */
const MAX_LINE = 65536;

export interface ImapBackendReady {
  socket: net.Socket;
  /** The back-end's untagged lines before its OK to the login. */
  untagged: Buffer;
  /** That OK after its tag (`OK [CAPABILITY …] Logged in` CRLF), and anything the back-end sent after it. */
  status: Buffer;
  tls: string | null;
  /** Postern's ID was sent and answered OK. */
  idAccepted: boolean;
}

export interface ImapConnectOptions {
  host: string;
  port: number;
  login: Omit<ImapLoginOptions, 'tls'>;
  tls: BackendTlsOptions;
  /** Written first, before TLS or IMAP (an outgoing PROXY protocol header). */
  proxyHeader?: Buffer;
  timeoutMs: number;
}

/** Starts the connection; `done` is called exactly once. Returns an abort. */
export function connectImap(o: ImapConnectOptions, done: (err: PosternError | null, ready?: ImapBackendReady) => void): () => void {
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
  if (o.proxyHeader) tcp.write(o.proxyHeader);
  let socket: net.Socket = implicit ? tls.connect({ ...secureOpts(), socket: tcp }) : tcp;
  const mode = o.tls.mode;
  const login = new ImapLogin({ ...o.login, tls: mode === 'implicit' ? 'off' : mode });
  let reader = new ResponseReader(MAX_LINE);
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

  const finish = (err: PosternError | null, untagged?: Buffer, status?: Buffer): void => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    unlisten(socket);
    if (err) {
      socket.on('error', ignore);
      // A back-end still talking is told LOGOUT (RFC 9051 §6.1.3); a broken one is cut.
      if (socket.readyState === 'open' && !handshaking) {
        socket.end(`${TAGS.logout} LOGOUT\r\n`);
        socket.setTimeout(5000, () => socket.destroy());
      } else socket.destroy();
      return done(err);
    }
    done(null, { socket, untagged: untagged!, status: status!, tls: socket instanceof tls.TLSSocket ? socket.getProtocol() : null, idAccepted: login.idAccepted });
  };

  /** STARTTLS accepted: the handshake over the same TCP connection, then the login goes on. */
  const startTls = (): void => {
    unlisten(socket);
    const plain = socket;
    plain.on('error', ignore);
    handshaking = true;
    const secure = tls.connect({ ...secureOpts(), socket: plain });
    socket = secure;
    reader = new ResponseReader(MAX_LINE);
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
        // RFC 9051 §6.2.1: nothing the server sent before the handshake may be kept.
        if (reader.rest().length > 0) finish(new PosternError('PST_BACKEND_INVALID_REPLY', `${where}: bytes after the STARTTLS reply`));
        else startTls();
        return false;
      case 'done':
        // Whatever the back-end sent after its OK is the client's too (the relay would pass it on).
        finish(null, step.untagged, Buffer.concat([step.status, reader.rest()]));
        return false;
    }
  };

  const onData = (chunk: Buffer): void => {
    reader.push(chunk);
    for (;;) {
      const line = reader.next();
      if (line === null) return;
      if (line === 'too-long') return finish(new PosternError('PST_BACKEND_INVALID_REPLY', `${where} at ${login.state}: a line over ${MAX_LINE} bytes`));
      if (!apply(login.onLine(line))) return;
    }
  };
  const onError = (err: NodeJS.ErrnoException): void => {
    if (err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN') return finish(new PosternError('PST_ROUTE_RESOLVE', `${where}: ${err.code}`));
    if (connected && handshaking) return finish(new PosternError('PST_BACKEND_TLS_FAILED', `${where}: ${err.code ?? err.message}`));
    finish(new PosternError(connected ? 'PST_BACKEND_CLOSED' : 'PST_BACKEND_UNREACHABLE', `${where} at ${login.state}: ${err.code ?? err.message}`));
  };
  const onEnd = (): void => finish(new PosternError('PST_BACKEND_CLOSED', `${where} closed the connection at ${login.state}`));
  const timer = setTimeout(() => finish(new PosternError('PST_BACKEND_TIMEOUT', `${where} at ${login.state} after ${o.timeoutMs} ms`)), o.timeoutMs);

  listen(socket);
  return () => finish(new PosternError('PST_CLIENT_LOST', 'aborted'));
}

function ignore(): void {}
