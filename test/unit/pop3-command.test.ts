/**
 * POP3 command lines as nginx parses them (ngx_mail_pop3_parse_command): verbs, arguments,
 * USER/PASS keeping their spaces, junk refused; read through the line reader at every cutting.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parsePop3Command, type Pop3Command } from '../../src/pop3/command.js';
import { Pop3Book, pop3Mechanisms, refusalLine } from '../../src/pop3/replies.js';
import { LINE_TOO_LONG, LineReader } from '../../src/smtp/line-reader.js';
import { describeCut, pull, splits } from '../helpers/split.js';

const p = (s: string): Pop3Command => parsePop3Command(Buffer.from(s, 'latin1'));
const cmd = (verb: string, ...args: string[]): Pop3Command => ({ kind: 'command', verb, args } as Pop3Command);

describe('POP3 command parser', () => {
  it('verbs in any case, arguments split on runs of spaces', () => {
    assert.deepEqual(p('capa'), cmd('CAPA'));
    assert.deepEqual(p('Auth  PLAIN   dGVzdA=='), cmd('AUTH', 'PLAIN', 'dGVzdA=='));
    assert.deepEqual(p('APOP user 0123'), cmd('APOP', 'user', '0123'));
    assert.deepEqual(p('AUTH PLAIN '), cmd('AUTH', 'PLAIN'));
  });

  it('USER and PASS take the rest of the line as one argument, spaces included (nginx)', () => {
    assert.deepEqual(p('USER  john smith'), cmd('USER', 'john smith'));
    assert.deepEqual(p('PASS a b c '), cmd('PASS', 'a b c '));
    assert.deepEqual(p('PASS'), cmd('PASS'));
    assert.deepEqual(p('PASS   '), cmd('PASS'));
  });

  it('unknown verbs, empty lines, a TAB separator and more than three arguments are invalid', () => {
    for (const line of ['', ' ', 'STAT', 'RETR 1', 'USERX a', 'USER\ta', 'AUTH a b c d', 'XCLIENT ADDR=1.2.3.4', 'GET / HTTP/1.1']) {
      assert.deepEqual(p(line), { kind: 'invalid' }, JSON.stringify(line));
    }
    assert.deepEqual(p('AUTH a b c'), cmd('AUTH', 'a', 'b', 'c'));
  });

  it('NUL, a bare CR, other controls and DEL are bad bytes; 8-bit bytes are arguments', () => {
    for (const line of ['USER a\0b', 'NOOP\r', 'US\rER a', 'PASS \x1b', 'PASS \x7f']) assert.deepEqual(p(line), { kind: 'bad-bytes' }, JSON.stringify(line));
    assert.deepEqual(p('USER j\xf6rg'), cmd('USER', 'j\xf6rg'));
  });

  it('lines read at every cutting parse the same; an overlong line is refused', () => {
    const input = Buffer.from(`CAPA\r\nUSER  a b\r\nPASS x\ny\r\nAUTH PLAIN ${'A'.repeat(40)}\r\n\xff\r\n${'Z'.repeat(70)}\r\nNOOP\r\n`, 'latin1');
    const read = (chunks: Buffer[]): string[] => {
      const out: string[] = [];
      for (const line of pull(new LineReader(64), chunks)) {
        if (line === LINE_TOO_LONG) {
          out.push('too long');
          break;
        }
        out.push(JSON.stringify(parsePop3Command(line)));
      }
      return out;
    };
    const whole = read([input]);
    assert.equal(whole.length, 7);
    assert.equal(whole.at(-1), 'too long');
    for (const chunks of splits(input)) assert.deepEqual(read(chunks), whole, describeCut(chunks));
  });
});

describe('POP3 replies', () => {
  const book = new Pop3Book({ capabilities: ['TOP', 'USER', 'UIDL'], mechanisms: pop3Mechanisms(['plain', 'cram-md5']) });

  it('nginx\'s CAPA variants and the methods list', () => {
    assert.equal(book.capa.toString(), '+OK Capability list follows\r\nTOP\r\nUSER\r\nUIDL\r\nSASL PLAIN LOGIN CRAM-MD5\r\n.\r\n');
    assert.equal(book.capaStls.toString(), '+OK Capability list follows\r\nTOP\r\nUSER\r\nUIDL\r\nSASL PLAIN LOGIN CRAM-MD5\r\nSTLS\r\n.\r\n');
    assert.equal(book.capaStlsOnly.toString(), '+OK Capability list follows\r\nTOP\r\nUIDL\r\nSTLS\r\n.\r\n');
    assert.equal(book.authList.toString(), '+OK methods supported:\r\nPLAIN\r\nLOGIN\r\nCRAM-MD5\r\n.\r\n');
  });

  it('catalogue codes as -ERR lines: nginx\'s internal server error, invalid command, certificate texts', () => {
    assert.equal(book.error('PST_BACKEND_UNREACHABLE').toString(), '-ERR internal server error\r\n');
    assert.equal(book.error('PST_UNKNOWN_COMMAND').toString(), '-ERR invalid command\r\n');
    assert.equal(book.error('PST_TLS_CLIENT_CERT_MISSING').toString(), '-ERR No required SSL certificate\r\n');
    assert.equal(book.error('PST_TLS_CLIENT_CERT_INVALID').toString(), '-ERR SSL certificate error\r\n');
    assert.equal(book.error('PST_CLIENT_LOST').toString(), '-ERR internal server error\r\n');
    assert.equal(book.error('PST_IDLE_TIMEOUT').length, 0);
  });

  it('a refusal is "-ERR <Auth-Status text>" without the SMTP code', () => {
    assert.equal(refusalLine('535 5.7.0 Invalid login').toString(), '-ERR Invalid login\r\n');
    assert.equal(refusalLine('550 No').toString(), '-ERR No\r\n');
    assert.equal(refusalLine('535 5.7.0').toString(), '-ERR Authentication failed\r\n');
    assert.equal(refusalLine('Go away\x07').toString(), '-ERR Go away\r\n');
  });
});
