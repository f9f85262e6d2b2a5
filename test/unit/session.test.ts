/**
 * The client-side SMTP state machine up to the hand-off (nginx's dialog as in src/mail/ngx_mail_smtp_handler.c; RFC 5321, RFC 2920 pipelining, RFC 3207).
 *
 * Every dialog is run with the client's bytes in one chunk, split at every byte offset, byte by
 * byte and in a few fixed multi-cuts; the full list of actions (reply bytes, error codes, route
 * envelopes, close), the bytes handed to the back-end and the final phase must be the same for all.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { buildAuthHeaders } from '../../src/auth/auth-http-protocol.js';
import { ERRORS, type ErrorCode } from '../../src/errors.js';
import { printable, Session, type Action, type Envelope, type Phase, type SessionLimits, NO_AUTH } from '../../src/session/session.js';
import { lineReply, ReplyBook } from '../../src/smtp/replies.js';
import { splits } from '../helpers/split.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');

const SERVER = 'px.example';
const book = new ReplyBook({ serverName: SERVER, capabilities: ['PIPELINING', '8BITMIME', 'SIZE 1000000', 'ENHANCEDSTATUSCODES'] });
const LIMITS: SessionLimits = { maxLineLength: 512, maxErrors: 10, maxMessageSize: 1_000_000, requireHelo: true, greetingDelay: false, starttls: 'off', implicitTls: false, auth: NO_AUTH };

// Wire texts written out literally, so the tests also pin the ReplyBook and the error catalogue.
const GREETING = '220 px.example ESMTP ready\r\n';
const EHLO_REPLY = '250-px.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 1000000\r\n250 ENHANCEDSTATUSCODES\r\n';
const HELO_REPLY = '250 px.example\r\n';
const OK = '250 2.0.0 OK\r\n';
const MAIL_OK = '250 2.1.0 OK\r\n';
const BYE = '221 2.0.0 Bye\r\n';

// ---------------------------------------------------------------------------------------------
// Harness

type Decision = 'handoff' | 'pending' | { fail: Action; keepOpen: boolean };

interface RunOptions {
  limits?: Partial<SessionLimits>;
  /** What the "router" answers to the n-th route action (0-based); default: hand off. */
  decide?: (n: number, envelope: Envelope) => Decision;
  /** With greetingDelay: let the delay expire before the first byte arrives. */
  greetingDueFirst?: boolean;
}

interface Outcome {
  /** One token per action, in order: `reply <text>`, `error <CODE>`, `route <json>`, `close`. */
  events: string[];
  /** What the client reads: reply bytes and catalogue replies of errors, concatenated. */
  wire: string;
  /** Bytes for the back-end: handOff() plus whatever the client sent after it, or null. */
  handOff: string | null;
  phase: Phase;
}

function token(a: Action): string {
  switch (a.type) {
    case 'reply':
      return `reply ${a.data.toString('latin1')}`;
    case 'error':
      return `error ${a.code}`;
    case 'route': {
      // Envelope.transaction (the policy instance's message number) is tested in session-checks.test.ts.
      const { transaction: _t, ...e } = a.envelope;
      return `route ${JSON.stringify(e)}`;
    }
    case 'close':
      return 'close';
    case 'starttls':
      return `starttls ${a.discarded}`;
    default:
      return a.type;
  }
}

function wireBytes(a: Action): Buffer {
  if (a.type === 'reply') return a.data;
  if (a.type === 'error') return book.error(a.code);
  return Buffer.alloc(0);
}

function run(chunks: Buffer[], o: RunOptions = {}): Outcome & { envelopes: Envelope[]; session: Session } {
  const s = new Session(book, { ...LIMITS, ...o.limits });
  const events: string[] = [];
  const wire: Buffer[] = [];
  const envelopes: Envelope[] = [];
  const st: { handed: Buffer[] | null } = { handed: null };
  const apply = (actions: Action[]): void => {
    actions.forEach((a, i) => {
      events.push(token(a));
      wire.push(wireBytes(a));
      if (a.type === 'route') {
        // Routing stops the machine: nothing may follow the route action in the same batch.
        assert.equal(i, actions.length - 1, 'a route action must be the last action');
        assert.equal(s.phase, 'routing');
        envelopes.push(a.envelope);
      }
    });
    const last = actions[actions.length - 1];
    if (last?.type !== 'route') return;
    const d = o.decide ? o.decide(envelopes.length - 1, last.envelope) : 'handoff';
    if (d === 'handoff') st.handed = [s.handOff()];
    else if (d !== 'pending') apply(s.routeFailed(d.fail, d.keepOpen));
  };
  apply(s.start());
  if (o.greetingDueFirst) apply(s.greetingDue());
  for (const c of chunks) {
    if (st.handed) st.handed.push(c); // after the hand-off the relay owns the socket
    else apply(s.receive(c));
  }
  return {
    events,
    wire: Buffer.concat(wire).toString('latin1'),
    handOff: st.handed ? Buffer.concat(st.handed).toString('latin1') : null,
    phase: s.phase,
    envelopes,
    session: s,
  };
}


const strip = (r: Outcome): Outcome => ({ events: r.events, wire: r.wire, handOff: r.handOff, phase: r.phase });

/** Runs `input` in one chunk, checks it against `expected`, then checks every split gives the same. */
function dialog(input: string | Buffer, o: RunOptions, expected: { events: string[]; handOff: string | null; phase: Phase; wire?: string }): void {
  const buf = typeof input === 'string' ? b(input) : input;
  const whole = strip(run([buf], o));
  assert.deepEqual(whole.events, expected.events, 'events (one chunk)');
  assert.equal(whole.handOff, expected.handOff, 'hand-off bytes (one chunk)');
  assert.equal(whole.phase, expected.phase, 'final phase (one chunk)');
  assert.equal(whole.wire, expected.wire ?? expected.events.map(eventWire).join(''), 'wire (one chunk)');
  for (const chunks of splits(buf)) {
    assert.deepEqual(strip(run(chunks, o)), whole, `split ${chunks.length > 8 ? `${chunks.length} chunks` : chunks.map((c) => c.length).join('+')}`);
  }
}

