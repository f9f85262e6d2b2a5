/**
 * Connects to one POP3 back-end and runs the {@link Pop3Login} over it with the mailbox login
 * driver (../backend/login-driver.ts: connect, PROXY header, TLS, one timer, the goodbye). The one
 * file under pop3/ with I/O: the login itself is ./login.ts.
 */
import type net from 'node:net';
import type { BackendTlsOptions } from '../backend/connect.js';
import { driveLogin, type BackendLines } from '../backend/login-driver.js';
import type { PosternError } from '../errors.js';
import { LINE_TOO_LONG, LineReader } from '../smtp/line-reader.js';
import { Pop3Login, type LoginOptions } from './login.js';

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

/** The back-end's lines, as the driver reads them. */
function pop3Lines(): BackendLines {
  const r = new LineReader(MAX_LINE);
  return { push: (c) => r.push(c), next: () => { const l = r.next(); return l === LINE_TOO_LONG ? 'too-long' : l; }, rest: () => r.rest() };
}

/** Starts the connection; `done` is called exactly once. Returns an abort. */
export function connectPop3(o: Pop3ConnectOptions, done: (err: PosternError | null, ready?: Pop3BackendReady) => void): () => void {
  const login = new Pop3Login({ ...o.login, tls: o.tls.mode === 'implicit' ? 'off' : o.tls.mode });
  return driveLogin<{ final: Buffer }>(
    {
      host: o.host,
      port: o.port,
      tls: o.tls,
      ...(o.proxyHeader ? { proxyHeader: o.proxyHeader } : {}),
      timeoutMs: o.timeoutMs,
      maxLine: MAX_LINE,
      lines: pop3Lines,
      // The client's copy of the final line is the line as sent, with CRLF (a bare LF made CRLF).
      machine: { get at() { return login.step; }, onLine: (line) => login.onLine(line, Buffer.from(`${line.toString('latin1')}\r\n`, 'latin1')), tlsReady: () => login.tlsReady() },
      goodbye: 'QUIT\r\n',
      starttls: 'STLS',
      finish: (d, rest) => (rest.length > 0 ? { refuse: 'bytes after the login reply nobody asked for' } : d),
    },
    (err, r) => (err ? done(err) : done(null, { socket: r!.socket, final: r!.done.final, tls: r!.tls, xclient: login.xclientDone, offersXclient: login.offersXclient })),
  );
}
