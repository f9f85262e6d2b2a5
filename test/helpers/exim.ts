/**
 * Exim 4 as an SMTP *client*: submits one message to several recipients and delivers it, in the foreground,
 * to a given host:port. Every call gets a private spool, log directory and config, so calls may run
 * concurrently (in one process or several).
 *
 * How the binary gets here, and what it needs (verified with Exim 4.96 on Debian 12):
 * - exim4-daemon-light conflicts with postfix (both provide mail-transport-agent), so .ci/run only unpacks it
 *   (`apt-get download exim4-daemon-light && dpkg -x`) into /opt/postern-test/exim, after installing its
 *   libraries (libgnutls-dane0, libidn12, libnsl2, libpcre2-8-0, libdb5.3…).
 * - The binary resolves its compiled-in user `Debian-exim` before it reads any config, and exits if that user
 *   is missing ("failed to find uid for user name"); .ci/run creates it (exim4-base would have).
 * - It re-executes itself for the delivery from its compiled-in path /usr/sbin/exim4; `exim_path` points it at
 *   the unpacked binary instead (without it: "re-exec of exim (/usr/sbin/exim4) with -Mc failed").
 * - `-C <file>` as root keeps privilege; the re-executed delivery process runs as Debian-exim and logs
 *   "exim user lost privilege for using -C option" (the file is not in Debian's TRUSTED_CONFIG_LIST,
 *   /etc/exim4/trusted_configs, which we leave alone). Harmless: an SMTP delivery needs no root, and the spool
 *   and log directories belong to Debian-exim.
 * - `-odf` (same as -odi): the submitting process waits until the delivery attempt is over, so when the
 *   process has exited the main log is complete. `-oi`: a lone "." line in the message is data, not the end.
 *
 * The behaviour the tests rely on (src/transports/smtp.c, Exim >= 4.95): a 452 to a RCPT after at least one
 * RCPT of the same batch got 2xx (or 5xx) is read as "too many recipients": that recipient and the ones after
 * it are kept, and once the transaction is over the transport sends a new MAIL FROM on the same connection for
 * them, at once, with no retry rule involved. It does not look at the enhanced code (4.5.3). A 452 to the first
 * RCPT is an ordinary temporary failure (deferred, retried per the retry rules, i.e. not within a test).
 */
import { spawn } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { cleanupOnExit, requireBinary } from './postfix.js';

export const EXIM = '/opt/postern-test/exim/usr/sbin/exim4';
const EXIM_USER = 'Debian-exim';
/** The 452 fast retry on the same connection came with 4.95. */
const MIN_VERSION = [4, 95] as const;

export interface EximSendOptions {
  /** Where every recipient's mail goes (one manualroute router for all domains). */
  port: number;
  host?: string;
  from: string;
  to: string[];
  /** The message as the submitter writes it (headers, blank line, body); LF or CRLF line ends. */
  message: Buffer | string;
  /** primary_hostname, so EHLO's argument. Default client.test. */
  heloName?: string;
  /** Extra smtp transport option lines, e.g. `hosts_avoid_pipelining = *`. */
  transportOptions?: string[];
  /** Kill exim (its whole process group) after this long. Default 30 s. */
  timeoutMs?: number;
}

export type EximOutcome = 'delivered' | 'deferred' | 'failed';

export interface EximDelivery {
  address: string;
  outcome: EximOutcome;
  /** Exim marks a delivery over a connection already used for an earlier transaction with "]*". */
  continued: boolean;
  line: string;
}

export interface EximResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  /** stdout and stderr; with -v they hold the SMTP dialogue (SMTP>> / SMTP<< / SMTP|> lines), for failure messages. */
  output: string;
  mainlog: string;
  /** The panic log without the expected "exim user lost privilege for using -C option" line: normally empty. */
  paniclog: string;
  /** One entry per recipient line of the main log (=>, ->, ==, **), in log order. */
  deliveries: EximDelivery[];
}

let checked: Promise<void> | undefined;

/** Binary present and runnable, user present, version new enough: checked once per process. */
function checkExim(): Promise<void> {
  return (checked ??= (async () => {
    if (process.getuid?.() !== 0) throw new Error('eximSend needs root (exim -C keeps privilege only for root)');
    try {
      await requireBinary(EXIM, 'exim4-daemon-light');
    } catch {
      throw new Error(
        `${EXIM} not found: exim4-daemon-light conflicts with postfix, so it is unpacked, not installed; ` +
          'run the exim step of .ci/run (apt-get download exim4-daemon-light && dpkg -x exim4-daemon-light_*.deb /opt/postern-test/exim)',
      );
    }
    if (!readFileSync('/etc/passwd', 'utf8').split('\n').some((l) => l.startsWith(`${EXIM_USER}:`))) {
      throw new Error(`no "${EXIM_USER}" user, which ${EXIM} needs before reading any config: run .ci/run, or ` +
        `useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ${EXIM_USER}`);
    }
    const { stdout, stderr, status } = await run(EXIM, ['-C', '/dev/null', '-bV'], '', 10_000);
    const m = /^Exim version (\d+)\.(\d+)/m.exec(stdout);
    if (!m) throw new Error(`${EXIM} -bV failed (status ${status}; missing library? check ldd ${EXIM}):\n${stdout}${stderr}`);
    const [major, minor] = [Number(m[1]), Number(m[2])];
    if (major < MIN_VERSION[0] || (major === MIN_VERSION[0] && minor < MIN_VERSION[1])) {
      throw new Error(`${EXIM} is Exim ${major}.${minor}; the tests need >= ${MIN_VERSION.join('.')} (452 fast retry)`);
    }
  })());
}

