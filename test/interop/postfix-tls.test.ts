/**
 * The Postfix helper with TLS (`startPostfix({ tls: true, implicitTlsPort: true })`), checked with real TLS
 * clients: openssl s_client (STARTTLS and implicit TLS, verifying against the test CA) and swaks --tls.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { requireBinary, startPostfix, TLS_FIXTURES, type PostfixInstance } from '../helpers/postfix.js';

const run = promisify(execFile);
const CA = path.join(TLS_FIXTURES, 'ca.pem');

interface Result {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs `cmd` with `input` on stdin; SIGKILLs it after `timeoutMs` (then `signal` says so). */
function runWithInput(cmd: string, args: string[], input: string, timeoutMs: number): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('latin1')));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('latin1')));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    child.stdin.on('error', () => {}); // EPIPE if it exits early: the result says why
    child.stdin.end(input);
  });
}

/**
 * openssl s_client verifying the server as backend.test against the test CA. -ign_eof: a stdin line starting
 * with "Q" would otherwise be s_client's own quit command, and EOF on stdin would close before the reply;
 * this way QUIT goes to the server, which answers 221 and closes.
 */
async function sClient(port: number, starttls: boolean): Promise<Result> {
  const openssl = await requireBinary('openssl', 'openssl');
  const args = ['s_client', '-connect', `127.0.0.1:${port}`, '-CAfile', CA, '-verify_return_error', '-servername', 'backend.test'];
  if (starttls) args.push('-starttls', 'smtp');
  args.push('-crlf', '-ign_eof');
  return runWithInput(openssl, args, 'QUIT\n', 20_000);
}

describe('Postfix helper with TLS', { timeout: 120_000 }, () => {
  let pf: PostfixInstance;
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'postern-postfix-tls-'));
  before(async () => {
    pf = await startPostfix({ tls: true, implicitTlsPort: true });
  });
  after(async () => {
    await pf?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('advertises STARTTLS in its EHLO reply', async () => {
    const swaks = await requireBinary('swaks', 'swaks');
    const { stdout } = await run(swaks, ['--server', '127.0.0.1', '--port', String(pf.port), '--quit-after', 'EHLO', '--timeout', '15'], {
      timeout: 20_000,
    });
    assert.match(stdout, /<-  250[ -]STARTTLS\r?$/m, stdout);
  });

  it('openssl s_client -starttls smtp verifies backend.test against the test CA', async () => {
    const r = await sClient(pf.port, true);
    const out = r.stdout + r.stderr;
    assert.equal(r.signal, null, `s_client timed out\n${out}`);
    assert.match(r.stdout, /Verify return code: 0 \(ok\)/, out);
    assert.match(r.stdout, /subject=CN ?= ?backend\.test/, out);
    assert.match(r.stdout, /^221 /m, out); // our QUIT reached Postfix over TLS
    assert.equal(r.code, 0, out);
  });

  it('swaks --tls delivers, and the Received header records the TLS session', async () => {
    const swaks = await requireBinary('swaks', 'swaks');
    const body = `tls-body-${process.pid}-${Date.now()}`;
    const { stdout } = await run(
      swaks,
      [
        '--server', '127.0.0.1', '--port', String(pf.port), '--from', 'a@x.test', '--to', 'u@y.test',
        '--helo', 'tls.client.test', '--body', body, '--tls', '--tls-verify', '--tls-ca-path', CA, '--timeout', '15',
      ],
      { timeout: 20_000 },
    );
    assert.match(stdout, /=== TLS started with cipher/, stdout);
    assert.match(stdout, /<~  250 2\.0\.0 Ok: queued as/, stdout); // "~": over TLS
    const [file] = await pf.waitForMessages(1, 20_000);
    const msg = readFileSync(file!, 'latin1');
    assert.ok(msg.includes(body), msg);
    const received = msg.slice(0, msg.indexOf('\n\n'));
    assert.match(received, /Received: from tls\.client\.test \(localhost \[127\.0\.0\.1\]\)\s+\(using TLSv1\.[23] with cipher \S+/, received);
    assert.match(pf.log(), /TLS connection established from localhost\[127\.0\.0\.1\]: TLSv1\.[23]/);
  });

  it('the implicit-TLS port greets with 220 after the handshake', async () => {
    assert.ok(pf.tlsPort, 'tlsPort is set');
    assert.notEqual(pf.tlsPort, pf.port);
    const r = await sClient(pf.tlsPort, false);
    const out = r.stdout + r.stderr;
    assert.equal(r.signal, null, `s_client timed out\n${out}`);
    assert.match(r.stdout, /Verify return code: 0 \(ok\)/, out);
    assert.match(r.stdout, /^220 backend\.test ESMTP/m, out);
    assert.match(r.stdout, /^221 /m, out);
  });
});

describe('Postfix helper without TLS', { timeout: 60_000 }, () => {
  it('refuses implicitTlsPort without tls', async () => {
    await assert.rejects(startPostfix({ implicitTlsPort: true }), /implicitTlsPort needs tls: true/);
  });
});