// Builders for expected events.
const R = (text: string): string => `reply ${text}`;
const E = (code: ErrorCode): string => `error ${code}`;
const ROUTE = ({ transaction: _t, ...e }: Envelope): string => `route ${JSON.stringify(e)}`;
const CLOSE = 'close';
function eventWire(ev: string): string {
  if (ev.startsWith('reply ')) return ev.slice(6);
  if (ev.startsWith('error ')) return book.error(ev.slice(6) as ErrorCode).toString('latin1');
  return '';
}
function env(p: Partial<Envelope> & Pick<Envelope, 'mailLine' | 'rcptLine' | 'mailFrom' | 'rcptTo'>): Envelope {
  // Same key order as the Session builds it, so JSON tokens compare equal.
  return { helo: p.helo ?? 'client.example', esmtp: p.esmtp ?? true, mailLine: p.mailLine, rcptLine: p.rcptLine, mailFrom: p.mailFrom, rcptTo: p.rcptTo, attempt: p.attempt ?? 1, transaction: p.transaction ?? 1 };
}

const TEMPFAIL: Action = { type: 'reply', data: lineReply('450 4.7.1 Try again later') };

// ---------------------------------------------------------------------------------------------

describe('Session: reply texts', () => {
  it('greeting, HELO/EHLO and OK replies are the nginx-compatible texts', () => {
    assert.equal(book.greeting.toString('latin1'), GREETING);
    assert.equal(book.ehlo(false, false).toString('latin1'), EHLO_REPLY);
    assert.equal(book.helo.toString('latin1'), HELO_REPLY);
    assert.equal(book.ok.toString('latin1'), OK);
    assert.equal(book.mailOk.toString('latin1'), MAIL_OK);
    assert.equal(book.bye.toString('latin1'), BYE);
  });

  it('catalogue replies fill in {host}', () => {
    assert.equal(book.error('PST_TOO_MANY_ERRORS').toString('latin1'), '421 4.7.0 px.example Too many errors, closing connection\r\n');
    assert.equal(book.error('PST_SHUTDOWN').toString('latin1'), '421 4.3.2 px.example Service shutting down, try again later\r\n');
    assert.equal(book.error('PST_CLIENT_LOST').length, 0, 'relay-phase codes send nothing');
  });
});

describe('Session: pipelined burst and hand-off (RFC 2920)', () => {
  const body = `Subject: hi\r\n\r\n${'long '.repeat(400)}\r\nNUL\x00 bare\rCR 8bit\xff\xfe\r\n..dot\r\n.\r\n`;
  const afterRcpt = `RCPT TO:<carol@example.net>\r\nDATA\r\n${body}QUIT\r\n`;
  const input = `EHLO client.example\r\nMAIL FROM:<alice@example.org> SIZE=500\r\nRCPT TO:<bob@example.net>\r\n${afterRcpt}`;

  it('routes at the first RCPT and hands every later byte to the back-end untouched', () => {
    dialog(input, {}, {
      events: [
        R(GREETING),
        R(EHLO_REPLY),
        R(MAIL_OK),
        ROUTE(env({ mailLine: 'MAIL FROM:<alice@example.org> SIZE=500', rcptLine: 'RCPT TO:<bob@example.net>', mailFrom: 'alice@example.org', rcptTo: 'bob@example.net' })),
      ],
      handOff: afterRcpt,
      phase: 'handed-off',
      wire: GREETING + EHLO_REPLY + MAIL_OK,
    });
  });

  it('nothing after the RCPT is interpreted while routing, and the hand-off is byte-exact', () => {
    const s = new Session(book, LIMITS);
    s.start();
    // The first 100 bytes hold EHLO, MAIL, the whole first RCPT and part of the second.
    const first = s.receive(b(input.slice(0, 100)));
    assert.equal(first[first.length - 1]?.type, 'route');
    assert.equal(s.phase, 'routing');
    // More pipelined input while the router is busy: no replies, no errors, even for a 2000-byte line.
    assert.deepEqual(s.receive(b(input.slice(100))), []);
    assert.deepEqual(s.receive(b('\x00\r\r\nGET / HTTP/1.1\r\n')), []);
    assert.equal(s.phase, 'routing');
    const rest = s.handOff();
    assert.equal(s.phase, 'handed-off');
    assert.equal(rest.toString('latin1'), `${afterRcpt}\x00\r\r\nGET / HTTP/1.1\r\n`);
  });

  it('a bare-LF terminated RCPT hands off from the byte after the LF', () => {
    dialog('EHLO client.example\nMAIL FROM:<a@b.example>\nRCPT TO:<c@d.example>\nDATA\n', {}, {
      events: [R(GREETING), R(EHLO_REPLY), R(MAIL_OK), ROUTE(env({ mailLine: 'MAIL FROM:<a@b.example>', rcptLine: 'RCPT TO:<c@d.example>', mailFrom: 'a@b.example', rcptTo: 'c@d.example' }))],
      handOff: 'DATA\n',
      phase: 'handed-off',
    });
  });

  it('keeps the MAIL and RCPT lines exactly as typed (case, spacing, parameters)', () => {
    dialog('ehlo client.example\r\nmail from: <A@B.example>  BODY=8BITMIME\r\nrcpt to:<Postmaster> NOTIFY=NEVER\r\n', {}, {
      events: [
        R(GREETING),
        R(EHLO_REPLY),
        R(MAIL_OK),
        ROUTE(env({ mailLine: 'mail from: <A@B.example>  BODY=8BITMIME', rcptLine: 'rcpt to:<Postmaster> NOTIFY=NEVER', mailFrom: 'A@B.example', rcptTo: 'Postmaster' })),
      ],
      handOff: '',
      phase: 'handed-off',
    });
  });
});

