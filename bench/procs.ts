/**
 * The processes of a benchmark run: smtp-sink, the nginx auth responder, nginx mail, HAProxy in
 * TCP mode, the policy responder, and Postern (once per proxy_mode, once with the policy check and the limits on, once
 * with the metrics listener on, and once each routed statically and through a pool).
 * Each is a separate process so its CPU and memory can be read from /proc.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const root = path.resolve(import.meta.dirname, '..');
const work = mkdtempSync(path.join(os.tmpdir(), 'postern-bench-'));
const CLK_TCK = 100;

export interface Proc {
  port: number;
  /** The process whose CPU and memory are measured (with its children). */
  pid: number;
  /** The listener with STARTTLS on (the test certificate), when the run has the STARTTLS scenario. */
  tlsPort?: number;
  stop(): Promise<void>;
}

/** The test server certificate (proxy.test, 127.0.0.1; signed by test/fixtures/tls/ca.pem). */
const CERT = path.join(root, 'test/fixtures/tls/server.pem');
const KEY = path.join(root, 'test/fixtures/tls/server.key');

/** Installs the Debian packages the benchmark needs, when one is missing (never by hand). */
export function ensurePackages(): void {
  const need: string[] = [];
  if (!existsSync('/usr/sbin/smtp-source') || !existsSync('/usr/sbin/smtp-sink')) need.push('postfix');
  if (!existsSync('/usr/sbin/nginx')) need.push('nginx-light');
  if (!existsSync('/usr/lib/nginx/modules/ngx_mail_module.so')) need.push('libnginx-mod-mail');
  if (!existsSync('/usr/sbin/haproxy')) need.push('haproxy');
  if (need.length === 0) return;
  process.stderr.write(`installing ${need.join(' ')}\n`);
  execFileSync('apt-get', ['update', '-qq'], { stdio: 'inherit' });
  execFileSync('apt-get', ['install', '-y', '-qq', ...need], { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

async function waitPort(port: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((r) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.destroy();
        r(true);
      });
      s.on('error', () => r(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function stopper(child: ChildProcess): () => Promise<void> {
  return () =>
    new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('exit', () => resolve());
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), 5000).unref();
    });
}

/** smtp-sink with running counters (-c) so delivered messages can be counted. */
export async function startSink(): Promise<Proc & { received(): number; sessions(): number; waitReceived(n: number, timeoutMs: number): Promise<number> }> {
  const port = await freePort();
  // -m: more simultaneous sessions than the default 256; -c: counters on stdout.
  const child = spawn('/usr/sbin/smtp-sink', ['-u', 'nobody', '-m', '20000', '-c', `127.0.0.1:${port}`, '4096'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let last = '';
  child.stdout!.on('data', (d: Buffer) => {
    last = (last + d.toString()).slice(-200);
  });
  await waitPort(port);
  // smtp-sink -c rewrites one line: "sess=N quit=N mesg=N\r".
  const received = (): number => {
    const all = [...last.matchAll(/mesg=(\d+)/g)];
    return all.length ? Number(all.at(-1)![1]) : 0;
  };
  /** Sessions (connections) smtp-sink has counted so far. */
  const sessions = (): number => {
    const all = [...last.matchAll(/sess=(\d+)/g)];
    return all.length ? Number(all.at(-1)![1]) : 0;
  };
  return {
    port,
    pid: child.pid!,
    stop: stopper(child),
    received,
    sessions,
    async waitReceived(n, timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      while (received() < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      return received();
    },
  };
}

function nginx(name: string, conf: string, port: number): Promise<Proc> {
  const dir = path.join(work, name);
  execFileSync('mkdir', ['-p', dir]);
  const file = path.join(dir, 'nginx.conf');
  writeFileSync(file, conf.replaceAll('@DIR@', dir));
  const child = spawn('/usr/sbin/nginx', ['-p', dir, '-c', file, '-e', path.join(dir, 'error.log')], { stdio: 'inherit' });
  return waitPort(port).then(() => ({ port, pid: child.pid!, stop: stopper(child) }));
}

/** The shared auth_http responder: an nginx http{} block answering a static route. */
export async function startAuthResponder(sinkPort: number): Promise<Proc> {
  const port = await freePort();
  return nginx('auth', `
daemon off;
worker_processes 1;
pid @DIR@/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:${port} backlog=4096;
    keepalive_requests 100000;
    location / {
      add_header Auth-Status OK;
      add_header Auth-Server 127.0.0.1;
      add_header Auth-Port ${sinkPort};
      return 204;
    }
  }
}
`, port);
}

/**
 * nginx's mail proxy as the seed setup has it: smtp_auth none, xclient off. `tls`: a second
 * server block, the same but `starttls on` with the test certificate (nginx's defaults otherwise:
 * no session cache, as Postern's listener).
 */
export async function startNginxMail(authPort: number, workers: number, tls = false): Promise<Proc> {
  const port = await freePort();
  const tlsPort = tls ? await freePort() : 0;
  const tlsServer = tls
    ? `server { listen 127.0.0.1:${tlsPort} backlog=4096; protocol smtp; starttls on; ssl_certificate ${CERT}; ssl_certificate_key ${KEY}; }`
    : '';
  const proc = await nginx('mail', `
load_module /usr/lib/nginx/modules/ngx_mail_module.so;
daemon off;
worker_processes ${workers};
worker_rlimit_nofile 30000;
pid @DIR@/nginx.pid;
events { worker_connections 20000; }
mail {
  server_name proxy.test;
  auth_http 127.0.0.1:${authPort}/auth;
  xclient off;
  smtp_auth none;
  smtp_capabilities PIPELINING 8BITMIME "SIZE 10485760" ENHANCEDSTATUSCODES;
  server { listen 127.0.0.1:${port} backlog=4096; protocol smtp; }
  ${tlsServer}
}
`, port);
  if (tls) await waitPort(tlsPort);
  return tls ? { ...proc, tlsPort } : proc;
}

/**
 * HAProxy in TCP mode in front of the sink: the floor for any proxy (no SMTP, no auth, one
 * connect per session). One thread (`nbthread 1`), as nginx runs one worker and Postern one
 * worker by default; `threads` follows BENCH_WORKERS. No logging (nginx mail logs only errors
 * too). `-db`: in the foreground, one process, so its CPU is this process's.
 */
export async function startHaproxy(sinkPort: number, threads: number): Promise<Proc> {
  const port = await freePort();
  const dir = path.join(work, 'haproxy');
  execFileSync('mkdir', ['-p', dir]);
  const file = path.join(dir, 'haproxy.cfg');
  writeFileSync(file, `global
  nbthread ${threads}
  # Each connection holds two descriptors (client and sink): within a 20000-descriptor hard limit
  # (HAProxy raises its soft limit to what maxconn needs; the hard one needs CAP_SYS_RESOURCE).
  maxconn 9000

defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s

frontend smtp
  bind 127.0.0.1:${port}
  backlog 4096
  default_backend sink

backend sink
  balance roundrobin
  server s1 127.0.0.1:${sinkPort}
`);
  execFileSync('/usr/sbin/haproxy', ['-c', '-q', '-f', file]);
  const child = spawn('/usr/sbin/haproxy', ['-db', '-f', file], { stdio: ['ignore', 'ignore', 'inherit'] });
  await waitPort(port);
  return { port, pid: child.pid!, stop: stopper(child) };
}

/** bench/node-relay.mjs in front of the sink: what a proxy on Node's net streams costs at least. */
export async function startNodeRelay(sinkPort: number): Promise<Proc> {
  const port = await freePort();
  const child = spawn(process.execPath, [path.join(root, 'bench/node-relay.mjs'), String(port), String(sinkPort)], { stdio: ['ignore', 'ignore', 'inherit'] });
  await waitPort(port);
  return { port, pid: child.pid!, stop: stopper(child) };
}

/**
 * The Postfix policy server for `postern-checks` (bench/policy-responder.ts, its own process so
 * its CPU is counted apart): answers DUNNO to every request. `count()` asks it how many requests
 * it answered and how many lines had no `=` (Postern's malformed ones).
 */
export async function startPolicyResponder(): Promise<Proc & { count(): Promise<{ requests: number; malformed: number }> }> {
  const port = await freePort();
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(root, 'bench/policy-responder.ts'), String(port)], {
    cwd: root,
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  let out = '';
  const waiting: ((line: string) => void)[] = [];
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (d: string) => {
    out += d;
    let nl: number;
    while ((nl = out.indexOf('\n')) !== -1) {
      const line = out.slice(0, nl);
      out = out.slice(nl + 1);
      waiting.shift()?.(line);
    }
  });
  await waitPort(port);
  const stop = stopper(child);
  return {
    port,
    pid: child.pid!,
    stop: () => {
      child.stdin!.end();
      return stop();
    },
    count: () =>
      new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('the policy responder did not answer `count`')), 5000);
        waiting.push((line) => {
          clearTimeout(t);
          const m = /^requests=(\d+) malformed=(\d+)$/.exec(line);
          if (!m) return reject(new Error(`policy responder: unexpected ${JSON.stringify(line)}`));
          resolve({ requests: Number(m[1]), malformed: Number(m[2]) });
        });
        child.stdin!.write('count\n');
      }),
  };
}

