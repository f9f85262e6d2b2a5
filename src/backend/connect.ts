/**
 * Connects to the chosen back-end and drives the {@link Replay} over the socket, with one timer
 * bounding connect plus replay (as nginx bounds both with its `timeout`).
 */
import net from 'node:net';
import { PosternError } from '../errors.js';
import { ReplyError, ReplyReader, type Reply } from '../smtp/reply-reader.js';
import { Replay, type ReplayOptions } from './replay.js';

export interface BackendReady {
  socket: net.Socket;
  /** The back-end's reply to the replayed RCPT: the client's reply. */
  reply: Reply;
  /** Whether XCLIENT was sent and accepted. */
  xclient: boolean;
}

export type BackendCallback = (err: PosternError | null, ready?: BackendReady) => void;

/** The back-end's own reply, kept for `proxy_pass_error_message`. */
export class BackendRefusal extends PosternError {}

/**
 * Starts the connection; `done` is called exactly once. Returns a function that aborts the
 * attempt (client went away, shutdown).
 */
export function connectBackend(host: string, port: number, replayOptions: ReplayOptions, timeoutMs: number, done: BackendCallback): () => void {
  const socket = net.connect({ host, port, noDelay: true });
  const replay = new Replay(replayOptions);
  const reader = new ReplyReader();
  let finished = false;
  let connected = false;
  socket.once('connect', () => (connected = true));

  const finish = (err: PosternError | null, reply?: Reply): void => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    socket.removeListener('data', onData);
    socket.removeListener('error', onError);
    socket.removeListener('end', onEnd);
    if (err) {
      socket.on('error', ignore);
      // Say goodbye to a back-end that is still talking (RFC 5321 §4.1.1.10), then let it close.
      if (socket.readyState === 'open') {
        socket.end('QUIT\r\n');
        socket.setTimeout(5000, () => socket.destroy());
      } else {
        socket.destroy();
      }
      done(err);
      return;
    }
    done(null, { socket, reply: reply!, xclient: replay.xclientDone });
  };

  const onData = (chunk: Buffer): void => {
    reader.push(chunk);
    for (;;) {
      const r = reader.next();
      if (r === null) return;
      if (r instanceof ReplyError) return finish(new PosternError('PST_BACKEND_INVALID_REPLY', `${replay.step}: ${r.reason}`));
      const step = replay.onReply(r);
      if (step.kind === 'send') {
        socket.write(step.data);
      } else if (step.kind === 'wait') {
        continue;
      } else if (step.kind === 'fail') {
        const text = step.reply && step.reply.code >= 400 ? step.reply.raw.toString('latin1') : undefined;
        return finish(new BackendRefusal(step.code, step.detail, text));
      } else {
        if (reader.rest().length > 0) {
          return finish(new PosternError('PST_BACKEND_INVALID_REPLY', 'back-end sent bytes after its RCPT reply before any command'));
        }
        return finish(null, step.reply);
      }
    }
  };
  const onError = (err: NodeJS.ErrnoException): void => {
    const where = `${host}:${port}`;
    if (err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN') return finish(new PosternError('PST_ROUTE_RESOLVE', `${where}: ${err.code}`));
    const code = connected ? 'PST_BACKEND_CLOSED' : 'PST_BACKEND_UNREACHABLE';
    finish(new PosternError(code, `${where} at ${replay.step}: ${err.code ?? err.message}`));
  };
  const onEnd = (): void => finish(new PosternError('PST_BACKEND_CLOSED', `${host}:${port} closed the connection at ${replay.step}`));
  const timer = setTimeout(() => finish(new PosternError('PST_BACKEND_TIMEOUT', `${host}:${port} at ${replay.step} after ${timeoutMs} ms`)), timeoutMs);

  socket.on('data', onData);
  socket.on('error', onError);
  socket.on('end', onEnd);
  return () => finish(new PosternError('PST_CLIENT_LOST', 'aborted'));
}

function ignore(): void {}
