/**
 * nginx's auth_http protocol without I/O: request headers in nginx's order, the %XX escaping of
 * Auth-User/Auth-Pass, and how the answer is read (OK / WAIT / any other text = failure with
 * Auth-Error-Code or 535 5.7.0; missing Auth-Server/Auth-Port = error). Sources: the protocol section
 * of https://nginx.org/en/docs/mail/ngx_mail_auth_http_module.html, and for the header order
 * ngx_mail_auth_http_create_request in nginx's src/mail/ngx_mail_auth_http_module.c.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { buildAuthHeaders, escapeAuthValue, parseAuthAnswer } from '../../src/auth/auth-http-protocol.js';
import type { RouteRequest } from '../../src/auth/router.js';
import { Session, type Action, type Envelope, NO_AUTH } from '../../src/session/session.js';
import { lineReply, ReplyBook } from '../../src/smtp/replies.js';

const ENVELOPE: Envelope = {
  helo: 'client.example',
  esmtp: true,
  mailLine: 'MAIL FROM:<alice@example.org> SIZE=100',
  rcptLine: 'RCPT TO:<bob@example.net> ORCPT=rfc822;bob@example.net',
  mailFrom: 'alice@example.org',
  rcptTo: 'bob@example.net',
  attempt: 1,
};
const REQUEST: RouteRequest = { envelope: ENVELOPE, clientAddr: '192.0.2.7', clientPort: 40123, clientHost: '[UNAVAILABLE]' };

/** Pairs from the flat [name, value, …] list. */
function pairs(flat: string[]): Array<[string, string]> {
  assert.equal(flat.length % 2, 0);
  const out: Array<[string, string]> = [];
  for (let i = 0; i < flat.length; i += 2) out.push([flat[i]!, flat[i + 1]!]);
  return out;
}

