/**
 * Stage checks in the session machine, without sockets: HELO/EHLO, MAIL and DATA are held while
 * a scripted checker decides; a refusal answers that command only, a pass carries it out, and the
 * header lines a check asks for (PREPEND) reach the back-end at the top of the body, after its
 * 354, each once and dot-safe. Every dialog is fed whole, split at every offset, byte by byte and
 * in fixed steps, with the same result.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { CheckStage, CheckVerdict, Envelope, RouteDecision } from '../../src/domain.js';
import { Session, type Action } from '../../src/session/session.js';
import { describeCut, splits } from '../helpers/split.js';
import { reply, routeByDomain, ScriptedBackend, TX_BOOK, TX_LIMITS } from '../helpers/tx-harness.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const ALL: ReadonlySet<CheckStage> = new Set(['helo', 'mail', 'data']);

type Checker = (stage: CheckStage, env: Envelope, recipients: number) => CheckVerdict;

interface Outcome {
  wire: string;
  backends: string[];
  /** What the checker was asked: `stage helo from rcpts`. */
  asked: string[];
  prepended: (readonly string[] | undefined)[];
}

function run(chunks: Buffer[], checker: Checker, o: { connectPrepend?: string[]; route?: (rcpt: string) => RouteDecision } = {}): Outcome {
  const s = new Session(TX_BOOK, { ...TX_LIMITS, checkStages: ALL });
  let wire = '';
  const conns: { be: ScriptedBackend; end: string }[] = [];
  const asked: string[] = [];
  const prepended: (readonly string[] | undefined)[] = [];
  const queue: Action[][] = [s.start(o.connectPrepend)];
  const current = (): ScriptedBackend => conns.find((c) => c.end === '')!.be;
  const apply = (actions: Action[]): void => {
    for (const a of actions) {
      switch (a.type) {
        case 'reply':
          wire += a.data.toString('latin1');
          break;
        case 'error':
          wire += (a.reply ?? s.errorReply(a.code)).toString('latin1');
          break;
        case 'check':
          asked.push(`${a.stage} ${a.envelope.helo} ${a.envelope.mailFrom || '-'} ${a.recipientCount}${a.size !== undefined ? ` size=${a.size}` : ''} t${a.envelope.transaction}`);
          queue.push(s.checked(checker(a.stage, a.envelope, a.recipientCount)));
          break;
        case 'route':
          queue.push(s.routed((o.route ?? routeByDomain)(a.envelope.rcptTo)));
          break;
        case 'connect':
          conns.push({ be: new ScriptedBackend(a.target.host), end: '' });
          queue.push(s.backendReady({ reply: reply('250 2.1.5 Ok\r\n'), pipelining: true }));
          break;
        case 'backend-write': {
          const replies = current().write(a.data);
          if (replies) queue.push(s.backendData(b(replies)));
          break;
        }
        case 'backend-close':
          conns.find((c) => c.end === '')!.end = a.abort ? 'ABORT' : 'QUIT';
          break;
        case 'message':
          prepended.push(a.record.prepended);
          break;
        default:
          break;
      }
    }
  };
  const drain = (): void => {
    while (queue.length) apply(queue.shift()!);
  };
  drain();
  for (const c of chunks) {
    queue.push(s.receive(c));
    drain();
  }
  return { wire, backends: conns.map((c) => `${c.be.name}: ${c.be.bytes}[${c.end || 'open'}]`), asked, prepended };
}

function dialog(input: string, checker: Checker, expected: Outcome, o?: Parameters<typeof run>[2]): void {
  for (const chunks of splits(b(input))) assert.deepEqual(run(chunks, checker, o), expected, describeCut(chunks));
}

const pass: CheckVerdict = { kind: 'pass' };
const no = (reply: string): CheckVerdict => ({ kind: 'reject', reply, code: 'PST_POLICY_REFUSED', reason: 'test' });
const GREET = '220 px.example ESMTP ready\r\n';
const EHLO_OK = '250-px.example\r\n250 PIPELINING\r\n';