export type ProxyMode = 'session' | 'transaction';

/**
 * How a Postern finds the sink: by asking the nginx auth responder (as nginx does), by
 * `route.static: host:port`, or by `route.static: <pool>` naming a one-server pool (no active
 * checks), so that pool ÷ static is the cost of the pool path alone.
 */
export type PosternRoute = { kind: 'auth_http'; authPort: number } | { kind: 'static' | 'pool'; sinkPort: number };

function routeYaml(r: PosternRoute): string {
  switch (r.kind) {
    case 'auth_http':
      return `route:\n  auth_http:\n    url: http://127.0.0.1:${r.authPort}/auth\n`;
    case 'static':
      return `route:\n  static: 127.0.0.1:${r.sinkPort}\n`;
    case 'pool':
      return `pools:\n  one:\n    servers: ["127.0.0.1:${r.sinkPort}"]\n    health: { enabled: false }\nroute:\n  static: one\n`;
  }
}

/**
 * `postern-checks`' additions: one Postfix policy server asked at every RCPT, and the per-client
 * limits on (connection and recipient rates, connections held) in the default memory store, all
 * set so high that nothing is ever refused: what they cost, not what they refuse.
 */
export interface PosternChecks {
  policyPort: number;
}

function checksYaml(c: PosternChecks | undefined): string {
  if (!c) return '';
  return `checks:
  policy:
    - server: tcp:127.0.0.1:${c.policyPort}
limits:
  store: memory
  max_connections_per_client: 100000
  connection_rate: { max: 1000000, per: 1m }
  recipient_rate: { max: 1000000, per: 1m }
`;
}

