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
    for (const [d, why] of [['proxy on;', 'it has no effect in nginx either'], ['proxy_buffer 16k;', 'Postern reads back-end replies'], ['error_log /var/log/mail.log;', 'log.level'], ['imap_capabilities IMAP4rev1;', 'an IMAP directive: nginx ignores it in an SMTP server too'],
      ['frobnicate 1;', 'not a directive of the nginx mail module'], ['timeout 2m;', 'a second timeout']] as const) {
      const m = mentions(y, `${d} — not carried over:`);
      assert.equal(m.length, 1, `${d}\n${y}`);
      assert.ok(m[0]!.includes(why), m[0]);
    }
    // Without the key it would sit next to (xclient), a comment goes to the head of the file.
    assert.match(y, /^# Converted from test\.conf by postern import-nginx\.\n# nginx: proxy on;/);
    assert.deepEqual((parseYaml(y) as { timeouts: unknown }).timeouts, { idle: '1m', backend: '1m', handshake: '1m' });
  });

  it('no server {} at all or no mail {} is an error', () => {
    assert.throws(() => convertNginx(parseNginx('mail { auth_http 127.0.0.1:9/a; }'), 'a.conf'), (e: unknown) => e instanceof ImportError && /a\.conf: no server \{\} in mail \{\} at line 1/.test(e.message));
    assert.throws(() => convertNginx(parseNginx('mail { server { protocol imap; } }'), 'a.conf'), (e: unknown) => e instanceof ImportError && /no server \{\}/.test(e.message));
    assert.throws(() => convertNginx(parseNginx('events {}'), 'a.conf'), /no mail \{\} block/);
  });
});

/** The comment lines about Postern's xclient in a converted IMAP or POP3 server. */
const xclientNotes = (yaml: string, protocol: string): string[] => mentions(yaml, `protocol ${protocol} — nginx never tells`)
  .filter((l) => l.includes('set xclient: false for nginx\'s behaviour'));

