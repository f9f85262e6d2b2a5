/**
 * Command tokenising, the forbidden-byte check and MAIL/RCPT path parsing under arbitrary input.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { hasForbiddenByte, parseCommand, type Verb } from '../../src/smtp/command.js';
import { parsePathArg, sizeParam } from '../../src/smtp/path.js';
import { buf, bytes, latin1, lineSafe, lineSafeChar } from './arb.js';
import { runs } from './runs.js';

const VERBS = new Set<Verb>(['HELO', 'EHLO', 'MAIL', 'RCPT', 'DATA', 'BDAT', 'RSET', 'NOOP', 'QUIT', 'VRFY', 'EXPN', 'HELP', 'STARTTLS', 'AUTH', 'XCLIENT', 'XFORWARD', 'HTTP', 'UNKNOWN']);
const CONTROL = /[\x00-\x08\x0a-\x1f\x7f]/; // what hasForbiddenByte refuses
const CRLFNUL = /[\r\n\0]/;

/** Command-looking lines: a verb (any case) and an argument, with junk, controls and 8-bit bytes mixed in. */
const commandLine: fc.Arbitrary<Buffer> = fc
  .tuple(
    fc.constantFrom('HELO', 'ehlo', 'MAIL', 'Rcpt', 'DATA', 'BDAT', 'QUIT', 'AUTH', 'STARTTLS', 'XCLIENT', 'GET', 'POST', 'CONNECT', 'VERYLONGVERB', ''),
    fc.constantFrom(' ', '  ', '\t', '', ' \t'),
    fc.oneof(
      fc.constantFrom('FROM:<a@b.example> SIZE=100', 'TO:<c@d>', '/ HTTP/1.1', 'client.example', 'PLAIN AGEAYg==', '5 LAST'),
      latin1(40),
    ),
    fc.constantFrom('', ' ', '\t', ' \t ', '\r', '\0', '\xa0'),
  )
  .map(([v, sep, arg, tail]) => buf(`${v}${sep}${arg}${tail}`));

const anyLine = fc.oneof(commandLine, bytes(80));
const safeLine = fc.oneof(commandLine, bytes(80)).filter((l) => !hasForbiddenByte(l));

describe('fuzz: hasForbiddenByte / parseCommand', () => {
  it('hasForbiddenByte is exactly "some C0 control other than TAB, or DEL"', () => {
    fc.assert(
      fc.property(anyLine, (line) => {
        assert.equal(hasForbiddenByte(line), CONTROL.test(line.toString('latin1')));
      }),
      { numRuns: runs(1000) },
    );
  });

  it('parseCommand never throws; the verb is known, the argument is a trimmed slice of the line', () => {
    fc.assert(
      fc.property(anyLine, (line) => {
        const { verb, arg } = parseCommand(line);
        assert.ok(VERBS.has(verb), `unexpected verb ${verb}`);
        if (verb === 'UNKNOWN') assert.equal(arg, '');
        assert.ok(line.toString('latin1').includes(arg), 'arg is not taken from the line');
        assert.doesNotMatch(arg, /^[ \t]|[ \t]$/, 'arg is not trimmed of SP/HTAB');
      }),
      { numRuns: runs(1000) },
    );
  });

  it('for lines without forbidden bytes, arg never contains CR, LF or NUL', () => {
    fc.assert(
      fc.property(safeLine, (line) => {
        const { arg } = parseCommand(line);
        assert.doesNotMatch(arg, CRLFNUL);
        assert.doesNotMatch(arg, CONTROL);
      }),
      { numRuns: runs(1000) },
    );
  });
});

/** Address-ish text without the characters that change how a path is read. */
const plainAddress = fc.string({ unit: lineSafeChar.filter((c) => !'<>" \t\\\xa0'.includes(c)), maxLength: 30 });
const param = fc.string({ unit: fc.constantFrom(...'ABCXYZ=;+-.0123456789abc'), minLength: 1, maxLength: 12 });

describe('fuzz: parsePathArg / sizeParam', () => {
  it('never throws on any string; an address never contains "<"', () => {
    const arg = fc.oneof(
      latin1(40),
      fc.tuple(fc.constantFrom('FROM:', 'from:', 'TO:', 'To:', 'FROM: ', 'TO:  '), latin1(40)).map(([k, r]) => k + r),
      fc.tuple(fc.constantFrom('FROM:<', 'TO:<', 'TO:<"'), fc.array(fc.constantFrom('<', '>', '"', '\\', ' ', 'a', '@', '\r', '\n', '\0'), { maxLength: 12 })).map(([k, r]) => k + r.join('')),
    );
    fc.assert(
      fc.property(arg, fc.constantFrom('FROM:' as const, 'TO:' as const), (text, kw) => {
        const p = parsePathArg(text, kw);
        if (p !== null) {
          assert.ok(!p.address.includes('<'), `address ${JSON.stringify(p.address)} contains "<"`);
          assert.ok(text.includes(p.address));
        }
      }),
      { numRuns: runs(1000) },
    );
  });

  it('for arguments of checked lines, address and params never contain CR, LF or NUL', () => {
    const arg = fc.oneof(
      lineSafe(40),
      fc.tuple(fc.constantFrom('FROM:', 'TO:', 'FROM:<', 'TO:<', 'FROM: <"'), lineSafe(40)).map(([k, r]) => k + r),
      safeLine.map((l) => parseCommand(l).arg),
    );
    fc.assert(
      fc.property(arg, fc.constantFrom('FROM:' as const, 'TO:' as const), (text, kw) => {
        const p = parsePathArg(text, kw);
        if (p === null) return;
        assert.doesNotMatch(p.address, CRLFNUL);
        assert.doesNotMatch(p.params, CRLFNUL);
        assert.ok(!p.address.includes('<'));
      }),
      { numRuns: runs(1000) },
    );
  });

  it('a well-formed <path> with parameters parses back to its parts', () => {
    fc.assert(
      fc.property(
        fc.constantFrom('FROM:' as const, 'TO:' as const),
        fc.boolean(),
        plainAddress,
        fc.array(param, { maxLength: 4 }),
        (kw, lower, address, params) => {
          const text = `${lower ? kw.toLowerCase() : kw}<${address}>${params.length ? ' ' : ''}${params.join(' ')}`;
          assert.deepEqual(parsePathArg(text, kw), { address, params: params.join(' ') });
        },
      ),
      { numRuns: runs(1000) },
    );
  });

  it('sizeParam never throws: undefined, NaN, or the exact SIZE= value', () => {
    const params = fc.array(
      fc.oneof(param, latin1(12), fc.bigInt({ min: 0n, max: 10n ** 22n }).map((n) => `SIZE=${n}`), fc.constantFrom('SIZE=', 'size=12', 'SIZE=-1', 'SIZE=1e3', 'SIZE= 1')),
      { maxLength: 4 },
    );
    fc.assert(
      fc.property(params, (ps) => {
        const text = ps.join(' ');
        const v = sizeParam(text);
        const first = text.length === 0 ? undefined : text.split(' ').find((p) => p.slice(0, 5).toUpperCase() === 'SIZE=');
        if (first === undefined) assert.equal(v, undefined);
        else if (/^\d{1,20}$/.test(first.slice(5))) assert.equal(v, Number(first.slice(5)));
        else assert.ok(Number.isNaN(v), `SIZE value ${JSON.stringify(first)} gave ${v}`);
      }),
      { numRuns: runs(1000) },
    );
  });
});
