/**
 * Runs an IMAP session machine over a client byte stream cut into reads, answering its route,
 * connect, timer and STARTTLS actions at once, and records what it did: one token per action,
 * the bytes the client reads, and the bytes handed to the back-end. Shared by the unit and fuzz
 * tests of the IMAP session.
 */
import type { Envelope, RouteDecision, RouteTarget } from '../../src/domain.js';
import { ERRORS, PosternError, type ErrorCode } from '../../src/errors.js';
import { ImapBook, imapMechanisms } from '../../src/imap/replies.js';
import { ImapSession, type ImapLimits, type ImapPhase, type ImapReady } from '../../src/imap/session.js';
import type { Action } from '../../src/protocol.js';

export const b = (s: string): Buffer => Buffer.from(s, 'latin1');

export const SALT = '<12345.1700000000@px.example>';

export const LIMITS: ImapLimits = {
  maxLineLength: 512,
  maxErrors: 10,
  starttls: 'off',
  implicitTls: false,
  mechanisms: ['PLAIN', 'LOGIN', 'CRAM-MD5', 'EXTERNAL', 'XOAUTH2', 'OAUTHBEARER'],
  maxAttempts: 3,
  salt: () => SALT,
  passErrorMessage: false,
};

export function bookFor(starttls: 'off' | 'on' | 'only' = 'off', auth: readonly string[] = ['plain', 'cram-md5', 'external']): ImapBook {
  return new ImapBook({ capabilities: ['IMAP4', 'IMAP4rev1', 'UIDPLUS'], mechanisms: imapMechanisms(auth), starttls });
}

export const TARGET: RouteTarget = { kind: 'ok', host: '10.0.0.1', port: 143 };
export const READY: ImapReady = { untagged: b('* CAPABILITY IMAP4rev1 IDLE\r\n'), status: b('OK [CAPABILITY IMAP4rev1] Logged in\r\n') };

/** What the back-end does with a login: take it, fail it, or leave it pending. */
export type BackendOutcome = 'ready' | 'pending' | { fail: PosternError };

export interface RunOptions {
  limits?: Partial<ImapLimits>;
  starttls?: 'off' | 'on' | 'only';
  /** The router's answer to the n-th route (0-based); default: TARGET. */
  decide?: (n: number, envelope: Envelope) => RouteDecision | 'pending';
  backend?: BackendOutcome;
  /** Let the machine's Auth-Wait timers fire at once (default), or never. */
  timers?: boolean;
}

export interface Outcome {
  events: string[];
  /** What the client reads. */
  wire: string;
  /** What the back-end gets after the hand-off: the pipelined bytes, then every later read. */
  handOff: string | null;
  phase: ImapPhase;
}

export function token(a: Action): string {
  switch (a.type) {
    case 'reply':
      return `reply ${a.data.toString('latin1')}`;
    case 'error':
      return `error ${a.code}`;
    case 'log':
      return `log ${a.code}`;
    case 'route':
      return `route ${JSON.stringify(a.envelope)}`;
    case 'connect':
      return `connect ${a.target.host}:${a.target.port}`;
    case 'splice':
      return `splice ${a.first.toString('latin1')}`;
    case 'close':
      return a.goodbye ? 'close goodbye' : a.abort ? 'close abort' : 'close';
    case 'starttls':
      return `starttls ${a.discarded}`;
    case 'timer':
      return `timer ${a.ms}`;
    default:
      return a.type;
  }
}

export function run(chunks: readonly Buffer[], o: RunOptions = {}): Outcome & { session: ImapSession; envelopes: Envelope[] } {
  const book = bookFor(o.starttls ?? o.limits?.starttls ?? 'off');
  const s = new ImapSession(book, { ...LIMITS, ...(o.starttls ? { starttls: o.starttls } : {}), ...o.limits });
  const events: string[] = [];
  const wire: Buffer[] = [];
  const envelopes: Envelope[] = [];
  let handed: Buffer[] | null = null;
  let closed = false;
  const apply = (actions: Action[]): void => {
    for (const a of actions) {
      events.push(token(a));
      if (a.type === 'reply') wire.push(a.data);
      if (a.type === 'error') {
        wire.push(a.reply ?? s.errorReply(a.code));
        if (ERRORS[a.code].close) closed = true;
      }
      if (a.type === 'close') closed = true;
      if (a.type === 'splice') {
        wire.push(a.first);
        handed = [a.rest];
      }
    }
    for (const a of actions) {
      if (a.type === 'route') {
        envelopes.push(a.envelope);
        const d = o.decide ? o.decide(envelopes.length - 1, a.envelope) : TARGET;
        if (d !== 'pending') apply(s.routed(d));
      } else if (a.type === 'connect') {
        const bo = o.backend ?? 'ready';
        if (bo === 'ready') apply(s.backendReady(READY));
        else if (bo !== 'pending') apply(s.backendFailed(bo.fail));
      } else if (a.type === 'timer' && o.timers !== false) apply(s.timer());
      else if (a.type === 'starttls') apply(s.tlsStarted());
    }
  };
  apply(s.start());
  if (o.limits?.implicitTls) apply(s.tlsStarted());
  for (const c of chunks) {
    if (handed) (handed as Buffer[]).push(c);
    else if (!closed) apply(s.receive(c));
  }
  return { events, wire: Buffer.concat(wire).toString('latin1'), handOff: handed ? Buffer.concat(handed).toString('latin1') : null, phase: s.phase, session: s, envelopes };
}

export const strip = (r: Outcome): Outcome => ({ events: r.events, wire: r.wire, handOff: r.handOff, phase: r.phase });

export function codeOf(ev: string): ErrorCode | null {
  return ev.startsWith('error ') ? (ev.slice(6) as ErrorCode) : null;
}
