/**
 * The active SMTP check of one server: a short, complete and polite SMTP session.
 *
 *   connect → 2xx greeting (multi-line allowed) → EHLO <server_name> → 250
 *   [→ STARTTLS → 220 → TLS handshake, certificate and name verified → EHLO → 250]
 *   → QUIT → 221
 *
 * HAProxy's `option smtpchk` stops at the EHLO reply and drops the connection, so every check is
 * a "lost connection after EHLO" in the back-end's log (HAProxy issue #1812). This check always
 * says QUIT — after a refusal too, whenever the connection is still open and not inside a TLS
 * handshake — and counts as good only when the back-end answered it with 221. One timer bounds the
 * whole check.
 *
 * Out of scope: capability drift (a back-end that stops offering XCLIENT, PIPELINING, SIZE …)
 * is not a health failure here; the EHLO reply is not compared with an earlier one.
 */
import net from 'node:net';
import tls from 'node:tls';
import { ReplyError, ReplyReader, type Reply } from '../smtp/reply-reader.js';
import { backendTlsConnect, type BackendTlsOptions } from '../backend/connect.js';

export interface ProbeOptions {
  host: string;
  port: number;
  /** The name sent with EHLO (Postern's `server_name`). */
  ehloName: string;
  /** The whole check, connect to the reply to QUIT, in ms. */
  timeoutMs: number;
  /**
   * `plain` (default); `starttls`: STARTTLS after the first EHLO, verify, EHLO again; `implicit`:
   * TLS from the first byte (a back-end behind `backend_tls.mode: implicit`).
   */
  tls?: 'plain' | 'starttls' | 'implicit';
  /** Certificate checks for `starttls`/`implicit`, as backend_tls: CA bundle, verify, expected name, floor. */
  tlsOptions?: Pick<BackendTlsOptions, 'ca' | 'verify' | 'serverName' | 'minVersion'>;
  /** Ends the check at once (reason `aborted`), e.g. when the checker stops. */
  signal?: AbortSignal;
  /** Written first, before TLS or SMTP: a PROXY header for a back-end that requires one (HAProxy `check-send-proxy`). */
  proxyHeader?: Buffer;
}

export interface ProbeResult {
  ok: boolean;
  /** `ok` (plus the TLS protocol), or what went wrong and where: `greeting 421 4.3.2 busy`, `connect ECONNREFUSED`, `timeout after 5000 ms at ehlo`. */
  reason: string;
  /** How long the check took. */
  ms: number;
}

type Step = 'connect' | 'tls' | 'greeting' | 'ehlo' | 'starttls' | 'ehlo after tls' | 'quit';

/** Longest piece of a reply quoted in a reason (one log line, one status line). */
const MAX_TEXT = 200;

function replyText(r: Reply): string {
  const text = `${r.code} ${r.lines.join(' / ')}`.replace(/[^\x20-\x7e]/g, '?').trimEnd();
  return text.length > MAX_TEXT ? `${text.slice(0, MAX_TEXT)}…` : text;
}