describe('Session: stage checks hold HELO, MAIL and DATA (every cutting)', () => {
  it('a refused EHLO is answered with the refusal and forgotten; MAIL before a good one is 503', () => {
    const checker: Checker = (stage, env) => (stage === 'helo' && env.helo === 'bad.test' ? no('550 5.7.1 <bad.test>: Helo command rejected: go away') : pass);
    dialog('EHLO bad.test\r\nMAIL FROM:<s@x.test>\r\nEHLO good.test\r\nMAIL FROM:<s@x.test>\r\nQUIT\r\n', checker, {
      wire: `${GREET}550 5.7.1 <bad.test>: Helo command rejected: go away\r\n503 5.5.1 Send HELO/EHLO first\r\n${EHLO_OK}250 2.1.0 OK\r\n221 2.0.0 Bye\r\n`,
      backends: [],
      asked: ['helo bad.test - 0 t0', 'helo good.test - 0 t0', 'mail good.test s@x.test 0 t1'],
      prepended: [],
    });
  });

  it('a refused MAIL holds no transaction: the pipelined RCPT gets 503, a later MAIL goes on', () => {
    const checker: Checker = (stage, env) => (stage === 'mail' && env.mailFrom === 'spam@x.test' ? no('450 4.7.1 <spam@x.test>: Sender address rejected: later') : pass);
    dialog('EHLO c.test\r\nMAIL FROM:<spam@x.test> SIZE=100\r\nRCPT TO:<a1@a.test>\r\nMAIL FROM:<ok@x.test>\r\nRCPT TO:<a1@a.test>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n', checker, {
      wire: `${GREET}${EHLO_OK}450 4.7.1 <spam@x.test>: Sender address rejected: later\r\n503 5.5.1 Need MAIL command\r\n250 2.1.0 OK\r\n250 2.1.5 Ok\r\n354 go ahead\r\n250 2.0.0 Ok: queued on a\r\n221 2.0.0 Bye\r\n`,
      backends: ['a: DATA\r\nhi\r\n.\r\n[QUIT]'],
      asked: ['helo c.test - 0 t0', 'mail c.test spam@x.test 0 size=100 t1', 'mail c.test ok@x.test 0 t2', 'data c.test ok@x.test 1 t2'],
      prepended: [undefined],
    });
  });

  it('a refused DATA never reaches the back-end; its transaction stays open there until RSET', () => {
    const checker: Checker = (stage) => (stage === 'data' ? no('554 5.7.1 <DATA>: Data command rejected: no') : pass);
    dialog('EHLO c.test\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<a1@a.test>\r\nDATA\r\nRSET\r\nQUIT\r\n', checker, {
      wire: `${GREET}${EHLO_OK}250 2.1.0 OK\r\n250 2.1.5 Ok\r\n554 5.7.1 <DATA>: Data command rejected: no\r\n250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n`,
      backends: ['a: RSET\r\n[QUIT]'],
      asked: ['helo c.test - 0 t0', 'mail c.test s@x.test 0 t1', 'data c.test s@x.test 1 t1'],
      prepended: [],
    });
  });

  it('PREPEND from connect, HELO, MAIL, RCPT and DATA: at the top of the body, in that order, once each, dot-safe', () => {
    const checker: Checker = (stage) => ({ kind: 'pass', prepend: stage === 'helo' ? ['X-Helo: h'] : stage === 'mail' ? ['X-Mail: m', 'X-Helo: h'] : ['.X-Data: d'] });
    const route = (rcpt: string): RouteDecision => ({ kind: 'ok', host: 'a', port: 25, prepend: [`X-Rcpt: ${rcpt}`] });
    dialog('EHLO c.test\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<a1@a.test>\r\nDATA\r\nSubject: t\r\n\r\nbody\r\n.\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<a2@a.test>\r\nDATA\r\n.\r\n', checker, {
      wire: `${GREET}${EHLO_OK}250 2.1.0 OK\r\n250 2.1.5 Ok\r\n354 go ahead\r\n250 2.0.0 Ok: queued on a\r\n250 2.1.0 OK\r\n250 2.1.5 Ok\r\n354 go ahead\r\n250 2.0.0 Ok: queued on a\r\n`,
      backends: ['a: DATA\r\nX-Conn: c\r\nX-Helo: h\r\nX-Mail: m\r\nX-Rcpt: a1@a.test\r\n..X-Data: d\r\nSubject: t\r\n\r\nbody\r\n.\r\n'
        + 'MAIL FROM:<s@x.test>\r\nRCPT TO:<a2@a.test>\r\nDATA\r\nX-Conn: c\r\nX-Helo: h\r\nX-Mail: m\r\nX-Rcpt: a2@a.test\r\n..X-Data: d\r\n.\r\n[open]'],
      asked: ['helo c.test - 0 t0', 'mail c.test s@x.test 0 t1', 'data c.test s@x.test 1 t1', 'mail c.test s@x.test 0 t2', 'data c.test s@x.test 1 t2'],
      prepended: [['X-Conn: c', 'X-Helo: h', 'X-Mail: m', 'X-Rcpt: a1@a.test', '.X-Data: d'], ['X-Conn: c', 'X-Helo: h', 'X-Mail: m', 'X-Rcpt: a2@a.test', '.X-Data: d']],
    }, { connectPrepend: ['X-Conn: c'], route });
  });

  it('a recipient\'s PREPEND counts only once the back-end accepts that recipient', () => {
    const route = (rcpt: string): RouteDecision => ({ kind: 'ok', host: 'a', port: 25, prepend: [`X-Rcpt: ${rcpt}`] });
    dialog('EHLO c.test\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<a1@a.test>\r\nRCPT TO:<no@a.test>\r\nDATA\r\n.\r\n', () => pass, {
      wire: `${GREET}${EHLO_OK}250 2.1.0 OK\r\n250 2.1.5 Ok\r\n550 5.1.1 No such user\r\n354 go ahead\r\n250 2.0.0 Ok: queued on a\r\n`,
      backends: ['a: RCPT TO:<no@a.test>\r\nDATA\r\nX-Rcpt: a1@a.test\r\n.\r\n[open]'],
      asked: ['helo c.test - 0 t0', 'mail c.test s@x.test 0 t1', 'data c.test s@x.test 1 t1'],
      prepended: [['X-Rcpt: a1@a.test']],
    }, { route });
  });

  it('without registered stages nothing is held (no check action)', () => {
    const s = new Session(TX_BOOK, TX_LIMITS);
    s.start();
    const out = s.receive(b('EHLO c.test\r\nMAIL FROM:<s@x.test>\r\n'));
    assert.ok(!out.some((a) => a.type === 'check'));
    assert.equal(s.phase, 'command');
  });
});