describe('Session: greetings and simple commands', () => {
  it('HELO-only client: esmtp false, null sender', () => {
    dialog('HELO old.example\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster@px.example>\r\n', {}, {
      events: [R(GREETING), R(HELO_REPLY), R(MAIL_OK), ROUTE(env({ helo: 'old.example', esmtp: false, mailLine: 'MAIL FROM:<>', rcptLine: 'RCPT TO:<postmaster@px.example>', mailFrom: '', rcptTo: 'postmaster@px.example' }))],
      handOff: '',
      phase: 'handed-off',
    });
  });

  it('HELO then EHLO: the last greeting wins', () => {
    dialog('HELO one.example\r\nEHLO two.example\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n', {}, {
      events: [R(GREETING), R(HELO_REPLY), R(EHLO_REPLY), R(MAIL_OK), ROUTE(env({ helo: 'two.example', mailLine: 'MAIL FROM:<a@b>', rcptLine: 'RCPT TO:<c@d>', mailFrom: 'a@b', rcptTo: 'c@d' }))],
      handOff: '',
      phase: 'handed-off',
    });
  });

  it('NOOP, RSET and QUIT; nothing is answered after QUIT', () => {
    dialog('EHLO client.example\r\nNOOP\r\nMAIL FROM:<a@b>\r\nRSET\r\nRCPT TO:<c@d>\r\nNOOP now\r\nQUIT\r\nNOOP\r\nRCPT TO:<c@d>\r\n', {}, {
      events: [R(GREETING), R(EHLO_REPLY), R(OK), R(MAIL_OK), R(OK), E('PST_NEED_MAIL'), R(OK), R(BYE), CLOSE],
      handOff: null,
      phase: 'closed',
      wire: GREETING + EHLO_REPLY + OK + MAIL_OK + OK + '503 5.5.1 Need MAIL command\r\n' + OK + BYE,
    });
  });

  it('HELO/EHLO argument checks (RFC 5321 §4.1.1.1: exactly one domain)', () => {
    dialog('HELO\r\nEHLO \r\nEHLO a.example b.example\r\nHELO a\tb\r\nEHLO [IPv6:2001:db8::1]\r\n', {}, {
      events: [R(GREETING), E('PST_INVALID_ARGUMENT'), E('PST_INVALID_ARGUMENT'), E('PST_INVALID_ARGUMENT'), E('PST_INVALID_ARGUMENT'), R(EHLO_REPLY)],
      handOff: null,
      phase: 'command',
      wire: GREETING + '501 5.5.4 Invalid argument\r\n'.repeat(4) + EHLO_REPLY,
    });
  });

  it('HELO/EHLO resets a transaction (RFC 5321 §4.1.4)', () => {
    dialog('EHLO a.example\r\nMAIL FROM:<a@b>\r\nHELO b.example\r\nRCPT TO:<c@d>\r\nMAIL FROM:<a@b>\r\n', {}, {
      events: [R(GREETING), R(EHLO_REPLY), R(MAIL_OK), R(HELO_REPLY), E('PST_NEED_MAIL'), R(MAIL_OK)],
      handOff: null,
      phase: 'command',
    });
  });

  it('VRFY, HELP, EXPN, STARTTLS, AUTH', () => {
    dialog('VRFY postmaster\r\nVRFY\r\nHELP\r\nEXPN list\r\nSTARTTLS\r\nAUTH PLAIN AGEAYg==\r\n', {}, {
      events: [
        R(GREETING),
        R('252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery\r\n'),
        E('PST_INVALID_ARGUMENT'),
        R('214 2.0.0 See RFC 5321\r\n'),
        E('PST_NOT_IMPLEMENTED'),
        E('PST_NOT_IMPLEMENTED'),
        E('PST_NOT_IMPLEMENTED'),
      ],
      handOff: null,
      phase: 'command',
      wire: GREETING + '252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery\r\n501 5.5.4 Invalid argument\r\n214 2.0.0 See RFC 5321\r\n' + '502 5.5.1 Command not implemented\r\n'.repeat(3),
    });
  });

  it('require_helo off: MAIL without a greeting routes with an empty helo', () => {
    dialog('MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n', { limits: { requireHelo: false } }, {
      events: [R(GREETING), R(MAIL_OK), ROUTE(env({ helo: '', esmtp: false, mailLine: 'MAIL FROM:<a@b>', rcptLine: 'RCPT TO:<c@d>', mailFrom: 'a@b', rcptTo: 'c@d' }))],
      handOff: '',
      phase: 'handed-off',
    });
  });
});

describe('Session: bad sequences', () => {
  it('RCPT before MAIL, MAIL before HELO, DATA before MAIL/RCPT, nested MAIL, BDAT before RCPT', () => {
    dialog('RCPT TO:<a@b>\r\nMAIL FROM:<a@b>\r\nEHLO c.example\r\nDATA\r\nMAIL FROM:<a@b>\r\nDATA\r\nMAIL FROM:<c@d>\r\nBDAT 0 LAST\r\nRSET\r\nDATA\r\n', {}, {
      events: [
        R(GREETING),
        E('PST_NEED_MAIL'),
        E('PST_NEED_HELO'),
        R(EHLO_REPLY),
        E('PST_NEED_MAIL'),
        R(MAIL_OK),
        E('PST_NEED_RCPT'),
        E('PST_NESTED_MAIL'),
        E('PST_NEED_RCPT'),
        R(OK),
        E('PST_NEED_MAIL'),
      ],
      handOff: null,
      phase: 'command',
      wire:
        GREETING +
        '503 5.5.1 Need MAIL command\r\n' +
        '503 5.5.1 Send HELO/EHLO first\r\n' +
        EHLO_REPLY +
        '503 5.5.1 Need MAIL command\r\n' +
        MAIL_OK +
        '503 5.5.1 Need RCPT command\r\n' +
        '503 5.5.1 Nested MAIL command\r\n' +
        '503 5.5.1 Need RCPT command\r\n' +
        OK +
        '503 5.5.1 Need MAIL command\r\n',
    });
  });

  it('malformed paths and the null recipient', () => {
    // (MAIL FROM:a b is accepted: bracketless path `a`, parameters `b`; the back-end judges parameters.)
    dialog('EHLO c.example\r\nMAIL FROM:<a b>\r\nMAIL FROM:<a@b>x\r\nMAIL\r\nMAIL FROM:<a@b>\tSIZE=1\r\nMAIL FROM:<a@b>\r\nRCPT TO:<>\r\nRCPT TO:<x@y\r\nRCPT\r\n', {}, {
      events: [R(GREETING), R(EHLO_REPLY), E('PST_BAD_SENDER'), E('PST_BAD_SENDER'), E('PST_BAD_SENDER'), E('PST_BAD_SENDER'), R(MAIL_OK), E('PST_BAD_RECIPIENT'), E('PST_BAD_RECIPIENT'), E('PST_BAD_RECIPIENT')],
      handOff: null,
      phase: 'command',
      wire: GREETING + EHLO_REPLY + '501 5.1.7 Bad sender address syntax\r\n'.repeat(4) + MAIL_OK + '501 5.1.3 Bad recipient address syntax\r\n'.repeat(3),
    });
  });
});