/** Runs one check; never rejects. */
export function probeSmtp(opts: ProbeOptions): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const started = performance.now();
    const mode = opts.tls ?? 'plain';
    const t = opts.tlsOptions ?? { verify: true, minVersion: 'TLSv1.2' as const };
    const secureOpts = (): tls.ConnectionOptions => backendTlsConnect(opts.host, t);
    let step: Step = 'connect';
    let socket: net.Socket;
    if (opts.proxyHeader) {
      const tcp = net.connect({ host: opts.host, port: opts.port });
      tcp.write(opts.proxyHeader);
      socket = mode === 'implicit' ? tls.connect({ ...secureOpts(), socket: tcp }) : tcp;
      if (socket !== tcp) tcp.on('error', (err) => socket.destroy(err));
    } else socket = mode === 'implicit' ? tls.connect({ ...secureOpts(), port: opts.port }) : net.connect({ host: opts.host, port: opts.port });
    socket.setNoDelay(true);
    let reader = new ReplyReader();
    let done = false;

    const finish = (ok: boolean, reason: string, quit: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      unlisten(socket);
      socket.on('error', ignore);
      if (quit && socket.readyState === 'open' && step !== 'tls') {
        // Goodbye even after a refusal, then let the back-end close (or give up after a moment).
        socket.end('QUIT\r\n');
        socket.resume(); // read (and drop) the 221 and the close
        socket.setTimeout(1000, () => socket.destroy());
      } else {
        socket.destroy();
      }
      resolve({ ok, reason, ms: Math.round(performance.now() - started) });
    };
    /** A refusal or a broken reply at `step`: fail, still saying QUIT. */
    const fail = (reason: string): void => finish(false, reason, step !== 'quit');

    const send = (next: Step, line: string): void => {
      step = next;
      socket.write(`${line}\r\n`);
    };

    const onReply = (r: Reply): void => {
      switch (step) {
        case 'greeting':
          if (r.code < 200 || r.code > 299) return fail(`greeting ${replyText(r)}`);
          return send('ehlo', `EHLO ${opts.ehloName}`);
        case 'ehlo':
          if (r.code !== 250) return fail(`ehlo ${replyText(r)}`);
          if (mode === 'starttls') {
            if (!r.lines.slice(1).some((l) => /^STARTTLS\b/i.test(l))) return fail('ehlo: STARTTLS not offered');
            return send('starttls', 'STARTTLS');
          }
          return send('quit', 'QUIT');
        case 'starttls':
          if (r.code !== 220) return fail(`starttls ${replyText(r)}`);
          // Nothing sent before the handshake may be kept: a plaintext injection (RFC 3207 §4.2, CVE-2011-0411).
          if (reader.rest().length > 0) return fail('starttls: unsolicited data after the reply');
          return startTls();
        case 'ehlo after tls':
          if (r.code !== 250) return fail(`ehlo after tls ${replyText(r)}`);
          return send('quit', 'QUIT');
        case 'quit':
          if (r.code !== 221) return finish(false, `quit ${replyText(r)}`, false);
          return finish(true, socket instanceof tls.TLSSocket ? `ok (${socket.getProtocol() ?? 'TLS'})` : 'ok', false);
        default:
          return fail(`${step}: unexpected reply ${replyText(r)}`);
      }
    };

    const onData = (chunk: Buffer): void => {
      reader.push(chunk);
      for (;;) {
        const r = reader.next();
        if (r === null) return;
        if (r instanceof ReplyError) return fail(`${step}: invalid reply: ${r.reason}`);
        const at = step;
        onReply(r);
        if (done) return;
        // One command at a time: anything after the reply was sent before the back-end read our
        // next command. (After STARTTLS, startTls() has checked and replaced the reader.)
        if (step === 'tls' || step === at) return;
        const rest = reader.rest();
        if (rest.length > 0) return fail(`${at}: unsolicited data after the reply`);
      }
    };

    const startTls = (): void => {
      step = 'tls';
      unlisten(socket);
      const plain = socket;
      plain.on('error', ignore);
      const secure = tls.connect({ ...secureOpts(), socket: plain });
      socket = secure;
      reader = new ReplyReader();
      listen(secure);
      secure.once('secureConnect', () => send('ehlo after tls', `EHLO ${opts.ehloName}`));
    };

    const onError = (err: NodeJS.ErrnoException): void => {
      const what = err.code ?? err.message;
      if (step === 'connect') return finish(false, `connect ${what}`, false);
      if (step === 'tls') return finish(false, `tls ${tlsReason(err)}`, false);
      finish(false, `${step}: ${what}`, false);
    };
    const onEnd = (): void => fail(`${step}: connection closed by the server`);
    const onClose = (): void => finish(false, `${step}: connection closed`, false);
    const onConnect = (): void => {
      if (step === 'connect') step = mode === 'implicit' ? 'tls' : 'greeting';
    };
    const onSecure = (): void => {
      // Implicit TLS: the greeting comes over TLS.
      if (step === 'tls' || step === 'connect') step = 'greeting';
    };
    const onAbort = (): void => finish(false, 'aborted', true);

    function listen(s: net.Socket): void {
      s.on('data', onData);
      s.on('error', onError);
      s.on('end', onEnd);
      s.on('close', onClose);
    }
    function unlisten(s: net.Socket): void {
      s.removeListener('data', onData);
      s.removeListener('error', onError);
      s.removeListener('end', onEnd);
      s.removeListener('close', onClose);
    }

    const timer = setTimeout(() => finish(false, `timeout after ${opts.timeoutMs} ms at ${step}`, true), opts.timeoutMs);
    if (opts.signal?.aborted) return onAbort();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    socket.once('connect', onConnect);
    if (mode === 'implicit') socket.once('secureConnect', onSecure);
    listen(socket);
  });
}

/** A TLS failure as an admin reads it: OpenSSL's code, and the message when it says more. */
function tlsReason(err: NodeJS.ErrnoException): string {
  const code = err.code ?? '';
  const msg = err.message.replace(/\s+/g, ' ').slice(0, MAX_TEXT);
  if (!code) return msg;
  return msg && !msg.includes(code) ? `${code}: ${msg}` : code;
}

function ignore(): void {}