function eximIds(): [number, number] {
  const line = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith(`${EXIM_USER}:`));
  const [, , uid, gid] = line?.split(':') ?? [];
  return [Number(uid), Number(gid)];
}

function eximConf(dir: string, o: EximSendOptions): string {
  const host = o.host ?? '127.0.0.1';
  if (!/^[0-9.]+$/.test(host)) throw new Error('eximSend: host must be an IPv4 literal (no DNS in tests)');
  return `exim_path = ${EXIM}
primary_hostname = ${o.heloName ?? 'client.test'}
qualify_domain = client.test
spool_directory = ${dir}/spool
log_file_path = ${dir}/log/%slog
exim_user = ${EXIM_USER}
exim_group = ${EXIM_USER}
# Exim otherwise warns that it purges the environment; nothing in it is needed.
keep_environment =
# No DNS or ident anywhere: nothing is received over SMTP, and the route below is an IP literal.
host_lookup =
rfc1413_hosts =
disable_ipv6 = true
# One delivery process: the log and the server see the transactions in a fixed order.
remote_max_parallel = 1

begin routers
# A bounce (empty sender) would be routed to the server under test like any mail: drop it instead.
drop_bounces:
  driver = redirect
  senders = :
  data = :blackhole:

relay:
  driver = manualroute
  route_list = * ${host}
  # 127.0.0.1 is one of our own addresses: deliver anyway instead of freezing the message.
  self = send
  transport = remote

begin transports
remote:
  driver = smtp
  port = ${o.port}
  hosts_avoid_tls = *
  allow_localhost
  # Plain connect(): TCP Fast Open (on by default) adds nothing to test and depends on kernel settings.
  hosts_try_fastopen = :
  connect_timeout = 5s
  command_timeout = 20s
  data_timeout = 20s
${(o.transportOptions ?? []).map((l) => `  ${l}\n`).join('')}
begin retry
# Whatever is deferred stays deferred for the rest of a test (no queue runner runs anyway).
* * F,1h,15m
`;
}

/** Runs a command with `input` on stdin, in its own process group, killed as a group after `timeoutMs`. */
function run(
  file: string,
  args: string[],
  input: Buffer | string,
  timeoutMs: number,
): Promise<{ status: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string; timedOut: boolean }> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    const killGroup = () => {
      try {
        if (child.pid) process.kill(-child.pid, 'SIGKILL');
      } catch {}
    };
    const unregister = cleanupOnExit(killGroup);
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup();
    }, timeoutMs);
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString('latin1')));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString('latin1')));
    child.stdin.on('error', () => {}); // exim may exit before reading all of stdin (a config error)
    child.on('error', (err) => {
      clearTimeout(timer);
      unregister();
      reject(err);
    });
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      killGroup(); // a delivery subprocess left behind must not write into a directory we are removing
      unregister();
      resolve({ status, signal, stdout, stderr, timedOut });
    });
    child.stdin.end(input);
  });
}

/** Parses the recipient lines of an Exim main log: `<id> => addr R=… T=… H=host [ip]* C="…"`. */
export function parseDeliveries(mainlog: string): EximDelivery[] {
  const out: EximDelivery[] = [];
  for (const line of mainlog.split('\n')) {
    const m = /^\S+ \S+ \S+ (=>|->|==|\*\*) (\S+)/.exec(line);
    if (!m) continue;
    const outcome: EximOutcome = m[1] === '==' ? 'deferred' : m[1] === '**' ? 'failed' : 'delivered';
    out.push({ address: m[2]!, outcome, continued: /\]\*/.test(line), line });
  }
  return out;
}

/**
 * Submits `message` from `from` to every address in `to` and delivers it at once to host:port; resolves when
 * that delivery attempt is over (delivered, deferred or failed), with exim's log. Throws on a timeout.
 */
export async function eximSend(opts: EximSendOptions): Promise<EximResult> {
  await checkExim();
  if (opts.to.length === 0) throw new Error('eximSend: no recipients');
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const dir = await mkdtemp(path.join(os.tmpdir(), 'postern-exim-'));
  const unregister = cleanupOnExit(() => rmSync(dir, { recursive: true, force: true }));
  try {
    // The delivery runs as Debian-exim: it must traverse dir and own spool and log.
    await chmod(dir, 0o755);
    for (const sub of ['spool', 'log']) {
      await mkdir(path.join(dir, sub));
      await chown(path.join(dir, sub), ...eximIds());
    }
    const conf = path.join(dir, 'exim.conf');
    await writeFile(conf, eximConf(dir, opts), { mode: 0o644 }); // root-owned and not group/world-writable
    // -v: the SMTP dialogue on stderr. "--" so no address is ever read as an option.
    const args = ['-C', conf, '-odf', '-oi', '-v', '-f', opts.from, '--', ...opts.to];
    const r = await run(EXIM, args, opts.message, timeoutMs);
    const read = (f: string) => readFile(path.join(dir, 'log', f), 'latin1').catch(() => '');
    const mainlog = await read('mainlog');
    const paniclog = (await read('paniclog'))
      .split('\n')
      .filter((l) => l !== '' && !l.endsWith('exim user lost privilege for using -C option'))
      .join('\n');
    if (r.timedOut) {
      throw new Error(`exim did not finish within ${timeoutMs} ms\n--- mainlog ---\n${mainlog}\n--- stderr ---\n${r.stderr}`);
    }
    return { status: r.status, signal: r.signal, output: r.stdout + r.stderr, mainlog, paniclog, deliveries: parseDeliveries(mainlog) };
  } finally {
    await rm(dir, { recursive: true, force: true });
    unregister();
  }
}
