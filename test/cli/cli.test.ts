/**
 * The command line as an admin uses it: check-config like `nginx -t`, --version, running from the
 * compiled dist/, and SIGTERM's bounded drain.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import type { TLSSocket } from 'node:tls';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { FakeBackend, closedPort } from '../helpers/fake-backend.js';
import { greeted, hello, toRcpt } from '../helpers/preamble.js';
import { SmtpClient, replyText } from '../helpers/smtp-client.js';

const run = promisify(execFile);
const root = path.resolve(import.meta.dirname, '../..');
const tsxCli = ['--import', 'tsx', path.join(root, 'src/cli.ts')];
const dir = mkdtempSync(path.join(os.tmpdir(), 'postern-cli-'));

function configFile(name: string, text: string): string {
  const f = path.join(dir, name);
  writeFileSync(f, text);
  return f;
}

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [...tsxCli, ...args], { cwd: root });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** Starts `postern --config` and resolves once it logs "postern started". */
async function startProcess(argv: string[]): Promise<{ child: ChildProcess; logs: string[] }> {
  const child = spawn(process.execPath, argv, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  const logs: string[] = [];
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`postern did not start: ${logs.join('')}`));
    }, 15000);
    child.stdout!.on('data', (d: Buffer) => {
      logs.push(d.toString());
      if (logs.join('').includes('postern started')) {
        clearTimeout(t);
        resolve();
      }
    });
    child.stderr!.on('data', (d: Buffer) => logs.push(d.toString()));
    child.once('exit', (code) => reject(new Error(`postern exited with ${code}: ${logs.join('')}`)));
  });
  return { child, logs };
}

async function waitFor(cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}

function exited(child: ChildProcess): Promise<number | null> {
  return new Promise((r) => (child.exitCode !== null ? r(child.exitCode) : child.once('exit', (code) => r(code))));
}