describe('buildAuthHeaders (Auth-Method: none)', () => {
  it('sends nginx\'s headers, in nginx\'s order, with the values nginx sends for Auth-Method none', () => {
    assert.deepEqual(pairs(buildAuthHeaders(REQUEST, { host: 'auth.example', extra: {} })), [
      ['Host', 'auth.example'],
      ['Auth-Method', 'none'],
      ['Auth-User', ''],
      ['Auth-Pass', ''],
      ['Auth-Protocol', 'smtp'],
      ['Auth-Login-Attempt', '1'],
      ['Client-IP', '192.0.2.7'],
      ['Client-Host', '[UNAVAILABLE]'],
      ['Auth-SMTP-Helo', 'client.example'],
      ['Auth-SMTP-From', 'MAIL FROM:<alice@example.org> SIZE=100'],
      ['Auth-SMTP-To', 'RCPT TO:<bob@example.net> ORCPT=rfc822;bob@example.net'],
    ]);
  });

  it('appends auth_http_header extras last, in their order', () => {
    const h = pairs(buildAuthHeaders(REQUEST, { host: 'auth.example', extra: { 'X-Secret': 's3cr3t', 'X-Zone': 'eu' } }));
    assert.deepEqual(h.slice(-2), [['X-Secret', 's3cr3t'], ['X-Zone', 'eu']]);
    assert.equal(h.length, 13);
  });

  it('IPv6 Client-IP without brackets, the attempt number, an empty helo', () => {
    const req: RouteRequest = { envelope: { ...ENVELOPE, helo: '', esmtp: false, attempt: 3 }, clientAddr: '2001:db8::7', clientPort: 1, clientHost: '[TEMPUNAVAIL]' };
    const h = new Map(pairs(buildAuthHeaders(req, { host: 'auth.example', extra: {} })));
    assert.equal(h.get('Client-IP'), '2001:db8::7');
    assert.equal(h.get('Client-Host'), '[TEMPUNAVAIL]');
    assert.equal(h.get('Auth-Login-Attempt'), '3');
    assert.equal(h.get('Auth-SMTP-Helo'), '');
  });

  it('headers built from hostile client input never carry CR, LF or NUL', () => {
    // The envelopes come from the real Session, fed hostile command lines; every RCPT that
    // reaches routing is answered "try later" so all of them are seen.
    const book = new ReplyBook({ serverName: 'px.example', capabilities: [] });
    const session = new Session(book, { maxLineLength: 512, maxErrors: 0, maxMessageSize: 0, requireHelo: false, greetingDelay: false, starttls: 'off', implicitTls: false, auth: NO_AUTH });
    session.start();
    const tempfail: Action = { type: 'reply', data: lineReply('450 4.7.1 later') };
    const envelopes: Envelope[] = [];
    const feed = (actions: Action[]): void => {
      const last = actions[actions.length - 1];
      if (last?.type === 'route') {
        envelopes.push(last.envelope);
        feed(session.routeFailed(tempfail, true));
      }
    };
    const inputs = [
      'EHLO a\rAuth-Status: OK\r\n',
      'EHLO ok.example\r\n',
      'MAIL FROM:<a@b>\rAuth-Server: 10.6.6.6\r\n',
      'MAIL FROM:<a@b>\x00\r\n',
      'MAIL FROM:<a@b> X=\r\r\n',
      'MAIL FROM:<a@b>\r\n',
      'RCPT TO:<c@d>\rAuth-Port: 25\r\n',
      'RCPT TO:<c\x00@d>\r\n',
      'RCPT TO:<c@d>\nAuth-Status: OK\r\n',
      'RCPT TO:<e@f> X=\x0b\r\n',
      'RCPT TO:<g@h> X=\xff\xfe\t\r\n',
    ];
    for (const i of inputs) feed(session.receive(Buffer.from(i, 'latin1')));
    assert.deepEqual(envelopes.map((e) => e.rcptLine), ['RCPT TO:<c@d>', 'RCPT TO:<g@h> X=\xff\xfe\t']);
    for (const e of envelopes) {
      for (const v of buildAuthHeaders({ ...REQUEST, envelope: e }, { host: 'auth.example', extra: { 'X-K': 'v' } })) {
        assert.doesNotMatch(v, /[\r\n\0]/, JSON.stringify(v));
      }
    }
  });
});

describe('buildAuthHeaders (IMAP and POP3)', () => {
  it('nginx\'s IMAP/POP3 request: the credentials, Auth-Salt for APOP, no Client-Host and no Auth-SMTP-*', () => {
    const apop: RouteRequest = { ...REQUEST, protocol: 'pop3', envelope: { ...ENVELOPE, auth: { method: 'apop', user: 'alice', pass: '0123456789abcdef0123456789abcdef', salt: '<1.2@px.example>' } } };
    assert.deepEqual(pairs(buildAuthHeaders(apop, { host: 'auth.example', extra: {}, envelopeForAuth: true })), [
      ['Host', 'auth.example'],
      ['Auth-Method', 'apop'],
      ['Auth-User', 'alice'],
      ['Auth-Pass', '0123456789abcdef0123456789abcdef'],
      ['Auth-Salt', '<1.2@px.example>'],
      ['Auth-Protocol', 'pop3'],
      ['Auth-Login-Attempt', '1'],
      ['Client-IP', '192.0.2.7'],
    ]);
    const imap = new Map(pairs(buildAuthHeaders({ ...REQUEST, protocol: 'imap', envelope: { ...ENVELOPE, auth: { method: 'plain', user: 'a b', pass: 'p%' } } }, { host: 'h', extra: {} })));
    assert.equal(imap.get('Auth-Protocol'), 'imap');
    assert.equal(imap.get('Auth-User'), 'a%20b');
    assert.equal(imap.get('Auth-Pass'), 'p%25');
    assert.equal(imap.has('Client-Host'), false);
  });
});

