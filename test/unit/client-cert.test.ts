/**
 * The Auth-SSL-* formats against OpenSSL's own output for the same certificates.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { it } from 'node:test';
import { rfc2253, verifyReason } from '../../src/tls/client-cert.js';

const openssl = (args: string[]): string => execFileSync('openssl', args, { encoding: 'utf8' }).trim();

it('rfc2253() matches openssl -nameopt RFC2253, special characters included', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'postern-dn-'));
  const pem = path.join(dir, 'c.pem');
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', path.join(dir, 'c.key'), '-out', pem,
    '-days', '1', '-subj', '/C=DE/O=Acme\\, Inc. + Co/OU=Mail;Relay/CN=Doe\\, John <jd@example.org>']);
  const x = new X509Certificate(readFileSync(pem));
  assert.equal(rfc2253(x.subject), openssl(['x509', '-in', pem, '-noout', '-subject', '-nameopt', 'RFC2253']).replace(/^subject=/, ''));
  const fixture = path.resolve(import.meta.dirname, '../fixtures/tls/client.pem');
  assert.equal(rfc2253(new X509Certificate(readFileSync(fixture)).issuer), openssl(['x509', '-in', fixture, '-noout', '-issuer', '-nameopt', 'RFC2253']).replace(/^issuer=/, ''));
});

it('verify reasons use OpenSSL\'s wording, as nginx reports them', () => {
  assert.equal(verifyReason('CERT_HAS_EXPIRED'), 'certificate has expired');
  assert.equal(verifyReason('DEPTH_ZERO_SELF_SIGNED_CERT'), 'self-signed certificate');
  assert.equal(verifyReason('SOMETHING_NEW'), 'something new');
});