describe('Session: SIZE (RFC 1870)', () => {
  it('refuses SIZE over the limit with 552, a malformed SIZE with 501, accepts the limit itself', () => {
    dialog('EHLO client.example\r\nMAIL FROM:<a@b> SIZE=1000001\r\nMAIL FROM:<a@b> SIZE=abc\r\nMAIL FROM:<a@b> SIZE=1000000 BODY=8BITMIME\r\nRCPT TO:<c@d>\r\n', {}, {
      events: [
        R(GREETING),
        R(EHLO_REPLY),
        E('PST_MESSAGE_TOO_BIG'),
        E('PST_INVALID_ARGUMENT'),
        R(MAIL_OK),
        ROUTE(env({ mailLine: 'MAIL FROM:<a@b> SIZE=1000000 BODY=8BITMIME', rcptLine: 'RCPT TO:<c@d>', mailFrom: 'a@b', rcptTo: 'c@d' })),
      ],
      handOff: '',
      phase: 'handed-off',
      wire: GREETING + EHLO_REPLY + '552 5.3.4 Message size exceeds fixed limit\r\n501 5.5.4 Invalid argument\r\n' + MAIL_OK,
    });
  });

  it('max_message_size 0 means no limit', () => {
    const r = run([b('EHLO c\r\nMAIL FROM:<a@b> SIZE=99999999999999999999\r\n')], { limits: { maxMessageSize: 0 } });
    assert.deepEqual(r.events, [R(GREETING), R(EHLO_REPLY), R(MAIL_OK)]);
  });

  it('an empty SIZE= value is a syntax error (501), not "no SIZE"', () => {
    const r = run([b('EHLO c\r\nMAIL FROM:<a@b> SIZE=\r\n')]);
    assert.deepEqual(r.events, [R(GREETING), R(EHLO_REPLY), E('PST_INVALID_ARGUMENT')]);
  });
});

describe('Session: BDAT chunks are stepped over (CHUNKING is never advertised)', () => {
  it('the chunk bytes are skipped even when they look like commands, under every split', () => {
    const payload = 'QUIT\r\nRCPT TO:<x@y>\r\n\x00\r';
    const input = `EHLO client.example\r\nBDAT ${payload.length} LAST\r\n${payload}NOOP\r\nMAIL FROM:<a@b>\r\nBDAT 6\r\nQUIT\r\nRSET\r\n`;
    dialog(input, {}, {
      events: [R(GREETING), R(EHLO_REPLY), E('PST_NEED_MAIL'), R(OK), R(MAIL_OK), E('PST_NEED_RCPT'), R(OK)],
      handOff: null,
      phase: 'command',
    });
  });

  it('a chunk larger than max_line_length without any LF is not a "line too long"', () => {
    dialog(`EHLO c.example\r\nBDAT 600\r\n${'x'.repeat(600)}NOOP\r\n`, {}, {
      events: [R(GREETING), R(EHLO_REPLY), E('PST_NEED_MAIL'), R(OK)],
      handOff: null,
      phase: 'command',
    });
  });

  it('BDAT without a valid size closes the session (the chunk boundary is unknown)', () => {
    for (const bad of ['BDAT', 'BDAT x', 'BDAT 5 LAST extra', 'BDAT -1', 'BDAT 1234567890123456']) {
      dialog(`EHLO c.example\r\n${bad}\r\nNOOP\r\n`, {}, {
        events: [R(GREETING), R(EHLO_REPLY), E('PST_INVALID_ARGUMENT'), CLOSE],
        handOff: null,
        phase: 'closed',
      });
    }
  });
});

describe('Session: bytes no command may contain', () => {
  it('a line over max_line_length ends the session (500 5.5.2, close)', () => {
    dialog(`EHLO c.example\r\nNOOP ${'x'.repeat(600)}\r\nNOOP\r\n`, {}, {
      events: [R(GREETING), R(EHLO_REPLY), E('PST_LINE_TOO_LONG')],
      handOff: null,
      phase: 'closed',
      wire: GREETING + EHLO_REPLY + '500 5.5.2 Line too long\r\n',
    });
  });

  it('a line of exactly max_line_length bytes with CRLF is accepted, one more is refused', () => {
    dialog(`NOOP ${'x'.repeat(505)}\r\nNOOP ${'x'.repeat(506)}\r\n`, {}, {
      events: [R(GREETING), R(OK), E('PST_LINE_TOO_LONG')],
      handOff: null,
      phase: 'closed',
    });
  });

  it('an endless line without LF is refused once max_line_length bytes are in', () => {
    dialog(`EHLO c.example\r\n${'A'.repeat(700)}`, {}, {
      events: [R(GREETING), R(EHLO_REPLY), E('PST_LINE_TOO_LONG')],
      handOff: null,
      phase: 'closed',
    });
  });

  it('NUL, bare CR and other controls are refused (500 5.5.2) without closing; TAB is allowed', () => {
    dialog('EHLO c.example\r\nMAIL FROM:<a\x00@b>\r\nHELO a\rb\r\nNOOP\r\r\nRSET\x1b\r\nNOOP\x7f\r\nNOOP a\tb\r\n', {}, {
      events: [R(GREETING), R(EHLO_REPLY), E('PST_BAD_BYTES'), E('PST_BAD_BYTES'), E('PST_BAD_BYTES'), E('PST_BAD_BYTES'), E('PST_BAD_BYTES'), R(OK)],
      handOff: null,
      phase: 'command',
      wire: GREETING + EHLO_REPLY + '500 5.5.2 Invalid character in command\r\n'.repeat(5) + OK,
    });
  });

  it('an HTTP request line ends the session at once (554, close), headers are not answered', () => {
    dialog('GET / HTTP/1.1\r\nHost: mx.example\r\nUser-Agent: x\r\n\r\n', {}, {
      events: [R(GREETING), E('PST_HTTP_REQUEST')],
      handOff: null,
      phase: 'closed',
      wire: GREETING + '554 5.7.0 HTTP requests are not accepted here\r\n',
    });
  });
});

