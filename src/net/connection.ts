/**
 * The connection driver: one client connection, whatever its protocol. It owns the sockets —
 * the client's (TCP, then TLS over it), the back-end's — their timers and backpressure, runs the
 * router and the protocol module's back-end set-up when asked, splices bytes in the blind relay,
 * and reports the end to the observers (access log). Every decision is the protocol session's:
 * the driver carries out its actions in order and feeds it events (src/protocol.ts).
 */
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import type { Envelope, RouteRequest, RouteTarget, TlsInfo } from '../domain.js';
import { backendName } from '../domain.js';
import { relay, type RelayStats } from './relay.js';
import { ERRORS, WARNINGS, type ErrorCode, type WarningCode } from '../errors.js';
import type { Action, BackendSession, ProtocolSession } from '../protocol.js';
import { inspectClientTls } from '../tls/client-cert.js';
import type { ConnectVerdict } from '../checks/connect.js';
import { Asks, type AskOwner } from './asks.js';
import { directOrigin, proxyRecord, type Origin } from './proxy-accept.js';
import type { ListenerContext, ServerContext } from './context.js';

/** Connections accepted by this process, for RouteRequest.session. */
let accepted = 0;
import { attach, attachBackend, closeWhenWritten, detach, detachBackend, stopReading, type SocketOwner } from './socket-events.js';

/** Grace period for the client to close after our final reply, before the socket is destroyed. */
const LINGER_MS = 2000;

/** Outcome names of the access record for codes that are not failures. */
const OUTCOME: Partial<Record<ErrorCode, string>> = { PST_CLIENT_EOF: 'client-eof' };

type ClientTimer = 'idle' | 'handshake' | 'none';

export class Connection implements SocketOwner, AskOwner {
  /** The client socket: the TCP socket, or the TLS socket over it once TLS has started. */
  socket: Socket;
  readonly session: ProtocolSession;
  readonly clientAddr: string;
  readonly clientPort: number;
  readonly #ctx: ServerContext;
  /** The TCP socket, for byte counts on the wire. */
  readonly #raw: Socket;
  readonly #started = Date.now();
  readonly #onClosed: (c: Connection) => void;
  readonly #listenerName: string;
  #implicitTls = false;
  /** The verified reverse name, or nginx's `[UNAVAILABLE]` / `[TEMPUNAVAIL]`. */
  #clientName = '[UNAVAILABLE]';
  readonly #id: string;
  readonly #origin: Origin;
  #checks: Record<string, unknown> | null = null;
  /** The router and the stage checks, asked for the session; their refusals, for the access record. */
  readonly #asks: Asks;
  #tls: TlsInfo | null = null;
  #backendTls: string | null = null;
  /** The last back-end connection was a kept one: its session number on it (backend_reuse). */
  #backendSession = 0;
  /** What the back-end was told this session is called (IMAP ID, POP3 XCLIENT), for matching its log. */
  #backendSessionId: string | null = null;
  #backend: string | null = null;
  #backendSocket: Socket | null = null;
  #abortBackend: (() => void) | null = null;
  #timer: NodeJS.Timeout | null = null;
  #clientTimer: ClientTimer | null = null;
  #backendTimer: 'none' | 'reply' | 'final' = 'none';
  #clientEnded = false;
  /** Last reply code the client was sent, by Postern or the back-end. */
  #lastCode = 0;
  #outcome: string | null = null;
  #relayStats: RelayStats | null = null;
  #finished = false;

