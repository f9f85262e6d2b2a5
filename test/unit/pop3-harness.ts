/**
 * Runs the POP3 session machine (src/pop3/session.ts) over client input cut into reads, with a
 * scripted router and back-end, and records every action as a token: the unit and fuzz tests
 * compare the records of every cutting of one input.
 */
import assert from 'node:assert/strict';
import type { RouteDecision, RouteTarget } from '../../src/domain.js';
import type { ErrorCode } from '../../src/errors.js';
import type { Action } from '../../src/protocol.js';
import type { Pop3Limits } from '../../src/pop3/limits.js';
import { Pop3Book, pop3Mechanisms } from '../../src/pop3/replies.js';
import { Pop3Session } from '../../src/pop3/session.js';

export const SALT = '<1234.1700000000@px.example>';
export const FINAL = '+OK Logged in.\r\n';

export function pop3Limits(auth: readonly string[] = ['plain', 'apop', 'cram-md5', 'external'], o: Partial<Pop3Limits> = {}): Pop3Limits {
  return {
    maxLineLength: 512,
    maxErrors: 5,
    starttls: 'off',
    implicitTls: false,
    userPass: auth.includes('plain'),
    apop: auth.includes('apop'),
    mechanisms: pop3Mechanisms(auth),
    maxAttempts: 3,
    timestamp: auth.includes('apop') || auth.includes('cram-md5') ? () => SALT : null,
    passErrorMessage: false,
    ...o,
  };
}

export function pop3Book(limits: Pop3Limits, capabilities: readonly string[] = ['TOP', 'USER', 'UIDL']): Pop3Book {
  return new Pop3Book({ capabilities, mechanisms: limits.mechanisms });
}

/** The router's answer to the n-th login (0-based): a decision, or 'pending' (no answer). */
export type Decide = (n: number) => RouteDecision | 'pending';

export const OK_ROUTE: RouteTarget = { kind: 'ok', host: '127.0.0.1', port: 110 };

export interface Pop3Outcome {
  events: string[];
  /** What the client reads. */
  wire: string;
  /** The splice: the first line and every byte for the back-end (rest plus later reads), or null. */
  handOff: string | null;
  phase: string;
}

function token(a: Action): string {
  switch (a.type) {
    case 'reply':
      return `reply ${a.data.toString('latin1')}`;
    case 'error':
      return `error ${a.code}${a.reply ? ` ${a.reply.toString('latin1')}` : ''}`;
    case 'log':
      return `log ${a.code}`;
    case 'route':
      return `route ${JSON.stringify(a.envelope.auth)} ${a.envelope.attempt}`;
    case 'connect':
      return `connect ${a.target.host}`;
    case 'splice':
      return `splice ${a.first.toString('latin1')}`;
    case 'close':
      return a.abort ? 'close abort' : 'close';
    case 'starttls':
      // How many bytes were dropped depends on where the reads fell: what came later goes to the handshake.
      return 'starttls';
    case 'timer':
      return `timer ${a.ms}`;
    default:
      return a.type;
  }
}

/** Runs the session; the back-end accepts every login at once unless `backendFails`. */
export function runPop3(chunks: Buffer[], limits: Pop3Limits, decide: Decide = () => OK_ROUTE, book = pop3Book(limits)): Pop3Outcome & { session: Pop3Session } {
  const s = new Pop3Session(book, limits);
  const events: string[] = [];
  const wire: Buffer[] = [];
  let handed: Buffer[] | null = null;
  let logins = 0;
  const apply = (actions: Action[]): void => {
    for (const [i, a] of actions.entries()) {
      events.push(token(a));
      if (a.type === 'reply') wire.push(a.data);
      if (a.type === 'error') wire.push(a.reply ?? book.error(a.code as ErrorCode));
      if (a.type === 'route') assert.equal(i, actions.length - 1, 'a route action must be the last of its batch');
      if (a.type === 'splice') handed = [a.rest];
    }
    const last = actions[actions.length - 1];
    if (last?.type === 'route') {
      const d = decide(logins++);
      if (d !== 'pending') apply(s.routed(d));
    } else if (last?.type === 'connect') apply(s.backendReady({ final: Buffer.from(FINAL) }));
    else if (last?.type === 'timer') apply(s.timer());
  };
  apply(s.start());
  for (const c of chunks) {
    if (handed) (handed as Buffer[]).push(c);
    else apply(s.receive(c));
  }
  const h = handed as Buffer[] | null;
  return { events, wire: Buffer.concat(wire).toString('latin1'), handOff: h ? Buffer.concat(h).toString('latin1') : null, phase: s.phase, session: s };
}

export const strip = (r: Pop3Outcome): Pop3Outcome => ({ events: r.events, wire: r.wire, handOff: r.handOff, phase: r.phase });
