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

/** A back-end that answers like Postfix: one reply per command line (550 to a recipient starting with `no`), 250 after the end of data. */
export class ScriptedBackend {
  bytes = '';
  #pending = '';
  #inData = false;
  constructor(readonly name: string) {}

  /** Bytes from the session; returns the replies they earn. */
  write(data: Buffer): string {
    this.bytes += data.toString('latin1');
    this.#pending += data.toString('latin1');
    let out = '';
    for (;;) {
      if (this.#inData) {
        const end = this.#pending.startsWith('.\r\n') ? 0 : this.#pending.indexOf('\r\n.\r\n');
        if (end === -1) return out;
        this.#pending = this.#pending.slice(end === 0 ? 3 : end + 5);
        this.#inData = false;
        out += `250 2.0.0 Ok: queued on ${this.name}\r\n`;
        continue;
      }
      const lf = this.#pending.indexOf('\r\n');
      if (lf === -1) return out;
      const verb = this.#pending.slice(0, 4).toUpperCase();
      const line = this.#pending.slice(0, lf);
      this.#pending = this.#pending.slice(lf + 2);
      if (verb === 'DATA') {
        this.#inData = true;
        out += '354 go ahead\r\n';
      } else if (verb === 'RCPT') out += /^RCPT TO:<no/i.test(line) ? '550 5.1.1 No such user\r\n' : '250 2.1.5 Ok\r\n';
      else out += '250 2.0.0 Ok\r\n';
    }
  }
}