/**
 * Postern logs every session (its access log, on by default) in every run: a target met with
 * the access log off would be met by turning off a safety property. BENCH_ACCESS_LOG=0 turns it
 * off, to see what it costs (about 0.85× the CPU per message at 4 KiB in transaction mode).
 */
const ACCESS_LOG = process.env.BENCH_ACCESS_LOG !== '0';

/**
 * One Postern process. Each instance has its own config file and its own log file (Postern logs
 * JSON lines on stdout: the access log, and anything that goes wrong), so several
 * (`proxy_mode: session` and `transaction`, routed by the auth service, statically or through a
 * pool) can run side by side and a lost message can be shown with the log lines of the Postern
 * that lost it.
 */
export async function startPostern(
  route: PosternRoute,
  workers: number,
  o: {
    name?: string;
    proxyMode?: ProxyMode;
    checks?: PosternChecks;
    /** `metrics: { listen: 127.0.0.1:<port> }` (postern-metrics). */
    metricsPort?: number;
    /** A second listener with `starttls: on` and the test certificate (the STARTTLS scenario). */
    tls?: boolean;
    /** `backend_reuse: { enabled: true }` (postern-reuse; transaction mode only). */
    backendReuse?: boolean;
  } = {},
): Promise<Proc & { log: string }> {
  const name = o.name ?? 'postern';
  const port = await freePort();
  const tlsPort = o.tls ? await freePort() : 0;
  const file = path.join(work, `${name}.yaml`);
  const log = path.join(work, `${name}.log`);
  writeFileSync(file, `server_name: proxy.test
listen: ["127.0.0.1:${port}"${o.tls ? `, { address: "127.0.0.1:${tlsPort}", starttls: on }` : ''}]
${o.tls ? `tls:\n  certificates: [{ cert: ${CERT}, key: ${KEY} }]\n` : ''}workers: ${workers}
${routeYaml(route)}xclient: false
proxy_mode: ${o.proxyMode ?? 'session'}
log: { level: ${ACCESS_LOG ? 'info' : 'warn'}, access: ${ACCESS_LOG} }
${o.backendReuse ? 'backend_reuse: { enabled: true }\n' : ''}${checksYaml(o.checks)}${o.metricsPort ? `metrics:\n  listen: 127.0.0.1:${o.metricsPort}\n` : ''}`);
  const out = openSync(log, 'a');
  const child = spawn(process.execPath, [path.join(root, 'dist/cli.js'), '--config', file], { stdio: ['ignore', out, 'inherit'] });
  closeSync(out);
  await waitPort(port);
  if (o.metricsPort) await waitPort(o.metricsPort);
  if (o.tls) await waitPort(tlsPort);
  return { port, pid: child.pid!, stop: stopper(child), log, ...(o.tls ? { tlsPort } : {}) };
}

/** The last `n` lines of a log file ('' when there is none). */
export function logTail(file: string, n = 20): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-n).join('\n');
  } catch {
    return '';
  }
}

/** A process and all its descendants (nginx master + workers, Postern primary + workers). */
export function pidsOf(p: Proc): number[] {
  const all = readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map(Number);
  const parent = new Map<number, number>();
  for (const pid of all) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      parent.set(pid, Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {}
  }
  const out = [p.pid];
  for (let i = 0; i < out.length; i++) for (const [pid, pp] of parent) if (pp === out[i]) out.push(pid);
  return out;
}

/** user+sys CPU (ms), each apart, and resident memory (bytes) summed over the processes. */
export function procStats(pids: number[]): { cpuMs: number; userMs: number; sysMs: number; rss: number } {
  let cpuMs = 0;
  let userMs = 0;
  let rss = 0;
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      cpuMs += ((Number(f[11]) + Number(f[12])) * 1000) / CLK_TCK;
      userMs += (Number(f[11]) * 1000) / CLK_TCK;
      const status = readFileSync(`/proc/${pid}/status`, 'utf8');
      rss += Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) * 1024;
    } catch {}
  }
  return { cpuMs, userMs, sysMs: cpuMs - userMs, rss };
}
