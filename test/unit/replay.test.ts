/**
 * The back-end replay (as ngx_mail_proxy_smtp_handler in nginx's src/mail/ngx_mail_proxy_module.c): greeting 220 →
 * EHLO (HELO fallback) → [XCLIENT with advertised attributes only, 220 or 250 → client's HELO/EHLO]
 * → MAIL 250 → RCPT (any reply goes to the client). Exact bytes are checked at each step.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Replay, type ClientIdentity, type ReplayOptions, type ReplayResult } from '../../src/backend/replay.js';
import type { Envelope } from '../../src/session/session.js';
import { ReplyError, ReplyReader, type Reply } from '../../src/smtp/reply-reader.js';
import { unxtext } from '../../src/smtp/xtext.js';
import { POSTFIX_EHLO, POSTFIX_GREETING } from '../helpers/fixtures.js';

function reply(text: string): Reply {
  const r = new ReplyReader();
  r.push(Buffer.from(text, 'latin1'));
  const out = r.next();
  assert.ok(out !== null && !(out instanceof ReplyError), `bad test reply ${JSON.stringify(text)}`);
  assert.equal(r.rest().length, 0, 'test reply must be exactly one reply');
  return out;
}

/** A readable rendering of a result. */
function show(r: ReplayResult): string {
  switch (r.kind) {
    case 'send':
      return `send ${r.data.toString('latin1')}`;
    case 'wait':
      return 'wait';
    case 'starttls':
      return 'starttls';
    case 'ready':
      return 'ready';
    case 'done':
      return `done ${r.reply.raw.toString('latin1')}`;
    case 'fail':
      return `fail ${r.code} | ${r.detail} | ${r.reply ? r.reply.raw.toString('latin1') : 'null'}`;
  }
}

const ENVELOPE: Envelope = {
  helo: 'client.example',
  esmtp: true,
  mailLine: 'MAIL FROM:<alice@example.org> SIZE=500 BODY=8BITMIME',
  rcptLine: 'RCPT TO:<bob@example.net> NOTIFY=NEVER',
  mailFrom: 'alice@example.org',
  rcptTo: 'bob@example.net',
  attempt: 1,
};
const CLIENT: ClientIdentity = { addr: '192.0.2.7', port: 40123, name: '[UNAVAILABLE]' };

function replay(o: Partial<Omit<ReplayOptions, 'envelope'>> & { envelope?: Partial<Envelope> } = {}): Replay {
  return new Replay({
    serverName: o.serverName ?? 'px.example',
    envelope: { ...ENVELOPE, ...o.envelope },
    client: o.client ?? CLIENT,
    xclient: o.xclient ?? true,
  });
}

/** Feeds the replies in order; returns what the replay did after each, and the step it ended in. */
function drive(rp: Replay, replies: string[]): string[] {
  return replies.map((r) => show(rp.onReply(reply(r))));
}

const POSTFIX_EHLO_AFTER_XCLIENT = '250-mx.backend.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n';
const PLAIN_EHLO = '250-mx.backend.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n';

