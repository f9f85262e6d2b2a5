/**
 * SASL payload decoding (RFC 4616, RFC 2195, RFC 7628, XOAUTH2) and strict base64 (RFC 4954 §4).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { cramChallenge, decodeBase64, decodeCramMd5, decodeOauthbearer, decodePlain, decodeXoauth2 } from '../../src/smtp/sasl.js';

const b64 = (s: string): string => Buffer.from(s, 'latin1').toString('base64');

describe('SASL decoding', () => {
  it('base64 is strict: no whitespace, no bad padding; "=" is the empty response', () => {
    assert.equal(decodeBase64('YWxpY2U='), 'alice');
    assert.equal(decodeBase64('='), '');
    for (const bad of ['YWxpY2U', 'YWx pY2U=', 'YW=xpY2U', '!!!!', 'YWxpY2U==='] ) assert.equal(decodeBase64(bad), null, bad);
  });

  it('PLAIN: authzid ignored, empty user refused, wrong shape refused', () => {
    assert.deepEqual(decodePlain(b64('admin\0alice\0pw')), { method: 'plain', user: 'alice', pass: 'pw' });
    assert.deepEqual(decodePlain(b64('\0alice\0')), { method: 'plain', user: 'alice', pass: '' });
    assert.equal(typeof decodePlain(b64('\0\0pw')), 'string');
    assert.equal(typeof decodePlain(b64('alice\0pw')), 'string');
    assert.equal(typeof decodePlain(b64('a\0b\0c\0d')), 'string');
  });

  it('CRAM-MD5: user with spaces, 32 hex digits, lower-cased', () => {
    assert.deepEqual(decodeCramMd5(b64(`john doe ${'A'.repeat(32)}`), '<s>'), { method: 'cram-md5', user: 'john doe', pass: 'a'.repeat(32), salt: '<s>' });
    assert.equal(typeof decodeCramMd5(b64(`alice ${'a'.repeat(31)}`), '<s>'), 'string');
    assert.equal(typeof decodeCramMd5(b64('alice'), '<s>'), 'string');
    assert.equal(cramChallenge(12345, 1700000000, 'mx.example'), '<12345.1700000000@mx.example>');
  });

  it('XOAUTH2 and OAUTHBEARER', () => {
    assert.deepEqual(decodeXoauth2(b64('user=alice@x\x01auth=Bearer ya29.tok\x01\x01')), { method: 'xoauth2', user: 'alice@x', pass: 'ya29.tok' });
    assert.equal(typeof decodeXoauth2(b64('user=alice\x01auth=Basic abc\x01\x01')), 'string');
    assert.deepEqual(decodeOauthbearer(b64('n,a=al=2Cice=3D,\x01host=mx\x01port=587\x01auth=Bearer tok\x01\x01')), { method: 'oauthbearer', user: 'al,ice=', pass: 'tok' });
    assert.equal(typeof decodeOauthbearer(b64('n,,\x01auth=Bearer tok\x01\x01')), 'string', 'a user is needed for Auth-User');
    assert.equal(typeof decodeOauthbearer(b64('p=x,a=u,\x01auth=Bearer tok\x01\x01')), 'string');
  });
});