describe('postern check-config', () => {
  it('accepts the shipped default config, in nginx -t words', async () => {
    const r = await cli(['check-config', '--config', path.join(root, 'config/postern.yaml')]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /syntax is ok\n.*test is successful/);
  });

  it('names the key path of every error and exits 1', async () => {
    const f = configFile('bad.yaml', 'route:\n  auth_http:\n    url: ftp://x\ntimeouts:\n  idle: soon\nlisten: [ "127.0.0.1" ]\nmax_errrors: 3\n');
    const r = await cli(['check-config', '-c', f]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /4 problems/);
    assert.match(r.stderr, /route\.auth_http\.url: /);
    assert.match(r.stderr, /timeouts\.idle: not a duration: "soon"/);
    assert.match(r.stderr, /listen\.0: expected host:port/);
    assert.match(r.stderr, /\(top level\): unknown key "max_errrors"/);
    assert.match(r.stderr, /test failed/);
  });

  it('names errors inside a server block by their path in it', async () => {
    const f = configFile('servers.yaml', 'servers:\n  - listen: ["127.0.0.1:2525"]\n  - listen: ["127.0.0.1:2587"]\n    route: { auth_http: { url: "ftp://x" } }\n    proxy_mode: blind\n');
    const r = await cli(['check-config', '-c', f]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /servers\.1\.route\.auth_http\.url: /);
    assert.match(r.stderr, /servers\.1\.proxy_mode: /);
    const ok = configFile('servers-ok.yaml', 'servers:\n  - listen: ["127.0.0.1:2525"]\n  - listen: ["127.0.0.1:2587"]\n    proxy_mode: transaction\n');
    assert.equal((await cli(['check-config', '-c', ok])).code, 0);
  });

  it('reports a missing file and a YAML syntax error', async () => {
    assert.match((await cli(['check-config', '-c', path.join(dir, 'none.yaml')])).stderr, /cannot read: ENOENT/);
    const r = await cli(['check-config', '-c', configFile('syntax.yaml', 'listen: [\n')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /YAML: /);
  });

  it('--version prints the package version; an unknown command is a usage error', async () => {
    assert.match((await cli(['--version'])).stdout, /^postern \d+\.\d+\.\d+\n$/);
    assert.equal((await cli(['frobnicate'])).code, 2);
  });
});

describe('postern run', () => {
  let backend: FakeBackend;
  before(async () => {
    backend = await FakeBackend.start();
  });
  after(() => backend.stop());

  it('runs from the compiled dist/ after npm run build', async () => {
    await run('npm', ['run', 'build'], { cwd: root });
    const port = await closedPort();
    const f = configFile('dist.yaml', `server_name: dist.test\nlisten: ["127.0.0.1:${port}"]\nroute: { static: "127.0.0.1:${backend.port}" }\n`);
    const { child } = await startProcess([path.join(root, 'dist/cli.js'), '--config', f]);
    try {
      const { c, greeting } = await greeted(port);
      assert.equal(replyText(greeting), '220 dist.test ESMTP ready');
      assert.equal((await toRcpt(c, { greeted: true, hello: 'HELO c.test' })).rcpt, '250 2.1.5 Ok');
      assert.equal(await c.data('Subject: x\r\n\r\nhello\r\n'), '250 2.0.0 Ok: queued');
      c.close();
    } finally {
      child.kill('SIGTERM');
      assert.equal(await exited(child), 0);
    }
  });

  it('SIGTERM: stops accepting, tells idle sessions 421, lets a relayed message finish, then exits 0', async () => {
    const port = await closedPort();
    const f = configFile('drain.yaml', `server_name: drain.test\nlisten: ["127.0.0.1:${port}"]\nroute: { static: "127.0.0.1:${backend.port}" }\ntimeouts: { shutdown: 10s }\n`);
    const { child, logs } = await startProcess([...tsxCli, '--config', f]);
    const { c: busy } = await toRcpt(port, { hello: 'HELO busy.test' });
    assert.equal(await busy.cmd('DATA'), '354 End data with <CR><LF>.<CR><LF>');
    busy.write('Subject: in flight\r\n\r\n');
    const { c: idle } = await hello(port, { hello: 'EHLO idle.test' });

    child.kill('SIGTERM');
    assert.equal(replyText(await idle.reply()), '421 4.3.2 drain.test Service shutting down, try again later');
    assert.ok(await idle.waitClosed());
    await new Promise((r) => setTimeout(r, 200));
    await assert.rejects(SmtpClient.connect(port), 'new connections are refused');

    busy.write('the end\r\n.\r\n');
    assert.equal(replyText(await busy.reply()), '250 2.0.0 Ok: queued');
    assert.equal(await busy.cmd('QUIT'), '221 2.0.0 Bye');
    assert.equal(await exited(child), 0);
    assert.match(logs.join(''), /"msg":"postern stopped"/);
  });

  it('SIGTERM: sessions still open at timeouts.shutdown are closed and the process exits', async () => {
    const port = await closedPort();
    const f = configFile('deadline.yaml', `listen: ["127.0.0.1:${port}"]\nroute: { static: "127.0.0.1:${backend.port}" }\ntimeouts: { shutdown: 500ms }\n`);
    const { child } = await startProcess([...tsxCli, '--config', f]);
    const { c } = await toRcpt(port, { hello: 'HELO stuck.test' });
    await c.cmd('DATA');
    const t0 = Date.now();
    child.kill('SIGTERM');
    assert.equal(await exited(child), 0);
    assert.ok(Date.now() - t0 < 5000);
    assert.ok(await c.waitClosed(2000));
    assert.doesNotMatch(c.transcript, /\r\n250 2\.0\.0/, 'no acceptance was invented');
  });

  it('workers: 2 — two processes serve; a killed worker is replaced and its peer is untouched', async () => {
    const port = await closedPort();
    const f = configFile('workers.yaml', `listen: ["127.0.0.1:${port}"]\nworkers: 2\nroute: { static: "127.0.0.1:${backend.port}" }\n`);
    const { child, logs } = await startProcess([path.join(root, 'dist/cli.js'), '--config', f]);
    try {
      const workerPids = async (gone?: number): Promise<number[]> => {
        const deadline = Date.now() + 10000;
        for (;;) {
          const pids = [...logs.join('').matchAll(/"worker":(\d+),"msg":"worker started"/g)].map((m) => Number(m[1]));
          const alive = pids.filter((pid) => {
            try {
              process.kill(pid, 0);
              return true;
            } catch {
              return false;
            }
          });
          if ((alive.length >= 2 && !alive.includes(gone ?? -1)) || Date.now() > deadline) return alive;
          await new Promise((r) => setTimeout(r, 100));
        }
      };
      const [first, second] = await workerPids();
      assert.ok(first && second, logs.join(''));
      // A session on some worker stays up while a worker is killed.
      const { c } = await hello(port, { hello: 'HELO steady.test' });
      process.kill(first, 'SIGKILL');
      const replaced = await workerPids(first);
      assert.equal(replaced.length, 2, logs.join(''));
      assert.ok(!replaced.includes(first));
      assert.match(logs.join(''), /worker died; starting a new one/);
      for (let i = 0; i < 4; i++) {
        const d = await SmtpClient.connect(port);
        assert.equal((await d.reply()).code, 220);
        d.close();
      }
      // The surviving session may have been on the killed worker; if not, it still works.
      if (!c.socket.destroyed) {
        try {
          assert.equal(await c.cmd('NOOP'), '250 2.0.0 OK');
        } catch {
          /* it was on the killed worker */
        }
      }
      c.close();
    } finally {
      child.kill('SIGTERM');
      assert.equal(await exited(child), 0);
    }
  });

  it('SIGHUP reloads the configuration with the TLS certificates, without a restart; a broken file keeps the old ones', async () => {
    const fix = path.join(root, 'test/fixtures/tls');
    const cert = path.join(dir, 'live.pem');
    const key = path.join(dir, 'live.key');
    copyFileSync(path.join(fix, 'server.pem'), cert);
    copyFileSync(path.join(fix, 'server.key'), key);
    const port = await closedPort();
    const f = configFile('reload.yaml', `listen: [{ address: "127.0.0.1:${port}", implicit_tls: true }]\ntls: { certificates: [{ cert: "${cert}", key: "${key}" }] }\nroute: { static: "127.0.0.1:${backend.port}" }\n`);
    const { child, logs } = await startProcess([...tsxCli, '--config', f]);
    const subject = async (): Promise<string> => {
      const c = await SmtpClient.connectTls(port, { ca: readFileSync(path.join(fix, 'ca.pem')), servername: 'proxy.test', checkServerIdentity: () => undefined });
      const s = (c.socket as TLSSocket).getPeerX509Certificate()!.subject;
      c.close();
      return s;
    };
    try {
      assert.match(await subject(), /CN=proxy\.test/);
      copyFileSync(path.join(fix, 'server2.pem'), cert);
      copyFileSync(path.join(fix, 'server2.key'), key);
      child.kill('SIGHUP');
      await waitFor(() => logs.join('').includes('PSW_RELOADED'));
      assert.match(await subject(), /CN=mx2\.test/);
      writeFileSync(cert, 'not a certificate');
      child.kill('SIGHUP');
      await waitFor(() => logs.join('').includes('PSW_RELOAD_REFUSED'));
      assert.match(await subject(), /CN=mx2\.test/, 'the previous certificate stays in use');
    } finally {
      child.kill('SIGTERM');
      assert.equal(await exited(child), 0);
    }
  });

  it('check-config loads the certificate files and names the one that is wrong', async () => {
    const f = configFile('badcert.yaml', `listen: [{ address: "127.0.0.1:2525", starttls: on }]\ntls: { certificates: [{ cert: "${path.join(dir, 'nope.pem')}", key: "${path.join(dir, 'nope.key')}" }] }\n`);
    const r = await cli(['check-config', '-c', f]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /tls\.certificates\.0\.cert: cannot read .*nope\.pem: ENOENT/);
    // In a server block the path names the block.
    const g = configFile('badcert-servers.yaml', `servers:\n  - listen: ["127.0.0.1:2525"]\n  - listen: [{ address: "127.0.0.1:2526", starttls: on }]\n    tls: { certificates: [{ cert: "${path.join(dir, 'nope.pem')}", key: "${path.join(dir, 'nope.key')}" }] }\n    backend_tls: { ca: "${path.join(dir, 'nope-ca.pem')}" }\n`);
    const s = await cli(['check-config', '-c', g]);
    assert.equal(s.code, 1);
    assert.match(s.stderr, /servers\.1\.tls\.certificates\.0\.cert: cannot read .*nope\.pem: ENOENT/);
    assert.match(s.stderr, /servers\.1\.backend_tls\.ca: cannot read .*nope-ca\.pem: ENOENT/);
  });

  it('fails with a clear log line when the port is taken', async () => {
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    const port = (blocker.address() as net.AddressInfo).port;
    try {
      const f = configFile('taken.yaml', `listen: ["127.0.0.1:${port}"]\n`);
      const r = await cli(['--config', f]);
      assert.equal(r.code, 1);
      assert.match(r.stdout, /EADDRINUSE/);
    } finally {
      blocker.close();
    }
  });
});