describe('Session: max_errors', () => {
  it('the max_errors-th error is answered, then 421 and close', () => {
    dialog('FOO\r\nBAR baz\r\n\r\nSTARTTLSX\r\nDATA\r\nNOOP\r\n', { limits: { maxErrors: 5 } }, {
      events: [R(GREETING), E('PST_UNKNOWN_COMMAND'), E('PST_UNKNOWN_COMMAND'), E('PST_UNKNOWN_COMMAND'), E('PST_UNKNOWN_COMMAND'), E('PST_NEED_MAIL'), E('PST_TOO_MANY_ERRORS')],
      handOff: null,
      phase: 'closed',
      wire: GREETING + '500 5.5.1 Invalid command\r\n'.repeat(4) + '503 5.5.1 Need MAIL command\r\n421 4.7.0 px.example Too many errors, closing connection\r\n',
    });
  });

  it('one error short of the limit, the session goes on', () => {
    const r = run([b('FOO\r\nFOO\r\nFOO\r\nFOO\r\nNOOP\r\n')], { limits: { maxErrors: 5 } });
    assert.deepEqual(r.events, [R(GREETING), ...Array<string>(4).fill(E('PST_UNKNOWN_COMMAND')), R(OK)]);
    assert.equal(r.session.errors, 4);
    assert.equal(r.phase, 'command');
  });

  it('max_errors 0 never closes', () => {
    const r = run([b(`${'FOO\r\n'.repeat(50)}NOOP\r\n`)], { limits: { maxErrors: 0 } });
    assert.equal(r.events.length, 52);
    assert.equal(r.events[51], R(OK));
    assert.equal(r.phase, 'command');
  });

  it('errors that close by themselves do not also send 421', () => {
    const r = run([b('FOO\r\nGET / HTTP/1.0\r\n')], { limits: { maxErrors: 2 } });
    assert.deepEqual(r.events, [R(GREETING), E('PST_UNKNOWN_COMMAND'), E('PST_HTTP_REQUEST')]);
  });
});

describe('Session: client XCLIENT / XFORWARD', () => {
  it('is refused (550) and never reaches the envelope', () => {
    dialog('EHLO client.example\r\nXCLIENT ADDR=10.0.0.1 NAME=trusted.example\r\nXFORWARD ADDR=10.0.0.1\r\nxclient LOGIN=admin\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n', {}, {
      events: [
        R(GREETING),
        R(EHLO_REPLY),
        E('PST_NOT_PERMITTED'),
        E('PST_NOT_PERMITTED'),
        E('PST_NOT_PERMITTED'),
        R(MAIL_OK),
        ROUTE(env({ mailLine: 'MAIL FROM:<a@b>', rcptLine: 'RCPT TO:<c@d>', mailFrom: 'a@b', rcptTo: 'c@d' })),
      ],
      handOff: '',
      phase: 'handed-off',
      wire: GREETING + EHLO_REPLY + '550 5.7.0 Command not permitted\r\n'.repeat(3) + MAIL_OK,
    });
  });
});

describe('Session: greeting delay (nginx smtp_greeting_delay)', () => {
  it('holds the greeting; a client that talks first is refused (503 5.5.0) and closed', () => {
    dialog('EHLO client.example\r\nMAIL FROM:<a@b>\r\n', { limits: { greetingDelay: true } }, {
      events: [E('PST_EARLY_TALKER')],
      handOff: null,
      phase: 'closed',
      wire: '503 5.5.0 Improper use of SMTP command pipelining\r\n',
    });
  });

  it('start() sends nothing; greetingDue() greets once; then the dialog is normal', () => {
    const s = new Session(book, { ...LIMITS, greetingDelay: true });
    assert.deepEqual(s.start(), []);
    assert.equal(s.phase, 'greeting');
    assert.deepEqual(s.greetingDue().map(token), [R(GREETING)]);
    assert.deepEqual(s.greetingDue(), [], 'a second timer tick greets nobody');
    dialog('EHLO client.example\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n', { limits: { greetingDelay: true }, greetingDueFirst: true }, {
      events: [R(GREETING), R(EHLO_REPLY), R(MAIL_OK), ROUTE(env({ mailLine: 'MAIL FROM:<a@b>', rcptLine: 'RCPT TO:<c@d>', mailFrom: 'a@b', rcptTo: 'c@d' }))],
      handOff: '',
      phase: 'handed-off',
    });
  });

  it('after an early talker, greetingDue() does not greet', () => {
    const s = new Session(book, { ...LIMITS, greetingDelay: true });
    s.start();
    assert.deepEqual(s.receive(b('x')).map(token), [E('PST_EARLY_TALKER')]);
    assert.deepEqual(s.greetingDue(), []);
    assert.deepEqual(s.receive(b('NOOP\r\n')), []);
  });

  it('the early-talker detail is a log-safe rendering of what was sent', () => {
    const s = new Session(book, { ...LIMITS, greetingDelay: true });
    s.start();
    assert.deepEqual(s.receive(b('EHLO a\r\n')), [{ type: 'error', code: 'PST_EARLY_TALKER', detail: 'EHLO a\\x0d\\x0a' }]);
  });
});

