/**
 * The IMAP command reader (nginx's ngx_mail_imap_parse_command; RFC 9051 §4, RFC 7888): every
 * input is fed whole, cut in two at every offset, byte by byte and in fixed reads, and must give
 * the same items each time — literals straddling reads included.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { COMMANDS } from '../../src/imap/dialog.js';
import { ImapReader, type ImapArg, type ReaderItem } from '../../src/imap/reader.js';
import { describeCut, pull, splits } from '../helpers/split.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');

/** One token per item: `cmd tag NAME [args]`, `continue tag`, `invalid tag reason-kind quit`, `too-long tag`. */
function token(i: ReaderItem): string {
  switch (i.kind) {
    case 'command':
      return `cmd ${i.tag} ${i.name} ${JSON.stringify(i.args.map(show))}`;
    case 'continue':
      return `continue ${i.tag}`;
    case 'invalid':
      return `invalid ${i.tag ?? '*'}${i.bytes ? ' bytes' : ''}${i.quit ? ' quit' : ''}`;
    case 'too-long':
      return `too-long ${i.tag ?? '*'}`;
    case 'line':
      return `line ${i.text}`;
  }
}

function show(a: ImapArg): unknown {
  if (a.kind === 'list') return a.items.map(show);
  return a.kind === 'atom' ? a.value : `"${a.value}"`;
}

/** Every cutting of `input` read to the end; asserts they agree and returns the tokens and what is left. */
function read(input: string, max = 200, mode: 'command' | 'line' = 'command'): { items: string[]; rest: string } {
  let first: { items: string[]; rest: string } | null = null;
  for (const chunks of splits(b(input))) {
    const r = new ImapReader(max, COMMANDS);
    const items: string[] = [];
    const reader = { push: (c: Buffer) => r.push(c), next: () => r.next(mode) };
    for (const item of pull(reader, chunks)) {
      items.push(token(item));
      if (item.kind === 'too-long') break;
    }
    const got = { items, rest: items.at(-1)?.startsWith('too-long') ? '' : r.rest().toString('latin1') };
    if (first === null) first = got;
    else assert.deepEqual(got, first, describeCut(chunks));
  }
  return first!;
}

describe('IMAP reader: commands and atoms', () => {
  it('reads a tag, a command name in any case, and atoms', () => {
    assert.deepEqual(read('a01 login user secret\r\nA2 NOOP\r\n').items, ['cmd a01 LOGIN ["user","secret"]', 'cmd A2 NOOP []']);
  });

  it('takes a bare LF as the line end and several spaces between words (nginx)', () => {
    assert.deepEqual(read('1  LOGIN   u  p  \n').items, ['cmd 1 LOGIN ["u","p"]']);
  });

  it('keeps an incomplete command in the reader', () => {
    assert.deepEqual(read('a NOOP\r\nb LOGIN us'), { items: ['cmd a NOOP []'], rest: 'b LOGIN us' });
  });

  it('refuses an unknown command at its name, and skips its line', () => {
    assert.deepEqual(read('a01 INVALID COMMAND WITH ARGUMENTS\r\na02 NOOP\r\n').items, ['invalid a01', 'cmd a02 NOOP []']);
  });

  it('refuses a line without a tag as untagged', () => {
    assert.deepEqual(read('\r\nNOOP\r\n+x NOOP\r\n').items, ['invalid *', 'invalid *', 'invalid *']);
  });

  it('refuses a tag over 32 characters', () => {
    assert.deepEqual(read(`${'t'.repeat(33)} NOOP\r\n${'t'.repeat(32)} NOOP\r\n`).items, ['invalid *', `cmd ${'t'.repeat(32)} NOOP []`]);
  });

  it('takes at most three arguments', () => {
    assert.deepEqual(read('a LOGIN a b c d\r\na LOGIN a b c\r\n').items, ['invalid a', 'cmd a LOGIN ["a","b","c"]']);
  });
});