describe('Replay: Postfix with XCLIENT', () => {
  it('sends the full sequence with the exact bytes at each step', () => {
    const rp = replay();
    assert.equal(rp.step, 'greeting');
    assert.equal(show(rp.onReply(reply(POSTFIX_GREETING))), 'send EHLO px.example\r\n');
    assert.equal(rp.step, 'ehlo');
    assert.equal(show(rp.onReply(reply(POSTFIX_EHLO))), 'send XCLIENT ADDR=192.0.2.7 PORT=40123 NAME=[UNAVAILABLE] PROTO=ESMTP HELO=client.example\r\n');
    assert.equal(rp.step, 'xclient');
    // Postfix answers XCLIENT with a fresh greeting and forgets the EHLO: the client's own greeting is replayed.
    assert.equal(show(rp.onReply(reply(POSTFIX_GREETING))), 'send EHLO client.example\r\n');
    assert.equal(rp.step, 'rehello');
    // PIPELINING (RFC 2920): MAIL and RCPT leave in one write; their replies are checked in turn.
    assert.equal(show(rp.onReply(reply(POSTFIX_EHLO_AFTER_XCLIENT))), 'send MAIL FROM:<alice@example.org> SIZE=500 BODY=8BITMIME\r\nRCPT TO:<bob@example.net> NOTIFY=NEVER\r\n');
    assert.equal(rp.step, 'mail');
    assert.equal(show(rp.onReply(reply('250 2.1.0 Ok\r\n'))), 'wait');
    assert.equal(rp.step, 'rcpt');
    const done = rp.onReply(reply('250 2.1.5 Ok\r\n'));
    assert.equal(done.kind, 'done');
    assert.equal(rp.step, 'done');
    if (done.kind === 'done') assert.deepEqual(done.reply, reply('250 2.1.5 Ok\r\n'));
  });

  it('learns the back-end capabilities from the first EHLO reply (upper-cased keywords)', () => {
    const rp = replay();
    drive(rp, [POSTFIX_GREETING, POSTFIX_EHLO]);
    assert.deepEqual([...rp.capabilities.entries()], [
      ['PIPELINING', ''],
      ['SIZE', '10240000'],
      ['VRFY', ''],
      ['ETRN', ''],
      ['XCLIENT', 'NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN'],
      ['ENHANCEDSTATUSCODES', ''],
      ['8BITMIME', ''],
      ['DSN', ''],
    ]);
  });

  it('IPv6 client: ADDR=IPV6:<address>', () => {
    const rp = replay({ client: { addr: '2001:db8::25', port: 587, name: 'mail.client.example' } });
    assert.deepEqual(drive(rp, [POSTFIX_GREETING, POSTFIX_EHLO]), [
      'send EHLO px.example\r\n',
      'send XCLIENT ADDR=IPV6:2001:db8::25 PORT=587 NAME=mail.client.example PROTO=ESMTP HELO=client.example\r\n',
    ]);
  });

  it('values are xtext-encoded (RFC 3461 §4), so no space, CR, LF, "+" or "=" reaches the line raw', () => {
    const helo = '[h+e=l\xe9o]';
    const rp = replay({ envelope: { helo }, client: { addr: '192.0.2.7', port: 1, name: '[TEMPUNAVAIL]' } });
    const [, xclient] = drive(rp, [POSTFIX_GREETING, POSTFIX_EHLO]);
    assert.equal(xclient, 'send XCLIENT ADDR=192.0.2.7 PORT=1 NAME=[TEMPUNAVAIL] PROTO=ESMTP HELO=[h+2Be+3Dl+E9o]\r\n');
    assert.deepEqual(unxtext('[h+2Be+3Dl+E9o]'), Buffer.from(helo, 'latin1'));
    // The client's greeting is replayed with its own bytes.
    assert.equal(show(rp.onReply(reply(POSTFIX_GREETING))), `send EHLO ${helo}\r\n`);
  });

  it('a HELO client: PROTO=SMTP and HELO replayed after XCLIENT', () => {
    const rp = replay({ envelope: { helo: 'old.example', esmtp: false } });
    assert.deepEqual(drive(rp, [POSTFIX_GREETING, POSTFIX_EHLO, POSTFIX_GREETING]), [
      'send EHLO px.example\r\n',
      'send XCLIENT ADDR=192.0.2.7 PORT=40123 NAME=[UNAVAILABLE] PROTO=SMTP HELO=old.example\r\n',
      'send HELO old.example\r\n',
    ]);
  });

  it('a client that never greeted: no HELO= attribute and, as nginx does, no second greeting', () => {
    const rp = replay({ envelope: { helo: '', esmtp: false } });
    assert.deepEqual(drive(rp, [POSTFIX_GREETING, POSTFIX_EHLO, POSTFIX_GREETING]), [
      'send EHLO px.example\r\n',
      'send XCLIENT ADDR=192.0.2.7 PORT=40123 NAME=[UNAVAILABLE] PROTO=SMTP\r\n',
      `send ${ENVELOPE.mailLine}\r\n${ENVELOPE.rcptLine}\r\n`,
    ]);
  });

  it('drops HELO= (replayed anyway) rather than exceed Postfix\'s 512-byte XCLIENT line', () => {
    const base = 'XCLIENT ADDR=192.0.2.7 PORT=40123 NAME=[UNAVAILABLE] PROTO=ESMTP';
    const fits = 'h'.repeat(512 - 2 - base.length - ' HELO='.length);
    const rpFits = replay({ envelope: { helo: fits } });
    const sentFits = drive(rpFits, [POSTFIX_GREETING, POSTFIX_EHLO])[1]!;
    assert.equal(sentFits, `send ${base} HELO=${fits}\r\n`);
    assert.equal(sentFits.length - 'send '.length, 512);

    const rpLong = replay({ envelope: { helo: `${fits}h` } });
    assert.equal(drive(rpLong, [POSTFIX_GREETING, POSTFIX_EHLO])[1], `send ${base}\r\n`);
    assert.equal(show(rpLong.onReply(reply(POSTFIX_GREETING))), `send EHLO ${fits}h\r\n`);

    // The limit counts the encoded length: 10 "+" become 30 bytes.
    const rpEnc = replay({ envelope: { helo: `${fits.slice(20)}${'+'.repeat(10)}` } });
    assert.equal(drive(rpEnc, [POSTFIX_GREETING, POSTFIX_EHLO])[1], `send ${base}\r\n`);
  });

  it('XCLIENT keyword and attributes are matched case-insensitively', () => {
    const rp = replay();
    assert.deepEqual(drive(rp, [POSTFIX_GREETING, '250-mx\r\n250-xclient addr name\r\n250 8BITMIME\r\n']), [
      'send EHLO px.example\r\n',
      'send XCLIENT ADDR=192.0.2.7 NAME=[UNAVAILABLE]\r\n',
    ]);
  });

  it('never sends LOGIN=, REVERSE_NAME= or DESTADDR= (no login in none mode)', () => {
    const rp = replay();
    const [, x] = drive(rp, [POSTFIX_GREETING, '250-mx\r\n250 XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT\r\n']);
    assert.doesNotMatch(x!, /LOGIN=|REVERSE_NAME=|DESTADDR=|DESTPORT=/);
  });

  it('sends no XCLIENT command without attributes when none of the advertised ones apply', {
  }, () => {
    for (const ehlo of ['250-mx\r\n250 XCLIENT LOGIN\r\n', '250-mx\r\n250 XCLIENT\r\n', '250-mx\r\n250 XCLIENT DESTADDR DESTPORT\r\n']) {
      const rp = replay();
      const [, next] = drive(rp, [POSTFIX_GREETING, ehlo]);
      assert.notEqual(next, 'send XCLIENT \r\n', ehlo);
      assert.equal(next, `send ${ENVELOPE.mailLine}\r\n`, ehlo);
    }
  });
});

