/**
 * Connects to the chosen back-end and drives the {@link Replay} over the socket, with one timer
 * bounding connect plus replay (as nginx bounds both with its `timeout`). TLS to the back-end —
 * STARTTLS or implicit — is something nginx's mail proxy cannot do.
 */
import net from 'node:net';
import tls from 'node:tls';
import { PosternError } from '../errors.js';
import { ReplyError, ReplyReader, type Reply } from '../smtp/reply-reader.js';
import { Replay, type ReplayOptions, type ReplayResult } from './replay.js';

export interface BackendReady {
  socket: net.Socket;
  /** The back-end's reply to the replayed RCPT (the client's reply); null after AUTH (no RCPT replayed). */
  reply: Reply | null;
  /** Whether XCLIENT was sent and accepted. */
  xclient: boolean;
  /** The session's user could not be passed: XCLIENT without LOGIN. */
  loginDropped: boolean;
  /** TLS protocol of the back-end connection, if any. */
  tls: string | null;
  /** The back-end offers PIPELINING (RFC 2920) in its last EHLO reply. */
  pipelining: boolean;
  /** Its last EHLO reply's keywords (what a later warm start needs). */
  capabilities: ReadonlyMap<string, string>;
  /** The session went on a kept connection instead of a new one. */
  warm: boolean;
}

export type BackendCallback = (err: PosternError | null, ready?: BackendReady) => void;

/** How to secure the back-end connection. */
export interface BackendTlsOptions {
  mode: 'off' | 'opportunistic' | 'required' | 'implicit';
  /** CA bundle (PEM); undefined: the system's CAs. */
  ca?: Buffer;
  /** Verify the certificate and its name; false is an explicit opt-out. */
  verify: boolean;
  /** Name expected in the certificate; default: the route's host. */
  serverName?: string;
  minVersion: tls.SecureVersion;
}

/** The client options of a TLS connection to `host` as `t` asks: the CA, verification, floor and SNI. */
export function backendTlsConnect(host: string, t: Pick<BackendTlsOptions, 'ca' | 'verify' | 'serverName' | 'minVersion'>): tls.ConnectionOptions {
  return {
    host,
    // SNI carries a name, never an address; an address is still checked against the IP SANs.
    ...(t.serverName ? { servername: t.serverName } : net.isIP(host) ? {} : { servername: host }),
    ...(t.ca ? { ca: t.ca } : {}),
    rejectUnauthorized: t.verify,
    minVersion: t.minVersion,
  };
}

/**
 * Starts the connection; `done` is called exactly once. Returns a function that aborts the
 * attempt (client went away, shutdown).
 */
