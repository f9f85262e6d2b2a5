/**
 * The back-end half of IMAP (nginx's ngx_mail_proxy_imap_handler): the login dialog as pure
 * steps, the response reader at every cut, Postern's ID fields, and what may be failed over.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { PosternError } from '../../src/errors.js';
import { ImapLogin, ResponseReader, type ImapLoginOptions, type LoginStep } from '../../src/imap/login.js';
import { idFields, imapRetryable } from '../../src/protocols/imap.js';
import { describeCut, pull, splits } from '../helpers/split.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const OPTS: ImapLoginOptions = { user: 'alice', pass: 'se cr"et', mode: 'login', id: null, tls: 'off' };

/** Feeds the back-end's lines one by one; returns what Postern sent and how it ended. */
function dialog(lines: string[], o: Partial<ImapLoginOptions> = {}): { sent: string; end: LoginStep } {
  const login = new ImapLogin({ ...OPTS, ...o });
  const sent: string[] = [];
  let end: LoginStep = { kind: 'wait' };
  for (const l of lines) {
    const step = login.onLine(b(`${l}\r\n`));
    if (step.kind === 'send') sent.push(step.data.toString('latin1'));
    else if (step.kind !== 'wait') {
      end = step;
      if (step.kind === 'starttls') {
        const next = login.tlsReady();
        if (next.kind === 'send') sent.push(next.data.toString('latin1'));
        continue;
      }
      break;
    }
  }
  return { sent: sent.join(''), end };
}

describe('IMAP back-end login', () => {
  it('is nginx\'s LOGIN with synchronising literals, the tagged OK kept without its tag', () => {
    const r = dialog(['* OK ready', '+ OK', '+ OK', 'L1 OK Logged in']);
    assert.equal(r.sent, 'L1 LOGIN {5}\r\nalice {8}\r\nse cr"et\r\n');
    assert.deepEqual(r.end, { kind: 'done', untagged: b(''), status: b('OK Logged in\r\n') });
  });

  it('goes in one write with LITERAL+ in the greeting, and keeps untagged lines before the OK (nginx PR #276)', () => {
    const r = dialog(['* OK [CAPABILITY IMAP4rev1 LITERAL+] ready', '* CAPABILITY IMAP4rev1 IDLE', 'L1 OK [CAPABILITY IMAP4rev1] Logged in']);
    assert.equal(r.sent, 'L1 LOGIN {5+}\r\nalice {8+}\r\nse cr"et\r\n');
    assert.deepEqual(r.end, { kind: 'done', untagged: b('* CAPABILITY IMAP4rev1 IDLE\r\n'), status: b('OK [CAPABILITY IMAP4rev1] Logged in\r\n') });
  });

  it('carries CR and LF of a password inside its literal only', () => {
    const r = dialog(['* OK ready', '+ OK', '+ OK'], { pass: 'a\r\nL9 LOGOUT' });
    assert.equal(r.sent, 'L1 LOGIN {5}\r\nalice {12}\r\na\r\nL9 LOGOUT\r\n');
  });

  it('AUTHENTICATE PLAIN, with SASL-IR when offered', () => {
    const plain = Buffer.from('\0alice\0se cr"et').toString('base64');
    assert.equal(dialog(['* OK ready', '+ ', 'L1 OK done'], { mode: 'plain' }).sent, `L1 AUTHENTICATE PLAIN\r\n${plain}\r\n`);
    assert.equal(dialog(['* OK [CAPABILITY SASL-IR] ready', 'L1 OK done'], { mode: 'plain' }).sent, `L1 AUTHENTICATE PLAIN ${plain}\r\n`);
  });

  it('sends ID first and goes on whatever the answer', () => {
    const r = dialog(['* OK ready', '* ID NIL', 'I1 BAD no ID here', '+ OK'], { id: '"x-originating-ip" "192.0.2.7"' });
    assert.equal(r.sent, 'I1 ID ("x-originating-ip" "192.0.2.7")\r\nL1 LOGIN {5}\r\nalice {8}\r\n');
  });

  it('STARTTLS when required, or when offered with opportunistic; required and refused fails', () => {
    assert.equal(dialog(['* OK ready', 'T1 OK go', '+ OK'], { tls: 'required' }).sent, 'T1 STARTTLS\r\nL1 LOGIN {5}\r\nalice {8}\r\n');
    assert.equal(dialog(['* OK ready', '+ OK'], { tls: 'opportunistic' }).sent, 'L1 LOGIN {5}\r\nalice {8}\r\n');
    assert.equal(dialog(['* OK [CAPABILITY STARTTLS LITERAL+] ready', 'T1 OK go'], { tls: 'opportunistic' }).sent, 'T1 STARTTLS\r\nL1 LOGIN {5}\r\n', 'LITERAL+ is forgotten after TLS');
    const refused = dialog(['* OK ready', 'T1 NO no'], { tls: 'required' }).end;
    assert.equal(refused.kind === 'fail' && refused.code, 'PST_BACKEND_TLS_REQUIRED');
  });

  it('says what went wrong at each step', () => {
    const code = (lines: string[]): string | undefined => {
      const e = dialog(lines).end;
      return e.kind === 'fail' ? e.code : undefined;
    };
    assert.equal(code(['* BYE go away']), 'PST_BACKEND_REJECTED');
    assert.equal(code(['* PREAUTH welcome']), 'PST_BACKEND_REJECTED');
    assert.equal(code(['220 smtp.example ESMTP']), 'PST_BACKEND_INVALID_REPLY');
    assert.equal(code(['* OK ready', 'L1 NO [UNAVAILABLE] later']), 'PST_BACKEND_AUTH_FAILED');
    assert.equal(code(['* OK ready', '+ OK', '+ OK', 'L1 BAD what']), 'PST_BACKEND_REJECTED');
    assert.equal(code(['* OK ready', '+ OK', '+ OK', 'x OK']), 'PST_BACKEND_INVALID_REPLY');
    assert.equal(code(['* OK ready', '+ OK', '* BYE dying']), 'PST_BACKEND_REJECTED');
    const no = dialog(['* OK ready', '+ OK', '+ OK', 'L1 NO [AUTHENTICATIONFAILED] Authentication failed.']).end;
    assert.equal(no.kind === 'fail' && no.reply, 'NO [AUTHENTICATIONFAILED] Authentication failed.\r\n');
  });
});