describe('Replay: other back-ends', () => {
  it('smtp-sink-like: XCLIENT NAME HELO only, answers 250', () => {
    const rp = replay();
    assert.deepEqual(drive(rp, [
      '220 sink ESMTP\r\n',
      '250-sink\r\n250-PIPELINING\r\n250-XCLIENT NAME HELO\r\n250 8BITMIME\r\n',
      '250 Ok\r\n',
      '250-sink\r\n250 8BITMIME\r\n',
      '250 Ok\r\n',
    ]), [
      'send EHLO px.example\r\n',
      'send XCLIENT NAME=[UNAVAILABLE] HELO=client.example\r\n',
      'send EHLO client.example\r\n',
      `send ${ENVELOPE.mailLine}\r\n`,
      `send ${ENVELOPE.rcptLine}\r\n`,
    ]);
  });

  it('xclient disabled: straight from EHLO to MAIL even when XCLIENT is advertised', () => {
    const rp = replay({ xclient: false });
    assert.deepEqual(drive(rp, [POSTFIX_GREETING, POSTFIX_EHLO, '250 2.1.0 Ok\r\n']), [
      'send EHLO px.example\r\n',
      `send ${ENVELOPE.mailLine}\r\n${ENVELOPE.rcptLine}\r\n`,
      'wait',
    ]);
  });

  it('back-end without XCLIENT: straight from EHLO to MAIL', () => {
    const rp = replay();
    assert.deepEqual(drive(rp, [POSTFIX_GREETING, PLAIN_EHLO, '250 2.1.0 Ok\r\n', '250 2.1.5 Ok\r\n']), [
      'send EHLO px.example\r\n',
      `send ${ENVELOPE.mailLine}\r\n${ENVELOPE.rcptLine}\r\n`,
      'wait',
      'done 250 2.1.5 Ok\r\n',
    ]);
  });

  it('back-end without PIPELINING: MAIL and RCPT one at a time, in lock-step', () => {
    const rp = replay();
    assert.deepEqual(drive(rp, [POSTFIX_GREETING, '250-mx\r\n250 8BITMIME\r\n', '250 2.1.0 Ok\r\n', '250 2.1.5 Ok\r\n']), [
      'send EHLO px.example\r\n',
      `send ${ENVELOPE.mailLine}\r\n`,
      `send ${ENVELOPE.rcptLine}\r\n`,
      'done 250 2.1.5 Ok\r\n',
    ]);
  });

  it('EHLO refused with 502 (or 500): HELO fallback, then MAIL', () => {
    for (const refusal of ['502 5.5.2 Error: command not recognized\r\n', '500 Syntax error, command unrecognized\r\n']) {
      const rp = replay();
      assert.deepEqual(drive(rp, [POSTFIX_GREETING, refusal, '250 mx.old.example\r\n', '250 Ok\r\n']), [
        'send EHLO px.example\r\n',
        'send HELO px.example\r\n',
        `send ${ENVELOPE.mailLine}\r\n`,
        `send ${ENVELOPE.rcptLine}\r\n`,
      ]);
      assert.equal(rp.capabilities.size, 0);
    }
  });

  it('a multi-line greeting is accepted', () => {
    assert.deepEqual(drive(replay(), ['220-mx.backend.example ESMTP\r\n220 no UCE\r\n']), ['send EHLO px.example\r\n']);
  });
});