describe('IMAP reader: quoted strings', () => {
  it('unescapes \\\\ and \\" (nginx-tests: quoted strings)', () => {
    assert.deepEqual(read('a01 LOGIN "te\\\\\\"st@example.com" "se\\\\\\"cret"\r\n').items, ['cmd a01 LOGIN ["\\"te\\\\\\"st@example.com\\"","\\"se\\\\\\"cret\\""]']);
  });

  it('keeps spaces and 8-bit bytes inside quotes', () => {
    assert.deepEqual(read('a LOGIN "a b" "p\xe4ss"\r\n').items, ['cmd a LOGIN ["\\"a b\\"","\\"p\xe4ss\\""]']);
  });

  it('refuses another escape, and CR or LF inside quotes', () => {
    assert.deepEqual(read('a LOGIN "a\\n" p\r\nb LOGIN "a\nc NOOP\r\n').items, ['invalid a', 'invalid b', 'cmd c NOOP []']);
  });

  it('takes an empty quoted password', () => {
    assert.deepEqual(read('a LOGIN u ""\r\n').items, ['cmd a LOGIN ["u","\\"\\""]']);
  });
});

describe('IMAP reader: literals', () => {
  it('stops once at a synchronising literal for + OK, then reads its bytes (nginx-tests: literals)', () => {
    assert.deepEqual(read('a01 LOGIN {18}\r\nte\\"st@example.com {8}\r\nse\\"cret\r\n').items, [
      'continue a01',
      'continue a01',
      'cmd a01 LOGIN ["\\"te\\\\\\"st@example.com\\"","\\"se\\\\\\"cret\\""]',
    ]);
  });

  it('reads non-synchronising literals without stopping (nginx-tests: {18+})', () => {
    assert.deepEqual(read('a01 LOGIN {18+}\r\nte\\"st@example.com {8+}\r\nse\\"cret\r\n').items, ['cmd a01 LOGIN ["\\"te\\\\\\"st@example.com\\"","\\"se\\\\\\"cret\\""]']);
  });

  it('mixes a literal and a quoted string (nginx-tests: backslash in literal)', () => {
    assert.deepEqual(read('a01 LOGIN {18+}\r\nte\\"st@example.com "se\\\\\\"cret"\r\n').items, ['cmd a01 LOGIN ["\\"te\\\\\\"st@example.com\\"","\\"se\\\\\\"cret\\""]']);
  });

  it('carries CR, LF, quotes and spaces in a literal unchanged', () => {
    assert.deepEqual(read('a LOGIN u {6}\r\nx\r\ny"z\r\n').items, ['continue a', 'cmd a LOGIN ["u","\\"x\\r\\ny\\"z\\""]']);
  });

  it('takes an empty literal', () => {
    assert.deepEqual(read('a LOGIN u {0}\r\n\r\n').items, ['continue a', 'cmd a LOGIN ["u","\\"\\""]']);
  });

  it('refuses a literal larger than what is left of max_line_length before reading it', () => {
    // The header alone is complete: the refusal comes without a byte of the literal.
    assert.deepEqual(read('a LOGIN {150}\r\n', 64).items, ['too-long a']);
    assert.deepEqual(read('a LOGIN {50+}\r\n', 64).items, ['too-long a']);
    assert.deepEqual(read(`a LOGIN {40}\r\n${'x'.repeat(40)} p\r\n`, 64).items, ['continue a', 'cmd a LOGIN ["\\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\\"","p"]']);
  });

  it('refuses a malformed literal header and goes on after its line', () => {
    assert.deepEqual(read('a LOGIN {1x}\r\nb LOGIN {}\r\nc LOGIN {12345678901}\r\nd NOOP\r\n').items, ['invalid a', 'invalid b', 'invalid c', 'cmd d NOOP []']);
  });

  it('needs a space or the line end after a literal', () => {
    assert.deepEqual(read('a LOGIN {1+}\r\nxy p\r\nb NOOP\r\n').items, ['invalid a', 'cmd b NOOP []']);
  });

  it('says quit for an invalid line that ends in a non-synchronising literal (nginx-tests: FOOBAR {10+})', () => {
    assert.deepEqual(read('a03 FOOBAR {10+}\r\ntest test \r\na04 NOOP\r\n').items, ['invalid a03 quit', 'invalid test', 'cmd a04 NOOP []']);
  });

  it('does not stop for + OK in an unknown command', () => {
    assert.deepEqual(read('a FOO {5}\r\n').items, ['invalid a']);
  });
});