describe('escapeAuthValue (ngx_escape_uri, NGX_ESCAPE_MAIL_AUTH)', () => {
  it('escapes exactly 0x00-0x20 and "%", upper-case hex', () => {
    for (let byte = 0; byte < 256; byte++) {
      const c = String.fromCharCode(byte);
      const expected = byte <= 0x20 || byte === 0x25 ? `%${byte.toString(16).toUpperCase().padStart(2, '0')}` : c;
      assert.equal(escapeAuthValue(c), expected, `byte 0x${byte.toString(16)}`);
    }
  });

  it('leaves "+", ":", quotes, DEL and 8-bit bytes raw', () => {
    assert.equal(escapeAuthValue('us er%name'), 'us%20er%25name');
    assert.equal(escapeAuthValue('a+b:"c"\x7f'), 'a+b:"c"\x7f');
    const utf8AsLatin1 = Buffer.from('jörg', 'utf8').toString('latin1');
    assert.equal(escapeAuthValue(utf8AsLatin1), utf8AsLatin1);
    assert.equal(escapeAuthValue('p\r\nX: y'), 'p%0D%0AX:%20y');
    assert.equal(escapeAuthValue(''), '');
  });
});

describe('parseAuthAnswer', () => {
  it('X-Postern-Pool: a pool instead of one server (it wins over an Auth-Server beside it); garbage is refused', () => {
    assert.deepEqual(parseAuthAnswer({ 'auth-status': 'OK', 'x-postern-pool': 'mx-east' }), { status: 'ok', server: '', port: 0, pool: 'mx-east' });
    assert.deepEqual(parseAuthAnswer({ 'auth-status': 'OK', 'x-postern-pool': 'mx', 'auth-server': '192.0.2.10', 'auth-port': '25', 'auth-user': 'u' }), { status: 'ok', server: '', port: 0, pool: 'mx', user: 'u' });
    for (const bad of ['mx east', 'mx\r\nAuth-Status: OK', '-x', '1mx', '']) {
      assert.equal(parseAuthAnswer({ 'auth-status': 'OK', 'x-postern-pool': bad }).status, 'invalid', bad);
    }
  });

  it('Auth-Status OK with Auth-Server and Auth-Port', () => {
    assert.deepEqual(parseAuthAnswer({ 'auth-status': 'OK', 'auth-server': '192.0.2.10', 'auth-port': '25' }), { status: 'ok', server: '192.0.2.10', port: 25 });
  });

  it('IPv6 Auth-Server without brackets (as nginx expects) and with them', () => {
    assert.deepEqual(parseAuthAnswer({ 'auth-status': 'OK', 'auth-server': '2001:db8::10', 'auth-port': '2525' }), { status: 'ok', server: '2001:db8::10', port: 2525 });
    assert.deepEqual(parseAuthAnswer({ 'auth-status': 'OK', 'auth-server': '[2001:db8::10]', 'auth-port': '2525' }), { status: 'ok', server: '2001:db8::10', port: 2525 });
  });

  it('ignores Auth-Error-Code and Auth-Wait on success; Auth-User/Auth-Pass come back when sent', () => {
    assert.deepEqual(
      parseAuthAnswer({ 'auth-status': 'OK', 'auth-server': '10.0.0.1', 'auth-port': '25', 'auth-error-code': '451 4.3.0', 'auth-wait': '5', 'auth-user': 'alice', 'auth-pass': 'secret' }),
      { status: 'ok', server: '10.0.0.1', port: 25, user: 'alice', pass: 'secret' },
    );
  });

  it('no Auth-Status but Auth-Server and Auth-Port: proceeds like nginx', () => {
    assert.deepEqual(parseAuthAnswer({ 'auth-server': '10.0.0.1', 'auth-port': '25' }), { status: 'ok', server: '10.0.0.1', port: 25 });
  });

  it('OK without Auth-Server or Auth-Port is an error (nginx: 451 4.3.2)', () => {
    assert.deepEqual(parseAuthAnswer({ 'auth-status': 'OK', 'auth-port': '25' }), { status: 'invalid', reason: 'no Auth-Server header' });
    assert.deepEqual(parseAuthAnswer({ 'auth-status': 'OK', 'auth-server': '10.0.0.1' }), { status: 'invalid', reason: 'no Auth-Port header' });
    assert.deepEqual(parseAuthAnswer({}), { status: 'invalid', reason: 'no Auth-Server header' });
    assert.deepEqual(parseAuthAnswer({ 'auth-status': 'OK', 'auth-server': '', 'auth-port': '25' }), { status: 'invalid', reason: 'no Auth-Server header' });
  });

  it('Auth-Port must be decimal 1..65535', () => {
    for (const p of ['0', '65536', '99999', 'abc', '25x', '-1', '+25', '2 5', '123456']) {
      const a = parseAuthAnswer({ 'auth-status': 'OK', 'auth-server': '10.0.0.1', 'auth-port': p });
      assert.deepEqual(a, { status: 'invalid', reason: `invalid Auth-Port ${JSON.stringify(p)}` }, p);
    }
    assert.deepEqual(parseAuthAnswer({ 'auth-status': 'OK', 'auth-server': '10.0.0.1', 'auth-port': '65535' }), { status: 'ok', server: '10.0.0.1', port: 65535 });
    assert.deepEqual(parseAuthAnswer({ 'auth-status': 'OK', 'auth-server': '10.0.0.1', 'auth-port': '1' }), { status: 'ok', server: '10.0.0.1', port: 1 });
  });

  it('Auth-Server with characters no address or host name has is refused', () => {
    for (const s of ['10.0.0.1 25', 'a_b.example', 'host;rm -rf', '10.0.0.1\r\nX: y', 'http://10.0.0.1']) {
      assert.deepEqual(parseAuthAnswer({ 'auth-status': 'OK', 'auth-server': s, 'auth-port': '25' }), { status: 'invalid', reason: `invalid Auth-Server ${JSON.stringify(s)}` }, s);
    }
  });

  it('Auth-Status is case-sensitive: only "OK" succeeds, "ok" is a failure text', () => {
    assert.deepEqual(parseAuthAnswer({ 'auth-status': 'ok', 'auth-server': '10.0.0.1', 'auth-port': '25' }), { status: 'fail', reply: '535 5.7.0 ok', waitMs: 0, text: 'ok' });
  });

  it('WAIT: re-query after Auth-Wait seconds (immediately without it)', () => {
    assert.deepEqual(parseAuthAnswer({ 'auth-status': 'WAIT', 'auth-wait': '3' }), { status: 'wait', waitMs: 3000 });
    assert.deepEqual(parseAuthAnswer({ 'auth-status': 'WAIT' }), { status: 'wait', waitMs: 0 });
    assert.deepEqual(parseAuthAnswer({ 'auth-status': 'WAIT', 'auth-wait': 'soon' }), { status: 'wait', waitMs: 0 });
    // Matched exactly, like OK: anything else is a failure text.
    assert.deepEqual(parseAuthAnswer({ 'auth-status': 'wait', 'auth-wait': '3' }), { status: 'fail', reply: '535 5.7.0 wait', waitMs: 3000, text: 'wait' });
    assert.equal(parseAuthAnswer({ 'auth-status': 'WAIT please' }).status, 'fail');
  });

  it('any other Auth-Status is a failure; the reply is "535 5.7.0 <text>" by default', () => {
    assert.deepEqual(parseAuthAnswer({ 'auth-status': 'Invalid login or password' }), {
      status: 'fail',
      reply: '535 5.7.0 Invalid login or password',
      waitMs: 0,
      text: 'Invalid login or password',
    });
  });

  it('Auth-Error-Code replaces the default (the nginx doc example)', () => {
    assert.deepEqual(parseAuthAnswer({ 'auth-status': 'Temporary server problem, try again later', 'auth-error-code': '451 4.3.0', 'auth-wait': '3' }), {
      status: 'fail',
      reply: '451 4.3.0 Temporary server problem, try again later',
      waitMs: 3000,
      text: 'Temporary server problem, try again later',
    });
    assert.equal((parseAuthAnswer({ 'auth-status': 'Relay denied', 'auth-error-code': '550 5.7.1' }) as { reply: string }).reply, '550 5.7.1 Relay denied');
  });

  it('a failure with Auth-Server present is still a failure', () => {
    const a = parseAuthAnswer({ 'auth-status': 'No', 'auth-server': '10.0.0.1', 'auth-port': '25' });
    assert.equal(a.status, 'fail');
  });

  it('an Auth-Error-Code that is not a reply code is not copied into the SMTP reply', () => {
    for (const bad of ['hello', '250 2.0.0', '535 5.7.0\r\n250 ok', '5355.7.0', '']) {
      const a = parseAuthAnswer({ 'auth-status': 'Denied', 'auth-error-code': bad });
      assert.deepEqual(a, { status: 'fail', reply: '535 5.7.0 Denied', waitMs: 0, text: 'Denied' }, JSON.stringify(bad));
    }
  });

  it('Auth-Error-Code with only a basic code keeps that code, as nginx copies it raw', {
  }, () => {
    const a = parseAuthAnswer({ 'auth-status': 'Greylisted', 'auth-error-code': '451' });
    assert.equal(a.status, 'fail');
    assert.match((a as { reply: string }).reply, /^451 /);
  });

  it('the failure text is made safe for an SMTP reply line: controls and 8-bit stripped, 400 chars max', () => {
    assert.equal((parseAuthAnswer({ 'auth-status': 'bad\x00 us\x7fer \xe9' }) as { reply: string }).reply, '535 5.7.0 bad user ');
    const long = parseAuthAnswer({ 'auth-status': 'x'.repeat(1000) }) as { reply: string; text: string };
    assert.equal(long.text, 'x'.repeat(400));
    assert.equal(long.reply, `535 5.7.0 ${'x'.repeat(400)}`);
    // Nothing printable left: a generic text, never a bare code.
    assert.equal((parseAuthAnswer({ 'auth-status': '\x01\x02' }) as { reply: string }).reply, '535 5.7.0 Authentication failed');
    assert.equal((parseAuthAnswer({ 'auth-status': '' }) as { reply: string }).reply, '535 5.7.0 Authentication failed');
  });

  it('Auth-Wait on a failure delays the reply and keeps the session (waitMs)', () => {
    assert.equal((parseAuthAnswer({ 'auth-status': 'Try later', 'auth-wait': '2' }) as { waitMs: number }).waitMs, 2000);
    assert.equal((parseAuthAnswer({ 'auth-status': 'Try later', 'auth-wait': '0' }) as { waitMs: number }).waitMs, 0);
    assert.equal((parseAuthAnswer({ 'auth-status': 'Try later', 'auth-wait': '-5' }) as { waitMs: number }).waitMs, 0);
  });

  it('takes the first value of a repeated header and trims values', () => {
    assert.deepEqual(parseAuthAnswer({ 'auth-status': [' OK ', 'No'], 'auth-server': ['10.0.0.1', '10.0.0.2'], 'auth-port': ' 25 ' }), { status: 'ok', server: '10.0.0.1', port: 25 });
  });

  it('only reads Auth-* headers: the HTTP status is not an input, other headers are ignored', () => {
    assert.equal(parseAuthAnswer.length, 1);
    assert.deepEqual(
      parseAuthAnswer({ 'auth-status': 'OK', 'auth-server': '10.0.0.1', 'auth-port': '25', 'content-type': 'text/html', status: '500', 'x-auth-status': 'no' }),
      { status: 'ok', server: '10.0.0.1', port: 25 },
    );
  });
});
