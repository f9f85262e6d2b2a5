/**
 * A back-end named by a host name that resolves to several addresses (an auth service's
 * Auth-Server, or route.static): each address is tried in turn until one takes the session, and
 * the certificate would still be checked against the name. The resolver is the test's own, so
 * the addresses are known: 127.0.0.2 refuses, 127.0.0.1 has the back-end.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import { parseConfig } from '../../src/config/load.js';
import type { Envelope } from '../../src/domain.js';
import { createLogger } from '../../src/log/logger.js';
import { SmtpProtocol, type Lookup } from '../../src/protocols/smtp.js';
import { FakeBackend } from '../helpers/fake-backend.js';

const env: Envelope = { helo: 'c.test', esmtp: true, mailLine: 'MAIL FROM:<s@x.test>', rcptLine: 'RCPT TO:<r@y.test>', mailFrom: 's@x.test', rcptTo: 'r@y.test', attempt: 1 };
const quiet = createLogger('silent', new Writable({ write: (_c, _e, cb) => cb() }));

function connect(lookup: Lookup, port: number): Promise<{ err: string | null; detail?: string; remote?: string }> {
  const cfg = parseConfig('server_name: px.test\nxclient: false\ntimeouts: { backend: 2s }\n').servers[0]!;
  const smtp = new SmtpProtocol(cfg, quiet, null, lookup);
  return new Promise((resolve) => {
    smtp.connect({ addr: '192.0.2.1', port: 1, name: '[UNAVAILABLE]' }, { kind: 'ok', host: 'mx.test', port }, env, (err, s) => {
      if (err) return resolve({ err: err.code, ...(err.detail ? { detail: err.detail } : {}) });
      const remote = s!.socket.remoteAddress;
      s!.socket.destroy();
      resolve({ err: null, ...(remote ? { remote } : {}) });
    });
  });
}

describe('a back-end host name with several addresses', () => {
  it('is tried address by address: the refused one is skipped, the next takes the session', async () => {
    const b = await FakeBackend.start();
    try {
      const r = await connect((_h, cb) => cb(null, [{ address: '127.0.0.2' }, { address: '127.0.0.1' }]), b.port);
      assert.deepEqual(r, { err: null, remote: '127.0.0.1' });
      assert.equal(b.sessions.length, 1);
    } finally {
      await b.stop();
    }
  });

  it('when every address fails, the client gets the failure and the log names each address', async () => {
    const b = await FakeBackend.start({ greeting: '421 4.3.2 busy' });
    try {
      const r = await connect((_h, cb) => cb(null, [{ address: '127.0.0.2' }, { address: '127.0.0.1' }]), b.port);
      assert.equal(r.err, 'PST_BACKEND_REJECTED');
      assert.match(r.detail!, /^mx\.test\[127\.0\.0\.2\]:\d+ PST_BACKEND_UNREACHABLE .*; mx\.test\[127\.0\.0\.1\]:\d+ PST_BACKEND_REJECTED .*421 4\.3\.2 busy/);
    } finally {
      await b.stop();
    }
  });

  it('a name that does not resolve is PST_ROUTE_RESOLVE', async () => {
    const err = Object.assign(new Error('nx'), { code: 'ENOTFOUND' });
    assert.deepEqual(await connect((_h, cb) => cb(err, []), 25), { err: 'PST_ROUTE_RESOLVE', detail: 'mx.test:25: ENOTFOUND' });
  });
});
