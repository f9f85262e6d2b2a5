/**
 * A real Postfix on loopback, one private instance per call (its own config, queue and data directories; nothing in /etc/postfix is changed).
 *
 * Constraints (verified with Postfix 3.7.11 on Debian 12):
 * - Needs root: the master drops privileges to `postfix` and virtual(8) delivers as uid 65534.
 * - Instances may run concurrently, in one process or several: each has its own config, queue and data
 *   directory (Postfix refuses two masters on one queue/data directory) and its own port.
 * - `postfix -c DIR` works without listing DIR in `alternate_config_directories` of /etc/postfix/main.cf
 *   (only the set-gid postdrop/postqueue check that). /etc/postfix is still read, never written: postfix-script
 *   reads `multi_instance_directories` there (must stay empty: start-fg refuses multi-instance setups), and
 *   post-install reads `postfix-files`.
 * - Start takes about 2.5-3 s, mostly postfix-script's integrity checks.
 * - The master detaches into its own session (`start-fg` runs `master -s` unless it is PID 1), so it is stopped
 *   through its pid file, not by killing the child we spawned.
 * - TLS (`{ tls: true }`): smtpd offers STARTTLS with test/fixtures/tls/backend.pem (backend.test, IP 127.0.0.1,
 *   signed by the test CA). smtpd loads key and certificate as root before dropping privileges, so the copies in
 *   the instance's etc/ can be root-owned and 0600.
 * - SASL (`{ sasl: { user, password } }`): a private Dovecot (dovecot-core 2.3) is started first, with no mail
 *   protocols, only its auth service, answering on <dir>/dovecot/auth (mode 0666); smtpd uses it as
 *   `smtpd_sasl_type = dovecot` with that absolute path (fine because nothing is chrooted). This instance then
 *   REQUIRES AUTH: relaying and RCPT are `permit_sasl_authenticated, reject`, so an unauthenticated session is
 *   refused at RCPT, and Received says "(Authenticated sender: user)". AUTH PLAIN/LOGIN are offered without TLS.
 *   Dovecot is our child (`dovecot -F`; its master makes itself session and group leader); stop() ends it after
 *   Postfix (SIGTERM, about 1 s), an interrupted run SIGKILLs its group.
 * - Relay (`{ relayTo: { host, port } }`): the instance is an SMTP *client* as well. It accepts mail for any
 *   domain from 127.0.0.0/8 and relays all of it to relayhost [host]:port (brackets: no MX or A lookup), nothing
 *   is delivered locally. Its name is relay.test, not backend.test, because the smtp client refuses a server
 *   that greets it with its own name ("mail for … loops back to myself") and a back-end instance is backend.test.
 *   A 4xx to a RCPT defers that recipient only; Postfix 3.7 never retries it on the same connection: the queue
 *   manager brings it back from the deferred queue after minimal_backoff_time (1 s here), scanned every
 *   queue_run_delay (1 s), at most maximal_backoff_time (2 s) apart, over a new connection (connection caching
 *   is off so that every delivery attempt is its own connection). submitMessage() (submit.ts) hands it mail.
 * - PROXY (`{ upstreamProxyProtocol: true }`): smtpd_upstream_proxy_protocol = haproxy, so every connection must
 *   start with a PROXY header (Postfix 3.7 reads v1 and v2 in one recv of at most 536 bytes) and the header's
 *   source is the client; the start-up probe sends a v1 line first.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, constants, existsSync, openSync, readFileSync, rmSync } from 'node:fs';
import { access, chmod, chown, copyFile, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';

const POSTFIX = '/usr/sbin/postfix';
const DOVECOT = '/usr/sbin/dovecot';
const NOBODY = 65534;
/** Committed test certificates (test/fixtures/tls/make.sh). */
export const TLS_FIXTURES = fileURLToPath(new URL('../fixtures/tls/', import.meta.url));

export interface PostfixOptions {
  /** Offer STARTTLS (smtpd_tls_security_level = may) with the backend.test certificate. Default false. */
  tls?: boolean;
  /** Also listen on a second port with implicit TLS (smtpd_tls_wrappermode = yes), returned as `tlsPort`. Needs `tls`. */
  implicitTlsPort?: boolean;
  /**
   * Offer and require SMTP AUTH (PLAIN, LOGIN) through a private Dovecot auth service that knows exactly this
   * one user. Mail for y.test is then accepted only from authenticated sessions (unauthenticated RCPT → 554).
   */
  sasl?: { user: string; password: string };
  /** Relay everything accepted to this SMTP server, as an SMTP client with short retry timers (see above). */
  relayTo?: { host: string; port: number };
  /**
   * `smtpd_upstream_proxy_protocol = haproxy`: every connection must start with a PROXY header (v1 or v2), whose
   * source smtpd then takes as the client (Received, the log, mynetworks). The start-up probe sends one too.
   * Not with `implicitTlsPort` (its probe would have to send a header before TLS).
   */
  upstreamProxyProtocol?: boolean;
}