  /** `origin`: where the connection comes from, after a PROXY protocol header (./proxy-accept.ts). */
  constructor(socket: Socket, ctx: ServerContext, listener: ListenerContext, onClosed: (c: Connection) => void, origin: Origin = directOrigin(socket)) {
    this.socket = socket;
    this.#raw = socket;
    this.#ctx = ctx;
    this.#onClosed = onClosed;
    this.#origin = origin;
    this.clientAddr = origin.addr;
    this.clientPort = origin.port;
    this.#id = (++accepted).toString(36);
    this.session = listener.newSession();
    this.#listenerName = listener.name;
    this.#asks = new Asks(ctx, this);
    socket.setNoDelay(true);
    attach(socket, this);
    this.#implicitTls = listener.config.implicit_tls;
    const v = ctx.connectChecks.check({ addr: this.clientAddr, port: this.clientPort, serverAddr: origin.serverAddr, serverPort: origin.serverPort });
    if (v instanceof Promise) {
      // Nothing is read or said until the client is known (Postfix looks its name up before the greeting).
      socket.pause();
      v.then((x) => this.#checked(x), () => this.#checked({ name: '[TEMPUNAVAIL]' }));
    } else this.#checked(v);
  }

  #checked(v: ConnectVerdict): void {
    if (this.socket.destroyed || this.session.phase === 'closed') return;
    this.#clientName = v.name;
    this.#checks = v.record ?? null;
    if (v.refuse) {
      this.#asks.recordRefusal(v.refuse.code, v.refuse.reply ?? ERRORS[v.refuse.code].reply ?? '');
      return this.#run(this.session.refused(v.refuse.code, v.refuse.detail, v.refuse.reply));
    }
    this.#run(this.session.start(v.prepend));
    if (this.#implicitTls) this.#startTls();
  }

  /**
   * Server side of a TLS handshake over the client's TCP socket (implicit TLS, or after the
   * STARTTLS reply has been written). Whatever the client sends now is TLS records: plaintext
   * pipelined after STARTTLS fails the handshake instead of being read as commands.
   */
  #startTls(): void {
    const plain = this.socket;
    // Bytes already read (a ClientHello that came with a PROXY header) must wait for the TLS socket, not reach no one.
    plain.pause();
    detach(plain);
    const secure = this.#ctx.tls!.serverSocket(plain);
    this.socket = secure;
    attach(secure, this);
    secure.once('secure', () => this.#onSecure(secure));
    this.#clientTimer = null; // the timer was the TCP socket's
    this.#setClientTimer('handshake');
  }

  #onSecure(secure: TLSSocket): void {
    const t = this.#ctx.config.tls;
    const { error, detail, info } = inspectClientTls(secure, t.verify_client, t.verify_depth, t.pass_client_cert);
    this.#tls = info;
    if (error) return this.#run(this.session.tlsRefused(error, detail));
    this.#ctx.logger.debug({ client: this.clientAddr, protocol: info.protocol, cipher: info.cipher, verify: info.verify }, 'TLS established');
    this.#run(this.session.tlsStarted());
  }

  /** A client-side error: in a handshake it is the handshake's failure; otherwise 'close' follows. */
  onError(err: Error): void {
    if (this.session.phase === 'tls-handshake') this.#run(this.session.tlsFailed('PST_TLS_HANDSHAKE', (err as NodeJS.ErrnoException).code ?? err.message));
  }

  /** SIGTERM: the session decides who hears it now and who at the next command. */
  shutdown(): void {
    if (this.session.phase !== 'handed-off' && this.session.phase !== 'closed') this.#run(this.session.shutdown());
  }

  /** Drain time is over: close whatever is left. */
  destroy(): void {
    this.#abortBackend?.();
    this.#backendSocket?.destroy();
    this.socket.destroy();
  }

  onData(chunk: Buffer): void {
    this.#run(this.session.receive(chunk));
  }

  onEnd(): void {
    this.#clientEnded = true;
    this.#run(this.session.clientEnded());
  }

  onTimeout(): void {
    // After our last reply the client had its grace period to close.
    if (this.session.phase === 'closed') this.socket.destroy();
    else this.#run(this.session.idleTimeout());
  }

  onClose(): void {
    this.#clearTimer();
    this.#abortBackend?.();
    // Once relaying, the relay reports the end when both sides have closed.
    if (this.#relayStats === null) {
      // A client gone mid-body must not let the back-end complete the message.
      this.#dropBackend(this.session.phase === 'data');
      this.#finish();
    }
  }

  onDrain(): void {
    this.#flow();
  }

  // Back-end events (transaction mode; in session mode the relay owns the back-end socket).
  onBackendData(chunk: Buffer): void {
    this.#run(this.session.backendData(chunk));
  }

