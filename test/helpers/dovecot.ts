/**
 * A real Dovecot (IMAP and POP3) on loopback, one private instance per call: its own config, base_dir, state_dir,
 * log, passdb and maildir homes under one temporary directory; nothing in /etc/dovecot is read or changed.
 *
 * Constraints (verified with Debian 12 dovecot-imapd/dovecot-pop3d 2.3.19.1):
 * - Needs root: the master binds the ports, chroots the login processes (into <dir>/run/login) and runs the mail
 *   processes as uid/gid 65534 (the userdb below), so the homes are chowned to it and the instance directory is 0755.
 * - Dovecot is our child (`dovecot -F -c FILE`, detached: its own process group with every service process);
 *   stop() sends SIGTERM (the master ends its services, about 1 s) and then SIGKILLs the group; an interrupted run
 *   SIGKILLs the group from the exit hook (cleanupOnExit) and removes the directory.
 * - Instances may run concurrently, in one process or several: nothing is shared but the binary (the ports are
 *   free loopback ports, retried when one is taken between the probe and Dovecot's bind).
 * - Listeners, all on 127.0.0.1: `imap`/`pop3` plain (STARTTLS/STLS offered with `tls`), `imapHaproxy`/
 *   `pop3Haproxy` with `haproxy = yes` (every connection must start with a PROXY v1 or v2 header from
 *   haproxy_trusted_networks; without one Dovecot logs "Failed to read valid HAproxy data" and resets), and with
 *   `tls` the implicit-TLS `imaps`/`pop3s` (test/fixtures/tls/backend.pem: backend.test and IP 127.0.0.1, signed
 *   by the test CA).
 * - `login_trusted_networks = 127.0.0.0/8`: a loopback peer may say who the client is — IMAP `ID
 *   ("x-originating-ip" …)` before login, POP3 `XCLIENT ADDR=…` (the banner then reads `+OK [XCLIENT] …`) — and
 *   the login is logged with that address as `rip=`. Loopback sessions count as "secured", so plaintext logins work
 *   without TLS.
 * - passdb: passwd-file with {PLAIN} passwords (DOVECOT_USERS; a password may hold anything but ":" and line
 *   breaks). auth_failure_delay = 0 (a refused login is answered within
 *   about 0.5 s, Dovecot's flush interval) and no auth penalty (see the anvil service); auth_verbose logs refusals.
 * - Mail: maildir:~/Maildir with homes <dir>/home/<user>, created at start. place() writes a message into a
 *   user's INBOX (tmp/ then rename into new/, as a delivery agent does); Dovecot serves its bytes unchanged when
 *   the file has CRLF line ends (IMAP BODY[] and POP3 RETR, dot-stuffed on the wire); mail_save_crlf = yes keeps
 *   an APPENDed message's bytes as sent.
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, rmSync } from 'node:fs';
import { chmod, chown, copyFile, mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import tls from 'node:tls';
import { cleanupOnExit, freePort, requireBinary, TLS_FIXTURES } from './postfix.js';

const DOVECOT = '/usr/sbin/dovecot';
const MAIL_UID = 65534;

export interface DovecotUser {
  user: string;
  password: string;
}

/**
 * The users every instance knows. `erin`'s password needs IMAP quoting (space, quote, backslash); `dora`'s is
 * not ASCII (UTF-8 "ü" and "€") as well, so only a literal (or SASL) can carry it.
 */
export const DOVECOT_USERS = {
  alice: { user: 'alice', password: 'alice-secret' },
  bob: { user: 'bob', password: 'bob-secret' },
  erin: { user: 'erin', password: 'e r"i\\n q' },
  dora: { user: 'dora', password: 'p a"s\\s w\u00fcrd \u20ac' },
} as const satisfies Record<string, DovecotUser>;

export interface DovecotOptions {
  /** STARTTLS/STLS on the plain listeners and the implicit-TLS imaps/pop3s listeners. Default false. */
  tls?: boolean;
}

export interface DovecotPorts {
  imap: number;
  /** `haproxy = yes`: a PROXY header must come first. */
  imapHaproxy: number;
  pop3: number;
  pop3Haproxy: number;
  /** Only with `tls`. */
  imaps?: number;
  pop3s?: number;
}

