/**
 * Command tokenising (RFC 5321 §4.1.1), the forbidden-byte check that keeps CR/LF/NUL out of
 * every value sent onward, and MAIL/RCPT path + SIZE parsing (RFC 5321 §4.1.2, RFC 1870).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { hasForbiddenByte, parseCommand, type Command } from '../../src/smtp/command.js';
import { parsePathArg, sizeParam } from '../../src/smtp/path.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const cmd = (s: string): Command => parseCommand(b(s));

describe('hasForbiddenByte', () => {
  it('refuses every C0 control except TAB, and DEL', () => {
    for (let byte = 0; byte < 256; byte++) {
      const line = Buffer.from([0x4e, 0x4f, byte, 0x4f, 0x50]);
      const expected = (byte < 0x20 && byte !== 0x09) || byte === 0x7f;
      assert.equal(hasForbiddenByte(line), expected, `byte 0x${byte.toString(16)}`);
    }
  });

  it('finds a forbidden byte at the first and last position', () => {
    assert.equal(hasForbiddenByte(b('\x00HELO x')), true);
    assert.equal(hasForbiddenByte(b('HELO x\r')), true);
    assert.equal(hasForbiddenByte(b('HELO x\n')), true);
  });

  it('accepts ordinary, tabbed, empty and 8-bit lines', () => {
    assert.equal(hasForbiddenByte(b('MAIL FROM:<a@b> SIZE=10')), false);
    assert.equal(hasForbiddenByte(b('MAIL\tFROM:<a@b>')), false);
    assert.equal(hasForbiddenByte(b('')), false);
    assert.equal(hasForbiddenByte(Buffer.from('RCPT TO:<jörg@exämple.de>', 'utf8')), false);
  });
});

describe('parseCommand', () => {
  it('recognises every known verb, case-insensitively', () => {
    const verbs = ['HELO', 'EHLO', 'MAIL', 'RCPT', 'DATA', 'BDAT', 'RSET', 'NOOP', 'QUIT', 'VRFY', 'EXPN', 'HELP', 'STARTTLS', 'AUTH', 'XCLIENT', 'XFORWARD'] as const;
    for (const v of verbs) {
      assert.deepEqual(cmd(v), { verb: v, arg: '' });
      assert.deepEqual(cmd(`${v.toLowerCase()} x`), { verb: v, arg: 'x' });
      const mixed = v.split('').map((c, i) => (i % 2 ? c.toLowerCase() : c)).join('');
      assert.equal(cmd(mixed).verb, v);
    }
  });

  it('splits verb and argument at the first space and trims the argument', () => {
    assert.deepEqual(cmd('MAIL FROM:<a@b> SIZE=100'), { verb: 'MAIL', arg: 'FROM:<a@b> SIZE=100' });
    assert.deepEqual(cmd('EHLO   client.example   '), { verb: 'EHLO', arg: 'client.example' });
    assert.deepEqual(cmd('HELO '), { verb: 'HELO', arg: '' });
    assert.deepEqual(cmd('RCPT TO:<x@y> NOTIFY=NEVER'), { verb: 'RCPT', arg: 'TO:<x@y> NOTIFY=NEVER' });
  });

  it('keeps 8-bit argument bytes round-trippable through latin1', () => {
    const raw = Buffer.from('MAIL FROM:<jörg@exämple.de> SMTPUTF8', 'utf8');
    const { verb, arg } = parseCommand(raw);
    assert.equal(verb, 'MAIL');
    assert.deepEqual(Buffer.from(arg, 'latin1'), raw.subarray(5));
  });

  it('treats unknown words, leading spaces, empty lines and over-long verbs as UNKNOWN with no argument', () => {
    assert.deepEqual(cmd('FOO bar'), { verb: 'UNKNOWN', arg: '' });
    assert.deepEqual(cmd(' HELO x'), { verb: 'UNKNOWN', arg: '' });
    assert.deepEqual(cmd(''), { verb: 'UNKNOWN', arg: '' });
    assert.deepEqual(cmd('ABCDEFGHIJK x'), { verb: 'UNKNOWN', arg: '' });
    assert.deepEqual(cmd('MAILFROM:<a@b>'), { verb: 'UNKNOWN', arg: '' });
    // A TAB is not the verb separator (RFC 5321: SP).
    assert.deepEqual(cmd('EHLO\tx'), { verb: 'UNKNOWN', arg: '' });
  });

  it('recognises an HTTP request line only with a method, a target and HTTP/<digit>', () => {
    assert.deepEqual(cmd('GET / HTTP/1.1'), { verb: 'HTTP', arg: '/ HTTP/1.1' });
    assert.deepEqual(cmd('POST /wp-login.php HTTP/1.0'), { verb: 'HTTP', arg: '/wp-login.php HTTP/1.0' });
    assert.deepEqual(cmd('CONNECT mx.example:25 HTTP/1.1'), { verb: 'HTTP', arg: 'mx.example:25 HTTP/1.1' });
    assert.equal(cmd('head / HTTP/2').verb, 'HTTP');
    for (const m of ['GET', 'POST', 'HEAD', 'PUT', 'DELETE', 'OPTIONS', 'CONNECT', 'PATCH', 'TRACE']) {
      assert.equal(cmd(`${m} /x HTTP/1.1`).verb, 'HTTP', m);
    }
    assert.deepEqual(cmd('GET /'), { verb: 'UNKNOWN', arg: '' });
    assert.deepEqual(cmd('GET'), { verb: 'UNKNOWN', arg: '' });
    assert.deepEqual(cmd('GET / FTP/1.0'), { verb: 'UNKNOWN', arg: '' });
    assert.deepEqual(cmd('FETCH / HTTP/1.1'), { verb: 'UNKNOWN', arg: '' });
  });
});

describe('parsePathArg', () => {
  it('parses a bracketed path and its parameters', () => {
    assert.deepEqual(parsePathArg('FROM:<alice@example.org> SIZE=100 BODY=8BITMIME', 'FROM:'), {
      address: 'alice@example.org',
      params: 'SIZE=100 BODY=8BITMIME',
    });
    assert.deepEqual(parsePathArg('TO:<bob@example.net>', 'TO:'), { address: 'bob@example.net', params: '' });
  });

  it('accepts the null reverse-path', () => {
    assert.deepEqual(parsePathArg('FROM:<>', 'FROM:'), { address: '', params: '' });
    assert.deepEqual(parsePathArg('FROM:<> BODY=7BIT', 'FROM:'), { address: '', params: 'BODY=7BIT' });
  });

  it('is case-insensitive for the keyword and tolerates a space after the colon (Postfix default)', () => {
    assert.deepEqual(parsePathArg('from:<a@b>', 'FROM:'), { address: 'a@b', params: '' });
    assert.deepEqual(parsePathArg('To: <a@b>', 'TO:'), { address: 'a@b', params: '' });
  });

  it('tolerates a path without brackets', () => {
    assert.deepEqual(parsePathArg('FROM:a@b SIZE=5', 'FROM:'), { address: 'a@b', params: 'SIZE=5' });
    assert.deepEqual(parsePathArg('TO:postmaster', 'TO:'), { address: 'postmaster', params: '' });
  });

  it('keeps a source route as typed (RFC 5321 §4.1.1.3: accepted, ignored by the back-end)', () => {
    assert.deepEqual(parsePathArg('TO:<@relay.example:bob@example.net>', 'TO:'), { address: '@relay.example:bob@example.net', params: '' });
  });

  it('accepts a quoted local part with a space (RFC 5321 §4.1.2: Quoted-string, qtextSMTP includes SP)', {
  }, () => {
    assert.deepEqual(parsePathArg('TO:<"john doe"@example.com>', 'TO:'), { address: '"john doe"@example.com', params: '' });
    assert.deepEqual(parsePathArg('FROM:<"a b"@example.com> SIZE=5', 'FROM:'), { address: '"a b"@example.com', params: 'SIZE=5' });
  });

  it('returns null on syntax errors', () => {
    assert.equal(parsePathArg('', 'FROM:'), null);
    assert.equal(parsePathArg('FROM', 'FROM:'), null);
    assert.equal(parsePathArg('FROM:', 'FROM:'), null);
    assert.equal(parsePathArg('FROM:   ', 'FROM:'), null);
    assert.equal(parsePathArg('TO:<a@b>', 'FROM:'), null, 'wrong keyword');
    assert.equal(parsePathArg('FROM <a@b>', 'FROM:'), null, 'missing colon');
    assert.equal(parsePathArg('FROM:<a@b', 'FROM:'), null, 'unclosed bracket');
    assert.equal(parsePathArg('FROM:<a@b>SIZE=1', 'FROM:'), null, 'no space before parameters');
    assert.equal(parsePathArg('FROM:<a<b>', 'FROM:'), null, 'nested bracket');
    assert.equal(parsePathArg('FROM:<a b>', 'FROM:'), null, 'space inside path');
    assert.equal(parsePathArg('FROM:a<b>', 'FROM:'), null);
  });
});

describe('sizeParam (RFC 1870)', () => {
  it('is undefined without parameters or without SIZE', () => {
    assert.equal(sizeParam(''), undefined);
    assert.equal(sizeParam('BODY=8BITMIME'), undefined);
    assert.equal(sizeParam('SIZEX=5'), undefined);
  });

  it('reads the value, case-insensitively, among other parameters', () => {
    assert.equal(sizeParam('SIZE=0'), 0);
    assert.equal(sizeParam('size=10485760'), 10485760);
    assert.equal(sizeParam('BODY=8BITMIME SIZE=500 SMTPUTF8'), 500);
    assert.equal(sizeParam('BODY=8BITMIME  SIZE=5'), 5, 'double space between parameters');
    assert.equal(sizeParam('SIZE=12345678901234567890'), 12345678901234567890, '20 digits is the RFC 1870 maximum');
  });

  it('is NaN for a malformed value', () => {
    assert.ok(Number.isNaN(sizeParam('SIZE=abc')));
    assert.ok(Number.isNaN(sizeParam('SIZE=1x')));
    assert.ok(Number.isNaN(sizeParam('SIZE=-1')));
    assert.ok(Number.isNaN(sizeParam('SIZE=1.5')));
    assert.ok(Number.isNaN(sizeParam('SIZE=123456789012345678901')), '21 digits');
  });

  it('is NaN for an empty value (size-value ::= 1*20DIGIT; Postfix answers 501)', () => {
    assert.ok(Number.isNaN(sizeParam('SIZE=')));
  });
});
