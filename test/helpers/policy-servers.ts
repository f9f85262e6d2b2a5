/**
 * Policy servers for the policy client's tests, all on loopback: scripted ones (node), and the real
 * Debian peers — postgrey, postfix-policyd-spf-python (with dnsmasq as its DNS server).
 *
 * Real peers (verified on Debian 12: postgrey 1.37, policyd-spf 3.0.4 with py3dns 3.2.1, dnsmasq 2.90):
 * - postgrey runs in the foreground (`postgrey --inet=127.0.0.1:PORT --dbdir=DIR --delay=N --pidfile=...`),
 *   with empty whitelists (/dev/null) and --hostname=postgrey.test so its header text is known. As root it
 *   drops to user postgrey, so the db directory is chowned to it. It serves many requests per connection.
 * - policyd-spf speaks the protocol on stdin/stdout, one process per connection, as Postfix's spawn(8) runs
 *   it: spawnPolicydSpf() listens on a unix socket and starts one per accepted connection.
 * - policyd-spf has no resolver setting: pyspf uses pydns, which takes its servers from /etc/resolv.conf and
 *   port 53. So the process is started as `python3 -c BOOT`, where BOOT sets pydns's defaults (server
 *   127.0.0.1, the test's dnsmasq port) and then runs /usr/bin/policyd-spf itself (runpy), unchanged, with
 *   a test config file. Nothing system-wide is touched and port 53 is not needed.
 * - dnsmasq: `--keep-in-foreground --port=PORT --listen-address=127.0.0.1 --bind-interfaces --no-resolv
 *   --no-hosts --local=/test/ --txt-record=...`: answers the configured TXT records, NXDOMAIN for any other
 *   name under .test, and forwards nothing.
 * A missing peer throws (requireBinary), it never skips.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chownSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { cleanupOnExit, freePort, requireBinary } from './postfix.js';

/** A request block as a scripted server received it. */
export interface ReceivedRequest {
  raw: Buffer;
  attrs: Map<string, string>;
  /** Which connection (1-based) it came on, and its position on that connection. */
  connection: number;
  index: number;
}

export interface ScriptedServer {
  /** `tcp:127.0.0.1:PORT` or `unix:/path`. */
  address: string;
  port: number;
  requests: ReceivedRequest[];
  connections: number;
  /** Sockets open now. */
  open: Set<net.Socket>;
  close(): Promise<void>;
}

/**
 * A policy server whose answers the test scripts: `onRequest` gets each complete request block (up to the
 * empty line) and the socket, and writes whatever it likes (or nothing, or closes).
 */
export async function scriptedPolicyServer(onRequest: (req: ReceivedRequest, socket: net.Socket) => void, opts: { unixPath?: string } = {}): Promise<ScriptedServer> {
  const state: ScriptedServer = { address: '', port: 0, requests: [], connections: 0, open: new Set(), close: async () => {} };
  const srv = net.createServer((socket) => {
    const connection = ++state.connections;
    state.open.add(socket);
    socket.on('close', () => state.open.delete(socket));
    socket.on('error', () => {});
    let buf = Buffer.alloc(0);
    let index = 0;
    socket.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      for (;;) {
        const end = buf.indexOf('\n\n');
        if (end === -1) return;
        const raw = buf.subarray(0, end + 2);
        buf = buf.subarray(end + 2);
        const attrs = new Map<string, string>();
        for (const line of raw.toString('utf8').split('\n')) {
          const eq = line.indexOf('=');
          if (eq > 0) attrs.set(line.slice(0, eq), line.slice(eq + 1));
        }
        const req = { raw, attrs, connection, index: ++index };
        state.requests.push(req);
        if (!socket.destroyed) onRequest(req, socket);
      }
    });
  });
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    if (opts.unixPath) srv.listen(opts.unixPath, resolve);
    else srv.listen(0, '127.0.0.1', resolve);
  });
  if (opts.unixPath) {
    state.address = `unix:${opts.unixPath}`;
  } else {
    state.port = (srv.address() as net.AddressInfo).port;
    state.address = `tcp:127.0.0.1:${state.port}`;
  }
  state.close = () => new Promise<void>((resolve) => {
    for (const s of state.open) s.destroy();
    srv.close(() => resolve());
  });
  return state;
}

interface Daemon {
  child: ChildProcess;
  exited: Promise<void>;
  output(): string;
  stop(): Promise<void>;
}