/** One `Login:` line of the log (imap-login or pop3-login). */
export interface DovecotLogin {
  service: 'imap' | 'pop3';
  user: string;
  method: string;
  /** The client's address as Dovecot took it (the peer's, an ID x-originating-ip, an XCLIENT ADDR, a PROXY header's). */
  rip: string;
  lip: string;
  /** `TLS` on the connection to Dovecot. */
  tls: boolean;
  session: string;
  line: string;
}

export interface DovecotInstance {
  host: '127.0.0.1';
  ports: DovecotPorts;
  dir: string;
  users: typeof DOVECOT_USERS;
  /** Puts `message` (bytes as they will be served; use CRLF line ends) into `user`'s INBOX; returns the file's path. */
  place(user: string, message: Buffer | string): Promise<string>;
  /** The whole log so far (also after stop()). */
  log(): string;
  /** Every successful login logged so far, in order. */
  logins(): DovecotLogin[];
  /** Resolves with the log once `done(log)` holds (polled every 50 ms); throws with the log after `timeoutMs`. */
  waitForLog(done: (log: string) => boolean, timeoutMs?: number): Promise<string>;
  /** The first login logged after `since` logins (count them with logins().length) matching `pred`. */
  waitForLogin(since: number, pred?: (l: DovecotLogin) => boolean, timeoutMs?: number): Promise<DovecotLogin>;
  stop(): Promise<void>;
}

function dovecotConf(dir: string, ports: DovecotPorts, withTls: boolean): string {
  const listener = (name: string, port: number | undefined, extra = '') =>
    port === undefined ? '' : `  inet_listener ${name} {\n    port = ${port}\n${extra}  }\n`;
  return `protocols = imap pop3
# Own process titles (dovecot-postern-test/imap-login …) so a leftover is easy to spot.
instance_name = postern-test
listen = 127.0.0.1
base_dir = ${dir}/run
state_dir = ${dir}/state
log_path = ${dir}/dovecot.log
info_log_path = ${dir}/dovecot.log
${withTls ? `ssl = yes\nssl_cert = <${dir}/etc/backend.pem\nssl_key = <${dir}/etc/backend.key` : 'ssl = no'}
disable_plaintext_auth = no
auth_mechanisms = plain login
# Log refused logins, and answer them at once (the 2 s default slows every negative test down).
auth_verbose = yes
auth_failure_delay = 0
# Both users come with dovecot-core; set here so the config does not depend on the defaults.
default_internal_user = dovecot
default_login_user = dovenull
# A loopback peer (Postern) may tell the client's address: IMAP ID x-originating-ip, POP3 XCLIENT.
login_trusted_networks = 127.0.0.0/8
haproxy_trusted_networks = 127.0.0.0/8
# Many sessions of one user from 127.0.0.1 in a test run (the default is 10).
mail_max_userip_connections = 1000
mail_location = maildir:~/Maildir
# Store APPENDed mail with its CRLF line ends, so the file holds exactly the bytes the client sent.
mail_save_crlf = yes
passdb {
  driver = passwd-file
  args = ${dir}/users
}
userdb {
  driver = static
  args = uid=${MAIL_UID} gid=${MAIL_UID} home=${dir}/home/%u
}
service imap-login {
${listener('imap', ports.imap)}${listener('imap_pp', ports.imapHaproxy, '    haproxy = yes\n')}${listener('imaps', ports.imaps, '    ssl = yes\n')}}
service pop3-login {
${listener('pop3', ports.pop3)}${listener('pop3_pp', ports.pop3Haproxy, '    haproxy = yes\n')}${listener('pop3s', ports.pop3s, '    ssl = yes\n')}}
service anvil {
  chroot =
  # No auth penalty: without this socket the auth process turns it off (ENOENT, hidden). Otherwise every refused
  # login from an address delays that address's next logins by 2-15 s (auth-penalty.c), right or wrong password.
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
`;
}

/** Distinct free loopback ports. */
async function freePorts(n: number): Promise<number[]> {
  const out = new Set<number>();
  while (out.size < n) out.add(await freePort());
  return [...out];
}

