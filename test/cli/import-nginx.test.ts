/**
 * `postern import-nginx FILE` as an admin runs it: on the reference configurations
 * (test/fixtures/nginx/, copied from the project's reference material so a clean clone has
 * them) and on every ```nginx example in the docs, the output loads through the schema and names
 * each directive that did not carry over exactly once; syntax errors exit 1 naming the line.
 * Where nginx and its mail module are installed, the converted configuration run by Postern sends
 * the auth service the same request headers as nginx does for the same session.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { parse as parseYaml } from 'yaml';
import { ConfigError, parseConfig } from '../../src/config/load.js';
import { asWritten, parseNginx, type Directive } from '../../src/nginx-import/parse.js';
import { AuthStub } from '../helpers/auth-stub.js';
import { startPostern } from '../helpers/postern.js';
import { hello, toRcpt } from '../helpers/preamble.js';

const run = promisify(execFile);
const root = path.resolve(import.meta.dirname, '../..');
const fixtures = path.join(root, 'test/fixtures/nginx');
const dir = mkdtempSync(path.join(os.tmpdir(), 'postern-import-'));

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, ['--import', 'tsx', path.join(root, 'src/cli.ts'), ...args], { cwd: root });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/**
 * Directives that have no Postern equivalent, by the test's own list (not the converter's):
 * each must be named once in a "# nginx: … — not carried over" comment. So must a directive of
 * one protocol written in a server {} of another (nginx ignores it there), but not one that
 * mail {} sets for a protocol (the servers of that protocol take it).
 */
const UNSUPPORTED = new Set(['proxy', 'proxy_buffer', 'error_log', 'ssl_prefer_server_ciphers',
  'ssl_session_cache', 'ssl_session_ticket_key', 'ssl_dhparam', 'ssl_ecdh_curve', 'ssl_conf_command', 'ssl_crl',
  'ssl_certificate_compression']);

const PORTS: Record<string, string> = { 25: 'smtp', 465: 'smtp', 587: 'smtp', 143: 'imap', 993: 'imap', 110: 'pop3', 995: 'pop3' };

function protocolOf(server: Directive): string {
  const own = server.block!;
  const port = (l: Directive): string => /(\d+)$/.exec(l.args[0] ?? '')?.[1] ?? '';
  return own.find((y) => y.name === 'protocol')?.args[0] ?? own.filter((y) => y.name === 'listen').map((l) => PORTS[port(l)]).find(Boolean) ?? 'smtp';
}

function directiveProtocol(name: string): string | null {
  const m = /^(smtp|imap|pop3)_/.exec(name);
  return m ? m[1]! : ['xclient', 'resolver', 'resolver_timeout'].includes(name) ? 'smtp' : null;
}

function unsupportedIn(tree: Directive[]): string[] {
  const out: string[] = [];
  for (const d of tree) {
    if (d.name !== 'mail' || !d.block) continue;
    const walk = (ds: Directive[], protocol: string | null): void => {
      for (const x of ds) {
        const p = directiveProtocol(x.name);
        if (x.name === 'server' && x.block) walk(x.block, protocolOf(x));
        else if (x.block) walk(x.block, protocol);
        else if ((UNSUPPORTED.has(x.name) && !(x.name === 'ssl_prefer_server_ciphers' && x.args[0] === 'off'))
          || (protocol !== null && p !== null && p !== protocol) || (x.name === 'listen' && x.args.slice(1).some((a) => a !== 'ssl'))) out.push(asWritten(x));
      }
    };
    walk(d.block, null);
  }
  return out;
}