describe('Session: routing failures', () => {
  const input = 'EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nRCPT TO:<z@w.example>\r\nNOOP\r\nDATA\r\nbody\r\n.\r\n';
  const first = env({ mailLine: 'MAIL FROM:<a@b.example>', rcptLine: 'RCPT TO:<x@y.example>', mailFrom: 'a@b.example', rcptTo: 'x@y.example' });
  const second = env({ mailLine: 'MAIL FROM:<a@b.example>', rcptLine: 'RCPT TO:<z@w.example>', mailFrom: 'a@b.example', rcptTo: 'z@w.example', attempt: 2 });

  it('keepOpen (Auth-Wait): the reply is sent, pipelined commands go on, the next RCPT routes again as attempt 2', () => {
    dialog(input, { decide: (n) => (n === 0 ? { fail: TEMPFAIL, keepOpen: true } : 'handoff') }, {
      events: [R(GREETING), R(EHLO_REPLY), R(MAIL_OK), ROUTE(first), R('450 4.7.1 Try again later\r\n'), ROUTE(second)],
      handOff: 'NOOP\r\nDATA\r\nbody\r\n.\r\n',
      phase: 'handed-off',
    });
  });

  it('keepOpen every time: every later command is answered locally, MAIL is kept', () => {
    dialog(input, { decide: () => ({ fail: TEMPFAIL, keepOpen: true }) }, {
      events: [
        R(GREETING), R(EHLO_REPLY), R(MAIL_OK),
        ROUTE(first), R('450 4.7.1 Try again later\r\n'),
        ROUTE(second), R('450 4.7.1 Try again later\r\n'),
        R(OK), E('PST_NEED_RCPT'), E('PST_UNKNOWN_COMMAND'), E('PST_UNKNOWN_COMMAND'),
      ],
      handOff: null,
      phase: 'command',
    });
  });

  it('not keepOpen: the reply, then close; nothing pipelined is processed', () => {
    dialog(input, { decide: () => ({ fail: { type: 'error', code: 'PST_AUTH_HTTP_UNAVAILABLE' }, keepOpen: false }) }, {
      events: [R(GREETING), R(EHLO_REPLY), R(MAIL_OK), ROUTE(first), E('PST_AUTH_HTTP_UNAVAILABLE'), CLOSE],
      handOff: null,
      phase: 'closed',
      wire: GREETING + EHLO_REPLY + MAIL_OK + '451 4.3.2 Internal server error\r\n',
    });
  });

  it('a rejection text from the auth service goes out verbatim', () => {
    const reject: Action = { type: 'reply', data: lineReply('550 5.7.1 Relay access denied') };
    const r = run([b(input)], { decide: () => ({ fail: reject, keepOpen: false }) });
    assert.equal(r.wire, `${GREETING}${EHLO_REPLY}${MAIL_OK}550 5.7.1 Relay access denied\r\n`);
  });

  it('while routing, receive() answers nothing', () => {
    const r = run([b('EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n')], { decide: () => 'pending' });
    assert.equal(r.phase, 'routing');
    assert.deepEqual(r.session.receive(b('NOOP\r\nQUIT\r\n')), []);
    assert.equal(r.session.handOff().toString('latin1'), 'NOOP\r\nQUIT\r\n');
  });
});

describe('Session: after close', () => {
  it('receive() answers nothing once closed', () => {
    const s = new Session(book, LIMITS);
    s.start();
    assert.deepEqual(s.receive(b('QUIT\r\n')).map(token), [R(BYE), CLOSE]);
    assert.deepEqual(s.receive(b('NOOP\r\nGET / HTTP/1.1\r\n')), []);
    assert.equal(s.phase, 'closed');
  });

  it('a closed session does not keep buffering what the client sends (handOff() is the only window onto the reader)', {
  }, () => {
    const s = new Session(book, LIMITS);
    s.start();
    s.receive(b('QUIT\r\n'));
    for (let i = 0; i < 4; i++) s.receive(Buffer.alloc(1 << 20, 0x41));
    assert.equal(s.handOff().length, 0);
  });
});

describe('Session: shutdown()', () => {
  it('an idle session gets 421 at once and is closed', () => {
    const s = new Session(book, LIMITS);
    s.start();
    s.receive(b('EHLO c\r\nNOO'));
    assert.deepEqual(s.shutdown().map(token), [E('PST_SHUTDOWN')]);
    assert.equal(s.phase, 'closed');
    assert.deepEqual(s.receive(b('P\r\n')), []);
    assert.equal(book.error('PST_SHUTDOWN').toString('latin1'), '421 4.3.2 px.example Service shutting down, try again later\r\n');
  });

  it('during the greeting delay: 421 and no greeting later', () => {
    const s = new Session(book, { ...LIMITS, greetingDelay: true });
    s.start();
    assert.deepEqual(s.shutdown().map(token), [E('PST_SHUTDOWN')]);
    assert.deepEqual(s.greetingDue(), []);
  });

  it('while routing nothing is sent; a failed route with keepOpen answers the next pipelined command with 421', () => {
    const s = new Session(book, LIMITS);
    s.start();
    s.receive(b('EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nNOOP\r\nNOOP\r\n'));
    assert.equal(s.phase, 'routing');
    assert.deepEqual(s.shutdown(), []);
    assert.equal(s.phase, 'routing');
    assert.deepEqual(s.routeFailed(TEMPFAIL, true).map(token), [R('450 4.7.1 Try again later\r\n'), E('PST_SHUTDOWN')]);
    assert.equal(s.phase, 'closed');
  });

  it('while routing, a later hand-off still delivers everything', () => {
    const s = new Session(book, LIMITS);
    s.start();
    s.receive(b('EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n'));
    assert.deepEqual(s.shutdown(), []);
    assert.equal(s.handOff().toString('latin1'), 'DATA\r\n');
    assert.deepEqual(s.shutdown(), []);
  });

  it('a keepOpen route failure during shutdown with nothing pipelined announces the 421 at once', () => {
    const s = new Session(book, LIMITS);
    s.start();
    s.receive(b('EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n'));
    s.shutdown();
    assert.deepEqual(s.routeFailed(TEMPFAIL, true).map(token), [R('450 4.7.1 Try again later\r\n'), E('PST_SHUTDOWN')]);
    assert.equal(s.phase, 'closed');
  });
});

