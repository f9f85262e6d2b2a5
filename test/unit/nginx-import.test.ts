/**
 * `postern import-nginx`: the nginx syntax (quotes, escapes, comments, `${var}`, include, errors
 * with their line), each mail directive's mapping, nginx's mail {} → server {} inheritance, and
 * one "# nginx: … — not carried over" comment per directive without a Postern equivalent.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { configSchema } from '../../src/config/schema.js';
import { convertNginx, ImportError } from '../../src/nginx-import/convert.js';
import { asWritten, NginxSyntaxError, parseNginx, parseNginxFile, variablesOf } from '../../src/nginx-import/parse.js';
import { authHttpUrl, duration, listenAddress, nginxSize, nginxTime, resolverAddress } from '../../src/nginx-import/values.js';
import { renderYaml } from '../../src/nginx-import/yaml.js';

/** nginx text → the YAML import-nginx prints, checked to load through the schema. */
function yamlOf(text: string): string {
  const out = renderYaml(convertNginx(parseNginx(text, 'test.conf'), 'test.conf'));
  parseConfig(out, 'converted.yaml');
  return out;
}

/** The converted configuration as plain data. */
function configOf(text: string): Record<string, unknown> {
  return parseYaml(yamlOf(text)) as Record<string, unknown>;
}

/** A mail {} with one SMTP server around `server` lines, `mail` lines at mail level. */
function mail(server: string, mailLevel = 'auth_http 127.0.0.1:9000/auth;'): string {
  return `mail {\n${mailLevel}\nserver {\nlisten 25;\nsmtp_auth none;\n${server}\n}\n}\n`;
}

function syntaxError(text: string): NginxSyntaxError {
  try {
    parseNginx(text, 'x.conf');
  } catch (err) {
    assert.ok(err instanceof NginxSyntaxError, String(err));
    return err;
  }
  assert.fail(`parsed: ${text}`);
}

/** The comment lines that mention `written` (a directive as written, `;` included). */
function mentions(yaml: string, written: string): string[] {
  return yaml.split('\n').filter((l) => l.trimStart().startsWith(`# nginx: ${written}`));
}