  onBackendGone(code: ErrorCode, detail: string): void {
    if (this.#backendSocket === null) return;
    this.#run(this.session.backendLost(code, `${this.#backend}: ${detail}`));
  }

  // AskOwner: the router's and the checks' answers come back through these.
  alive(): boolean {
    return !this.socket.destroyed;
  }

  run(actions: Action[]): void {
    this.#run(actions);
  }

  log(code: ErrorCode | WarningCode, detail?: string): void {
    this.#log(code, detail);
  }

  #run(actions: Action[]): void {
    if (actions.length > 0) {
      const s = this.socket;
      let startTls = false;
      s.cork();
      for (const a of actions) if (this.#act(a)) startTls = true;
      s.uncork();
      if (startTls) return this.#startTls();
    }
    this.#flow();
  }

  /** Carries out one action; true for `starttls`, which waits until the batch is written. */
  #act(a: Action): boolean {
    switch (a.type) {
      case 'reply':
        this.#write(a.data);
        break;
      case 'error':
        this.#error(a.code, a.detail, a.reply);
        break;
      case 'log':
        this.#log(a.code, a.detail);
        break;
      case 'route':
        this.#asks.route(this.#request(a.envelope));
        break;
      case 'check':
        this.#asks.check({ ...this.#request(a.envelope), stage: a.stage, recipientCount: a.recipientCount, ...(a.size !== undefined ? { size: a.size } : {}) });
        break;
      case 'connect':
        this.#connect(a.target, a.envelope);
        break;
      case 'splice':
        this.#splice(a.first, a.rest);
        break;
      case 'backend-write':
        this.#backendSocket?.write(a.data);
        break;
      case 'backend-close':
        this.#dropBackend(a.abort, a.reuse === true, a.clean === true);
        break;
      case 'timer':
        this.#clearTimer();
        this.#timer = setTimeout(() => {
          this.#timer = null;
          this.#run(this.session.timer());
        }, a.ms);
        break;
      case 'message':
        for (const o of this.#ctx.observers) o.message?.({ client: `${this.clientAddr}:${this.clientPort}`, ...a.record });
        break;
      case 'close':
        if (a.abort) this.socket.destroy();
        else this.#close(a.goodbye === true);
        break;
      case 'starttls':
        if (a.discarded > 0) this.#log('PSW_STARTTLS_DISCARDED', `${a.discarded} bytes`);
        return true;
    }
    return false;
  }

  /**
   * Reading and timers follow the session: the client is read only when the session wants
   * input and neither side is behind (a client that pipelines without reading its replies, or
   * a back-end slower than the body it is sent, pauses the client until it has caught up).
   */
  #flow(): void {
    const s = this.session;
    const phase = s.phase;
    if (phase === 'handed-off' || this.socket.destroyed) return;
    const blocked = this.socket.writableNeedDrain || (this.#backendSocket?.writableNeedDrain ?? false);
    if (s.reading && !blocked) this.socket.resume();
    else this.socket.pause();
    if (phase !== 'closed') this.#setClientTimer(phase === 'tls-handshake' ? 'handshake' : s.reading ? 'idle' : 'none');
    const bw = s.backendWaiting;
    if (bw !== this.#backendTimer && this.#backendSocket) {
      this.#backendTimer = bw;
      const t = this.#ctx.config.timeouts;
      this.#backendSocket.setTimeout(bw === 'none' ? 0 : bw === 'final' ? t.relay_idle : t.backend);
    }
  }

  #setClientTimer(kind: ClientTimer): void {
    if (kind === this.#clientTimer) return;
    this.#clientTimer = kind;
    const t = this.#ctx.config.timeouts;
    this.socket.setTimeout(kind === 'idle' ? t.idle : kind === 'handshake' ? t.handshake : 0);
  }

  #clearTimer(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #write(data: Buffer): void {
    if (data.length === 0 || this.socket.destroyed || this.socket.writableEnded) return;
    this.#lastCode = this.#ctx.protocol.replyCode(data) || this.#lastCode;
    this.socket.write(data);
  }

  #log(code: ErrorCode | WarningCode, detail?: string): void {
    if (code in WARNINGS) {
      const w = WARNINGS[code as WarningCode];
      this.#ctx.logger[w.level]({ code, client: this.clientAddr, backend: this.#backend ?? undefined, detail }, w.message);
      return;
    }
    const spec = ERRORS[code as ErrorCode];
    this.#ctx.logger[spec.level]({ code, client: this.clientAddr, detail }, spec.message);
    // The first closing code is the outcome; in transaction mode it replaces `relayed` too.
    if (spec.close && (this.#outcome === null || this.#outcome === 'relayed')) this.#outcome = OUTCOME[code as ErrorCode] ?? code;
  }

  #error(code: ErrorCode, detail?: string, reply?: Buffer): void {
    this.#log(code, detail);
    this.#write(reply ?? this.session.errorReply(code));
    if (ERRORS[code].close) this.#close();
  }

  #close(goodbye = false): void {
    this.#outcome ??= 'quit';
    this.#clearTimer();
    // Within #run's cork: the replies leave at its uncork; closed once the kernel has them. TLS
    // ends with its close_notify (end), as nginx's ngx_ssl_shutdown does.
    if (goodbye && !(this.socket instanceof TLSSocket)) queueMicrotask(() => closeWhenWritten(this.socket));
    else this.socket.end();
    this.socket.setTimeout(LINGER_MS);
    this.#clientTimer = null;
  }

  /** What routers and checks are told about the session: the client, its TLS, its listener. */
  #request(envelope: Envelope): RouteRequest {
    return {
      protocol: this.#ctx.protocol.name,
      envelope,
      clientAddr: this.clientAddr,
      clientPort: this.clientPort,
      clientHost: this.#clientName,
      listener: this.#listenerName,
      session: this.#id,
      serverAddr: this.#origin.serverAddr,
      serverPort: this.#origin.serverPort,
      ...(this.#origin.proxy ? { proxy: this.#origin.proxy } : {}),
      ...(this.#tls ? { tls: this.#tls } : {}),
    };
  }

  #connect(target: RouteTarget, envelope: Envelope): void {
    this.#backend = backendName(target);
    this.#abortBackend = this.#ctx.protocol.connect({ addr: this.clientAddr, port: this.clientPort, name: this.#clientName, serverAddr: this.#origin.serverAddr, serverPort: this.#origin.serverPort }, target, envelope, (err, b) => {
      this.#abortBackend = null;
      if (err) {
        if (err.code !== 'PST_CLIENT_LOST' && !this.socket.destroyed) this.#run(this.session.backendFailed(err));
        return;
      }
      this.#backendReady(b!);
    });
  }

  #backendReady(b: BackendSession): void {
    if (this.socket.destroyed) {
      b.socket.destroy();
      return;
    }
    this.#backendTls = b.tls;
    this.#backendSocket = b.socket;
    if (b.session !== undefined) this.#backendSession = b.session;
    if (b.sessionId !== undefined) this.#backendSessionId = b.sessionId;
    if (b.name) this.#backend = b.name;
    this.#backendTimer = 'none';
    this.#outcome = 'relayed';
    this.#run(this.session.backendReady(b.ready));
    // Transaction mode keeps the session machine on the back-end's replies (same tick: no byte is missed).
    if (this.#backendSocket === b.socket && this.session.phase !== 'handed-off') this.#adoptBackend();
  }

  /** Session mode: the back-end's reply to the client, pipelined bytes to the back-end, then the blind relay. */
  #splice(first: Buffer, rest: Buffer): void {
    const backend = this.#backendSocket!;
    this.#clearTimer();
    stopReading(this.socket);
    this.#write(first);
    // Commands the client pipelined after the RCPT or AUTH (RFC 2920) go to the back-end untouched.
    if (rest.length > 0) backend.write(rest);
    if (this.#clientEnded) backend.end();
    this.#relayStats = { lastCode: this.#lastCode, failure: null };
    relay(this.socket, backend, this.#ctx.config.timeouts.relay_idle, this.#relayStats, this.#ctx.protocol.replyCode, () => this.#finish());
  }

  /** Transaction mode: the back-end session's socket is read by the session machine through us. */
  #adoptBackend(): void {
    attachBackend(this.#backendSocket!, this);
    this.#backendSocket!.resume();
  }

  /** Ends the back-end session: QUIT (RFC 5321 §4.1.1.10) and a grace period, or at once. */
  #dropBackend(abort: boolean, reuse = false, clean = false): void {
    const s = this.#backendSocket;
    if (!s || this.#relayStats) return;
    this.#backendSocket = null;
    detachBackend(s);
    if (abort || s.destroyed) {
      s.destroy();
      return;
    }
    if (reuse && this.#ctx.protocol.release?.(s, clean)) return;
    s.end('QUIT\r\n');
    s.setTimeout(5000, () => s.destroy());
    s.resume(); // its 221 is read and dropped
  }

  /** The access record: one per session, at its end (nginx has no equivalent). */
  #finish(): void {
    if (this.#finished) return;
    this.#finished = true;
    const rs = this.#relayStats;
    if (rs?.failure) {
      const spec = ERRORS[rs.failure];
      this.#ctx.logger[spec.level]({ code: rs.failure, client: this.clientAddr, backend: this.#backend }, spec.message);
    }
    const record = {
      client: `${this.clientAddr}:${this.clientPort}`,
      ...this.session.summary(),
      ...(this.#clientName !== '[UNAVAILABLE]' ? { client_name: this.#clientName } : {}),
      ...(this.#origin.proxy ? { proxy: proxyRecord(this.#origin.proxy) } : {}),
      ...(this.#checks || this.#asks.refusals ? { checks: { ...this.#checks, ...(this.#asks.refusals ? { refused: this.#asks.refusals } : {}) } } : {}),
      backend: this.#backend ?? undefined,
      tls: this.#tls?.protocol,
      backend_tls: this.#backendTls ?? undefined,
      ...(this.#backendSession > 0 ? { backend_session: this.#backendSession } : {}),
      ...(this.#backendSessionId ? { backend_session_id: this.#backendSessionId } : {}),
      bytes_in: this.#raw.bytesRead,
      bytes_out: this.#raw.bytesWritten,
      duration_ms: Date.now() - this.#started,
      outcome: rs?.failure ?? this.#outcome ?? 'client-closed',
      code: rs ? rs.lastCode : this.#lastCode || undefined,
    };
    for (const o of this.#ctx.observers) o.sessionEnd?.(record);
    this.#onClosed(this);
  }
}

