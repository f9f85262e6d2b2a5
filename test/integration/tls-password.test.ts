/**
 * `tls.password_file` (nginx's `ssl_password_file`): encrypted private keys, one password a line,
 * each tried in turn. What check-config reports (by key path), the re-read on reload, and an
 * implicit-TLS listener serving with the decrypted key. Fixture: test/fixtures/tls/server-enc.key
 * (server.key encrypted with the password "postern-test-key").
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { tlsFileProblems } from '../../src/net/instance.js';
import { TlsContexts, TlsLoadError } from '../../src/tls/contexts.js';
import { startPostern } from '../helpers/postern.js';

const root = path.resolve(import.meta.dirname, '../..');
const FIX = path.join(root, 'test/fixtures/tls');
const CERT = path.join(FIX, 'server.pem');
const ENC_KEY = path.join(FIX, 'server-enc.key');
const PASSWORD = 'postern-test-key';
const tmp = mkdtempSync(path.join(os.tmpdir(), 'postern-tls-pass-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

let n = 0;
function passwordFile(text: string): string {
  const file = path.join(tmp, `pass-${n++}`);
  writeFileSync(file, text, { mode: 0o600 });
  return file;
}

/** The settings of one implicit-TLS listener with `tls` as given. */
function withTls(t: Record<string, unknown>): Record<string, unknown> {
  return { server_name: 'proxy.test', listen: [{ address: '127.0.0.1:0', implicit_tls: true }], tls: t };
}

const problemsOf = (settings: Record<string, unknown>): string[] => tlsFileProblems(parseConfig(stringify(settings)));

describe('tls.password_file', () => {
  it('the fixture is an encrypted key', () => {
    assert.match(readFileSync(ENC_KEY, 'latin1'), /^-----BEGIN ENCRYPTED PRIVATE KEY-----$/m);
  });

  it('the right password among several lines (CRLF, empty lines) decrypts the key', () => {
    const file = passwordFile(`wrong-one\r\n\nnot-this-either\n${PASSWORD}\r\nlast\n`);
    assert.deepEqual(problemsOf(withTls({ certificates: [{ cert: CERT, key: ENC_KEY }], password_file: file })), []);
    // The last line needs no newline.
    assert.deepEqual(problemsOf(withTls({ certificates: [{ cert: CERT, key: ENC_KEY }], password_file: passwordFile(`x\n${PASSWORD}`) })), []);
  });

  it('no password decrypts it: the key path is named', () => {
    const file = passwordFile('wrong-one\nwrong-two\n');
    assert.deepEqual(problemsOf(withTls({ certificates: [{ cert: CERT, key: ENC_KEY }], password_file: file })),
      ['tls.certificates.0.key: no password in tls.password_file decrypts it']);
    // In a server block, with the block's prefix; the second certificate is the encrypted one.
    const blocks = {
      server_name: 'proxy.test',
      servers: [
        { listen: ['127.0.0.1:0'] },
        { listen: [{ address: '127.0.0.1:0', implicit_tls: true }], tls: { certificates: [{ cert: path.join(FIX, 'server2.pem'), key: path.join(FIX, 'server2.key') }, { cert: CERT, key: ENC_KEY }], password_file: file } },
      ],
    };
    assert.deepEqual(problemsOf(blocks), ['servers.1.tls.certificates.1.key: no password in tls.password_file decrypts it']);
  });

  it('a missing or empty password file is named once; an encrypted key without one says so', () => {
    const missing = path.join(tmp, 'no-such-file');
    assert.deepEqual(problemsOf(withTls({ certificates: [{ cert: CERT, key: ENC_KEY }], password_file: missing })), [`tls.password_file: cannot read ${missing}: ENOENT`]);
    const empty = passwordFile('\n\r\n');
    assert.deepEqual(problemsOf(withTls({ certificates: [{ cert: CERT, key: ENC_KEY }], password_file: empty })), [`tls.password_file: ${empty} has no password (one a line)`]);
    assert.deepEqual(problemsOf(withTls({ certificates: [{ cert: CERT, key: ENC_KEY }] })), ['tls.certificates.0.key: the key is encrypted: set tls.password_file']);
  });

  it('unencrypted keys are used as they are, with or without a password file', () => {
    const file = passwordFile(`${PASSWORD}\n`);
    assert.deepEqual(problemsOf(withTls({ certificates: [{ cert: CERT, key: path.join(FIX, 'server.key') }, { cert: CERT, key: ENC_KEY }], password_file: file })), []);
  });

  it('is read again on reload: a password file that no longer decrypts the key refuses the reload, the contexts stay', () => {
    const file = passwordFile(`${PASSWORD}\n`);
    const config = parseConfig(stringify(withTls({ certificates: [{ cert: CERT, key: ENC_KEY }], password_file: file })));
    const contexts = new TlsContexts(config.servers[0]!.tls);
    const before = contexts.defaultContext;
    writeFileSync(file, 'changed\n');
    assert.throws(() => contexts.reload(), (e: unknown) => e instanceof TlsLoadError && e.problems.join() === 'tls.certificates.0.key: no password in tls.password_file decrypts it');
    assert.equal(contexts.defaultContext, before);
    writeFileSync(file, `new-first\n${PASSWORD}\n`);
    contexts.reload();
    assert.notEqual(contexts.defaultContext, before);
  });

  it('postern check-config: the wrong password fails with the key path', async () => {
    const file = path.join(tmp, 'check.yaml');
    writeFileSync(file, stringify(withTls({ certificates: [{ cert: CERT, key: ENC_KEY }], password_file: passwordFile('nope\n') })));
    const r = await promisify(execFile)(process.execPath, ['--import', 'tsx', path.join(root, 'src/cli.ts'), 'check-config', '--config', file], { cwd: root })
      .then(() => ({ code: 0, stderr: '' }), (e: { code: number; stderr: string }) => ({ code: e.code, stderr: e.stderr }));
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^ {2}tls\.certificates\.0\.key: no password in tls\.password_file decrypts it$/m);
  });

  it('implicit TLS is served with the decrypted key', async () => {
    const file = passwordFile(`first-wrong\n${PASSWORD}\n`);
    const p = await startPostern({ ...withTls({ certificates: [{ cert: CERT, key: ENC_KEY }], password_file: file }), route: { static: '127.0.0.1:9' } });
    try {
      const { greeting, cert } = await new Promise<{ greeting: string; cert: tls.PeerCertificate }>((resolve, reject) => {
        const s = tls.connect({ host: '127.0.0.1', port: p.port, servername: 'proxy.test', ca: readFileSync(path.join(FIX, 'ca.pem')) });
        s.setTimeout(5000, () => s.destroy(new Error('no greeting')));
        s.once('error', reject);
        s.once('data', (d: Buffer) => {
          resolve({ greeting: d.toString('latin1').split('\r\n')[0]!, cert: s.getPeerCertificate() });
          s.end('QUIT\r\n');
        });
      });
      assert.equal(greeting, '220 proxy.test ESMTP ready');
      assert.equal(cert.fingerprint256, new X509Certificate(readFileSync(CERT)).fingerprint256);
    } finally {
      await p.stop();
    }
  });
});
