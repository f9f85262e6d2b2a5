/**
 * Server blocks (`servers:`), as nginx's `server {}` inside `mail {}`: each block has its own
 * listeners and may override any per-session setting; what it leaves out it inherits from the
 * top level; errors name the key path inside the block; a file without `servers` keeps loading
 * as one implicit server. Also `proxy_mode`.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, parseConfig } from '../../src/config/load.js';

function problems(yaml: string): string[] {
  try {
    parseConfig(yaml, 'test.yaml');
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.problems;
  }
  assert.fail(`config was accepted:\n${yaml}`);
}

const TWO = `
server_name: mx.example
xclient: true
timeouts: { idle: 1m, backend: 10s }
route: { static: "127.0.0.1:25" }
servers:
  - listen: ["127.0.0.1:2525"]
  - listen: [{ address: "127.0.0.1:2587", smtp_auth: [plain], auth_plaintext: true }]
    server_name: submit.example
    xclient: false
    proxy_mode: transaction
    timeouts: { idle: 30s }
    route: { auth_http: { url: "http://127.0.0.1:9000/auth" } }
`;

describe('servers: nginx-style server blocks', () => {
  it('each block inherits the top level and overrides what it sets', () => {
    const c = parseConfig(TWO);
    assert.equal(c.servers.length, 2);
    const [mx, sub] = c.servers;
    assert.equal(mx!.server_name, 'mx.example');
    assert.equal(mx!.xclient, true);
    assert.equal(mx!.proxy_mode, 'session');
    assert.deepEqual(mx!.route, { static: { host: '127.0.0.1', port: 25 } });
    assert.equal(mx!.timeouts.idle, 60_000);
    assert.equal(sub!.server_name, 'submit.example');
    assert.equal(sub!.xclient, false);
    assert.equal(sub!.proxy_mode, 'transaction');
    assert.ok('auth_http' in sub!.route);
    // Object-valued settings merge one level deep: idle from the block, backend from the top.
    assert.equal(sub!.timeouts.idle, 30_000);
    assert.equal(sub!.timeouts.backend, 10_000);
    assert.deepEqual(sub!.listen[0]!.smtp_auth, ['plain']);
    assert.ok(Object.isFrozen(c.servers) && Object.isFrozen(sub) && Object.isFrozen(sub!.timeouts));
  });

  it('without servers the top level is the one server, unchanged', () => {
    const c = parseConfig('listen: ["127.0.0.1:2525"]\nproxy_mode: transaction\n');
    assert.equal(c.servers.length, 1);
    assert.equal(c.servers[0]!.proxy_mode, 'transaction');
    assert.deepEqual(c.servers[0]!.listen, c.listen);
  });

  it('an error inside a block names its path in the block', () => {
    assert.deepEqual(problems(`servers:\n  - listen: ["127.0.0.1:2525"]\n  - listen: ["127.0.0.1:2526"]\n    route: { auth_http: { url: "ftp://x" } }\n`), [
      'servers.1.route.auth_http.url: Invalid URL',
    ]);
    assert.deepEqual(problems('servers:\n  - listen: ["127.0.0.1:2525"]\n    proxy_mode: sometimes\n'), [
      'servers.0.proxy_mode: Invalid option: expected one of "session"|"transaction"',
    ]);
    assert.deepEqual(problems('servers:\n  - listen: ["127.0.0.1:2525"]\n    workers: 2\n'), ['servers.0: unknown key "workers"']);
  });

  it('protocol imap / pop3: SMTP-only settings are refused by key path; the mailbox settings load with nginx\'s defaults', () => {
    assert.deepEqual(problems('servers:\n  - listen: ["127.0.0.1:2525"]\n  - listen: ["127.0.0.1:2143"]\n    protocol: imap\n    proxy_mode: transaction\n'), [
      'servers.1.proxy_mode: transaction is SMTP\'s (every recipient routed); IMAP and POP3 sessions are relayed after their login',
    ]);
    assert.deepEqual(problems('protocol: pop3\nchecks: { policy: [{ server: "tcp:127.0.0.1:9", stages: [connect, rcpt] }] }\n'), [
      'checks.policy.0.stages: rcpt is an SMTP stage; IMAP and POP3 servers ask policy servers at connect only',
    ]);
    const c = parseConfig('servers:\n  - listen: ["127.0.0.1:2143"]\n    protocol: imap\n    imap: { auth: [plain, login, plain] }\n  - listen: ["127.0.0.1:2110"]\n    protocol: pop3\n', 'test.yaml');
    assert.deepEqual(c.servers.map((x) => x.protocol), ['imap', 'pop3']);
    assert.deepEqual(c.servers[0]!.imap, { capabilities: ['IMAP4', 'IMAP4rev1', 'UIDPLUS'], auth: ['plain', 'login'], backend_login: 'login' });
    assert.deepEqual(c.servers[1]!.pop3, { capabilities: ['TOP', 'USER', 'UIDL'], auth: ['plain'], backend_login: 'user' });
    // A pool reached by a static route is checked in its server's protocol.
    assert.deepEqual(problems('protocol: pop3\npools: { mb: { servers: ["127.0.0.1:110"] } }\nroute: { static: mb }\n'), [
      'route.static: pool "mb" is checked with smtp (health.protocol) but this server speaks pop3: set pools.mb.health.protocol: pop3',
    ]);
    assert.deepEqual(problems('protocol: imap\npools: { mb: { servers: ["127.0.0.1:143"], health: { protocol: imap, starttls: true } } }\nroute: { static: mb }\n'), [
      'pools.mb.health.starttls: the imap check has no STARTTLS; reach the servers with backend_tls.mode: implicit to check them over TLS',
    ]);
    assert.equal(parseConfig('protocol: imap\npools: { mb: { servers: ["127.0.0.1:143"], health: { protocol: imap } } }\nroute: { static: mb }\n', 't.yaml').pools.mb!.health.protocol, 'imap');
    assert.equal(parseConfig('protocol: imap\npools: { mb: { servers: ["127.0.0.1:143"], health: { enabled: false } } }\nroute: { static: mb }\n', 't.yaml').servers[0]!.protocol, 'imap');
    assert.deepEqual(problems('protocol: imap\nimap: { auth: [apop] }\n'), ['imap.auth.0: Invalid option: expected one of "plain"|"login"|"cram-md5"|"external"|"xoauth2"|"oauthbearer"']);
  });

  it('an error in an inherited top-level key is reported once, at the top level', () => {
    const p = problems('timeouts: { idle: never }\nservers:\n  - listen: ["127.0.0.1:2525"]\n  - listen: ["127.0.0.1:2526"]\n');
    assert.deepEqual(p, ['timeouts.idle: not a duration: "never" (use e.g. 250ms, 30s, 5m, 1h)']);
  });

  it('cross-key rules run per block, with the block in the path', () => {
    const p = problems('servers:\n  - listen: ["127.0.0.1:2525"]\n  - listen: [{ address: "127.0.0.1:2587", starttls: on }]\n');
    assert.deepEqual(p, ['servers.1.tls.certificates: a listener uses STARTTLS or implicit TLS, so at least one certificate is needed']);
    const auth = problems('servers:\n  - listen: [{ address: "127.0.0.1:2587", smtp_auth: [plain], auth_plaintext: true }]\n');
    assert.match(auth[0]!, /^servers\.0\.listen\.0\.smtp_auth: AUTH needs route\.auth_http/);
  });

  it('a block needs its own listen, a top-level listen is refused beside servers, an address is bound once', () => {
    assert.deepEqual(problems('servers:\n  - xclient: false\n'), ['servers.0.listen: a server needs its own listen']);
    assert.deepEqual(problems('listen: ["127.0.0.1:25"]\nservers:\n  - listen: ["127.0.0.1:2525"]\n'), [
      'listen: with servers, every server has its own listen (a top-level listen would be ignored)',
    ]);
    assert.deepEqual(problems('servers:\n  - listen: ["127.0.0.1:2525"]\n  - listen: ["127.0.0.1:2526", "127.0.0.1:2525"]\n'), [
      'servers.1.listen.1: 127.0.0.1:2525 is listed twice',
    ]);
    assert.deepEqual(problems('servers: []\n'), ['servers: Too small: expected array to have >=1 items']);
  });
});
