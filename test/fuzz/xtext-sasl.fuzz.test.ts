/**
 * xtext (RFC 3461 §4) and the SASL payload decoders (RFC 4954, 4616, 2195, 7628, XOAUTH2) on arbitrary input.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { decodeBase64, decodeCramMd5, decodeOauthbearer, decodePlain, decodeXoauth2, encodeBase64 } from '../../src/smtp/sasl.js';
import { unxtext, xtext } from '../../src/smtp/xtext.js';
import { b64, bytes, latin1 } from './arb.js';
import { runs } from './runs.js';

describe('fuzz: xtext', () => {
  it('unxtext(xtext(x)) is x for any bytes (Buffer and latin1 string input alike)', () => {
    fc.assert(
      fc.property(bytes(200), (x) => {
        const t = xtext(x);
        assert.deepEqual(unxtext(t), x);
        assert.equal(xtext(x.toString('latin1')), t);
      }),
      { numRuns: runs(1000) },
    );
  });

  it('output holds only 0x21–0x7E, never a raw "=", and "+" only as "+XX"', () => {
    fc.assert(
      fc.property(bytes(200), (x) => {
        const t = xtext(x);
        for (let i = 0; i < t.length; i++) {
          const c = t.charCodeAt(i);
          assert.ok(c >= 0x21 && c <= 0x7e, `char 0x${c.toString(16)} at ${i}`);
        }
        assert.ok(!t.includes('='), 'raw "="');
        assert.doesNotMatch(t, /[ \r\n]/);
        assert.match(t, /^(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*$/);
      }),
      { numRuns: runs(1000) },
    );
  });
});

const B64_ALPHABET = /^[A-Za-z0-9+/=]*$/;

/** Strings around base64: valid encodings, near misses (bad padding, lengths, whitespace) and junk. */
const base64ish = fc.oneof(
  bytes(60).map((x) => x.toString('base64')),
  fc.tuple(bytes(30), fc.nat(), fc.constantFrom(' ', '\r', '\n', '\0', '=', '==', '-', '_', '.', '\xe9', '\u0100', 'A')).map(([x, at, ins]) => {
    const s = x.toString('base64');
    const i = at % (s.length + 1);
    return s.slice(0, i) + ins + s.slice(i);
  }),
  fc.string({ unit: fc.constantFrom(...'AZaz09+/=='), maxLength: 16 }),
  latin1(40),
  fc.string({ maxLength: 20 }),
);

describe('fuzz: SASL decoders', () => {
  it('decodeBase64 matches Buffer\'s base64 for valid input', () => {
    fc.assert(
      fc.property(bytes(120), (x) => {
        assert.equal(decodeBase64(x.toString('base64')), x.toString('latin1'));
        assert.equal(decodeBase64(encodeBase64(x.toString('latin1'))), x.toString('latin1'));
      }),
      { numRuns: runs(1000) },
    );
  });

  it('decodeBase64 returns null for any string with a character outside the base64 alphabet', () => {
    fc.assert(
      fc.property(base64ish, (s) => {
        const out = decodeBase64(s);
        if (!B64_ALPHABET.test(s)) assert.equal(out, null, `${JSON.stringify(s)} decoded to ${JSON.stringify(out)}`);
        // Whatever is accepted is what Buffer reads (except "=", RFC 4954's empty response).
        else if (out !== null && s !== '=') assert.equal(out, Buffer.from(s, 'base64').toString('latin1'));
      }),
      { numRuns: runs(1000) },
    );
  });

  it('no decoder throws on an arbitrary string', () => {
    fc.assert(
      fc.property(base64ish, latin1(20), (s, salt) => {
        for (const r of [decodePlain(s), decodeCramMd5(s, salt), decodeXoauth2(s), decodeOauthbearer(s)]) {
          assert.ok(typeof r === 'string' || (typeof r === 'object' && typeof r.user === 'string' && typeof r.pass === 'string'));
        }
      }),
      { numRuns: runs(1000) },
    );
  });

  it('no decoder throws on base64 of SASL-shaped payloads; well-formed ones decode to their parts', () => {
    const noNul = fc.string({ unit: fc.integer({ min: 1, max: 0xff }).map((c) => String.fromCharCode(c)), maxLength: 20 });
    const noCtrlA = fc.string({ unit: fc.integer({ min: 0, max: 0xff }).filter((c) => c !== 1).map((c) => String.fromCharCode(c)), maxLength: 20 });
    fc.assert(
      fc.property(noNul, noNul, noNul, noCtrlA, noCtrlA, latin1(30), (authz, user, pass, ouser, token, junk) => {
        const plain = decodePlain(b64(`${authz}\0${user}\0${pass}`));
        if (user === '') assert.equal(typeof plain, 'string');
        else assert.deepEqual(plain, { method: 'plain', user, pass });

        // /^Bearer ./ wants a token whose first character is not a line terminator.
        const tokenOk = /^./.test(token);
        if (!ouser.includes('\x01') && !token.includes('\x01') && ouser !== '' && tokenOk) {
          assert.deepEqual(decodeXoauth2(b64(`user=${ouser}\x01auth=Bearer ${token}\x01\x01`)), { method: 'xoauth2', user: ouser, pass: token });
        }
        // RFC 5801 escaping of the authzid: "," as =2C, "=" as =3D.
        if (!/[,=\x01]/.test(ouser) && ouser !== '' && tokenOk) {
          assert.deepEqual(decodeOauthbearer(b64(`n,a=${ouser},\x01auth=Bearer ${token}\x01\x01`)), { method: 'oauthbearer', user: ouser, pass: token });
        }
        for (const payload of [junk, `user=${junk}\x01auth=${junk}`, `n,a=${junk},\x01auth=${junk}\x01`, `${junk} ${'a'.repeat(32)}`, `${authz}\0${junk}`]) {
          for (const r of [decodePlain(b64(payload)), decodeCramMd5(b64(payload), junk), decodeXoauth2(b64(payload)), decodeOauthbearer(b64(payload))]) {
            assert.ok(typeof r === 'string' || typeof r.user === 'string');
          }
        }
      }),
      { numRuns: runs(1000) },
    );
  });
});