function startDaemon(file: string, args: string[], tmp: string): Daemon {
  // LC_ALL=C: postgrey's X-Greylist date is strftime()'d in the locale.
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true, env: { ...process.env, LC_ALL: 'C' } });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out = (out + d.toString('utf8')).slice(-20_000)));
  child.stderr!.on('data', (d: Buffer) => (out = (out + d.toString('utf8')).slice(-20_000)));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const unregister = cleanupOnExit(() => {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {}
  });
  return {
    child,
    exited,
    output: () => out,
    async stop() {
      unregister();
      if (child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(-child.pid!, 'SIGTERM');
        } catch {}
        const gone = await Promise.race([exited.then(() => true), sleep(5000, undefined, { ref: false }).then(() => false)]);
        if (!gone) {
          try {
            process.kill(-child.pid!, 'SIGKILL');
          } catch {}
          await exited;
        }
      }
      await rm(tmp, { recursive: true, force: true });
    },
  };
}

/** Resolves once `port` accepts a TCP connection; throws if `isDead()` or after `timeoutMs`. */
async function waitForPort(port: number, timeoutMs: number, isDead: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (isDead()) throw new Error(`${what} exited before listening`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.setTimeout(1000, () => s.destroy());
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
      s.once('close', () => resolve(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`${what} not listening on port ${port} within ${timeoutMs} ms`);
}

export interface Postgrey {
  address: string;
  port: number;
  /** Its stderr (one line per decision: `action=greylist, reason=new, ...`). */
  log(): string;
  stop(): Promise<void>;
}

/** A private postgrey on 127.0.0.1 (its own db directory, empty whitelists). */
export async function startPostgrey(opts: { delay: number }): Promise<Postgrey> {
  const bin = await requireBinary('postgrey', 'postgrey');
  for (let attempt = 1; ; attempt++) {
    const tmp = await mkdtemp(path.join(os.tmpdir(), 'postern-postgrey-'));
    if (process.getuid?.() === 0) chownSync(tmp, uidOf('postgrey'), gidOf('postgrey'));
    const port = await freePort();
    const d = startDaemon(bin, [
      `--inet=127.0.0.1:${port}`, `--dbdir=${tmp}`, `--delay=${opts.delay}`, `--pidfile=${tmp}/postgrey.pid`,
      '--hostname=postgrey.test', '--whitelist-clients=/dev/null', '--whitelist-recipients=/dev/null',
      ...(process.getuid?.() === 0 ? [] : [`--user=${os.userInfo().username}`]),
    ], tmp);
    try {
      await waitForPort(port, 30_000, () => d.child.exitCode !== null || d.child.signalCode !== null, 'postgrey');
    } catch (err) {
      const log = d.output();
      await d.stop();
      if (attempt < 3 && /in use/i.test(log)) continue;
      throw new Error(`${(err as Error).message}\n${log}`);
    }
    return { address: `tcp:127.0.0.1:${port}`, port, log: d.output, stop: d.stop };
  }
}

function passwdEntry(user: string): string[] {
  const line = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith(`${user}:`));
  if (!line) throw new Error(`user ${user} missing: install it with "apt-get install -y postgrey"`);
  return line.split(':');
}
const uidOf = (u: string) => Number(passwdEntry(u)[2]);
const gidOf = (u: string) => Number(passwdEntry(u)[3]);

export interface Dnsmasq {
  port: number;
  log(): string;
  stop(): Promise<void>;
}

/** A private dnsmasq on 127.0.0.1:PORT (UDP and TCP) answering `txt` records and NXDOMAIN for the rest of .test. */
export async function startDnsmasq(txt: Record<string, string>): Promise<Dnsmasq> {
  const bin = await requireBinary('dnsmasq', 'dnsmasq-base');
  for (let attempt = 1; ; attempt++) {
    const tmp = await mkdtemp(path.join(os.tmpdir(), 'postern-dnsmasq-'));
    const port = await freePort();
    const d = startDaemon(bin, [
      '--keep-in-foreground', '--conf-file=/dev/null', `--port=${port}`, '--listen-address=127.0.0.1', '--bind-interfaces',
      '--no-resolv', '--no-hosts', '--no-poll', '--local=/test/', '--pid-file=', '--log-facility=-', '--log-queries',
      ...(process.getuid?.() === 0 ? ['--user=nobody'] : []),
      ...Object.entries(txt).map(([name, value]) => `--txt-record=${name},${value}`),
    ], tmp);
    try {
      // dnsmasq binds every socket before it logs "started"; TCP answering proves it listens.
      await waitForPort(port, 15_000, () => d.child.exitCode !== null || d.child.signalCode !== null, 'dnsmasq');
    } catch (err) {
      const log = d.output();
      await d.stop();
      if (attempt < 3 && /in use/i.test(log)) continue;
      throw new Error(`${(err as Error).message}\n${log}`);
    }
    return { port, log: d.output, stop: d.stop };
  }
}

export interface PolicydSpf {
  /** `unix:/tmp/.../policyd-spf.sock`, or `tcp:127.0.0.1:PORT` with `tcp: true`. */
  address: string;
  /** The TCP port with `tcp: true`, else 0. */
  port: number;
  /** Processes started so far (one per connection). */
  spawned(): number;
  /** The processes' stderr. */
  log(): string;
  stop(): Promise<void>;
}

const spfConf = (skipAddresses: string): string => `debugLevel = 1
TestOnly = 1
HELO_reject = Fail
Mail_From_reject = Fail
PermError_reject = False
TempError_Defer = False
skip_addresses = ${skipAddresses}
`;

/**
 * policyd-spf behind a unix socket, one process per connection (Postfix spawn(8) style), resolving through
 * 127.0.0.1:dnsPort. Its config: the Debian default, except that skip_addresses is only loopback.
 * - `tcp: true`: listen on 127.0.0.1 (an ephemeral port) instead of a unix socket.
 * - `skipAddresses`: policyd-spf's skip_addresses (default `127.0.0.0/8,::1`); a test whose clients come
 *   from 127.0.0.1 sets it to `::1` so that their SPF is really checked.
 */
export async function spawnPolicydSpf(opts: { dnsPort: number; tcp?: boolean; skipAddresses?: string }): Promise<PolicydSpf> {
  const script = await requireBinary('/usr/bin/policyd-spf', 'postfix-policyd-spf-python');
  const python = (/^#!\s*(\S+)/.exec(readFileSync(script, 'utf8'))?.[1]) ?? '/usr/bin/python3';
  await requireBinary(python, 'python3');
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'postern-spf-'));
  const conf = path.join(tmp, 'policyd-spf.conf');
  await writeFile(conf, spfConf(opts.skipAddresses ?? '127.0.0.0/8,::1'));
  const boot = [
    'import sys, runpy, DNS',
    `DNS.Base.defaults['server'][:] = ['127.0.0.1']`,
    `DNS.Base.defaults['port'] = ${opts.dnsPort}`,
    `sys.argv = [${JSON.stringify(script)}, ${JSON.stringify(conf)}]`,
    `runpy.run_path(${JSON.stringify(script)}, run_name='__main__')`,
  ].join('\n');
  const children = new Set<ChildProcess>();
  let spawned = 0;
  let log = '';
  const sock = path.join(tmp, 'policyd-spf.sock');
  const conns = new Set<net.Socket>();
  const srv = net.createServer((conn) => {
    spawned++;
    conns.add(conn);
    conn.once('close', () => conns.delete(conn));
    const child = spawn(python, ['-c', boot], { stdio: ['pipe', 'pipe', 'pipe'], env: { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8' } });
    children.add(child);
    child.once('exit', () => {
      children.delete(child);
      conn.end();
    });
    child.stderr!.on('data', (d: Buffer) => (log = (log + d.toString('utf8')).slice(-20_000)));
    child.on('error', (e) => (log += `spawn: ${e.message}\n`));
    conn.on('error', () => {});
    child.stdin!.on('error', () => {});
    conn.pipe(child.stdin!);
    child.stdout!.pipe(conn);
    conn.on('close', () => child.kill('SIGTERM'));
  });
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    if (opts.tcp) srv.listen(0, '127.0.0.1', resolve);
    else srv.listen(sock, resolve);
  });
  const port = opts.tcp ? (srv.address() as net.AddressInfo).port : 0;
  const unregister = cleanupOnExit(() => {
    for (const c of children) c.kill('SIGKILL');
  });
  return {
    address: opts.tcp ? `tcp:127.0.0.1:${port}` : `unix:${sock}`,
    port,
    spawned: () => spawned,
    log: () => log,
    async stop() {
      unregister();
      for (const c of conns) c.destroy();
      await new Promise<void>((resolve) => srv.close(() => resolve()));
      await Promise.all([...children].map((c) => new Promise<void>((resolve) => {
        if (c.exitCode !== null || c.signalCode !== null) return resolve();
        c.once('exit', () => resolve());
        c.kill('SIGKILL');
      })));
      await rm(tmp, { recursive: true, force: true });
    },
  };
}