describe('IMAP reader: lists (ID)', () => {
  it('reads one level of parenthesised list', () => {
    assert.deepEqual(read('a ID ("name" "Thunderbird" "version" NIL)\r\nb ID NIL\r\nc ID ()\r\n').items, [
      'cmd a ID [["\\"name\\"","\\"Thunderbird\\"","\\"version\\"","NIL"]]',
      'cmd b ID ["NIL"]',
      'cmd c ID [[]]',
    ]);
  });

  it('takes literals inside a list', () => {
    assert.deepEqual(read('a ID ("name" {3}\r\nabc)\r\n').items, ['continue a', 'cmd a ID [["\\"name\\"","\\"abc\\""]]']);
  });

  it('refuses nested lists and unclosed ones', () => {
    assert.deepEqual(read('a ID (("x"))\r\nb ID ("x"\r\nc NOOP\r\n').items, ['invalid a', 'invalid b', 'cmd c NOOP []']);
  });
});

describe('IMAP reader: bad bytes and limits', () => {
  it('refuses NUL anywhere, in a literal too, and goes on', () => {
    assert.deepEqual(read('a LOGIN u\0 p\r\nb LOGIN {3+}\r\nu\0v p\r\nc NO\0OP\r\nd NOOP\r\n').items, ['invalid a bytes', 'invalid b bytes', 'invalid c bytes', 'cmd d NOOP []']);
  });

  it('refuses control bytes in atoms and a bare CR', () => {
    assert.deepEqual(read('a LOGIN u\x01 p\r\nb NOOP\rc NOOP\r\nd NOOP\r\n').items, ['invalid a', 'invalid b bytes', 'cmd d NOOP []']);
  });

  it('says too-long for a line over max_line_length, complete or not', () => {
    assert.deepEqual(read(`a LOGIN ${'x'.repeat(70)} p\r\n`, 64).items, ['too-long a']);
    assert.deepEqual(read(`a LOGIN ${'x'.repeat(70)}`, 64).items, ['too-long a']);
    assert.deepEqual(read(`a FOO ${'x'.repeat(70)}\r\n`, 64).items, ['too-long a']);
  });

  it('takes a command of exactly max_line_length bytes', () => {
    const cmd = `a LOGIN u ${'p'.repeat(64 - 12)}\r\n`;
    assert.equal(cmd.length, 64);
    assert.deepEqual(read(cmd, 64).items, [`cmd a LOGIN ["u","${'p'.repeat(52)}"]`]);
  });
});

describe('IMAP reader: SASL lines and STARTTLS', () => {
  it('reads bare lines in line mode, refusing control bytes', () => {
    assert.deepEqual(read('dGVzdA==\r\n*\nAB\x01C\r\n', 200, 'line').items, ['line dGVzdA==', 'line *', 'invalid * bytes']);
  });

  it('discards what is buffered (bytes pipelined after STARTTLS)', () => {
    const r = new ImapReader(200, COMMANDS);
    r.push(b('a STARTTLS\r\nb LOGIN u p\r\n'));
    assert.equal(token(r.next()!), 'cmd a STARTTLS []');
    assert.equal(r.discard(), 13);
    assert.equal(r.next(), null);
    r.push(b('c NOOP\r\n'));
    assert.equal(token(r.next()!), 'cmd c NOOP []');
  });
});