describe('IMAP back-end response reader', () => {
  it('gives whole lines, literals inside them included, at every cut', () => {
    const input = b('* OK ready\r\n* 1 FETCH (BODY[] {7}\r\nab\r\ncd)\r\nL1 OK done\n');
    for (const chunks of splits(input)) {
      const r = new ResponseReader(1000);
      const lines = { push: (c: Buffer) => r.push(c), next: (): Buffer | null => { const x = r.next(); assert.notEqual(x, 'too-long'); return x === 'too-long' ? null : x; } };
      const got = [...pull(lines, chunks)].map((x) => x.toString('latin1'));
      assert.deepEqual(got, ['* OK ready\r\n', '* 1 FETCH (BODY[] {7}\r\nab\r\ncd)\r\n', 'L1 OK done\n'], describeCut(chunks));
    }
  });

  it('says too-long past its limit, literal sizes included', () => {
    const r = new ResponseReader(32);
    r.push(b('* OK '.padEnd(40, 'x')));
    assert.equal(r.next(), 'too-long');
    const s = new ResponseReader(32);
    s.push(b('* X {100}\r\n'));
    assert.equal(s.next(), 'too-long');
  });
});

describe('IMAP protocol module helpers', () => {
  it('builds Postern\'s ID fields as Dovecot\'s proxy does, values quoted, the client\'s fields after', () => {
    assert.equal(
      idFields({ addr: '192.0.2.7', port: 5555, name: '[UNAVAILABLE]', serverAddr: '198.51.100.1', serverPort: 143 }, 'abc123', '"name" "tb"'),
      '"x-originating-ip" "192.0.2.7" "x-originating-port" "5555" "x-connected-ip" "198.51.100.1" "x-connected-port" "143" "x-session-id" "abc123" "name" "tb"',
    );
  });

  it('fails over faults but not refused credentials, unless the back-end says UNAVAILABLE', () => {
    assert.equal(imapRetryable(new PosternError('PST_BACKEND_TIMEOUT')), true);
    assert.equal(imapRetryable(new PosternError('PST_BACKEND_AUTH_FAILED', 'x', 'NO [AUTHENTICATIONFAILED] no\r\n')), false);
    assert.equal(imapRetryable(new PosternError('PST_BACKEND_AUTH_FAILED', 'x', 'NO [UNAVAILABLE] later\r\n')), true);
    assert.equal(imapRetryable(new PosternError('PST_CLIENT_LOST')), false);
  });
});