export interface PostfixSasl {
  user: string;
  password: string;
  /** Dovecot's auth socket, as given to smtpd_sasl_path. */
  socket: string;
  /** Dovecot's log (auth successes and failures with auth_verbose); still readable after stop(). */
  dovecotLog(): string;
}

export interface PostfixInstance {
  /** Plain SMTP port (offers STARTTLS when started with `tls: true`). */
  port: number;
  /** Implicit-TLS ("smtps") port; only with `{ tls: true, implicitTlsPort: true }`. */
  tlsPort?: number;
  /** Only with `sasl`: the Dovecot auth service behind smtpd's AUTH. */
  sasl?: PostfixSasl;
  host: '127.0.0.1';
  mailDir: string;
  dir: string;
  log(): string;
  waitForMessages(n: number, timeoutMs?: number): Promise<string[]>;
  /** Resolves with the log once `done(log)` holds, polled every 50 ms; throws with the log after `timeoutMs`. */
  waitForLog(done: (log: string) => boolean, timeoutMs?: number): Promise<string>;
  stop(): Promise<void>;
}

/** Throws (never skips) when a peer binary is missing, naming the Debian package to install. */
export async function requireBinary(name: string, debianPackage: string): Promise<string> {
  const dirs = name.includes('/')
    ? ['']
    : [...(process.env.PATH ?? '').split(path.delimiter), '/usr/sbin', '/sbin'].filter(Boolean);
  for (const dir of dirs) {
    const file = path.join(dir, name);
    try {
      await access(file, constants.X_OK);
      return file;
    } catch {}
  }
  throw new Error(`${name} not found: install it with "apt-get install -y ${debianPackage}"`);
}

/** A port that was free a moment ago; callers retry if someone else grabs it first. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** Resolves once `port` answers with a 220 greeting; `isDead` aborts the wait early. `proxyHeader` is sent first. */
export async function waitForBanner(port: number, timeoutMs: number, isDead: () => boolean, proxyHeader?: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = 'no attempt';
  while (Date.now() < deadline && !isDead()) {
    try {
      const line = await readGreeting(port, Math.max(100, deadline - Date.now()), false, proxyHeader);
      if (/^220[ -]/.test(line)) return;
      last = `greeting ${JSON.stringify(line)}`;
    } catch (err) {
      last = (err as Error).message;
    }
    await sleep(100);
  }
  throw new Error(isDead() ? 'process exited before answering 220' : `no 220 on port ${port} within ${timeoutMs} ms (${last})`);
}

/** Like waitForBanner, for a port that speaks TLS from the first byte (the certificate is not checked). */
async function waitForTlsBanner(port: number, timeoutMs: number, isDead: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = 'no attempt';
  while (Date.now() < deadline && !isDead()) {
    try {
      const line = await readGreeting(port, Math.max(100, deadline - Date.now()), true);
      if (/^220[ -]/.test(line)) return;
      last = `greeting ${JSON.stringify(line)}`;
    } catch (err) {
      last = (err as Error).message;
    }
    await sleep(100);
  }
  throw new Error(isDead() ? 'process exited before answering 220' : `no TLS 220 on port ${port} within ${timeoutMs} ms (${last})`);
}

function readGreeting(port: number, timeoutMs: number, implicitTls = false, proxyHeader?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = implicitTls
      ? tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false })
      : net.connect(port, '127.0.0.1');
    if (proxyHeader !== undefined) sock.write(proxyHeader);
    let buf = '';
    sock.setTimeout(timeoutMs, () => sock.destroy(new Error('timed out waiting for greeting')));
    sock.on('data', (chunk) => {
      buf += chunk.toString('latin1');
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      sock.end('QUIT\r\n');
      resolve(buf.slice(0, nl).replace(/\r$/, ''));
    });
    sock.on('error', reject);
    sock.on('close', () => reject(new Error('closed before greeting')));
  });
}