describe('Replay: failures before RCPT become kind "fail" (PST_BACKEND_REJECTED)', () => {
  it('greeting 554', () => {
    const rp = replay();
    assert.deepEqual(drive(rp, ['554 5.7.1 No SMTP service here\r\n']), [
      'fail PST_BACKEND_REJECTED | greeting: 554 5.7.1 No SMTP service here | 554 5.7.1 No SMTP service here\r\n',
    ]);
  });

  it('greeting 421', () => {
    assert.deepEqual(drive(replay(), ['421 4.3.2 busy\r\n']), ['fail PST_BACKEND_REJECTED | greeting: 421 4.3.2 busy | 421 4.3.2 busy\r\n']);
  });

  it('EHLO answered 421 (not a "command unknown"): no HELO fallback', () => {
    assert.deepEqual(drive(replay(), [POSTFIX_GREETING, '421 4.4.2 closing\r\n']), [
      'send EHLO px.example\r\n',
      'fail PST_BACKEND_REJECTED | ehlo: 421 4.4.2 closing | 421 4.4.2 closing\r\n',
    ]);
  });

  it('HELO fallback refused', () => {
    assert.deepEqual(drive(replay(), [POSTFIX_GREETING, '502 no\r\n', '501 bad\r\n']), [
      'send EHLO px.example\r\n',
      'send HELO px.example\r\n',
      'fail PST_BACKEND_REJECTED | helo: 501 bad | 501 bad\r\n',
    ]);
  });

  it('XCLIENT 550 (Postern not in smtpd_authorized_xclient_hosts), with a hint in the detail', () => {
    assert.deepEqual(drive(replay(), [POSTFIX_GREETING, POSTFIX_EHLO, '550 5.7.0 Error: insufficient authorization\r\n']), [
      'send EHLO px.example\r\n',
      'send XCLIENT ADDR=192.0.2.7 PORT=40123 NAME=[UNAVAILABLE] PROTO=ESMTP HELO=client.example\r\n',
      'fail PST_BACKEND_REJECTED | XCLIENT refused: is Postern in smtpd_authorized_xclient_hosts? xclient: 550 5.7.0 Error: insufficient authorization | 550 5.7.0 Error: insufficient authorization\r\n',
    ]);
  });

  it('XCLIENT 501 and 421 are failures too; only 220 and 250 are accepted', () => {
    for (const code of [501, 421, 235, 354]) {
      const [, , r] = drive(replay(), [POSTFIX_GREETING, POSTFIX_EHLO, `${code} x\r\n`]);
      assert.match(r!, new RegExp(`^fail PST_BACKEND_REJECTED \\| XCLIENT refused: .* xclient: ${code} x \\|`));
    }
  });

  it('re-EHLO after XCLIENT refused', () => {
    const r = drive(replay(), [POSTFIX_GREETING, POSTFIX_EHLO, POSTFIX_GREETING, '554 5.7.1 go away\r\n']);
    assert.equal(r[3], 'fail PST_BACKEND_REJECTED | rehello: 554 5.7.1 go away | 554 5.7.1 go away\r\n');
  });

  it('MAIL 451', () => {
    const r = drive(replay(), [POSTFIX_GREETING, PLAIN_EHLO, '451 4.3.0 Temporary lookup failure\r\n']);
    assert.deepEqual(r, [
      'send EHLO px.example\r\n',
      `send ${ENVELOPE.mailLine}\r\n${ENVELOPE.rcptLine}\r\n`,
      'fail PST_BACKEND_REJECTED | mail: 451 4.3.0 Temporary lookup failure | 451 4.3.0 Temporary lookup failure\r\n',
    ]);
  });

  it('MAIL 552 multi-line: the detail joins the lines, the reply keeps the raw bytes (a 5xx is the back-end\'s verdict)', () => {
    const rp = replay();
    drive(rp, [POSTFIX_GREETING, PLAIN_EHLO]);
    const r = rp.onReply(reply('552-5.3.4 Message size\r\n552 5.3.4 exceeds fixed limit\r\n'));
    assert.deepEqual(r, {
      kind: 'fail',
      code: 'PST_BACKEND_SENDER_REFUSED',
      detail: 'mail: 552 5.3.4 Message size / 5.3.4 exceeds fixed limit',
      reply: reply('552-5.3.4 Message size\r\n552 5.3.4 exceeds fixed limit\r\n'),
    });
  });
});