/** Converts `file` with the CLI and checks what every conversion must hold; returns the YAML. */
async function convertsCleanly(file: string): Promise<string> {
  const r = await cli(['import-nginx', file]);
  assert.equal(r.code, 0, `${file}: ${r.stderr}`);
  assert.doesNotThrow(() => parseConfig(r.stdout, file), (e: unknown) => (e instanceof ConfigError ? e.message : String(e)));
  const comments = r.stdout.split('\n').filter((l) => /^\s*# nginx: /.test(l));
  for (const d of unsupportedIn(parseNginx(readFileSync(file, 'utf8'), file, { followIncludes: false }))) {
    const hits = comments.filter((l) => l.includes(`# nginx: ${d}`) && l.includes(' — not carried over:'));
    assert.equal(hits.length, 1, `${path.basename(file)}: ${d} is named ${hits.length} times:\n${r.stdout}`);
  }
  const dropped = comments.filter((l) => l.includes('— not carried over:')).length;
  if (dropped) assert.match(r.stderr, new RegExp(`${dropped} directives? not carried over`));
  return r.stdout;
}

describe('postern import-nginx on the reference configurations', () => {
  const confs = readdirSync(fixtures).filter((f) => f.endsWith('.conf')).sort();

  it('has the reference configurations', () => {
    assert.ok(confs.includes('reverse-smtp-howto.conf'), confs.join());
    const shared = '/work/shared/reference/nginx-configs';
    // Where the reference directory exists, the copies are current.
    if (existsSync(shared)) for (const f of readdirSync(shared)) assert.equal(readFileSync(path.join(fixtures, f), 'utf8'), readFileSync(path.join(shared, f), 'utf8'), f);
  });

  for (const f of confs) {
    it(`${f}: valid Postern YAML, every unsupported directive named once`, async () => {
      await convertsCleanly(path.join(fixtures, f));
    });
  }

  it('reverse-smtp-howto.conf: the MX on port 25 with its auth_http and timeouts; postern check-config accepts it', async () => {
    const yaml = await convertsCleanly(path.join(fixtures, 'reverse-smtp-howto.conf'));
    assert.deepEqual(parseYaml(yaml), {
      workers: 1, user: 'nginx', group: 'nginx', server_name: 'localhost', listen: ['0.0.0.0:25'], route: { auth_http: { url: 'http://localhost:8008/auth-smtppass.php' } },
      xclient: false, timeouts: { idle: '5s', backend: '5s', handshake: '5s' },
    });
    assert.match(yaml, /^# nginx: outside mail \{\} only worker_processes, user, worker_shutdown_timeout are read; ignored: error_log, events \{\}, http \{\}$/m);
    assert.match(yaml, /# nginx: proxy on; — not carried over: it has no effect in nginx either/);
    assert.match(yaml, /Auth-Server and Auth-Port 127\.0\.0\.1:25, use route: \{static: "127\.0\.0\.1:25"\} instead/);
    const file = path.join(dir, 'howto.yaml');
    writeFileSync(file, yaml);
    const r = await cli(['check-config', '--config', file]);
    // `user nginx nginx` carries over; check-config checks that they exist, as nginx -t does (Debian's nginx runs as www-data).
    const missing = ['user: no such user "nginx"', 'group: no such group "nginx"'].filter((p) => r.stderr.includes(p));
    if (missing.length === 0) assert.equal(r.code, 0, r.stderr);
    else assert.deepEqual([r.code, r.stderr.split('\n').filter((l) => l.startsWith('  ')).map((l) => l.trim())], [1, missing]);
  });

  it('nginx-org-example.conf: its two SMTP servers are one, AUTH in the clear as nginx; the POP3 and IMAP servers are blocks of their own', async () => {
    const yaml = await convertsCleanly(path.join(fixtures, 'nginx-org-example.conf'));
    const c = parseYaml(yaml) as { servers: Record<string, unknown>[] } & Record<string, unknown>;
    const listener = (address: string): unknown => ({ address, smtp_auth: ['login', 'plain', 'cram-md5'], auth_plaintext: true });
    assert.equal(c.servers.length, 3);
    const [smtp, pop3, imap] = c.servers;
    assert.deepEqual(smtp, { listen: [listener('0.0.0.0:25'), listener('0.0.0.0:587')], xclient: false });
    assert.deepEqual([c.capabilities, c.max_message_size], [['SIZE', 'ENHANCEDSTATUSCODES', '8BITMIME', 'DSN'], 10485760]);
    assert.deepEqual(pop3, { protocol: 'pop3', listen: ['0.0.0.0:110'], proxy_pass_error_message: true,
      pop3: { capabilities: ['LAST', 'TOP', 'USER', 'PIPELINING', 'UIDL'], auth: ['plain', 'apop', 'cram-md5'] } });
    assert.deepEqual(imap, { protocol: 'imap', listen: ['0.0.0.0:143'], imap: { capabilities: ['IMAP4rev1', 'UIDPLUS', 'IDLE', 'LITERAL+', 'QUOTA'] } });
    // nginx's xclient is SMTP's: the IMAP and POP3 blocks say that Postern's (on by default) is not.
    for (const p of ['imap', 'pop3']) assert.equal(yaml.split('\n').filter((l) => l.startsWith(`  # nginx: protocol ${p} — nginx never tells`) && l.includes('set xclient: false')).length, 1, p);
    assert.doesNotMatch(yaml, /not supported yet|# nginx: (imap|pop3)_|# nginx: smtp_capabilities/);
    const loaded = parseConfig(yaml, 'org.yaml').servers;
    const url = (r: unknown): unknown => (r as { auth_http?: { url: string } }).auth_http?.url;
    assert.deepEqual(loaded.map((s) => [s.protocol, s.xclient, url(s.route)]), ['smtp', 'pop3', 'imap'].map((p) => [p, p !== 'smtp', 'http://localhost:9000/cgi-bin/nginxauth.cgi']));
  });

  it('mail-servers.conf: SMTP, IMAP and POP3 blocks; check-config finds only the certificate files that are not on this machine', async () => {
    const file = path.join(dir, 'servers.yaml');
    const yaml = await convertsCleanly(path.join(fixtures, 'mail-servers.conf'));
    writeFileSync(file, yaml);
    const servers = parseConfig(yaml, file).servers;
    const hostPort = ({ host, port }: { host: string; port: number }): string => `${host.includes(':') ? `[${host}]` : host}:${port}`;
    assert.deepEqual(servers.map((s) => [s.protocol, s.listen.map((l) => `${hostPort(l.address)}${l.implicit_tls ? ' tls' : ''}${l.starttls === 'off' ? '' : ` ${l.starttls}`}`), s.max_line_length]), [
      ['smtp', ['[::]:25 on'], 8192], ['smtp', ['0.0.0.0:587 only'], 8192], ['smtp', ['0.0.0.0:465 tls'], 8192],
      ['imap', ['0.0.0.0:993 tls'], 16384], ['imap', ['0.0.0.0:143 only'], 16384], ['pop3', ['0.0.0.0:110 on', '0.0.0.0:995 tls'], 4096]]);
    assert.deepEqual(servers.slice(3).map((s) => [s.xclient, s.imap.auth, s.imap.capabilities, s.pop3.auth, s.pop3.capabilities, s.checks.reverse_dns, s.timeouts.idle]), [
      [true, ['plain'], ['IMAP4rev1', 'UIDPLUS', 'IDLE', 'LITERAL+'], ['plain'], ['TOP', 'USER', 'UIDL'], false, 120_000],
      [true, ['plain', 'login', 'cram-md5'], ['IMAP4rev1', 'UIDPLUS', 'IDLE', 'LITERAL+'], ['plain'], ['TOP', 'USER', 'UIDL'], false, 120_000],
      [true, ['plain'], ['IMAP4', 'IMAP4rev1', 'UIDPLUS'], ['plain', 'apop'], ['TOP', 'USER', 'UIDL', 'EXPIRE 60'], false, 120_000]]);
    const r = await cli(['check-config', '--config', file]);
    assert.equal(r.code, 1);
    const problems = r.stderr.split('\n').filter((l) => l.startsWith('  '));
    assert.ok(problems.length > 0 && problems.every((l) => /cannot read \/etc\/ssl\//.test(l)), r.stderr);
  });
});

describe('postern import-nginx on the docs\' nginx examples', () => {
  const docs = [path.join(root, 'README.md'), ...readdirSync(path.join(root, 'docs')).filter((f) => f.endsWith('.md')).map((f) => path.join(root, 'docs', f))];
  // Each ```nginx block, and the ```yaml block right after it when that one is its output ("# Converted from").
  const blocks = docs.flatMap((f) => [...readFileSync(f, 'utf8').matchAll(/^```nginx\n([\s\S]*?)^```$(?:\n[^`]*?^```yaml\n(# Converted from [\s\S]*?)^```$)?/gm)]
    .map((m, i) => ({ doc: path.basename(f), i, text: m[1]!, output: m[2] })));

  it('the docs have nginx examples, one with its output', () => {
    assert.ok(blocks.length > 0);
    assert.ok(blocks.some((b) => b.output !== undefined));
  });

  for (const b of blocks) {
    it(`${b.doc}, nginx example ${b.i + 1}`, async () => {
      // A snippet of mail {} contents is converted as the mail {} block it belongs in.
      const text = /^\s*mail\s*\{/m.test(b.text) ? b.text : `mail {\n${b.text}\n}\n`;
      const file = path.join(mkdtempSync(path.join(dir, `${b.doc}-${b.i}-`)), 'nginx.conf');
      writeFileSync(file, text);
      const yaml = await convertsCleanly(file);
      if (b.output !== undefined) assert.equal(yaml, b.output);
    });
  }
});

describe('postern import-nginx errors', () => {
  it('a syntax error: exit 1, the file and line on stderr, nothing on stdout', async () => {
    const file = path.join(dir, 'broken.conf');
    writeFileSync(file, 'mail {\n  server {\n    listen 25\n  }\n}\n');
    const r = await cli(['import-nginx', file]);
    assert.deepEqual([r.code, r.stdout], [1, '']);
    assert.equal(r.stderr, `postern: import-nginx: ${file}:4: unexpected "}"\n`);
  });

  it('no mail {}, a missing file, no file: exit 1, 1, 2', async () => {
    const file = path.join(dir, 'http-only.conf');
    writeFileSync(file, 'events {}\nhttp {}\n');
    assert.deepEqual(await cli(['import-nginx', file]), { code: 1, stdout: '', stderr: `postern: import-nginx: ${file}: no mail {} block\n` });
    assert.equal((await cli(['import-nginx', path.join(dir, 'nope.conf')])).code, 1);
    assert.equal((await cli(['import-nginx'])).code, 2);
  });

  it('--help lists the command', async () => {
    assert.match((await cli(['--help'])).stdout, /postern import-nginx FILE/);
  });
});

const nginxBin = '/usr/sbin/nginx';
const mailModule = '/usr/lib/nginx/modules/ngx_mail_module.so';

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

describe('the converted configuration asks the auth service what nginx asks', { skip: !existsSync(nginxBin) || !existsSync(mailModule) ? 'nginx with the mail module is not installed' : false }, () => {
  const stops: (() => Promise<void>)[] = [];
  after(async () => {
    for (const s of stops) await s();
  });

  it('same sessions, same headers in the same order: unauthenticated (at RCPT) and AUTH PLAIN in the clear', async () => {
    const auth = await AuthStub.start((req) => (req.get('Auth-Method') === 'none'
      ? { 'Auth-Status': 'Relaying denied', 'Auth-Error-Code': '550 5.7.1' }
      : { 'Auth-Status': 'Invalid login or password', 'Auth-Error-Code': '535 5.7.8' }));
    stops.push(() => auth.stop());
    const port = await freePort();
    const work = mkdtempSync(path.join(os.tmpdir(), 'postern-nginx-eq-'));
    const conf = path.join(work, 'nginx.conf');
    writeFileSync(conf, `load_module ${mailModule};
daemon off;
master_process off;
pid ${work}/nginx.pid;
error_log ${work}/error.log;
events { worker_connections 64; }
mail {
    server_name mx.test;
    auth_http 127.0.0.1:${new URL(auth.url).port}/auth;
    auth_http_header X-Auth-Key "s3cret";
    auth_http_header X-Site mx1;
    xclient off;
    server {
        listen 127.0.0.1:${port};
        protocol smtp;
        smtp_auth none plain login;
    }
}
`);
    const child = spawn(nginxBin, ['-p', work, '-c', conf, '-e', path.join(work, 'error.log')], { stdio: 'ignore' });
    stops.push(() => new Promise((r) => (child.exitCode !== null ? r() : (child.once('exit', () => r()), child.kill('SIGTERM')))));
    for (let i = 0; ; i++) {
      const ok = await new Promise<boolean>((r) => net.connect(port, '127.0.0.1').once('connect', function (this: net.Socket) { this.destroy(); r(true); }).once('error', () => r(false)));
      if (ok) break;
      assert.ok(i < 100, `nginx did not start: ${existsSync(path.join(work, 'error.log')) ? readFileSync(path.join(work, 'error.log'), 'utf8') : ''}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    /** The two sessions against one proxy: the replies the client saw. */
    const sessions = async (p: number): Promise<string[]> => {
      const mx = await toRcpt(p, { hello: 'EHLO client.example', mail: 'MAIL FROM:<a@example.org> SIZE=100', rcpt: 'RCPT TO:<b@example.com>' });
      mx.c.close();
      const sub = await hello(p, { hello: 'EHLO laptop.example' });
      const login = await sub.c.cmd(`AUTH PLAIN ${Buffer.from('\0alice@example.org\0s3cret pw%').toString('base64')}`);
      sub.c.close();
      return [mx.rcpt, login];
    };
    const viaNginx = await sessions(port);

    const r = await cli(['import-nginx', conf]);
    assert.equal(r.code, 0, r.stderr);
    const converted = parseYaml(r.stdout) as { listen: Record<string, unknown>[] };
    assert.deepEqual(converted.listen, [{ address: `127.0.0.1:${port}`, smtp_auth: ['none', 'plain', 'login'], auth_plaintext: true }]);
    const postern = await startPostern({ ...converted, listen: [{ ...converted.listen[0], address: '127.0.0.1:0' }] });
    stops.push(() => postern.stop());
    const viaPostern = await sessions(postern.port);

    assert.deepEqual(viaPostern, viaNginx);
    assert.deepEqual(viaNginx, ['550 5.7.1 Relaying denied', '535 5.7.8 Invalid login or password']);
    assert.equal(auth.requests.length, 4);
    const [nMx, nAuth, pMx, pAuth] = auth.requests;
    const names = (h: [string, string][]): [string, string][] => h.map(([k, v]) => [k.toLowerCase(), v]);
    assert.deepEqual(names(pMx!.headers), names(nMx!.headers));
    assert.deepEqual(names(pAuth!.headers), names(nAuth!.headers));
    assert.equal(nAuth!.get('Auth-Pass'), 's3cret%20pw%25');
    assert.equal(pMx!.url, nMx!.url);
  });
});