/** The first line a server sends (after `tlsFirst`'s handshake, or after writing `preamble`). */
export function firstLine(port: number, opts: { tls?: boolean; preamble?: Buffer | string; timeoutMs?: number; localAddress?: string } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock: net.Socket = opts.tls
      ? tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false, ...(opts.localAddress && { localAddress: opts.localAddress }) })
      : net.connect({ port, host: '127.0.0.1', ...(opts.localAddress && { localAddress: opts.localAddress }) });
    if (opts.preamble !== undefined) sock.write(opts.preamble);
    let buf = '';
    sock.setTimeout(opts.timeoutMs ?? 5000, () => sock.destroy(new Error('timed out waiting for a greeting')));
    sock.on('data', (chunk: Buffer) => {
      buf += chunk.toString('latin1');
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      sock.destroy();
      resolve(buf.slice(0, nl).replace(/\r$/, ''));
    });
    sock.on('error', reject);
    sock.on('close', () => reject(new Error(`closed before a greeting (${JSON.stringify(buf)})`)));
  });
}

async function waitUntil(cond: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() >= deadline) return false;
    await sleep(50);
  }
  return true;
}

const LOGIN_LINE = /(imap|pop3)-login: Info: Login: user=<([^>]*)>, method=([^,]+), rip=([^,]+), lip=([^,]+), (.*)$/;

export function parseLogins(log: string): DovecotLogin[] {
  const out: DovecotLogin[] = [];
  for (const line of log.split('\n')) {
    const m = LOGIN_LINE.exec(line);
    if (!m) continue;
    const rest = m[6]!;
    out.push({
      service: m[1] as 'imap' | 'pop3',
      user: m[2]!,
      method: m[3]!,
      rip: m[4]!,
      lip: m[5]!,
      tls: /(^|, )TLS(,|$)/.test(rest),
      session: /session=<([^>]*)>/.exec(rest)?.[1] ?? '',
      line,
    });
  }
  return out;
}

export async function startDovecot(opts: DovecotOptions = {}): Promise<DovecotInstance> {
  if (process.getuid?.() !== 0) throw new Error('startDovecot needs root (Dovecot chroots its login processes and runs mail as uid 65534)');
  await requireBinary(DOVECOT, 'dovecot-core');
  for (const [file, pkg] of [['/usr/lib/dovecot/imap', 'dovecot-imapd'], ['/usr/lib/dovecot/pop3', 'dovecot-pop3d']] as const) {
    if (!existsSync(file)) throw new Error(`${file} not found: install it with "apt-get install -y ${pkg}"`);
  }
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(!!opts.tls);
    } catch (err) {
      if (attempt >= 3 || !/Address already in use/.test((err as Error).message)) throw err;
    }
  }
}

