/**
 * Connects to one IMAP back-end and runs the {@link ImapLogin} over it with the mailbox login
 * driver (../backend/login-driver.ts: connect, PROXY header, TLS, one timer, the goodbye). The one
 * file under imap/ with I/O.
 */
import type net from 'node:net';
import type { BackendTlsOptions } from '../backend/connect.js';
import { driveLogin } from '../backend/login-driver.js';
import type { PosternError } from '../errors.js';
import { ImapLogin, ResponseReader, TAGS, type ImapLoginOptions } from './login.js';

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
  const mode = o.tls.mode;
  const login = new ImapLogin({ ...o.login, tls: mode === 'implicit' ? 'off' : mode });
  return driveLogin<{ untagged: Buffer; status: Buffer }>(
    {
      host: o.host,
      port: o.port,
      tls: o.tls,
      ...(o.proxyHeader ? { proxyHeader: o.proxyHeader } : {}),
      timeoutMs: o.timeoutMs,
      maxLine: MAX_LINE,
      lines: () => new ResponseReader(MAX_LINE),
      machine: { get at() { return login.state; }, onLine: (line) => login.onLine(line), tlsReady: () => login.tlsReady() },
      goodbye: `${TAGS.logout} LOGOUT\r\n`,
      starttls: 'STARTTLS',
      // Whatever the back-end sent after its OK is the client's too (the relay would pass it on).
      finish: (d, rest) => ({ untagged: d.untagged, status: Buffer.concat([d.status, rest]) }),
    },
    (err, r) => (err ? done(err) : done(null, { socket: r!.socket, untagged: r!.done.untagged, status: r!.done.status, tls: r!.tls, idAccepted: login.idAccepted })),
  );
}
