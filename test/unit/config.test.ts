/**
 * Configuration: defaults, the frozen result, unit parsing, and error messages that name the key
 * path (like `nginx -t`), including refusal of unknown keys and of capabilities Postern cannot
 * honour before the hand-off (CHUNKING: Mailu #1766).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ConfigError, loadConfig, parseConfig } from '../../src/config/load.js';
import { parseDuration, parseHostPort, parseSize } from '../../src/config/units.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** The problems of a config that must fail to load. */
function problems(yaml: string): string[] {
  try {
    parseConfig(yaml, 'test.yaml');
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${String(err)}`);
    assert.equal(err.file, 'test.yaml');
    return err.problems;
  }
  assert.fail(`config was accepted:\n${yaml}`);
}

const RESERVED_MESSAGE = 'CHUNKING, STARTTLS, AUTH, XCLIENT, XFORWARD, BDAT cannot be listed: Postern cannot honour them before the hand-off (clients of nginx lost mail this way, Mailu #1766)';

describe('parseConfig defaults', () => {
  it('an empty file gives every default', () => {
    const c = parseConfig('');
    const { server_name, servers, ...rest } = c;
    assert.equal(server_name, os.hostname().replace(/[^A-Za-z0-9.-]/g, '') || 'localhost');
    // Without servers:, the top level is the one (implicit) server.
    const { workers: _w, limits: _l, log: _g, serverBlocks: _s, pools: _p, ...serverPart } = { server_name, ...rest };
    assert.deepEqual(servers, [serverPart]);
    assert.deepEqual(rest, {
      workers: 1,
      protocol: 'smtp',
      imap: { capabilities: ['IMAP4', 'IMAP4rev1', 'UIDPLUS'], auth: ['plain'], backend_login: 'login' },
      pop3: { capabilities: ['TOP', 'USER', 'UIDL'], auth: ['plain'], backend_login: 'user' },
      listen: [{ address: { host: '127.0.0.1', port: 2525 }, starttls: 'off', implicit_tls: false, smtp_auth: ['none'], auth_plaintext: false, proxy_protocol: false }],
      route: { static: { host: '127.0.0.1', port: 25 } },
      xclient: true,
      proxy_smtp_auth: 'off',
      proxy_pass_error_message: false,
      proxy_protocol: 'off',
      set_real_ip_from: [],
      backend_reuse: { enabled: false, idle: 2000, max_sessions: 100, max_age: 300_000, per_backend: 64 },
      capabilities: ['PIPELINING', '8BITMIME', 'SIZE', 'ENHANCEDSTATUSCODES'],
      max_message_size: 10 * 1024 * 1024,
      max_line_length: 4096,
      max_errors: 10,
      require_helo: true,
      greeting_delay: 0,
      auth: { max_attempts: 3, max_failures_per_client: 20, failure_window: 600_000 },
      limits: { max_connections: 20_000, max_connections_per_client: 0, store: 'memory' },
      tls: { certificates: [], min_version: 'TLSv1.2', session_timeout: 300_000, verify_client: 'off', verify_depth: 1, pass_client_cert: false },
      backend_tls: { mode: 'off', verify: true, min_version: 'TLSv1.2' },
      timeouts: { idle: 300_000, auth: 30_000, backend: 30_000, handshake: 30_000, relay_idle: 600_000, shutdown: 30_000, proxy_protocol: 5000 },
      log: { level: 'info', access: true, stdout: true },
      proxy_mode: 'session',
      checks: { reverse_dns: false, policy: [] },
      pools: {},
      serverBlocks: false,
    });
  });

  it('a document with only comments, or an empty mapping, is the same as an empty file', () => {
    const { server_name: _a, servers: _d, ...empty } = parseConfig('');
    const { server_name: _b, servers: _e, ...comments } = parseConfig('# nothing here\n');
    const { server_name: _c, servers: _f, ...braces } = parseConfig('{}');
    assert.deepEqual(comments, empty);
    assert.deepEqual(braces, empty);
  });

  it('partial sections keep the other defaults', () => {
    const c = parseConfig('timeouts:\n  idle: 90\nlog:\n  level: debug\n');
    assert.deepEqual(c.timeouts, { idle: 90_000, auth: 30_000, backend: 30_000, handshake: 30_000, relay_idle: 600_000, shutdown: 30_000, proxy_protocol: 5000 });
    assert.deepEqual(c.log, { level: 'debug', access: true, stdout: true });
  });

  it('auth_http defaults and normalisation', () => {
    const c = parseConfig('route:\n  auth_http:\n    url: "http://127.0.0.1:9000/auth?x=1"\n');
    assert.deepEqual(c.route, {
      auth_http: { url: 'http://127.0.0.1:9000/auth?x=1', headers: {}, max_connections: 64, max_wait_retries: 10, envelope_after_auth: false, max_header_size: 16384 },
    });
  });

  it('a full file is normalised: addresses split, units converted', () => {
    const c = parseConfig(
      [
        'server_name: mx.example',
        'listen: ["[::1]:2525", {address: "0.0.0.0:25"}]',
        'route: {static: "[2001:db8::25]:2525"}',
        'xclient: false',
        'capabilities: [PIPELINING, "SIZE", SMTPUTF8, DSN]',
        'max_message_size: 25MiB',
        'max_line_length: 1k',
        'max_errors: 0',
        'greeting_delay: 250ms',
        'timeouts: {idle: 1.5m, auth: 2s, backend: "45 s", relay_idle: 1h, shutdown: 0}',
      ].join('\n'),
    );
    assert.equal(c.server_name, 'mx.example');
    assert.deepEqual(c.listen, [{ address: { host: '::1', port: 2525 }, starttls: 'off', implicit_tls: false, smtp_auth: ['none'], auth_plaintext: false, proxy_protocol: false }, { address: { host: '0.0.0.0', port: 25 }, starttls: 'off', implicit_tls: false, smtp_auth: ['none'], auth_plaintext: false, proxy_protocol: false }]);
    assert.deepEqual(c.route, { static: { host: '2001:db8::25', port: 2525 } });
    assert.equal(c.xclient, false);
    assert.deepEqual(c.capabilities, ['PIPELINING', 'SIZE', 'SMTPUTF8', 'DSN']);
    assert.equal(c.max_message_size, 26_214_400);
    assert.equal(c.max_line_length, 1024);
    assert.equal(c.max_errors, 0);
    assert.equal(c.greeting_delay, 250);
    assert.deepEqual(c.timeouts, { idle: 90_000, auth: 2000, backend: 45_000, handshake: 30_000, relay_idle: 3_600_000, shutdown: 0, proxy_protocol: 5000 });
  });

  it('the shipped config/postern.yaml loads', () => {
    const c = loadConfig(path.join(ROOT, 'config/postern.yaml'));
    assert.equal(c.server_name, 'postern.localdomain');
    assert.deepEqual(c.route, { static: { host: '127.0.0.1', port: 25 } });
    assert.deepEqual(c.listen, [{ address: { host: '127.0.0.1', port: 2525 }, starttls: 'off', implicit_tls: false, smtp_auth: ['none'], auth_plaintext: false, proxy_protocol: false }]);
  });
});

describe('parseConfig result is deeply frozen', () => {
  it('every nested object and array is frozen and cannot be changed', () => {
    const c = parseConfig('route:\n  auth_http:\n    url: "http://a.example/"\n    headers: {X-Key: k}\n');
    for (const o of [c, c.listen, c.listen[0], c.listen[0]!.address, c.route, c.timeouts, c.log, c.capabilities]) {
      assert.ok(Object.isFrozen(o), JSON.stringify(o));
    }
    assert.ok('auth_http' in c.route);
    if ('auth_http' in c.route) {
      assert.ok(Object.isFrozen(c.route.auth_http));
      assert.ok(Object.isFrozen(c.route.auth_http.headers));
    }
    assert.throws(() => {
      (c as { max_errors: number }).max_errors = 99;
    }, TypeError);
    assert.throws(() => {
      (c.timeouts as { idle: number }).idle = 1;
    }, TypeError);
    assert.throws(() => {
      (c.capabilities as string[]).push('CHUNKING');
    }, TypeError);
    assert.equal(c.max_errors, 10);
  });

  it('freezing one result does not leak into the next parse', () => {
    const a = parseConfig('');
    const b = parseConfig('max_errors: 3\n');
    assert.equal(a.max_errors, 10);
    assert.equal(b.max_errors, 3);
  });
});

describe('parseConfig errors name the key path', () => {
  it('route.auth_http.url', () => {
    assert.deepEqual(problems('route:\n  auth_http:\n    url: "not a url"\n'), ['route.auth_http.url: Invalid URL']);
    assert.deepEqual(problems('route:\n  auth_http:\n    url: "ftp://a.example/"\n'), ['route.auth_http.url: Invalid URL']);
  });

  it('timeouts.idle', () => {
    assert.deepEqual(problems('timeouts:\n  idle: "5 parsecs"\n'), ['timeouts.idle: not a duration: "5 parsecs" (use e.g. 250ms, 30s, 5m, 1h)']);
    assert.deepEqual(problems('timeouts:\n  idle: -1\n'), ['timeouts.idle: not a duration: -1 (use e.g. 250ms, 30s, 5m, 1h)']);
  });

  it('listen.0 and listen.1.address', () => {
    assert.deepEqual(problems('listen:\n  - "nohost"\n'), ['listen.0: expected host:port or [ipv6]:port, got "nohost"']);
    assert.deepEqual(problems('listen:\n  - 127.0.0.1:25\n  - {address: "x:99999"}\n'), ['listen.1.address: expected host:port or [ipv6]:port, got "x:99999"']);
  });

  it('an empty listen list', () => {
    assert.deepEqual(problems('listen: []\n'), ['listen: Too small: expected array to have >=1 items']);
  });

  it('route.static', () => {
    assert.deepEqual(problems('route:\n  static: "10.0.0.1"\n'), ['route.static: expected host:port or [ipv6]:port, got "10.0.0.1"']);
  });

  it('route with both or neither of static/auth_http', () => {
    const msg = 'route: expected exactly one of "static: host:port" (or a pool name), "auth_http: {url: ...}" or "rules: {rules: [...]}"';
    assert.deepEqual(problems('route:\n  static: 1.2.3.4:25\n  auth_http: {url: "http://a/"}\n'), [msg]);
    assert.deepEqual(problems('route: "1.2.3.4:25"\n'), [msg]);
  });

  it('route.auth_http.headers: names and values that could break the HTTP request', () => {
    assert.deepEqual(problems('route:\n  auth_http:\n    url: "http://a/"\n    headers: {"X_Bad": "v"}\n'), ['route.auth_http.headers.X_Bad: Invalid key in record']);
    assert.deepEqual(problems('route:\n  auth_http:\n    url: "http://a/"\n    headers: {"X-Key": "a\\r\\nAuth-Status: OK"}\n'), [
      'route.auth_http.headers.X-Key: header values may not contain control characters',
    ]);
  });

  it('numbers and sizes', () => {
    assert.deepEqual(problems('max_line_length: 100\n'), ['max_line_length: not a size of at least 512 bytes: 100 (use e.g. 4096, 64k, 10MiB)']);
    assert.deepEqual(problems('max_message_size: 10x\n'), ['max_message_size: not a size: "10x" (use e.g. 4096, 64k, 10MiB)']);
    assert.deepEqual(problems('max_errors: -1\n'), ['max_errors: Too small: expected number to be >=0']);
    assert.deepEqual(problems('route:\n  auth_http:\n    url: "http://a/"\n    max_header_size: 100\n'), [
      'route.auth_http.max_header_size: not a size of at least 1024 bytes: 100 (use e.g. 4096, 64k, 10MiB)',
    ]);
  });

  it('server_name must be a host name (it goes into every greeting and EHLO)', () => {
    assert.deepEqual(problems('server_name: "mx.example\\r\\n250 hi"\n'), ['server_name: a host name']);
    assert.deepEqual(problems('server_name: "a b"\n'), ['server_name: a host name']);
  });

  it('every problem is listed, and the message counts them', () => {
    try {
      parseConfig('timeouts:\n  idle: x\n  auth: y\nmax_errors: -3\n', 'multi.yaml');
      assert.fail('accepted');
    } catch (err) {
      assert.ok(err instanceof ConfigError);
      assert.deepEqual(err.problems, [
        'max_errors: Too small: expected number to be >=0',
        'timeouts.idle: not a duration: "x" (use e.g. 250ms, 30s, 5m, 1h)',
        'timeouts.auth: not a duration: "y" (use e.g. 250ms, 30s, 5m, 1h)',
      ]);
      assert.equal(err.message.split('\n')[0], 'multi.yaml: 3 problems');
      for (const p of err.problems) assert.ok(err.message.includes(`\n  ${p}`));
    }
  });

  it('one problem: singular', () => {
    try {
      parseConfig('xclient: maybe\n', 'one.yaml');
      assert.fail('accepted');
    } catch (err) {
      assert.ok(err instanceof ConfigError);
      assert.deepEqual(err.problems, ['xclient: Invalid input: expected boolean, received string']);
      assert.equal(err.message.split('\n')[0], 'one.yaml: 1 problem');
    }
  });
});

describe('parseConfig unknown keys', () => {
  it('at the top level', () => {
    assert.deepEqual(problems('foo: 1\n'), ['(top level): unknown key "foo"']);
    assert.deepEqual(problems('foo: 1\nbar: 2\n'), ['(top level): unknown keys "foo", "bar"']);
  });

  it('nested: the message names the section and the key', () => {
    assert.deepEqual(problems('timeouts:\n  idel: 5s\n'), ['timeouts: unknown key "idel"']);
    assert.deepEqual(problems('log:\n  format: json\n'), ['log: unknown key "format"']);
    assert.deepEqual(problems('log:\n  stdout: false\n'), ['log.stdout: false needs log.file: the records would go nowhere (log.level: silent turns logging off)']);
    assert.deepEqual(problems('route:\n  auth_http:\n    url: "http://a/"\n    timeout: 5s\n'), ['route.auth_http: unknown key "timeout"']);
    assert.deepEqual(problems('listen:\n  - {address: "1.2.3.4:25", ssl: true}\n'), ['listen.0: unknown key "ssl"']);
  });
});

describe('parseConfig capabilities', () => {
  for (const cap of ['CHUNKING', 'chunking', 'BDAT', 'STARTTLS', 'AUTH PLAIN LOGIN', 'XCLIENT', 'XFORWARD NAME ADDR']) {
    it(`refuses ${cap}`, () => {
      assert.deepEqual(problems(`capabilities: [PIPELINING, "${cap}"]\n`), [`capabilities.1: ${RESERVED_MESSAGE}`]);
    });
  }

  it('refuses anything that is not an EHLO keyword line (no CRLF injection into the EHLO reply)', () => {
    assert.deepEqual(problems('capabilities: ["SIZE\\r\\n250 CHUNKING"]\n'), ['capabilities.0: an EHLO keyword with optional parameters']);
    assert.deepEqual(problems('capabilities: ["-BAD"]\n'), ['capabilities.0: an EHLO keyword with optional parameters']);
    assert.deepEqual(problems('capabilities: [""]\n'), ['capabilities.0: an EHLO keyword with optional parameters']);
  });

  it('accepts ordinary extensions, with parameters', () => {
    assert.deepEqual(parseConfig('capabilities: [PIPELINING, "SIZE 1000", SMTPUTF8, "X-EXT a=b"]\n').capabilities, ['PIPELINING', 'SIZE 1000', 'SMTPUTF8', 'X-EXT a=b']);
    assert.deepEqual(parseConfig('capabilities: []\n').capabilities, []);
  });
});

describe('parseConfig YAML-level errors', () => {
  it('syntax errors and duplicate keys are reported with a YAML: prefix', () => {
    const p = problems('a: [\n');
    assert.equal(p.length, 1);
    assert.match(p[0]!, /^YAML: /);
    const d = problems('xclient: true\nxclient: false\n');
    assert.equal(d.length, 1);
    assert.match(d[0]!, /^YAML: Map keys must be unique/);
  });

  it('loadConfig reports an unreadable file as a ConfigError naming it', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'postern-cfg-'));
    try {
      const missing = path.join(dir, 'missing.yaml');
      assert.throws(() => loadConfig(missing), (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        assert.equal(err.file, missing);
        assert.equal(err.problems.length, 1);
        assert.match(err.problems[0]!, /^cannot read: ENOENT/);
        return true;
      });
      const bad = path.join(dir, 'bad.yaml');
      writeFileSync(bad, 'timeouts:\n  idle: soon\n');
      assert.throws(() => loadConfig(bad), (err: unknown) => err instanceof ConfigError && err.file === bad && err.problems[0] === 'timeouts.idle: not a duration: "soon" (use e.g. 250ms, 30s, 5m, 1h)');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('units', () => {
  it('parseDuration: units, bare numbers in seconds, refusals', () => {
    const ok: Array<[string | number, number]> = [
      ['250ms', 250], ['30s', 30_000], ['5m', 300_000], ['1h', 3_600_000], ['1d', 86_400_000],
      ['90', 90_000], [90, 90_000], [0, 0], ['0', 0], [1.5, 1500], ['1.5s', 1500], ['0.5m', 30_000],
      [' 30s ', 30_000], ['5 m', 300_000],
    ];
    for (const [v, ms] of ok) assert.equal(parseDuration(v), ms, JSON.stringify(v));
    for (const v of ['', 'ms', '5 parsecs', '1h30m', '-1s', '5S', '1e3', '.5s', 'Infinity']) assert.equal(parseDuration(v), null, JSON.stringify(v));
    for (const v of [-1, Number.NaN, Number.POSITIVE_INFINITY]) assert.equal(parseDuration(v), null, String(v));
  });

  it('parseSize: nginx-style binary k/m/g, decimal kb/mb/gb, refusals', () => {
    const ok: Array<[string | number, number]> = [
      ['4096', 4096], [4096, 4096], ['4k', 4096], ['4K', 4096], ['4kib', 4096], ['4kb', 4000],
      ['10m', 10_485_760], ['10MiB', 10_485_760], ['10MB', 10_000_000], ['1g', 1_073_741_824], ['1GB', 1_000_000_000],
      ['512b', 512], ['1.5k', 1536], [' 64k ', 65536], ['0', 0],
    ];
    for (const [v, n] of ok) assert.equal(parseSize(v), n, JSON.stringify(v));
    for (const v of ['', 'k', '10x', '-1', '1t', '1 0k']) assert.equal(parseSize(v), null, JSON.stringify(v));
    for (const v of [-1, 1.5, Number.NaN]) assert.equal(parseSize(v), null, String(v));
  });

  it('parseHostPort: host:port and [v6]:port only', () => {
    assert.deepEqual(parseHostPort('127.0.0.1:25'), { host: '127.0.0.1', port: 25 });
    assert.deepEqual(parseHostPort('mx.example:2525'), { host: 'mx.example', port: 2525 });
    assert.deepEqual(parseHostPort('[::1]:25'), { host: '::1', port: 25 });
    assert.deepEqual(parseHostPort('[2001:db8::1]:65535'), { host: '2001:db8::1', port: 65535 });
    assert.deepEqual(parseHostPort(' localhost:1 '), { host: 'localhost', port: 1 });
    for (const v of ['', '127.0.0.1', '127.0.0.1:', ':25', '::1:25', '[::1]', 'h:0', 'h:65536', 'h:123456', 'a b:25', '[nothex]:25', 'h:25x', 'h:-1']) {
      assert.equal(parseHostPort(v), null, JSON.stringify(v));
    }
  });
});

describe('parseConfig cross-key rules', () => {
  it('greeting_delay must be shorter than timeouts.idle', () => {
    assert.throws(() => parseConfig('greeting_delay: 10s\ntimeouts: { idle: 5s }\n'), /greeting_delay: must be shorter than timeouts\.idle/);
  });
  it('the same listen address twice is an error naming the second entry', () => {
    assert.throws(() => parseConfig('listen: ["127.0.0.1:2525", "127.0.0.1:2525"]\n'), /listen\.1: 127\.0\.0\.1:2525 is listed twice/);
  });
  it('workers takes a number or auto', () => {
    assert.equal(parseConfig('workers: auto\n').workers, 'auto');
    assert.equal(parseConfig('workers: 4\n').workers, 4);
    assert.throws(() => parseConfig('workers: 0\n'), /workers/);
  });
});

describe('parseConfig: SMTP AUTH rules', () => {
  const authRoute = 'route: { auth_http: { url: "http://127.0.0.1:9/a" } }\n';
  it('AUTH needs auth_http; starttls only contradicts auth_plaintext; an unusable AUTH-only listener is refused', () => {
    assert.throws(() => parseConfig('listen: [{ address: "127.0.0.1:25", smtp_auth: [plain], auth_plaintext: true }]\n'), /listen\.0\.smtp_auth: AUTH needs route\.auth_http/);
    assert.throws(() => parseConfig(`${authRoute}listen: [{ address: "127.0.0.1:587", starttls: only, smtp_auth: [plain], auth_plaintext: true }]\ntls: { certificates: [{ cert: a, key: b }] }\n`), /listen\.0\.auth_plaintext: contradicts starttls: only/);
    assert.throws(() => parseConfig(`${authRoute}listen: [{ address: "127.0.0.1:587", smtp_auth: [plain] }]\n`), /listen\.0\.smtp_auth: AUTH is required but can never be used here/);
  });
  it('smtp_auth entries are de-duplicated', () => {
    assert.deepEqual(parseConfig(`${authRoute}listen: [{ address: "127.0.0.1:587", smtp_auth: [plain, plain, login], auth_plaintext: true }]\n`).listen[0]!.smtp_auth, ['plain', 'login']);
  });
});