describe('import-nginx: IMAP and POP3 servers', () => {
  it('an nginx-tests IMAP server: imap_auth, imap_capabilities and starttls only', () => {
    const text = 'mail {\n auth_http 127.0.0.1:8080/mail/auth;\n ssl_certificate localhost.crt;\n ssl_certificate_key localhost.key;\n'
      + ' server {\n  listen 127.0.0.1:8143;\n  protocol imap;\n  imap_auth plain login cram-md5;\n  imap_capabilities IMAP4rev1 UIDPLUS;\n  starttls only;\n }\n}\n';
    const y = yamlOf(text);
    assert.deepEqual(parseYaml(y), {
      protocol: 'imap', listen: [{ address: '127.0.0.1:8143', starttls: 'only' }], route: { auth_http: { url: 'http://127.0.0.1:8080/mail/auth' } },
      imap: { capabilities: ['IMAP4rev1', 'UIDPLUS'], auth: ['plain', 'login', 'cram-md5'] }, tls: { certificates: [{ cert: 'localhost.crt', key: 'localhost.key' }] },
    });
    assert.equal(xclientNotes(y, 'imap').length, 1, y);
    assert.match(y, /^# nginx: protocol imap — .*\nprotocol: imap$/m);
    assert.doesNotMatch(y, /not carried over/);
    const [srv] = parseConfig(y).servers;
    assert.deepEqual([srv!.protocol, srv!.xclient, srv!.imap.auth, srv!.imap.capabilities, srv!.listen[0]!.starttls], ['imap', true, ['plain', 'login', 'cram-md5'], ['IMAP4rev1', 'UIDPLUS'], 'only']);
  });

  it('a POP3 server with pop3_auth plain apop; listen … ssl and ssl on are implicit_tls', () => {
    const y = yamlOf('mail {\n auth_http 127.0.0.1:8080/mail/auth;\n ssl_certificate c.pem;\n ssl_certificate_key c.key;\n'
      + ' server { listen 127.0.0.1:8110; protocol pop3; pop3_auth plain apop; pop3_capabilities TOP USER UIDL "EXPIRE 60"; }\n'
      + ' server { listen 127.0.0.1:8995; protocol pop3; ssl on; pop3_auth plain apop; pop3_capabilities TOP USER UIDL "EXPIRE 60"; }\n}\n');
    const c = parseYaml(y) as Record<string, unknown>;
    assert.deepEqual([c.protocol, c.listen, c.pop3], ['pop3', ['127.0.0.1:8110', { address: '127.0.0.1:8995', implicit_tls: true }], { capabilities: ['TOP', 'USER', 'UIDL', 'EXPIRE 60'], auth: ['plain', 'apop'] }]);
    assert.equal(xclientNotes(y, 'pop3').length, 1, y);
    const [srv] = parseConfig(y).servers;
    assert.deepEqual([srv!.protocol, srv!.pop3.auth, srv!.listen.map((l) => l.implicit_tls)], ['pop3', ['plain', 'apop'], [false, true]]);
  });

  it('one mail {} with SMTP, IMAP and POP3 servers: three blocks, each taking only its own protocol\'s directives from mail {}', () => {
    const text = `mail {
  server_name mail.example.com;
  auth_http 127.0.0.1:9000/auth;
  timeout 2m;
  max_errors 5;
  proxy_pass_error_message on;
  ssl_certificate m.pem;
  ssl_certificate_key m.key;
  ssl_session_cache shared:M:1m;
  smtp_auth plain login;
  smtp_capabilities PIPELINING 8BITMIME;
  smtp_client_buffer 8k;
  smtp_greeting_delay 2s;
  xclient off;
  proxy_smtp_auth on;
  resolver 127.0.0.53;
  imap_capabilities IMAP4rev1 IDLE;
  imap_client_buffer 16k;
  pop3_auth plain apop;
  server { listen 587; protocol smtp; starttls only; }
  server { listen 143; protocol imap; starttls on; }
  server { listen 110; protocol pop3; starttls on; }
}`;
    const y = yamlOf(text);
    const c = parseYaml(y) as { servers: Record<string, unknown>[] } & Record<string, unknown>;
    assert.equal(c.servers.length, 3, y);
    // Shared by all three, or only read by SMTP servers: the top level.
    assert.deepEqual([c.server_name, c.max_errors, c.proxy_pass_error_message, c.capabilities, c.proxy_smtp_auth], ['mail.example.com', 5, true, ['PIPELINING', '8BITMIME'], 'plain']);
    assert.deepEqual(c.timeouts, { idle: '2m', backend: '2m', handshake: '2m' });
    const [smtp, imap, pop3] = c.servers;
    assert.deepEqual(smtp, {
      listen: [{ address: '0.0.0.0:587', starttls: 'only', smtp_auth: ['plain', 'login'] }], xclient: false, max_line_length: 8192, greeting_delay: '2s',
      resolver: { servers: ['127.0.0.53'] }, checks: { reverse_dns: true },
    });
    assert.deepEqual(imap, { protocol: 'imap', listen: [{ address: '0.0.0.0:143', starttls: 'on' }], imap: { capabilities: ['IMAP4rev1', 'IDLE'] }, max_line_length: 16384 });
    assert.deepEqual(pop3, { protocol: 'pop3', listen: [{ address: '0.0.0.0:110', starttls: 'on' }], pop3: { auth: ['plain', 'apop'] } });
    // What mail {} sets for one protocol is neither commented per server nor commented as not carried over.
    for (const d of ['smtp_auth', 'smtp_capabilities', 'smtp_client_buffer', 'smtp_greeting_delay', 'xclient', 'proxy_smtp_auth', 'resolver', 'imap_', 'pop3_']) assert.equal(mentions(y, d).length, 0, `${d}\n${y}`);
    assert.equal(mentions(y, 'ssl_session_cache shared:M:1m; — not carried over').length, 1);
    assert.equal(xclientNotes(y, 'imap').length + xclientNotes(y, 'pop3').length, 2);
    assert.match(y, /^ {2}# nginx: protocol imap — .*\n {2}- protocol: imap$/m);
    const loaded = parseConfig(y).servers;
    assert.deepEqual(loaded.map((s) => [s.protocol, s.xclient, s.max_line_length, s.greeting_delay, s.checks.reverse_dns, s.timeouts.idle]), [
      ['smtp', false, 8192, 2000, true, 120_000], ['imap', true, 16384, 0, false, 120_000], ['pop3', true, 4096, 0, false, 120_000]]);
    assert.ok('auth_http' in loaded[0]!.route);
    assert.deepEqual(loaded.map((s) => s.route), [loaded[0]!.route, loaded[0]!.route, loaded[0]!.route]);
  });

  it('ports infer the protocol (110, 995, 143, 993, 25); servers of different protocols are never one block', () => {
    const y = yamlOf('mail {\n auth_http 127.0.0.1:9/a;\n ssl_certificate c; ssl_certificate_key k;\n'
      + ' server { listen 143; starttls on; }\n server { listen 993 ssl; }\n server { listen 110; }\n server { listen 995 ssl; }\n'
      + ' server { listen 25; smtp_auth none; }\n server { listen 2143; protocol imap; }\n server { listen 2110; protocol pop3; }\n}\n');
    const c = parseYaml(y) as { servers: { protocol?: string; listen: unknown[] }[] };
    assert.deepEqual(c.servers.map((s) => [s.protocol ?? 'smtp', s.listen]), [
      ['imap', [{ address: '0.0.0.0:143', starttls: 'on' }, { address: '0.0.0.0:993', implicit_tls: true }, '0.0.0.0:2143']],
      ['pop3', ['0.0.0.0:110', { address: '0.0.0.0:995', implicit_tls: true }, '0.0.0.0:2110']],
      ['smtp', ['0.0.0.0:25']],
    ]);
    assert.doesNotMatch(y, /taken as SMTP/);
    assert.match(yamlOf('mail { auth_http 127.0.0.1:9/a; server { listen 2525; smtp_auth none; } }'), /no protocol and no port that names one .*; taken as SMTP/);
  });

  it('a file of IMAP servers only; imap_* and pop3_* values nginx has but Postern adds itself or refuses', () => {
    const text = 'mail {\n auth_http 127.0.0.1:9/a;\n smtp_auth login;\n pop3_auth apop;\n'
      + ' server {\n  listen 143;\n  imap_capabilities IMAP4rev1 STARTTLS AUTH=PLAIN;\n  imap_capabilities LOGINDISABLED ID;\n  imap_auth plain gssapi;\n  imap_client_buffer 100;\n'
      + '  smtp_greeting_delay 1s;\n  pop3_capabilities TOP;\n }\n}\n';
    const y = yamlOf(text);
    const c = parseYaml(y) as Record<string, unknown>;
    assert.deepEqual([c.protocol, c.imap, c.max_line_length], ['imap', { capabilities: ['IMAP4rev1', 'ID'], auth: ['plain'] }, 512]);
    for (const [d, why] of [
      ['imap_capabilities IMAP4rev1 STARTTLS AUTH=PLAIN;', 'STARTTLS, AUTH=PLAIN (Postern adds STARTTLS, LOGINDISABLED and the AUTH= entries itself'],
      ['imap_capabilities LOGINDISABLED ID;', 'LOGINDISABLED (Postern adds'],
      ['imap_auth plain gssapi;', 'unknown mechanism gssapi (nginx has plain, login, cram-md5, external)'],
      ['smtp_greeting_delay 1s;', 'an SMTP directive: nginx ignores it in an IMAP server too'],
      ['pop3_capabilities TOP;', 'a POP3 directive: nginx ignores it in an IMAP server too'],
      // mail {} level: no server of that protocol to take it.
      ['smtp_auth login;', 'there is no SMTP server {} in this mail {}'],
      ['pop3_auth apop;', 'there is no POP3 server {} in this mail {}'],
    ] as const) {
      const m = mentions(y, `${d} — not carried over: `);
      assert.equal(m.length, 1, `${d}\n${y}`);
      assert.ok(m[0]!.includes(why), m[0]);
    }
    assert.equal(mentions(y, 'imap_client_buffer 100; — raised to 512').length, 1, y);
    const p = yamlOf('mail { auth_http 127.0.0.1:9/a; server { listen 110; pop3_capabilities TOP STLS "SASL PLAIN" UIDL; } }');
    assert.deepEqual((parseYaml(p) as { pop3: unknown }).pop3, { capabilities: ['TOP', 'UIDL'] });
    assert.equal(mentions(p, 'pop3_capabilities TOP STLS "SASL PLAIN" UIDL; — not carried over: STLS, SASL PLAIN (Postern adds the STLS and SASL lines itself').length, 1, p);
    // Without auth_http (nginx refuses it) the server still converts, with a comment.
    assert.match(yamlOf('mail { server { listen 143; } }'), /has no auth_http \(nginx refuses that\)/);
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