// ---------------------------------------------------------------------------------------------
// CR/LF smuggling: no value that reaches an auth_http header or a back-end command may hold CR, LF or NUL.

const CONTROL = /[\r\n\0]/;
const ENVELOPE_STRINGS = ['helo', 'mailLine', 'rcptLine', 'mailFrom', 'rcptTo'] as const;

function assertClean(e: Envelope, what: string): void {
  for (const k of ENVELOPE_STRINGS) assert.doesNotMatch(e[k], CONTROL, `${what}: envelope.${k} = ${JSON.stringify(e[k])}`);
  const headers = buildAuthHeaders({ envelope: e, clientAddr: '192.0.2.1', clientPort: 1234, clientHost: '[UNAVAILABLE]' }, { host: 'auth.example', extra: {} });
  for (const h of headers) assert.doesNotMatch(h, /[\r\n\0]/, `${what}: auth header ${JSON.stringify(h)}`);
}

/** Every RCPT that gets to routing is answered with a keepOpen failure, so all envelopes are seen. */
const routeAll: RunOptions = { decide: () => ({ fail: TEMPFAIL, keepOpen: true }), limits: { maxErrors: 0 } };

describe('Session: CR/LF/NUL can never reach an envelope', () => {
  const hostile: Array<[string, Envelope[]]> = [
    // A CR to make HELO carry a second line.
    ['EHLO evil\rRCPT TO:<x@y>\r\nEHLO ok.example\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n', [env({ helo: 'ok.example', mailLine: 'MAIL FROM:<a@b>', rcptLine: 'RCPT TO:<c@d>', mailFrom: 'a@b', rcptTo: 'c@d' })]],
    // Header injection through MAIL and RCPT with bare CR.
    [
      'EHLO a.example\r\nMAIL FROM:<a@b>\rX-Injected: yes\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\rAuth-Status: OK\r\nRCPT TO:<c@d>\r\n',
      [env({ helo: 'a.example', mailLine: 'MAIL FROM:<a@b>', rcptLine: 'RCPT TO:<c@d>', mailFrom: 'a@b', rcptTo: 'c@d' })],
    ],
    // NUL inside and after paths.
    [
      'EHLO a.example\r\nMAIL FROM:<a@b\x00>\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c\x00@d>\r\nRCPT TO:<c@d>\x00\r\nRCPT TO:<c@d>\r\n',
      [env({ helo: 'a.example', mailLine: 'MAIL FROM:<a@b>', rcptLine: 'RCPT TO:<c@d>', mailFrom: 'a@b', rcptTo: 'c@d' })],
    ],
    // CR CR LF: the inner CR is not part of the terminator.
    ['EHLO a.example\r\r\nHELO b.example\r\nMAIL FROM:<a@b>\r\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\r\n', []],
    // LF CR: the CR starts the next line.
    ['HELO a.example\n\rMAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\n\rRCPT TO:<c@d>\r\n', []],
    // A bare LF ends the RCPT line: what follows is a separate (unknown) command, not part of the value.
    [
      'EHLO a.example\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\nAuth-Status: OK\r\n',
      [env({ helo: 'a.example', mailLine: 'MAIL FROM:<a@b>', rcptLine: 'RCPT TO:<c@d>', mailFrom: 'a@b', rcptTo: 'c@d' })],
    ],
    // A line break inside the angle brackets.
    ['EHLO a.example\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d\r\n>\r\n', []],
    // Vertical tab, form feed, ESC, DEL.
    ['EHLO a\x0bb\r\nEHLO a\x0cb\r\nMAIL FROM:<a\x1b@b>\r\nRCPT TO:<c@d>\x7f\r\n', []],
  ];

  hostile.forEach(([input, expected], i) => {
    it(`hostile input #${i + 1}`, () => {
      const whole = run([b(input)], routeAll);
      assert.deepEqual(whole.envelopes, expected);
      for (const e of whole.envelopes) assertClean(e, `input #${i + 1}`);
      for (const chunks of splits(b(input))) {
        const r = run(chunks, routeAll);
        assert.deepEqual(strip(r), strip(whole));
        for (const e of r.envelopes) assertClean(e, `input #${i + 1} split`);
      }
    });
  });

  it('every byte value in every envelope position', () => {
    const templates = [
      (x: string) => `EHLO a${x}b\r\nMAIL FROM:<m@n>\r\nRCPT TO:<r@s>\r\n`,
      (x: string) => `EHLO a\r\nMAIL FROM:<m${x}@n>\r\nRCPT TO:<r@s>\r\n`,
      (x: string) => `EHLO a\r\nMAIL FROM:<m@n> P=${x}\r\nRCPT TO:<r@s>\r\n`,
      (x: string) => `EHLO a\r\nMAIL FROM:<m@n>${x}\r\nRCPT TO:<r@s>\r\n`,
      (x: string) => `EHLO a\r\nMAIL FROM:<m@n>\r\nRCPT TO:<r${x}@s>\r\n`,
      (x: string) => `EHLO a\r\nMAIL FROM:<m@n>\r\nRCPT TO:<r@s> P=${x}\r\n`,
      (x: string) => `EHLO a\r\nMAIL FROM:<m@n>\r\nRCPT TO:<r@s>${x}\r\n`,
    ];
    for (let byte = 0; byte < 256; byte++) {
      const x = String.fromCharCode(byte);
      const forbidden = (byte < 0x20 && byte !== 0x09) || byte === 0x7f;
      templates.forEach((t, ti) => {
        const input = t(x);
        for (const chunks of [[b(input)], [...b(input)].map((v) => Buffer.from([v]))]) {
          const r = run(chunks, routeAll);
          for (const e of r.envelopes) {
            assertClean(e, `byte 0x${byte.toString(16)} template ${ti}`);
            if (forbidden) {
              for (const k of ENVELOPE_STRINGS) assert.ok(!e[k].includes(x), `control byte 0x${byte.toString(16)} reached envelope.${k}`);
            }
          }
          if (forbidden && byte !== 0x0a) {
            assert.ok(r.events.includes(E('PST_BAD_BYTES')), `byte 0x${byte.toString(16)} template ${ti} not refused`);
          }
        }
      });
    }
  });
});