export function connectBackend(
  host: string,
  port: number,
  replayOptions: Omit<ReplayOptions, 'tls' | 'secure'> & { /** Written first, before TLS or SMTP (an outgoing PROXY protocol header). */ proxyHeader?: Buffer },
  tlsOptions: BackendTlsOptions,
  timeoutMs: number,
  done: BackendCallback,
  /** A connection kept from an earlier session (./cache.ts) to go on with instead of connecting. */
  warm?: { socket: net.Socket; capabilities: ReadonlyMap<string, string>; secure: boolean },
): () => void {
  const implicit = tlsOptions.mode === 'implicit';
  const secureOpts = (): tls.ConnectionOptions => backendTlsConnect(host, tlsOptions);
  let socket: net.Socket;
  let tcp: net.Socket;
  if (warm) {
    socket = warm.socket;
    tcp = socket;
  } else if (replayOptions.proxyHeader) {
    // The PROXY header goes first, as one write, before a TLS ClientHello or any SMTP (Postfix reads it with one recv).
    tcp = net.connect({ host, port, noDelay: true });
    tcp.write(replayOptions.proxyHeader);
    socket = implicit ? tls.connect({ ...secureOpts(), socket: tcp }) : tcp;
  } else {
    socket = implicit ? tls.connect({ ...secureOpts(), port }) : net.connect({ host, port, noDelay: true });
    tcp = socket;
  }
  socket.setNoDelay(true);
  // A TLS socket over our own TCP socket does not always report that socket's errors (refused, reset).
  if (tcp !== socket) tcp.on('error', (err) => socket.destroy(err));
  const replay = new Replay({ ...replayOptions, tls: tlsOptions.mode === 'implicit' ? 'off' : tlsOptions.mode, secure: implicit });
  const reader = new ReplyReader();
  const where = `${host}:${port}`;
  let finished = false;
  let connected = warm !== undefined;
  let handshaken = !implicit || warm !== undefined;
  if (!warm) {
    tcp.once('connect', () => (connected = true));
    if (implicit) socket.once('secureConnect', () => (handshaken = true));
  }

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

  const finish = (err: PosternError | null, reply?: Reply): void => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    unlisten(socket);
    if (err) {
      socket.on('error', ignore);
      // Say goodbye to a back-end that is still talking (RFC 5321 §4.1.1.10), then let it close.
      if (socket.readyState === 'open' && replay.step !== 'tls') {
        socket.end('QUIT\r\n');
        socket.setTimeout(5000, () => socket.destroy());
      } else {
        socket.destroy();
      }
      done(err);
      return;
    }
    done(null, { socket, reply: reply ?? null, xclient: replay.xclientDone, loginDropped: replay.loginDropped, tls: socket instanceof tls.TLSSocket ? socket.getProtocol() : null, pipelining: replay.capabilities.has('PIPELINING'), capabilities: replay.capabilities, warm: warm !== undefined });
  };

  /** STARTTLS accepted: the handshake runs over the same TCP connection, then the replay goes on. */
  const startTls = (): void => {
    unlisten(socket);
    const plain = socket;
    plain.on('error', ignore);
    const secure = tls.connect({ ...secureOpts(), socket: plain });
    socket = secure;
    secure.once('error', (err: NodeJS.ErrnoException) => finish(new PosternError('PST_BACKEND_TLS_FAILED', `${where}: ${err.code ?? err.message}`)));
    secure.once('secureConnect', () => {
      secure.removeAllListeners('error');
      listen(secure);
      const next = replay.tlsReady();
      if (next.kind === 'send') secure.write(next.data);
    });
  };

  /** Carries out one step of the replay; false when the replay is over (done, failed, or TLS next). */
  const apply = (step: ReplayResult): boolean => {
    switch (step.kind) {
      case 'send':
        socket.write(step.data);
        return true;
      case 'wait':
        return true;
      case 'fail': {
        // The back-end's own refusal is kept for proxy_pass_error_message.
        const text = step.reply && step.reply.code >= 400 ? step.reply.raw.toString('latin1') : undefined;
        finish(new PosternError(step.code, step.detail, text));
        return false;
      }
      case 'starttls':
        // RFC 3207 §4.2: nothing the server sent before the handshake may be kept.
        if (reader.rest().length > 0) finish(new PosternError('PST_BACKEND_INVALID_REPLY', 'bytes after the STARTTLS reply'));
        else startTls();
        return false;
      case 'ready':
      case 'done':
        if (reader.rest().length > 0) finish(new PosternError('PST_BACKEND_INVALID_REPLY', 'back-end sent bytes nobody asked for at the end of the replay'));
        else finish(null, step.kind === 'done' ? step.reply : undefined);
        return false;
    }
  };

  const onData = (chunk: Buffer): void => {
    reader.push(chunk);
    for (;;) {
      const r = reader.next();
      if (r === null) return;
      if (r instanceof ReplyError) return finish(new PosternError('PST_BACKEND_INVALID_REPLY', `${replay.step}: ${r.reason}`));
      if (!apply(replay.onReply(r))) return;
    }
  };
  const onError = (err: NodeJS.ErrnoException): void => {
    if (err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN') return finish(new PosternError('PST_ROUTE_RESOLVE', `${where}: ${err.code}`));
    if (connected && !handshaken) return finish(new PosternError('PST_BACKEND_TLS_FAILED', `${where}: ${err.code ?? err.message}`));
    const code = connected ? 'PST_BACKEND_CLOSED' : 'PST_BACKEND_UNREACHABLE';
    finish(new PosternError(code, `${where} at ${replay.step}: ${err.code ?? err.message}`));
  };
  const onEnd = (): void => finish(new PosternError('PST_BACKEND_CLOSED', `${where} closed the connection at ${replay.step}`));
  const timer = setTimeout(() => finish(new PosternError('PST_BACKEND_TIMEOUT', `${where} at ${replay.step} after ${timeoutMs} ms`)), timeoutMs);

  listen(socket);
  if (warm) {
    // A kept connection: greeted and EHLO'd in an earlier session; go on from there (replay.ts `warm`).
    apply(replay.warm(warm.capabilities, warm.secure));
    socket.resume();
  }
  return () => finish(new PosternError('PST_CLIENT_LOST', 'aborted'));
}

function ignore(): void {}