describe('nginx syntax', () => {
  it('directives, blocks and the line of each directive', () => {
    const tree = parseNginx('user nginx;\n\nmail {\n  server {\n    listen\n      25;\n  }\n}\n');
    assert.deepEqual(tree.map((d) => [d.name, d.args, d.line]), [['user', ['nginx'], 1], ['mail', [], 3]]);
    const srv = tree[1]!.block![0]!;
    assert.equal(srv.name, 'server');
    assert.deepEqual(srv.block!.map((d) => [d.name, d.args, d.line]), [['listen', ['25'], 5]]);
  });

  it('quoted strings and escapes, as ngx_conf_read_token', () => {
    const [d] = parseNginx(String.raw`x "a b" 'it\'s' "say \"hi\"" "t\tn\n" "back\\slash" "keep\x" w\;x;`);
    assert.deepEqual(d!.args, ['a b', "it's", 'say "hi"', 't\tn\n', 'back\\slash', 'keep\\x', 'w\\;x']);
    assert.deepEqual(d!.raw.slice(1, 3), ['"a b"', String.raw`'it\'s'`]);
    assert.equal(asWritten(d!).startsWith('x "a b" '), true);
  });

  it('comments, and # inside a word', () => {
    const tree = parseNginx('# head\na b#c; # tail\n# only a comment { ;\nd "e # f";');
    assert.deepEqual(tree.map((d) => [d.name, ...d.args]), [['a', 'b#c'], ['d', 'e # f']]);
  });

  it('${var} braces open no block; variables are found', () => {
    const [d] = parseNginx('auth_http_header X-Host ${host}x $remote_addr;');
    assert.deepEqual(d!.args, ['X-Host', '${host}x', '$remote_addr']);
    assert.deepEqual(variablesOf(d!), ['${host}', '$remote_addr']);
    assert.deepEqual(variablesOf(parseNginx('location ~ .php$ {}')[0]!), []);
  });

  it('errors name the line', () => {
    assert.equal(syntaxError('a;\n}\n').message, 'x.conf:2: unexpected "}"');
    assert.equal(syntaxError('a;\nb c').message, 'x.conf:2: unexpected end of file, expecting ";" or "}"');
    assert.equal(syntaxError('mail {\n server {\n}\n').message, 'x.conf:4: unexpected end of file, expecting "}" (the block opened at line 1)');
    assert.equal(syntaxError('a;\n;').line, 2);
    assert.equal(syntaxError('a;\n\n{').reason, 'unexpected "{"');
    assert.equal(syntaxError('x "a"b;').reason, 'unexpected "b"');
    assert.equal(syntaxError('x\n"open;\n\n').line, 2);
    assert.equal(syntaxError('a {\n b c }').reason, 'unexpected "}"');
  });

  it('include: followed when the file exists relative to the main file, a pattern too; otherwise kept as not followed', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'postern-nginx-'));
    mkdirSync(path.join(dir, 'conf.d'));
    writeFileSync(path.join(dir, 'conf.d', 'a.conf'), 'timeout 5s;\n');
    writeFileSync(path.join(dir, 'conf.d', 'b.conf'), '\nxclient off;\n');
    writeFileSync(path.join(dir, 'smtp.conf'), 'server {\n listen 25;\n}\n');
    writeFileSync(path.join(dir, 'nginx.conf'), 'mail {\n include conf.d/*.conf;\n include smtp.conf;\n include missing.conf;\n}\n');
    const mailBlock = parseNginxFile(path.join(dir, 'nginx.conf'))[0]!.block!;
    assert.deepEqual(mailBlock.map((d) => [d.name, path.basename(d.file), d.line]), [
      ['timeout', 'a.conf', 1], ['xclient', 'b.conf', 2], ['server', 'smtp.conf', 1], ['include', 'nginx.conf', 4],
    ]);
    assert.match(mailBlock[3]!.notFollowed!, /no such file .*missing\.conf/);
    assert.equal(mailBlock[0]!.includedFrom, `${path.join(dir, 'nginx.conf')}:2`);
    writeFileSync(path.join(dir, 'loop.conf'), 'include loop.conf;\n');
    assert.throws(() => parseNginxFile(path.join(dir, 'loop.conf')), /include loop/);
    const out = renderYaml(convertNginx(parseNginxFile(path.join(dir, 'nginx.conf')), path.join(dir, 'nginx.conf')));
    assert.equal(mentions(out, 'include missing.conf; — not followed: no such file').length, 1, out);
  });
});

describe('nginx values', () => {
  it('times, sizes, addresses and URLs', () => {
    assert.equal(nginxTime('60'), 60_000);
    assert.equal(nginxTime('1h30m'), 5_400_000);
    assert.equal(nginxTime('1h 30m'), 5_400_000);
    assert.equal(nginxTime('500ms'), 500);
    assert.equal(nginxTime('1d'), 86_400_000);
    assert.equal(nginxTime('5x'), null);
    assert.equal(nginxTime('5 1s'), null);
    assert.deepEqual([duration(5_400_000), duration(90_000), duration(250), duration(86_400_000)], ['90m', '90s', '250ms', '1d']);
    assert.deepEqual([nginxSize('4k'), nginxSize('1M'), nginxSize('128'), nginxSize('4kb')], [4096, 1 << 20, 128, null]);
    assert.deepEqual(listenAddress('25'), { address: '0.0.0.0:25', port: 25 });
    assert.deepEqual(listenAddress('*:465'), { address: '0.0.0.0:465', port: 465 });
    assert.deepEqual(listenAddress('[::1]:25'), { address: '[::1]:25', port: 25 });
    assert.deepEqual(listenAddress('mx.example.com:25'), { address: 'mx.example.com:25', port: 25 });
    assert.ok('error' in listenAddress('unix:/run/smtp.sock'));
    assert.ok('error' in listenAddress('127.0.0.1'));
    assert.deepEqual(authHttpUrl('localhost:8008/auth.php'), { url: 'http://localhost:8008/auth.php' });
    assert.deepEqual(authHttpUrl('http://10.0.0.1'), { url: 'http://10.0.0.1/' });
    assert.ok('error' in authHttpUrl('unix:/run/auth.sock:/auth'));
    assert.deepEqual(['127.0.0.1', '[::1]', '[::1]:53', '::1', 'dns.example'].map(resolverAddress), ['127.0.0.1', '::1', '[::1]:53', '::1', null]);
  });
});