function mainCf(dir: string, withTls: boolean, saslSocket: string | undefined, relayTo?: { host: string; port: number }, upstreamProxy = false): string {
  const settings: Record<string, string> = {
    compatibility_level: '3.6',
    queue_directory: `${dir}/queue`,
    data_directory: `${dir}/data`,
    mail_owner: 'postfix',
    setgid_group: 'postdrop',
    inet_interfaces: '127.0.0.1',
    inet_protocols: 'ipv4',
    myhostname: 'backend.test',
    mydestination: '',
    mynetworks: '127.0.0.0/8',
    smtpd_authorized_xclient_hosts: '127.0.0.0/8',
    // Accept any client (XCLIENT may claim any ADDR) for y.test; reject other domains at once (5xx)
    // instead of queueing them for a delivery that can never happen.
    smtpd_relay_restrictions: 'reject_unauth_destination',
    smtpd_recipient_restrictions: '',
    smtpd_helo_required: 'no',
    smtpd_tls_security_level: 'none',
    ...(withTls && {
      smtpd_tls_security_level: 'may',
      smtpd_tls_cert_file: `${dir}/etc/backend.pem`,
      smtpd_tls_key_file: `${dir}/etc/backend.key`,
      // Received: ... (using TLSv1.3 with cipher ...), so tests can see that a hop was encrypted.
      smtpd_tls_received_header: 'yes',
      smtpd_tls_loglevel: '1',
    }),
    ...(saslSocket !== undefined && {
      smtpd_sasl_auth_enable: 'yes',
      smtpd_sasl_type: 'dovecot',
      smtpd_sasl_path: saslSocket,
      // Not noplaintext: the tests authenticate in the clear on loopback.
      smtpd_sasl_security_options: 'noanonymous',
      broken_sasl_auth_clients: 'no',
      // Authentication is required: without it RCPT gets 554 (reject), with it y.test is delivered.
      smtpd_relay_restrictions: 'permit_sasl_authenticated, reject',
      smtpd_recipient_restrictions: 'permit_sasl_authenticated, reject',
      // Received: ... (Authenticated sender: user), so tests see who authenticated.
      smtpd_sasl_authenticated_header: 'yes',
    }),
    virtual_mailbox_domains: 'y.test',
    virtual_mailbox_base: `${dir}/mail`,
    virtual_mailbox_maps: 'static:inbox/',
    virtual_uid_maps: `static:${NOBODY}`,
    virtual_gid_maps: `static:${NOBODY}`,
    alias_maps: '',
    alias_database: '',
    biff: 'no',
    maillog_file: '/dev/stdout',
    // Tests should fail fast, not wait out production timeouts or tarpits.
    smtpd_timeout: '30s',
    smtpd_error_sleep_time: '0',
    smtpd_soft_error_limit: '100',
    smtpd_hard_error_limit: '200',
    in_flow_delay: '0',
    queue_run_delay: '1s',
    minimal_backoff_time: '1s',
    maximal_backoff_time: '2s',
    ...(upstreamProxy && { smtpd_upstream_proxy_protocol: 'haproxy' }),
    // Last, so these replace the back-end settings above (an object spread keeps the first key's position).
    ...(relayTo && {
      myhostname: 'relay.test',
      relayhost: `[${relayTo.host}]:${relayTo.port}`,
      virtual_mailbox_domains: '',
      // Open relay for loopback clients only (the test submits from 127.0.0.1).
      smtpd_relay_restrictions: 'permit_mynetworks, reject',
      smtp_tls_security_level: 'none',
      // A deferred recipient must come back over a new connection, never a cached one.
      smtp_connection_cache_on_demand: 'no',
      // A stalled server under test fails the attempt quickly instead of after the 300 s defaults.
      smtp_connect_timeout: '5s',
      smtp_helo_timeout: '20s',
      smtp_mail_timeout: '20s',
      smtp_rcpt_timeout: '20s',
      smtp_data_init_timeout: '20s',
      smtp_data_xfer_timeout: '20s',
      smtp_data_done_timeout: '20s',
      smtp_quit_timeout: '10s',
    }),
  };
  return Object.entries(settings).map(([k, v]) => `${k} = ${v}`.trimEnd() + '\n').join('');
}

