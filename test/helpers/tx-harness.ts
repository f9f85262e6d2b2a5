/**
 * What the socket-free tests of transaction mode share: the session's settings, a router by
 * recipient domain (a.test and b.test are two back-ends, down.test a failing auth service,
 * anything else refused), and a reply built from text.
 */
import type { RouteDecision } from '../../src/domain.js';
import { NO_AUTH, type SessionLimits } from '../../src/session/session.js';
import { ReplyBook } from '../../src/smtp/replies.js';
import { ReplyReader, type Reply } from '../../src/smtp/reply-reader.js';

export const TX_BOOK = new ReplyBook({ serverName: 'px.example', capabilities: ['PIPELINING'] });

export const TX_LIMITS: SessionLimits = { maxLineLength: 512, maxErrors: 10, maxMessageSize: 0, requireHelo: true, greetingDelay: false, starttls: 'off', implicitTls: false, auth: NO_AUTH, proxyMode: 'transaction' };

export function routeByDomain(rcpt: string): RouteDecision {
  const d = rcpt.split('@')[1];
  if (d === 'a.test') return { kind: 'ok', host: 'a', port: 25 };
  if (d === 'b.test') return { kind: 'ok', host: 'b', port: 25 };
  if (d === 'down.test') return { kind: 'error', code: 'PST_AUTH_HTTP_UNAVAILABLE', detail: 'down' };
  return { kind: 'reject', reply: '550 5.1.1 Mailbox unknown', waitMs: 0, reason: 'unknown' };
}

/** One whole reply, parsed from its wire text. */
export function reply(text: string): Reply {
  const r = new ReplyReader();
  r.push(Buffer.from(text, 'latin1'));
  return r.next() as Reply;
}