describe('printable', () => {
  it('escapes controls and 8-bit bytes, caps at 128 bytes', () => {
    assert.equal(printable(b('EHLO a\r\n\x00\x7f\xff')), 'EHLO a\\x0d\\x0a\\x00\\x7f\\xff');
    assert.equal(printable(b('y'.repeat(300))), 'y'.repeat(128));
  });
});

describe('Session: ERRORS catalogue as the session uses it', () => {
  it('close flags match what the session does', () => {
    for (const code of ['PST_LINE_TOO_LONG', 'PST_HTTP_REQUEST', 'PST_EARLY_TALKER', 'PST_TOO_MANY_ERRORS', 'PST_SHUTDOWN'] as const) {
      assert.equal(ERRORS[code].close, true, code);
    }
    for (const code of ['PST_BAD_BYTES', 'PST_UNKNOWN_COMMAND', 'PST_NOT_IMPLEMENTED', 'PST_NEED_HELO', 'PST_NESTED_MAIL', 'PST_NEED_MAIL', 'PST_NEED_RCPT', 'PST_INVALID_ARGUMENT', 'PST_BAD_SENDER', 'PST_BAD_RECIPIENT', 'PST_MESSAGE_TOO_BIG', 'PST_NOT_PERMITTED'] as const) {
      assert.equal(ERRORS[code].close, false, code);
    }
  });
});

describe('Session: TLS and shutdown', () => {
  it('a stop requested during the TLS handshake is announced right after it (421), not ignored', () => {
    const s = new Session(new ReplyBook({ serverName: 'px.example', capabilities: [] }), { ...LIMITS, implicitTls: true });
    assert.deepEqual(s.start(), []);
    assert.equal(s.phase, 'tls-handshake');
    assert.deepEqual(s.shutdown(), []);
    assert.deepEqual(s.tlsStarted().map(token), [E('PST_SHUTDOWN')]);
    assert.equal(s.phase, 'closed');
  });
});

describe('Session: SMTP AUTH dialogs, split at every offset', () => {
  const AUTH_LIMITS: Partial<SessionLimits> = {
    auth: { mechanisms: ['PLAIN', 'LOGIN', 'CRAM-MD5', 'XOAUTH2'], allowNone: false, plaintext: true, maxAttempts: 2, challenge: () => '<1.2@px.example>' },
  };
  const b64 = (s: string): string => Buffer.from(s, 'latin1').toString('base64');
  const authEnv = (auth: Envelope['auth']): Envelope => ({ helo: 'c', esmtp: true, mailLine: '', rcptLine: '', mailFrom: '', rcptTo: '', attempt: 1, auth });
  it('the EHLO reply lists AUTH before STARTTLS, as nginx orders them', () => {
    const authBook = new ReplyBook({ serverName: SERVER, capabilities: ['PIPELINING'], starttls: true, auth: ['PLAIN', 'LOGIN'] });
    assert.equal(authBook.ehlo(true, true).toString('latin1'), '250-px.example\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN\r\n250 STARTTLS\r\n');
    assert.equal(authBook.ehlo(true, false).toString('latin1'), '250-px.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n');
  });

  it('EHLO lists AUTH; LOGIN with two prompts routes with Auth-Method plain; pipelined MAIL stays for the back-end', () => {
    const input = `EHLO c\r\nAUTH LOGIN\r\n${b64('alice')}\r\n${b64('s3cr\xe9t')}\r\nMAIL FROM:<a@b>\r\n`;
    const whole = run([b(input)], { limits: AUTH_LIMITS });
    for (const chunks of splits(b(input))) assert.deepEqual(strip(run(chunks, { limits: AUTH_LIMITS })), strip(whole));
    assert.deepEqual(whole.events.slice(-3), [R('334 VXNlcm5hbWU6\r\n'), R('334 UGFzc3dvcmQ6\r\n'), ROUTE(authEnv({ method: 'plain', user: 'alice', pass: 's3cr\xe9t' }))]);
    assert.equal(whole.handOff, 'MAIL FROM:<a@b>\r\n');
  });

  it('CRAM-MD5 carries the challenge as salt; "*" cancels; MAIL before AUTH is 530', () => {
    dialog(`EHLO c\r\nMAIL FROM:<a@b>\r\nAUTH PLAIN\r\n*\r\nAUTH CRAM-MD5\r\n${b64(`alice ${'a'.repeat(32)}`)}\r\n`, { limits: AUTH_LIMITS }, {
      events: [R(GREETING), `reply ${'250-px.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 1000000\r\n250 ENHANCEDSTATUSCODES\r\n'}`, E('PST_AUTH_REQUIRED'), R('334 \r\n'), E('PST_AUTH_CANCELLED'),
        R(`334 ${b64('<1.2@px.example>')}\r\n`), ROUTE(authEnv({ method: 'cram-md5', user: 'alice', pass: 'a'.repeat(32), salt: '<1.2@px.example>' }))],
      handOff: '',
      phase: 'handed-off',
      wire: undefined,
    });
  });

  it('credentials holding CR, LF or NUL (inside base64) reach the auth request only escaped', () => {
    const r = run([b(`EHLO c\r\nAUTH PLAIN ${b64('\0al\r\nX-Evil: 1\0p\nw\0')}\r\nAUTH PLAIN ${b64('\0al\r\nX-Evil: 1\0pw')}\r\n`)], { limits: AUTH_LIMITS });
    const e = r.envelopes.at(-1)!;
    const headers = buildAuthHeaders({ envelope: e, clientAddr: '192.0.2.1', clientPort: 1, clientHost: '[UNAVAILABLE]' }, { host: 'a', extra: {} });
    for (const h of headers) assert.doesNotMatch(h, /[\r\n\0]/);
    assert.equal(headers[headers.indexOf('Auth-User') + 1], 'al%0D%0AX-Evil:%201');
  });
});