describe('import-nginx: each mail directive', () => {
  it('the how-to: one server at the top level', () => {
    const c = configOf('user nginx nginx;\nworker_processes 1;\nmail {\n server_name localhost;\n auth_http localhost:8008/a.php;\n server {\n  listen 25;\n  protocol smtp;\n  timeout 5s;\n  proxy on;\n  xclient off;\n  smtp_auth none;\n }\n}\n');
    assert.deepEqual(c, {
      workers: 1, user: 'nginx', group: 'nginx', server_name: 'localhost', listen: ['0.0.0.0:25'], route: { auth_http: { url: 'http://localhost:8008/a.php' } },
      xclient: false, timeouts: { idle: '5s', backend: '5s', handshake: '5s' },
    });
  });

  it('listen ssl, starttls, smtp_auth (nginx default plain login), auth_plaintext where there is no TLS', () => {
    const c = configOf('mail {\n auth_http 127.0.0.1:9/a;\n ssl_certificate c.pem;\n ssl_certificate_key c.key;\n'
      + ' server { listen 465 ssl; }\n server { listen 587; starttls only; }\n server { listen 2525; protocol smtp; smtp_auth login none; }\n}\n');
    assert.deepEqual(c.listen, [
      { address: '0.0.0.0:465', implicit_tls: true, smtp_auth: ['plain', 'login'] },
      { address: '0.0.0.0:587', starttls: 'only', smtp_auth: ['plain', 'login'] },
      { address: '0.0.0.0:2525', smtp_auth: ['login', 'none'], auth_plaintext: true },
    ]);
    assert.deepEqual(c.tls, { certificates: [{ cert: 'c.pem', key: 'c.key' }] });
  });

  it('auth_http with its headers, timeout and client certificates; the proxy flags', () => {
    const c = configOf(mail('auth_http_header X-Auth-Key "s 3";\nauth_http_header X-B 2;\nauth_http_timeout 10s;\nauth_http_pass_client_cert on;\n'
      + 'proxy_pass_error_message on;\nxclient on;\nproxy_smtp_auth on;\nproxy_timeout 1h;'));
    assert.deepEqual(c.route, { auth_http: { url: 'http://127.0.0.1:9000/auth', headers: { 'X-Auth-Key': 's 3', 'X-B': '2' } } });
    assert.deepEqual([c.xclient, c.proxy_smtp_auth, c.proxy_pass_error_message], [true, 'plain', true]);
    assert.deepEqual(c.timeouts, { auth: '10s', relay_idle: '1h' });
    assert.deepEqual(c.tls, { pass_client_cert: true });
  });

  it('smtp_capabilities (SIZE N → max_message_size), smtp_client_buffer, smtp_greeting_delay, max_errors', () => {
    const text = mail('smtp_capabilities PIPELINING "SIZE 1000" CHUNKING 8BITMIME;\nsmtp_client_buffer 8k;\nsmtp_greeting_delay 3s;\nmax_errors 2;');
    const c = configOf(text);
    assert.deepEqual([c.capabilities, c.max_message_size, c.max_line_length, c.greeting_delay, c.max_errors], [['PIPELINING', 'SIZE', '8BITMIME'], 1000, 8192, '3s', 2]);
    assert.equal(mentions(yamlOf(text), 'smtp_capabilities PIPELINING "SIZE 1000" CHUNKING 8BITMIME; — not carried over: CHUNKING').length, 1);
    assert.equal(configOf(mail('smtp_client_buffer 128;')).max_line_length, 512);
    assert.equal(configOf(mail('smtp_greeting_delay 0;')).greeting_delay, '0s');
  });

  it('resolver and resolver_timeout: resolver, and checks.reverse_dns as nginx always looks the client up', () => {
    const text = mail('resolver 127.0.0.53 [::1]:5353 dns.example valid=30s ipv6=off;\nresolver_timeout 500ms;');
    const c = configOf(text);
    assert.deepEqual(c.resolver, { servers: ['127.0.0.53', '[::1]:5353'], deadline: '500ms', timeout: '500ms' });
    assert.deepEqual(c.checks, { reverse_dns: true });
    assert.equal(mentions(yamlOf(text), 'resolver 127.0.0.53 [::1]:5353 dns.example valid=30s ipv6=off; — not carried over: dns.example, valid=30s, ipv6=off').length, 1);
    assert.equal(configOf(mail('resolver off;')).resolver, undefined);
    assert.equal(mentions(yamlOf(mail('resolver_timeout 5s;')), 'resolver_timeout 5s; — not carried over: there is no resolver').length, 1);
  });

  it('the ssl_* directives', () => {
    const text = mail('starttls on;\nssl_certificate a.pem;\nssl_certificate_key a.key;\nssl_certificate b.pem;\nssl_certificate_key b.key;\n'
      + 'ssl_protocols TLSv1 TLSv1.2 TLSv1.3;\nssl_ciphers "HIGH:!aNULL";\nssl_prefer_server_ciphers off;\nssl_session_timeout 1h;\nssl_session_tickets on;\n'
      + 'ssl_verify_client optional_no_ca;\nssl_client_certificate ca.pem;\nssl_trusted_certificate t.pem;\nssl_verify_depth 3;\n'
      + 'ssl_password_file p;\nssl_session_cache none;\nssl_dhparam dh.pem;\nssl_ecdh_curve auto;');
    const c = configOf(text);
    assert.deepEqual(c.tls, {
      certificates: [{ cert: 'a.pem', key: 'a.key' }, { cert: 'b.pem', key: 'b.key' }],
      min_version: 'TLSv1.2', ciphers: 'HIGH:!aNULL', password_file: 'p', session_timeout: '1h', verify_client: 'optional_no_ca', client_ca: 'ca.pem', verify_depth: 3,
    });
    const y = yamlOf(text);
    assert.equal(mentions(y, 'ssl_password_file').length, 0);
    for (const d of ['ssl_protocols TLSv1 TLSv1.2 TLSv1.3;', 'ssl_trusted_certificate t.pem;', 'ssl_session_cache none;', 'ssl_dhparam dh.pem;', 'ssl_ecdh_curve auto;']) {
      assert.equal(mentions(y, `${d} — not carried over:`).length, 1, `${d}\n${y}`);
    }
    assert.equal(mentions(y, 'ssl_prefer_server_ciphers').length + mentions(y, 'ssl_session_tickets').length, 0);
    assert.equal(configOf(mail('ssl_protocols TLSv1.3;')).tls && (configOf(mail('ssl_protocols TLSv1.3;')).tls as { min_version: string }).min_version, 'TLSv1.3');
  });

  it('worker_processes, worker_shutdown_timeout and user from the main context; the rest outside mail {} in one comment', () => {
    const y = yamlOf(`user mail mail;\nworker_processes auto;\nworker_shutdown_timeout 20s;\nerror_log x debug;\nevents { worker_connections 9; }\nhttp { server { listen 80; } }\n${mail('')}`);
    const c = parseYaml(y) as Record<string, unknown>;
    assert.equal(c.workers, 'auto');
    assert.deepEqual(c.timeouts, { shutdown: '20s' });
    assert.match(y, /^# nginx: outside mail \{\} only worker_processes, user, worker_shutdown_timeout are read; ignored: error_log, events \{\}, http \{\}$/m);
    assert.deepEqual([c.user, c.group], ['mail', 'mail']);
    assert.equal(mentions(y, 'user mail mail;').length, 0);
    assert.deepEqual([configOf(`user postern;\n${mail('')}`).user, configOf(`user postern;\n${mail('')}`).group], ['postern', undefined]);
    assert.equal(mentions(yamlOf(`user a b c;\n${mail('')}`), 'user a b c; — not carried over').length, 1);
  });

  it('listen … proxy_protocol with set_real_ip_from; without it a comment; other listen parameters a comment', () => {
    const y = yamlOf(mail('set_real_ip_from 10.0.0.0/8;\nset_real_ip_from 2001:db8::/32;\nproxy_protocol v2;', 'auth_http 127.0.0.1:9/a;').replace('listen 25;', 'listen 25 proxy_protocol backlog=10 so_keepalive=on;'));
    const c = parseYaml(y) as { listen: { proxy_protocol?: boolean }[]; set_real_ip_from: string[]; proxy_protocol: string };
    assert.equal(c.listen[0]!.proxy_protocol, true);
    assert.deepEqual(c.set_real_ip_from, ['10.0.0.0/8', '2001:db8::/32']);
    assert.equal(c.proxy_protocol, 'v2');
    assert.match(y, /backlog has no Postern equivalent; so_keepalive has no Postern equivalent/);
    const n = yamlOf(mail('proxy_protocol on;', 'auth_http 127.0.0.1:9/a;').replace('listen 25;', 'listen 25 proxy_protocol;'));
    assert.equal(mentions(n, 'listen 25 proxy_protocol; — not carried over: proxy_protocol needs set_real_ip_from').length, 1, n);
    assert.equal((parseYaml(n) as { proxy_protocol: string }).proxy_protocol, 'v1');
    assert.equal(mentions(yamlOf(mail('set_real_ip_from unix:;')), 'set_real_ip_from unix:; — not carried over').length, 1);
  });

  it('listen 25 with listen [::]:25 becomes [::]:25 alone (it takes IPv4 too)', () => {
    const y = yamlOf(mail('listen [::]:25;'));
    assert.deepEqual((parseYaml(y) as { listen: unknown }).listen, ['[::]:25']);
    assert.equal(mentions(y, 'listen 25; — merged into [::]:25').length, 1);
  });

  it('variables are kept as written, with a comment', () => {
    const y = yamlOf(mail('auth_http_header X-Client $remote_addr;'));
    assert.match(y, /X-Client: \$remote_addr/);
    assert.equal(mentions(y, "auth_http_header X-Client $remote_addr; — $remote_addr kept as written: nginx's mail module does not expand variables either").length, 1);
  });

  it('directives without an equivalent: one comment each, next to where they would go', () => {
    const y = yamlOf(mail('proxy on;\nproxy_buffer 16k;\nerror_log /var/log/mail.log;\nimap_capabilities IMAP4rev1;\nfrobnicate 1;\ntimeout 1m;\ntimeout 2m;'));
    for (const [d, why] of [['proxy on;', 'it has no effect in nginx either'], ['proxy_buffer 16k;', 'Postern reads back-end replies'], ['error_log /var/log/mail.log;', 'log.level'], ['imap_capabilities IMAP4rev1;', 'IMAP and POP3 are not supported yet'],
      ['frobnicate 1;', 'not a directive of the nginx mail module'], ['timeout 2m;', 'a second timeout']] as const) {
      const m = mentions(y, `${d} — not carried over:`);
      assert.equal(m.length, 1, `${d}\n${y}`);
      assert.ok(m[0]!.includes(why), m[0]);
    }
    // Without the key it would sit next to (xclient), a comment goes to the head of the file.
    assert.match(y, /^# Converted from test\.conf by postern import-nginx\.\n# nginx: proxy on;/);
    assert.deepEqual((parseYaml(y) as { timeouts: unknown }).timeouts, { idle: '1m', backend: '1m', handshake: '1m' });
  });

  it('protocol imap / pop3 servers are one comment each; no SMTP server or no mail {} is an error', () => {
    const y = yamlOf('mail {\n auth_http 127.0.0.1:9/a;\n server { listen 25; smtp_auth none; }\n server { listen 993 ssl; protocol imap; }\n server { listen 110; }\n}\n');
    assert.equal(mentions(y, 'server {} at line 4 (protocol imap, listen 993 ssl;) — not carried over: IMAP and POP3 are not supported yet').length, 1, y);
    assert.equal(mentions(y, 'server {} at line 5 (protocol pop3, listen 110;) — not carried over').length, 1, y);
    assert.throws(() => convertNginx(parseNginx('mail { server { listen 143; } }'), 'a.conf'), (e: unknown) => e instanceof ImportError && /no SMTP server/.test(e.message));
    assert.throws(() => convertNginx(parseNginx('events {}'), 'a.conf'), /no mail \{\} block/);
  });
});

describe('import-nginx: inheritance from mail {}', () => {
  const text = `mail {
  server_name mx.example.com;
  auth_http 127.0.0.1:9000/auth;
  auth_http_header X-Key a;
  timeout 2m;
  ssl_certificate m.pem;
  ssl_certificate_key m.key;
  ssl_session_cache shared:M:1m;
  smtp_auth none;
  starttls on;
  server { listen 25; }
  server { listen 587; starttls only; smtp_auth plain; auth_http_header X-Key b; auth_http_header X-Port 587; timeout 10m; ssl_verify_client optional; ssl_client_certificate ca.pem; }
  server { listen 465 ssl; smtp_auth plain; proxy_buffer 8k; }
}`;

  it('mail-level directives are each server\'s defaults; a server\'s own replace them by name', () => {
    const c = configOf(text) as { servers: Record<string, unknown>[] } & Record<string, unknown>;
    assert.equal(c.server_name, 'mx.example.com');
    assert.deepEqual(c.tls, { certificates: [{ cert: 'm.pem', key: 'm.key' }] });
    // timeout differs in one server, so each states its own (Postern cannot unset an inherited key).
    assert.equal(c.timeouts, undefined);
    // The 465 server differs from the MX only in its listener (proxy_buffer does not carry over): one block.
    assert.equal(c.servers.length, 2);
    const [mx, sub] = c.servers;
    assert.deepEqual(mx!.listen, [{ address: '0.0.0.0:25', starttls: 'on', smtp_auth: ['none'] }, { address: '0.0.0.0:465', implicit_tls: true, smtp_auth: ['plain'] }]);
    assert.deepEqual(mx!.timeouts, { idle: '2m', backend: '2m', handshake: '2m' });
    assert.deepEqual(sub!.listen, [{ address: '0.0.0.0:587', starttls: 'only', smtp_auth: ['plain'] }]);
    // auth_http_header in a server replaces the inherited ones (nginx), so the route is restated whole.
    assert.deepEqual(sub!.route, { auth_http: { url: 'http://127.0.0.1:9000/auth', headers: { 'X-Key': 'b', 'X-Port': '587' } } });
    assert.deepEqual(sub!.timeouts, { idle: '10m', backend: '10m', handshake: '10m' });
    assert.deepEqual(sub!.tls, { verify_client: 'optional', client_ca: 'ca.pem' });
    // Each server as Postern resolves it is the server nginx would run.
    const loaded = parseConfig(yamlOf(text));
    assert.deepEqual(loaded.servers.map((s) => [s.timeouts.idle, s.tls.certificates.length, Object.keys((s.route as { auth_http: { headers: object } }).auth_http.headers)]),
      [[120_000, 1, ['X-Key']], [600_000, 1, ['X-Key', 'X-Port']]]);
  });

  it('a mail-level comment comes once, at the top; a server\'s own in its block', () => {
    const y = yamlOf(text);
    assert.equal(mentions(y, 'ssl_session_cache shared:M:1m; — not carried over').length, 1);
    assert.match(y, /^# nginx: ssl_session_cache.*\ntls:/m);
    assert.match(y, /^ {2}# nginx: proxy_buffer 8k; — not carried over.*\n {2}- listen:\n {6}- address: 0\.0\.0\.0:25/m);
    assert.equal(mentions(y, 'starttls on;').length, 0, y);
  });

  it('servers that differ only in their listeners are one Postern server', () => {
    const c = configOf('mail {\n auth_http 127.0.0.1:9/a;\n server { listen 25; smtp_auth none; starttls on; }\n server { listen 587; smtp_auth plain; starttls only; }\n ssl_certificate a; ssl_certificate_key b;\n}');
    assert.equal(c.servers, undefined);
    assert.deepEqual(c.listen, [{ address: '0.0.0.0:25', starttls: 'on', smtp_auth: ['none'] }, { address: '0.0.0.0:587', starttls: 'only', smtp_auth: ['plain'] }]);
  });
});
