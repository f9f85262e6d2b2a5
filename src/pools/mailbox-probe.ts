/**
 * The active check of an IMAP or POP3 server (a pool with `health.protocol: imap|pop3`): a short,
 * complete and polite session, as the SMTP check (./probe.ts) is for SMTP.
 *
 *   IMAP (RFC 9051 §7.1.1, §6.1.3): connect → `* OK …` greeting → `p1 LOGOUT` → `* BYE …` → `p1 OK …`
 *   POP3 (RFC 1939 §4, §6):         connect → `+OK …` greeting  → `QUIT`      → `+OK …`
 *
 * TLS from the first byte when the pool's back-ends are reached with `backend_tls.mode: implicit`
 * (993, 995); STARTTLS/STLS checks are not offered (check-config says so). A greeting that is not
 * OK (`* BYE`, `* PREAUTH` is taken as up: the server answers), a line over 8 KiB, or a close
 * before the goodbye's answer is a failure. One timer bounds the whole check.
 */
import net from 'node:net';
import tls from 'node:tls';
import { backendTlsConnect } from '../backend/connect.js';
import type { ProbeOptions, ProbeResult } from './probe.js';

type Step = 'connect' | 'tls' | 'greeting' | 'bye';
export type MailboxProtocol = 'imap' | 'pop3';

const MAX_LINE = 8192;
const MAX_TEXT = 200;
const LOGOUT: Record<MailboxProtocol, string> = { imap: 'p1 LOGOUT\r\n', pop3: 'QUIT\r\n' };

const quote = (line: string): string => {
  const t = line.replace(/[^\x20-\x7e]/g, '?');
  return t.length > MAX_TEXT ? `${t.slice(0, MAX_TEXT)}…` : t;
};

/** What a line means at `step`: go on to `next`, succeed, fail with a reason, or keep reading. */
function judge(proto: MailboxProtocol, step: Step, line: string): { next: 'bye' } | { ok: true } | { fail: string } | null {
  if (proto === 'pop3') {
    if (!line.startsWith('+OK')) return { fail: `${step === 'greeting' ? 'greeting' : 'quit'} ${quote(line)}` };
    return step === 'greeting' ? { next: 'bye' } : { ok: true };
  }
  if (step === 'greeting') return /^\* (OK|PREAUTH)\b/i.test(line) ? { next: 'bye' } : { fail: `greeting ${quote(line)}` };
  // After LOGOUT: untagged lines (the BYE) first, then our tagged reply.
  if (line.startsWith('* ')) return null;
  return /^p1 OK\b/i.test(line) ? { ok: true } : { fail: `logout ${quote(line)}` };
}

/** Runs one check; never rejects. */
export function probeMailbox(proto: MailboxProtocol, opts: ProbeOptions): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const started = performance.now();
    const implicit = opts.tls === 'implicit';
    const t = opts.tlsOptions ?? { verify: true, minVersion: 'TLSv1.2' as const };
    const secure = (base: tls.ConnectionOptions): tls.ConnectionOptions => ({ ...base, ...backendTlsConnect(opts.host, t) });
    let socket: net.Socket;
    if (opts.proxyHeader) {
      const tcp = net.connect({ host: opts.host, port: opts.port });
      tcp.write(opts.proxyHeader);
      socket = implicit ? tls.connect(secure({ socket: tcp })) : tcp;
      if (socket !== tcp) tcp.on('error', (err) => socket.destroy(err));
    } else socket = implicit ? tls.connect(secure({ port: opts.port })) : net.connect({ host: opts.host, port: opts.port });
    socket.setNoDelay(true);
    let step: Step = 'connect';
    let buffered = '';
    let done = false;

    const finish = (ok: boolean, reason: string): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      socket.removeAllListeners('data');
      socket.on('error', () => {});
      // A refusal still gets the goodbye when the connection is open (the server logs a clean end).
      if (!ok && socket.readyState === 'open' && step === 'greeting') socket.end(LOGOUT[proto]);
      else socket.end();
      socket.resume();
      socket.setTimeout(1000, () => socket.destroy());
      resolve({ ok, reason, ms: Math.round(performance.now() - started) });
    };
    const onLine = (line: string): void => {
      const v = judge(proto, step, line);
      if (v === null) return;
      if ('fail' in v) return finish(false, v.fail);
      if ('ok' in v) return finish(true, socket instanceof tls.TLSSocket ? `ok (${socket.getProtocol() ?? 'TLS'})` : 'ok');
      step = v.next;
      socket.write(LOGOUT[proto]);
    };
    socket.on('data', (chunk: Buffer) => {
      buffered += chunk.toString('latin1');
      for (let lf = buffered.indexOf('\n'); lf >= 0 && !done; lf = buffered.indexOf('\n')) {
        const line = buffered.slice(0, lf).replace(/\r$/, '');
        buffered = buffered.slice(lf + 1);
        onLine(line);
      }
      if (!done && buffered.length > MAX_LINE) finish(false, `${step}: a line over ${MAX_LINE} bytes`);
    });
    // Implicit TLS: TCP up (step tls), then the handshake (the greeting comes over TLS).
    socket.once('connect', () => {
      if (step === 'connect') step = implicit ? 'tls' : 'greeting';
    });
    if (implicit) socket.once('secureConnect', () => {
      if (step === 'connect' || step === 'tls') step = 'greeting';
    });
    socket.on('error', (err: NodeJS.ErrnoException) => finish(false, `${step} ${err.code ?? err.message}`));
    socket.on('end', () => finish(false, `${step}: connection closed by the server`));
    socket.on('close', () => finish(false, `${step}: connection closed`));
    const onAbort = (): void => finish(false, 'aborted');
    const timer = setTimeout(() => finish(false, `timeout after ${opts.timeoutMs} ms at ${step}`), opts.timeoutMs);
    if (opts.signal?.aborted) return onAbort();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
  });
}
