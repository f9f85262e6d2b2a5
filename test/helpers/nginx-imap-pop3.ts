/**
 * nginx's mail module (Debian 12 nginx-light + libnginx-mod-mail) as the reference IMAP/POP3 proxy: one private
 * instance per call (its own prefix, config, pid and error log under a temporary directory), `daemon off` as our
 * child in its own process group, on free loopback ports, asking `authUrl` (an auth_http service) as nginx does.
 * Listeners: IMAP and POP3 in the clear, and with `tls` IMAP and POP3 with `starttls on` (test/fixtures/tls
 * server.pem; TLS 1.2 and 1.3, as Postern's default). stop() sends SIGTERM (fast shutdown) and SIGKILLs the group after 5 s; an interrupted run
 * SIGKILLs it from the exit hook.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { firstLine } from './dovecot.js';
import { cleanupOnExit, freePort, requireBinary, TLS_FIXTURES } from './postfix.js';

const MAIL_MODULE = '/usr/lib/nginx/modules/ngx_mail_module.so';

export interface NginxMailOptions {
  /** http://host:port/path of the auth service. */
  authUrl: string;
  /** nginx `imap_auth` (default: plain login cram-md5). */
  imapAuth?: string[];
  /** nginx `pop3_auth` (default: plain apop cram-md5). */
  pop3Auth?: string[];
  /** Also IMAP and POP3 listeners with `starttls on`. */
  tls?: boolean;
}

export interface NginxMail {
  ports: { imap: number; pop3: number; imapStarttls?: number; pop3Starttls?: number };
  errorLog(): string;
  stop(): Promise<void>;
}

export async function startNginxMail(opts: NginxMailOptions): Promise<NginxMail> {
  const nginx = await requireBinary('/usr/sbin/nginx', 'nginx-light');
  if (!existsSync(MAIL_MODULE)) throw new Error(`${MAIL_MODULE} not found: install it with "apt-get install -y libnginx-mod-mail"`);
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(nginx, opts);
    } catch (err) {
      if (attempt >= 3 || !/Address already in use/.test((err as Error).message)) throw err;
    }
  }
}

async function startOnce(nginx: string, opts: NginxMailOptions): Promise<NginxMail> {
  const ports: NginxMail['ports'] = { imap: await freePort(), pop3: await freePort() };
  if (opts.tls) {
    ports.imapStarttls = await freePort();
    ports.pop3Starttls = await freePort();
  }
  if (new Set(Object.values(ports)).size !== Object.values(ports).length) throw new Error('Address already in use (the same free port twice)');
  const dir = await mkdtemp(path.join(os.tmpdir(), 'postern-nginx-mail-'));
  await chmod(dir, 0o755);
  const url = new URL(opts.authUrl);
  const tlsServers = opts.tls
    ? `  server { listen 127.0.0.1:${ports.imapStarttls}; protocol imap; starttls on; }
  server { listen 127.0.0.1:${ports.pop3Starttls}; protocol pop3; starttls on; }
  # nginx 1.22's default is TLSv1 TLSv1.1 TLSv1.2 (TLSv1.3 joined the default in 1.23.4); Postern's: TLSv1.2 and up.
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_certificate ${path.join(TLS_FIXTURES, 'server.pem')};
  ssl_certificate_key ${path.join(TLS_FIXTURES, 'server.key')};
`
    : '';
  const conf = `load_module ${MAIL_MODULE};
daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
events { worker_connections 256; }
mail {
  server_name proxy.test;
  auth_http ${url.host}${url.pathname};
  imap_auth ${(opts.imapAuth ?? ['plain', 'login', 'cram-md5']).join(' ')};
  pop3_auth ${(opts.pop3Auth ?? ['plain', 'apop', 'cram-md5']).join(' ')};
  server { listen 127.0.0.1:${ports.imap}; protocol imap; }
  server { listen 127.0.0.1:${ports.pop3}; protocol pop3; }
${tlsServers}}
`;
  const file = path.join(dir, 'nginx.conf');
  await writeFile(file, conf);
  const errorFile = path.join(dir, 'error.log');
  const child = spawn(nginx, ['-p', dir, '-c', file, '-e', errorFile], { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  let exited = false;
  child.on('exit', () => (exited = true));
  child.on('error', () => (exited = true));
  let finalLog: string | undefined;
  const errorLog = () => finalLog ?? `${stderr}${existsSync(errorFile) ? readFileSync(errorFile, 'utf8') : ''}`;
  const killGroup = () => {
    if (!child.pid) return;
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {}
  };
  const unregister = cleanupOnExit(() => {
    killGroup();
    rmSync(dir, { recursive: true, force: true });
  });
  let stopped: Promise<void> | undefined;
  const stop = () =>
    (stopped ??= (async () => {
      if (!exited) child.kill('SIGTERM');
      const deadline = Date.now() + 5000;
      while (!exited && Date.now() < deadline) await sleep(50);
      killGroup();
      finalLog = errorLog();
      await rm(dir, { recursive: true, force: true });
      unregister();
    })());
  try {
    for (const [port, re] of [[ports.imap, /^\* OK/], [ports.pop3, /^\+OK/], [ports.imapStarttls, /^\* OK/], [ports.pop3Starttls, /^\+OK/]] as const) {
      if (port === undefined) continue;
      const deadline = Date.now() + 10_000;
      for (;;) {
        if (exited) throw new Error('nginx exited');
        const line = await firstLine(port, { timeoutMs: 1000 }).catch((e: Error) => e.message);
        if (re.test(line)) break;
        if (Date.now() > deadline) throw new Error(`no greeting on ${port}: ${line}`);
        await sleep(100);
      }
    }
  } catch (err) {
    const text = errorLog();
    await stop();
    throw new Error(`nginx did not start: ${(err as Error).message}\n--- error log ---\n${text}`);
  }
  return { ports, errorLog, stop };
}