// Own master.cf rather than a copy of /etc/postfix/master.cf: nothing chrooted (a chroot would need
// /etc files copied into the queue directory), and independent of what the host has edited there.
function masterCf(port: number, tlsPort?: number): string {
  const smtps =
    tlsPort === undefined
      ? ''
      : `127.0.0.1:${tlsPort} inet n - n - - smtpd
  -o syslog_name=postfix/smtps
  -o smtpd_tls_wrappermode=yes
`;
  return `127.0.0.1:${port} inet n - n - - smtpd
${smtps}pickup    unix  n - n 60   1 pickup
cleanup   unix  n - n -    0 cleanup
qmgr      unix  n - n 300  1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n -    - trivial-rewrite
bounce    unix  - - n -    0 bounce
defer     unix  - - n -    0 bounce
trace     unix  - - n -    0 bounce
verify    unix  - - n -    1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -    - proxymap
proxywrite unix - - n -    1 proxymap
smtp      unix  - - n -    - smtp
relay     unix  - - n -    - smtp
showq     unix  n - n -    - showq
error     unix  - - n -    - error
retry     unix  - - n -    - error
discard   unix  - - n -    - discard
local     unix  - n n -    - local
virtual   unix  - n n -    - virtual
lmtp      unix  - - n -    - lmtp
anvil     unix  - - n -    1 anvil
scache    unix  - - n -    1 scache
postlog   unix-dgram n - n - 1 postlogd
`;
}

const cleanups = new Set<() => void>();
let hooked = false;

/**
 * Runs `fn` (synchronously) if the process exits or is interrupted while it is registered, so a failed or
 * cancelled test run leaves no daemons behind. Returns the unregister function.
 */
export function cleanupOnExit(fn: () => void): () => void {
  if (!hooked) {
    hooked = true;
    process.on('exit', runCleanups);
    for (const sig of ['SIGINT', 'SIGTERM'] as const) {
      process.once(sig, () => {
        runCleanups();
        process.kill(process.pid, sig); // listener is gone: default action (or the test runner's) applies
      });
    }
  }
  cleanups.add(fn);
  return () => cleanups.delete(fn);
}

function runCleanups(): void {
  for (const fn of cleanups) {
    try {
      fn();
    } catch {}
  }
  cleanups.clear();
}

function readMasterPid(dir: string): number | undefined {
  try {
    const pid = Number.parseInt(readFileSync(`${dir}/queue/pid/master.pid`, 'utf8').trim(), 10);
    return pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** SIGKILLs the master's process group (it is a session leader, so this takes its daemons too) and our child. */
function killAll(dir: string, child: ChildProcess): void {
  const pid = readMasterPid(dir);
  for (const target of [pid && -pid, child.pid && -child.pid]) {
    if (!target) continue;
    try {
      process.kill(target, 'SIGKILL');
    } catch {}
  }
}

async function waitUntil(cond: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() >= deadline) return false;
    await sleep(50);
  }
  return true;
}

export async function startPostfix(opts: PostfixOptions = {}): Promise<PostfixInstance> {
  if (process.getuid?.() !== 0) throw new Error('startPostfix needs root (Postfix drops privileges itself)');
  if (opts.implicitTlsPort && !opts.tls) throw new Error('startPostfix: implicitTlsPort needs tls: true');
  await requireBinary(POSTFIX, 'postfix');
  if (opts.sasl) await requireBinary(DOVECOT, 'dovecot-core');
  // SASL makes smtpd refuse unauthenticated relaying; relay mode is meant for plain loopback submission.
  if (opts.sasl && opts.relayTo) throw new Error('startPostfix: relayTo cannot be combined with sasl');
  if (opts.upstreamProxyProtocol && opts.implicitTlsPort) throw new Error('startPostfix: upstreamProxyProtocol cannot be combined with implicitTlsPort');
  for (let attempt = 1; ; attempt++) {
    try {
      const port = await freePort();
      let tlsPort: number | undefined;
      while (opts.implicitTlsPort && (tlsPort === undefined || tlsPort === port)) tlsPort = await freePort();
      return await startOnce(port, !!opts.tls, tlsPort, opts.sasl, opts.relayTo, !!opts.upstreamProxyProtocol);
    } catch (err) {
      if (attempt >= 3 || !/Address already in use/.test((err as Error).message)) throw err;
    }
  }
}

/**
 * dovecot.conf for an auth-only Dovecot (2.3): no mail protocols, one passwd-file user, everything it writes
 * (base_dir sockets, state_dir, log) inside <dir>/dovecot, so instances never share anything.
 */