async function startOnce(withTls: boolean): Promise<DovecotInstance> {
  const [imap, imapHaproxy, pop3, pop3Haproxy, imaps, pop3s] = await freePorts(withTls ? 6 : 4);
  const ports: DovecotPorts = { imap: imap!, imapHaproxy: imapHaproxy!, pop3: pop3!, pop3Haproxy: pop3Haproxy!, ...(withTls && { imaps: imaps!, pop3s: pop3s! }) };
  const dir = await mkdtemp(path.join(os.tmpdir(), 'postern-dovecot-'));
  // The login processes (dovenull) and the auth process (dovecot) must traverse it, mail (65534) reach the homes.
  await chmod(dir, 0o755);
  for (const sub of ['run', 'state', 'etc', 'home']) await mkdir(path.join(dir, sub), { mode: 0o755 });
  for (const u of Object.values(DOVECOT_USERS)) {
    const home = path.join(dir, 'home', u.user);
    for (const sub of ['', 'Maildir', 'Maildir/cur', 'Maildir/new', 'Maildir/tmp']) {
      await mkdir(path.join(home, sub), { mode: 0o700 });
      await chown(path.join(home, sub), MAIL_UID, MAIL_UID);
    }
  }
  await writeFile(path.join(dir, 'users'), Object.values(DOVECOT_USERS).map((u) => `${u.user}:{PLAIN}${u.password}\n`).join(''), { mode: 0o644 });
  if (withTls) {
    // Read by the config process, as root: the key may stay 0600.
    for (const [file, mode] of [['backend.pem', 0o644], ['backend.key', 0o600]] as const) {
      await copyFile(path.join(TLS_FIXTURES, file), path.join(dir, 'etc', file));
      await chmod(path.join(dir, 'etc', file), mode);
    }
  }
  const conf = path.join(dir, 'etc', 'dovecot.conf');
  await writeFile(conf, dovecotConf(dir, ports, withTls));

  // Errors before log_path is open (a bad config, a port in use) go to stdout/stderr: the same file.
  const logFile = path.join(dir, 'dovecot.log');
  const fd = openSync(logFile, 'a');
  const child = spawn(DOVECOT, ['-F', '-c', conf], { stdio: ['ignore', fd, fd], detached: true });
  closeSync(fd);
  let exited = false;
  child.on('exit', () => (exited = true));
  child.on('error', () => (exited = true));
  let finalLog: string | undefined;
  const log = () => finalLog ?? (existsSync(logFile) ? readFileSync(logFile, 'utf8') : '');
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
      if (!exited) {
        try {
          child.kill('SIGTERM');
        } catch {}
      }
      if (!(await waitUntil(() => exited, 5_000))) {
        killGroup();
        await waitUntil(() => exited, 2_000);
      }
      killGroup(); // any service process the master left behind
      finalLog = log();
      await rm(dir, { recursive: true, force: true });
      unregister();
    })());

  try {
    const dead = () => exited;
    await waitForGreeting(ports.imap, /^\* OK /, {}, dead);
    await waitForGreeting(ports.pop3, /^\+OK /, {}, dead);
    await waitForGreeting(ports.imapHaproxy, /^\* OK /, { preamble: `PROXY TCP4 127.0.0.1 127.0.0.1 1 ${ports.imapHaproxy}\r\n` }, dead);
    await waitForGreeting(ports.pop3Haproxy, /^\+OK /, { preamble: `PROXY TCP4 127.0.0.1 127.0.0.1 1 ${ports.pop3Haproxy}\r\n` }, dead);
    if (ports.imaps !== undefined) await waitForGreeting(ports.imaps, /^\* OK /, { tls: true }, dead);
    if (ports.pop3s !== undefined) await waitForGreeting(ports.pop3s, /^\+OK /, { tls: true }, dead);
  } catch (err) {
    const text = log();
    await stop();
    throw new Error(`Dovecot did not start: ${(err as Error).message}\n--- dovecot log ---\n${text}`);
  }

  let seq = 0;
  const logins = () => parseLogins(log());
  return {
    host: '127.0.0.1',
    ports,
    dir,
    users: DOVECOT_USERS,
    log,
    logins,
    stop,
    async place(user, message) {
      const maildir = path.join(dir, 'home', user, 'Maildir');
      if (!existsSync(maildir)) throw new Error(`place: no user ${JSON.stringify(user)} (known: ${Object.keys(DOVECOT_USERS).join(', ')})`);
      const name = `${Math.floor(Date.now() / 1000)}.M${++seq}P${process.pid}.postern-test`;
      const tmp = path.join(maildir, 'tmp', name);
      await writeFile(tmp, message, { mode: 0o600 });
      await chown(tmp, MAIL_UID, MAIL_UID);
      const file = path.join(maildir, 'new', name);
      await rename(tmp, file);
      return file;
    },
    async waitForLog(done, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const text = log();
        if (done(text)) return text;
        if (Date.now() >= deadline) throw new Error(`dovecot log condition not met after ${timeoutMs} ms\n--- dovecot log ---\n${text}`);
        await sleep(50);
      }
    },
    async waitForLogin(since, pred = () => true, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const hit = logins().slice(since).find(pred);
        if (hit) return hit;
        if (Date.now() >= deadline) throw new Error(`no matching Dovecot login after ${timeoutMs} ms\n--- dovecot log ---\n${log()}`);
        await sleep(50);
      }
    },
  };
}

async function waitForGreeting(port: number, expect: RegExp, opts: { tls?: boolean; preamble?: string }, isDead: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  let last = 'no attempt';
  while (Date.now() < deadline && !isDead()) {
    try {
      const line = await firstLine(port, { ...opts, timeoutMs: Math.max(100, deadline - Date.now()) });
      if (expect.test(line)) return;
      last = `greeting ${JSON.stringify(line)}`;
    } catch (err) {
      last = (err as Error).message;
    }
    await sleep(100);
  }
  throw new Error(isDead() ? 'dovecot exited' : `no greeting on port ${port} within 10000 ms (${last})`);
}