describe('Replay: the RCPT reply belongs to the client', () => {
  it('RCPT 550 is "done" with that exact reply, not a failure', () => {
    const rp = replay();
    drive(rp, [POSTFIX_GREETING, PLAIN_EHLO, '250 2.1.0 Ok\r\n']);
    const raw = '550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown in virtual mailbox table\r\n';
    const r = rp.onReply(reply(raw));
    assert.deepEqual(r, { kind: 'done', reply: reply(raw) });
  });

  it('RCPT 451 and multi-line replies are passed whole', () => {
    for (const raw of ['451 4.7.1 Greylisted, try later\r\n', '550-5.7.1 first\r\n550 5.7.1 second\r\n', '252 2.1.5 maybe\r\n']) {
      const rp = replay();
      drive(rp, [POSTFIX_GREETING, PLAIN_EHLO, '250 2.1.0 Ok\r\n']);
      assert.equal(show(rp.onReply(reply(raw))), `done ${raw}`);
    }
  });

  it('a reply after the RCPT reply is an invalid reply', () => {
    const rp = replay();
    drive(rp, [POSTFIX_GREETING, PLAIN_EHLO, '250 2.1.0 Ok\r\n', '250 2.1.5 Ok\r\n']);
    assert.equal(show(rp.onReply(reply('250 extra\r\n'))), 'fail PST_BACKEND_INVALID_REPLY | unexpected reply after RCPT | 250 extra\r\n');
  });
});

describe('Replay.warm: a connection kept from an earlier session (back-end session reuse)', () => {
  const CAPS = new Map([['PIPELINING', ''], ['XCLIENT', 'NAME ADDR PORT PROTO HELO LOGIN'], ['8BITMIME', '']]);

  it('goes on after the EHLO: XCLIENT with this client, its 220, the client\'s EHLO, MAIL and RCPT pipelined', () => {
    const rp = replay();
    assert.equal(show(rp.warm(CAPS, false)), 'send XCLIENT ADDR=192.0.2.7 PORT=40123 NAME=[UNAVAILABLE] PROTO=ESMTP HELO=client.example\r\n');
    assert.deepEqual(drive(rp, ['220 mx.backend.example ESMTP\r\n', POSTFIX_EHLO_AFTER_XCLIENT, '250 2.1.0 Ok\r\n', '250 2.1.5 Ok\r\n']), [
      'send EHLO client.example\r\n',
      `send ${ENVELOPE.mailLine}\r\n${ENVELOPE.rcptLine}\r\n`,
      'wait',
      'done 250 2.1.5 Ok\r\n',
    ]);
    assert.equal(rp.xclientDone, true);
  });

  it('without XCLIENT: MAIL at once; the TLS state is the kept connection\'s', () => {
    const rp = replay({ xclient: false });
    assert.equal(show(rp.warm(CAPS, true)), `send ${ENVELOPE.mailLine}\r\n${ENVELOPE.rcptLine}\r\n`);
    assert.equal(rp.secure, true);
    assert.equal(rp.step, 'mail');
  });

  it('a refused XCLIENT on the kept connection fails as a cold one would', () => {
    const rp = replay();
    rp.warm(CAPS, false);
    assert.match(drive(rp, ['550 5.7.0 Error: insufficient authorization\r\n'])[0]!, /^fail PST_BACKEND_REJECTED \| XCLIENT refused/);
  });
});