function dovecotConf(ddir: string, socket: string): string {
  return `protocols =
# Own process titles (dovecot-postern-test/auth …) so a leftover is easy to spot.
instance_name = postern-test
base_dir = ${ddir}/run
state_dir = ${ddir}/state
log_path = ${ddir}/dovecot.log
info_log_path = ${ddir}/dovecot.log
ssl = no
# Postfix tells the auth service the session is not TLS: PLAIN/LOGIN in the clear must still be allowed.
disable_plaintext_auth = no
auth_mechanisms = plain login
# Log failed logins; and answer them at once (the 2 s default slows every negative test down).
auth_verbose = yes
auth_failure_delay = 0
# Both users come with dovecot-core; set here so the config does not depend on the defaults.
default_internal_user = dovecot
default_login_user = dovenull
passdb {
  driver = passwd-file
  args = ${ddir}/users
}
userdb {
  driver = static
  args = uid=${NOBODY} gid=${NOBODY} home=/nonexistent
}
service auth {
  unix_listener ${socket} {
    mode = 0666
  }
}
`;
}

interface Dovecot {
  socket: string;
  log(): string;
  /** SIGKILLs dovecot's process group, synchronously (exit hooks). */
  kill(): void;
  stop(): Promise<void>;
}

function dovecotSocket(dir: string): string {
  return path.join(dir, 'dovecot', 'auth');
}

/** Starts `dovecot -F` in <dir>/dovecot and waits (bounded) until its auth socket exists. */
async function startDovecot(dir: string, sasl: { user: string; password: string }): Promise<Dovecot> {
  if (sasl.user === '' || /[:\n\r]/.test(sasl.user + sasl.password)) {
    throw new Error('startPostfix: sasl.user must be non-empty, and user and password must not contain ":" or line breaks (passwd-file)');
  }
  const ddir = path.join(dir, 'dovecot');
  const socket = dovecotSocket(dir);
  const conf = path.join(ddir, 'dovecot.conf');
  // 0755: smtpd (user postfix) must reach the socket, the auth process (user dovecot) must read `users`.
  await mkdir(ddir, { mode: 0o755 });
  await mkdir(path.join(ddir, 'state'), { mode: 0o755 });
  await writeFile(path.join(ddir, 'users'), `${sasl.user}:{PLAIN}${sasl.password}\n`, { mode: 0o644 });
  await writeFile(conf, dovecotConf(ddir, socket));

  // Errors before log_path is open (a bad config) go to stderr: same file.
  const logFile = path.join(ddir, 'dovecot.log');
  const fd = openSync(logFile, 'a');
  // detached: dovecot's own process group (master + auth, anvil, log, config), killable as one.
  const child = spawn(DOVECOT, ['-F', '-c', conf], { stdio: ['ignore', fd, fd], detached: true });
  closeSync(fd);
  let exited = false;
  child.on('exit', () => (exited = true));
  child.on('error', () => (exited = true)); // spawn failed
  let finalLog: string | undefined;
  const log = () => finalLog ?? (existsSync(logFile) ? readFileSync(logFile, 'utf8') : '');
  const kill = () => {
    if (!child.pid) return;
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {}
  };
  const unregister = cleanupOnExit(kill);
  let stopped: Promise<void> | undefined;
  const stop = () =>
    (stopped ??= (async () => {
      // SIGTERM: the master stops its services and exits (takes about 1 s); SIGKILL the group if it hangs.
      if (!exited) {
        try {
          child.kill('SIGTERM');
        } catch {}
      }
      if (!(await waitUntil(() => exited, 5_000))) {
        kill();
        await waitUntil(() => exited, 2_000);
      }
      kill(); // any service process the master left behind
      finalLog = log();
      unregister();
    })());

  if (!(await waitUntil(() => exited || existsSync(socket), 10_000)) || exited) {
    await stop();
    throw new Error(`Dovecot did not start: ${exited ? 'it exited' : `no ${socket} within 10000 ms`}\n--- dovecot log ---\n${log()}`);
  }
  return { socket, log, kill, stop };
}

