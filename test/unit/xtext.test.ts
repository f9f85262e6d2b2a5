/**
 * xtext (RFC 3461 §4) for XCLIENT attribute values:
 *   xtext = *( xchar / hexchar ),  xchar = any ASCII CHAR between "!" (33) and "~" (126) except "+" and "=",
 *   hexchar = "+" followed by two upper-case hexadecimal digits.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { unxtext, xtext } from '../../src/smtp/xtext.js';

describe('xtext', () => {
  it('leaves xchars alone', () => {
    assert.equal(xtext('client.example'), 'client.example');
    assert.equal(xtext('[UNAVAILABLE]'), '[UNAVAILABLE]');
    assert.equal(xtext('[TEMPUNAVAIL]'), '[TEMPUNAVAIL]');
    assert.equal(xtext('IPV6:2001:db8::1'), 'IPV6:2001:db8::1');
    assert.equal(xtext('!~"<>@'), '!~"<>@');
    assert.equal(xtext(''), '');
  });

  it('encodes "+" and "=" and everything outside 0x21..0x7E as +XX with upper-case hex', () => {
    assert.equal(xtext('a+b'), 'a+2Bb');
    assert.equal(xtext('a=b'), 'a+3Db');
    assert.equal(xtext('a b'), 'a+20b');
    assert.equal(xtext('x\r\nRCPT TO:<y>'), 'x+0D+0ARCPT+20TO:<y>');
    assert.equal(xtext('\x00'), '+00');
    assert.equal(xtext('\x09'), '+09');
    assert.equal(xtext('\x7f'), '+7F');
    assert.equal(xtext('\xff\xaa'), '+FF+AA');
  });

  it('encodes a Buffer byte for byte (UTF-8 as its bytes)', () => {
    assert.equal(xtext(Buffer.from('jörg', 'utf8')), 'j+C3+B6rg');
    assert.equal(xtext(Buffer.from([0x2b, 0x3d, 0x21, 0x7e])), '+2B+3D!~');
  });

  it('treats a string as latin1 bytes, so a latin1-decoded command argument round-trips', () => {
    const raw = Buffer.from('héllo wörld', 'utf8');
    const asLatin1 = raw.toString('latin1');
    assert.equal(xtext(asLatin1), xtext(raw));
    assert.deepEqual(unxtext(xtext(asLatin1)), raw);
  });

  it('every byte value: output is pure xchar/hexchar text and decodes back exactly', () => {
    const all = Buffer.alloc(256);
    for (let i = 0; i < 256; i++) all[i] = i;
    const enc = xtext(all);
    assert.match(enc, /^(?:[!-*,-<>-~]|\+[0-9A-F]{2})*$/);
    assert.doesNotMatch(enc, /[\x00-\x20\x7f-\uffff]/);
    assert.deepEqual(unxtext(enc), all);
    // Exactly the 94 - 2 xchars are raw: 256 - 92 = 164 bytes become 3 characters each.
    assert.equal(enc.length, 92 + 164 * 3);
  });
});

describe('unxtext', () => {
  it('decodes hexchars and keeps xchars', () => {
    assert.deepEqual(unxtext('a+2Bb+3D+0D+0A'), Buffer.from('a+b=\r\n', 'latin1'));
    assert.deepEqual(unxtext(''), Buffer.alloc(0));
  });

  it('throws on malformed escapes (truncated, non-hex, lower-case hex)', () => {
    assert.throws(() => unxtext('+'), /bad xtext escape at 0/);
    assert.throws(() => unxtext('ab+2'), /bad xtext escape at 2/);
    assert.throws(() => unxtext('+GG'), /bad xtext escape/);
    assert.throws(() => unxtext('+2b'), /bad xtext escape/);
  });
});