async function startOnce(
  port: number,
  withTls: boolean,
  tlsPort: number | undefined,
  sasl: { user: string; password: string } | undefined,
  relayTo?: { host: string; port: number },
  upstreamProxy = false,
): Promise<PostfixInstance> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'postern-postfix-'));
  const etc = path.join(dir, 'etc');
  const mailDir = path.join(dir, 'mail', 'inbox', 'new');
  // Daemons run as postfix/nobody and must traverse the 0700 mkdtemp directory.
  await chmod(dir, 0o755);
  await mkdir(etc);
  await mkdir(path.join(dir, 'queue')); // postfix-script only fills in its subdirectories
  await mkdir(path.join(dir, 'data'));
  await chown(path.join(dir, 'data'), ...postfixIds());
  await mkdir(path.join(dir, 'mail'));
  await chown(path.join(dir, 'mail'), NOBODY, NOBODY);
  if (withTls) {
    for (const [file, mode] of [['backend.pem', 0o644], ['backend.key', 0o600]] as const) {
      await copyFile(path.join(TLS_FIXTURES, file), path.join(etc, file));
      await chmod(path.join(etc, file), mode);
    }
  }
  await writeFile(path.join(etc, 'main.cf'), mainCf(dir, withTls, sasl && dovecotSocket(dir), relayTo, upstreamProxy));
  await writeFile(path.join(etc, 'master.cf'), masterCf(port, tlsPort));
  // Dovecot first: smtpd asks the auth service for its mechanisms as soon as a client connects.
  let dovecot: Dovecot | undefined;
  if (sasl) {
    try {
      dovecot = await startDovecot(dir, sasl);
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  // stdout must be a file (or pipe): Node's 'pipe' stdio is a socketpair, and open("/dev/stdout") on a socket
  // fails with ENXIO, so postlog/postlogd could not write maillog_file and `postfix start-fg` exits 1 silently.
  const logFile = path.join(dir, 'maillog');
  const fd = openSync(logFile, 'a');
  // detached: our child (postfix-script) gets its own group, so killAll() cannot hit the test runner.
  const child = spawn(POSTFIX, ['-c', etc, 'start-fg'], { stdio: ['ignore', fd, fd], detached: true });
  closeSync(fd);
  let finalLog: string | undefined;
  const log = () => finalLog ?? readFileSync(logFile, 'utf8');
  let exited = false;
  child.on('exit', () => (exited = true));
  const unregister = cleanupOnExit(() => {
    killAll(dir, child);
    dovecot?.kill(); // also registered on its own; harmless twice
    rmSync(dir, { recursive: true, force: true });
  });

  let stopped: Promise<void> | undefined;
  const stop = () =>
    (stopped ??= (async () => {
      const pid = readMasterPid(dir);
      // SIGTERM makes the master terminate its daemons and exit; SIGKILL if it takes too long.
      if (pid && alive(pid)) {
        try {
          process.kill(pid, 'SIGTERM');
        } catch {}
      }
      const clean = await waitUntil(() => exited && !(pid && alive(pid)), 10_000);
      if (!clean) {
        killAll(dir, child);
        await waitUntil(() => exited, 2_000);
      }
      // After Postfix, so no smtpd is left talking to the auth socket.
      await dovecot?.stop();
      finalLog = log();
      await rm(dir, { recursive: true, force: true });
      unregister();
    })());

  try {
    await waitForBanner(port, 20_000, () => exited, upstreamProxy ? `PROXY TCP4 127.0.0.1 127.0.0.1 1 ${port}\r\n` : undefined);
    if (tlsPort !== undefined) await waitForTlsBanner(tlsPort, 10_000, () => exited);
  } catch (err) {
    await stop();
    throw new Error(`Postfix did not start: ${(err as Error).message}\n--- log ---\n${log()}`);
  }

  return {
    port,
    ...(tlsPort !== undefined && { tlsPort }),
    ...(sasl && dovecot && { sasl: { user: sasl.user, password: sasl.password, socket: dovecot.socket, dovecotLog: dovecot.log } }),
    host: '127.0.0.1',
    mailDir,
    dir,
    log,
    stop,
    async waitForMessages(n, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const files = await readdir(mailDir).catch(() => [] as string[]);
        if (files.length >= n) return files.sort().map((f) => path.join(mailDir, f));
        if (Date.now() >= deadline) {
          throw new Error(`expected ${n} message(s) in ${mailDir}, found ${files.length} after ${timeoutMs} ms\n--- log ---\n${log()}`);
        }
        await sleep(50);
      }
    },
    async waitForLog(done, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const text = log();
        if (done(text)) return text;
        if (Date.now() >= deadline) throw new Error(`log condition not met after ${timeoutMs} ms\n--- log ---\n${text}`);
        await sleep(50);
      }
    },
  };
}

function postfixIds(): [number, number] {
  const line = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('postfix:'));
  const [, , uid, gid] = line?.split(':') ?? [];
  if (uid === undefined || gid === undefined) throw new Error('no "postfix" user: install it with "apt-get install -y postfix"');
  return [Number(uid), Number(gid)];
}
