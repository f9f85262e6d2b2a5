/**
 * Soak runner: a long mix of good and bad clients through a Postern running as its own process
 * (so its memory and file descriptors are its own), with Postfix's smtp-sink as the back-end.
 *
 * Client kinds, chosen round-robin by session index (index % 50 === 49 is `idle`, else index % 6):
 *   good       EHLO, MAIL, RCPT, DATA, a 2–8 KiB body, QUIT, one command at a time
 *   pipelined  EHLO+MAIL+RCPT+DATA in one write; after the 354 the body, the dot and QUIT in one write
 *   junk       random bytes (NUL, bare CR, LF, 8-bit) written at once, then close
 *   abuse      unknown commands, one at a time, until Postern closes with 421 (max_errors: 5)
 *   early      connects and closes without a word
 *   abandon    a good envelope, half the body after the 354, then a TCP reset (resetAndDestroy)
 *   idle       reads the greeting and says nothing: closed by timeouts.idle (2 s) with 421
 *
 * `concurrency` sessions of the active kinds run at once; idle ones do not take a slot (see runRange).
 * Every session is bounded by a 20 s timeout; a good session that fails or times out stops the run.
 *
 * Messages are counted at the sink with smtp-sink's `-c` counters ("mesg=N", rewritten in place
 * with \r), so a half message that got delivered anyway would show up as one count too many.
 *
 * soak() asserts nothing: it returns figures and failures; the test files state the invariants.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { cleanupOnExit, freePort, requireBinary, waitForBanner } from '../helpers/postfix.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const SMTP_SINK = '/usr/sbin/smtp-sink';

export const KINDS = ['good', 'pipelined', 'junk', 'abuse', 'early', 'abandon', 'idle'] as const;
export type Kind = (typeof KINDS)[number];
export type BadKind = Exclude<Kind, 'good' | 'pipelined'>;
const ROTATION: readonly Kind[] = ['good', 'pipelined', 'junk', 'abuse', 'early', 'abandon'];

export function kindOf(i: number): Kind {
  return i % 50 === 49 ? 'idle' : ROTATION[i % ROTATION.length]!;
}

/** A good session that has not finished in this time fails the run. */
const GOOD_TIMEOUT_MS = 20_000;
/** Bad sessions are bounded too (idle needs timeouts.idle = 2 s); running into this is an anomaly. */
const BAD_TIMEOUT_MS = 20_000;
const SETTLE_MS = 3_000;
const MAX_SAMPLES = 20;

export interface SoakOptions {
  sessions: number;
  concurrency: number;
  /** Progress lines (every 10% of the sessions), e.g. for the long profile. */
  progress?: (line: string) => void;
}

export interface Sample {
  /** Sessions finished when the sample was taken (under load, not settled). */
  done: number;
  rss: number;
  fds: number;
}

export interface SoakResult {
  /** Sessions actually run (fewer than asked only if a good session failed and the run stopped). */
  sessions: number;
  /** Good sessions run (kinds good + pipelined). */
  good: number;
  /** Good sessions that got 250 after their dot. */
  goodAccepted: number;
  /** Messages smtp-sink counted, after the settle, before the fresh session. */
  sinkCount: number;
  badByKind: Record<BadKind, number>;
  byKind: Record<Kind, number>;
  /** Postern's VmRSS (bytes) after the warm-up and a settle, and at the end after the settle. */
  rssWarm: number;
  rssEnd: number;
  /** Postern's open file descriptors at the same two moments. */
  fdsWarm: number;
  fdsEnd: number;
  /** Highest VmRSS / fd count seen in the samples taken under load. */
  rssPeak: number;
  fdsPeak: number;
  /** Under-load samples, every 10% of the sessions. */
  samples: Sample[];
  /** Most client sessions open at once (active ones ≤ concurrency, plus idle ones). */
  maxOpen: number;
  /** Wall time of the sessions (warm-up included, settles excluded). */
  durationMs: number;
  /** Longest good session. */
  goodMaxMs: number;
  /** Mean session time by kind (ms). */
  meanMsByKind: Record<Kind, number>;
  /** Good sessions that failed (first few), with the step and what came back. */
  goodFailures: string[];
  goodFailureCount: number;
  /** Bad sessions Postern did not treat as expected (no 421 for abuse/idle, never closed, …). */
  badUnexpected: Record<BadKind, number>;
  badUnexpectedSamples: string[];
  /** A good session run after the end measurement got its 250 after the dot. */
  freshSessionOk: boolean;
  freshSessionDetail: string;
  /** smtp-sink's count after the fresh session (sinkCount + 1 expected). */
  sinkCountAfterFresh: number;
  /** Postern was still running when the run ended (before it was sent SIGTERM). */
  posternAliveAtEnd: boolean;
  /** Postern's exit after SIGTERM. */
  posternExit: { code: number | null; signal: string | null };
  /** Everything Postern wrote to stderr (capped at 1 MiB). */
  posternStderr: string;
  /** Log records by level (log.level warn: only warn and above are written). */
  posternLogLevels: Record<string, number>;
  posternLogSamples: string[];
}

// ---------------------------------------------------------------------------------------------
// Fixed payloads, built once: no per-session allocation of bodies or junk.

/** Message bodies of 2, 3, …, 8 KiB (headers included), lines of 78 'x' + CRLF, no dot at a line start. */
const BODIES: Buffer[] = [2, 3, 4, 5, 6, 7, 8].map((kib) => {
  const head = 'From: <soak@client.test>\r\nTo: <rcpt@sink.test>\r\nSubject: soak\r\n\r\n';
  const line = `${'x'.repeat(78)}\r\n`;
  let s = head;
  while (s.length + line.length <= kib * 1024) s += line;
  return Buffer.from(s, 'latin1');
});
const DOT = Buffer.from('.\r\n');
const DOT_QUIT = Buffer.from('.\r\nQUIT\r\n');
const PIPELINED_ENVELOPE = Buffer.from('EHLO pipelined.client.test\r\nMAIL FROM:<soak@client.test>\r\nRCPT TO:<rcpt@sink.test>\r\nDATA\r\n');

/**
 * 64 KiB of random bytes for junk clients. The first half has an LF every 61 bytes (short
 * "command lines" full of NUL, bare CR and 8-bit bytes); the second half has no LF at all (one
 * line that runs past max_line_length). NUL and CR are planted so every slice has some.
 */
const JUNK: Buffer = (() => {
  const b = randomBytes(65536);
  for (let k = 0; k < b.length; k++) {
    if (k % 97 === 0) b[k] = 0x00;
    else if (k % 89 === 0) b[k] = 0x0d;
    else if (k < 32768 && k % 61 === 0) b[k] = 0x0a;
    else if (k >= 32768 && b[k] === 0x0a) b[k] = 0x0b;
  }
  return b;
})();

function junkSlice(i: number): Buffer {
  const len = 200 + ((i * 137) % 6000);
  const start = (i * 7919) % (JUNK.length - len);
  return JUNK.subarray(start, start + len);
}

// ---------------------------------------------------------------------------------------------
// A small raw client: reads replies (last line of each, multi-line replies folded), sees close.

class Conn {
  readonly sock: net.Socket;
  #buf = '';
  readonly #replies: string[] = [];
  #wake: (() => void) | null = null;
  closed = false;
  timedOut = false;
  error: string | undefined;
  readonly #timer: NodeJS.Timeout;

  constructor(port: number, timeoutMs: number, parse: boolean) {
    const s = net.connect(port, '127.0.0.1');
    this.sock = s;
    s.setNoDelay(true);
    if (parse) s.on('data', (chunk: Buffer) => this.#onData(chunk));
    else s.resume();
    s.on('error', (err: NodeJS.ErrnoException) => (this.error ??= err.code ?? err.message));
    s.on('close', () => {
      this.closed = true;
      clearTimeout(this.#timer);
      this.#notify();
    });
    this.#timer = setTimeout(() => {
      this.timedOut = true;
      s.destroy();
    }, timeoutMs);
  }

  #onData(chunk: Buffer): void {
    this.#buf += chunk.toString('latin1');
    let nl: number;
    while ((nl = this.#buf.indexOf('\n')) >= 0) {
      const line = this.#buf.slice(0, nl > 0 && this.#buf.charCodeAt(nl - 1) === 13 ? nl - 1 : nl);
      this.#buf = this.#buf.slice(nl + 1);
      if (line.length >= 4 && line[3] === '-') continue; // continuation of a multi-line reply
      this.#replies.push(line);
    }
    this.#notify();
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }

  /** The next reply's last line, or null once the connection is closed (or timed out). */
  async reply(): Promise<string | null> {
    while (this.#replies.length === 0) {
      if (this.closed) return null;
      await new Promise<void>((r) => (this.#wake = r));
    }
    return this.#replies.shift()!;
  }

  /** Resolves when the socket is closed (by either side, or the session timeout). */
  async whenClosed(): Promise<void> {
    while (!this.closed) await new Promise<void>((r) => (this.#wake = r));
  }

  write(data: string | Buffer, cb?: () => void): void {
    this.sock.write(data, cb);
  }

  /** Why the session stopped, for failure messages. */
  why(): string {
    return this.timedOut ? 'session timeout' : this.error ? `socket error ${this.error}` : 'closed';
  }

  done(): void {
    clearTimeout(this.#timer);
    this.sock.destroy();
  }
}

class Fail extends Error {}

async function expect(c: Conn, step: string, code: string): Promise<string> {
  const r = await c.reply();
  if (r === null) throw new Fail(`${step}: no reply (${c.why()})`);
  if (!r.startsWith(code)) throw new Fail(`${step}: expected ${code}, got ${JSON.stringify(r)}`);
  return r;
}

// ---------------------------------------------------------------------------------------------
// The sessions. Each resolves if Postern behaved as expected and throws Fail otherwise; good
// sessions call onAccepted when the dot gets its 250.

/** EHLO, MAIL, RCPT, DATA, body, QUIT, one command at a time. */
async function goodSession(port: number, i: number, onAccepted: () => void): Promise<void> {
  const c = new Conn(port, GOOD_TIMEOUT_MS, true);
  try {
    await expect(c, 'greeting', '220');
    c.write('EHLO good.client.test\r\n');
    await expect(c, 'EHLO', '250');
    c.write('MAIL FROM:<soak@client.test>\r\n');
    await expect(c, 'MAIL', '250');
    c.write('RCPT TO:<rcpt@sink.test>\r\n');
    await expect(c, 'RCPT', '250');
    c.write('DATA\r\n');
    await expect(c, 'DATA', '354');
    c.write(BODIES[i % BODIES.length]!);
    c.write(DOT);
    await expect(c, 'end of data', '250');
    onAccepted();
    c.write('QUIT\r\n');
    await expect(c, 'QUIT', '221');
    await c.whenClosed();
    if (c.timedOut) throw new Fail(`after QUIT: not closed (${c.why()})`);
  } finally {
    c.done();
  }
}

/** The envelope and DATA in one write; after the 354 the body, the dot and QUIT in one write. */
async function pipelinedSession(port: number, i: number, onAccepted: () => void): Promise<void> {
  const c = new Conn(port, GOOD_TIMEOUT_MS, true);
  try {
    await expect(c, 'greeting', '220');
    c.write(PIPELINED_ENVELOPE);
    await expect(c, 'EHLO', '250');
    await expect(c, 'MAIL', '250');
    await expect(c, 'RCPT', '250');
    await expect(c, 'DATA', '354');
    c.sock.cork();
    c.write(BODIES[(i + 3) % BODIES.length]!);
    c.write(DOT_QUIT);
    c.sock.uncork();
    await expect(c, 'end of data', '250');
    onAccepted();
    await expect(c, 'QUIT', '221');
    await c.whenClosed();
    if (c.timedOut) throw new Fail(`after QUIT: not closed (${c.why()})`);
  } finally {
    c.done();
  }
}

/** Random bytes at once, then FIN; Postern must close its side. */
async function junkSession(port: number, i: number): Promise<void> {
  const c = new Conn(port, BAD_TIMEOUT_MS, false);
  try {
    c.write(junkSlice(i));
    c.sock.end();
    await c.whenClosed();
    if (c.timedOut) throw new Fail('junk: Postern never closed');
  } finally {
    c.done();
  }
}

/** Unknown commands one at a time: five 500s, then 421 and close. */
async function abuseSession(port: number, i: number): Promise<void> {
  const c = new Conn(port, BAD_TIMEOUT_MS, true);
  try {
    await expect(c, 'greeting', '220');
    let rejected = 0;
    for (let n = 0; n < 50; n++) {
      c.write(n % 2 === 0 ? `XYZZY ${i}\r\n` : 'FROBNICATE\r\n');
      const r = await c.reply();
      if (r === null) throw new Fail(`abuse: closed without 421 after ${rejected} rejections (${c.why()})`);
      if (r.startsWith('500')) {
        rejected++;
        continue;
      }
      if (r.startsWith('421') && /Too many errors/.test(r)) {
        if (rejected !== 5) throw new Fail(`abuse: 421 after ${rejected} rejections, max_errors is 5`);
        await c.whenClosed();
        if (c.timedOut) throw new Fail('abuse: not closed after 421');
        return;
      }
      throw new Fail(`abuse: unexpected reply ${JSON.stringify(r)}`);
    }
    throw new Fail('abuse: 50 unknown commands and still open');
  } finally {
    c.done();
  }
}

/** Connects and sends FIN at once; Postern must close its side. */
async function earlySession(port: number): Promise<void> {
  const c = new Conn(port, BAD_TIMEOUT_MS, false);
  try {
    c.sock.once('connect', () => c.sock.end());
    await c.whenClosed();
    if (c.timedOut) throw new Fail('early: Postern never closed');
  } finally {
    c.done();
  }
}

/** A good envelope, half the body after the 354, then a TCP reset. Nothing may be delivered. */
async function abandonSession(port: number, i: number): Promise<void> {
  const c = new Conn(port, BAD_TIMEOUT_MS, true);
  try {
    await expect(c, 'greeting', '220');
    c.write('EHLO abandon.client.test\r\nMAIL FROM:<soak@client.test>\r\nRCPT TO:<rcpt@sink.test>\r\nDATA\r\n');
    await expect(c, 'EHLO', '250');
    await expect(c, 'MAIL', '250');
    await expect(c, 'RCPT', '250');
    await expect(c, 'DATA', '354');
    const body = BODIES[i % BODIES.length]!;
    // Wait until the half is in the kernel and give it a moment to travel on, so the back-end
    // really has a partial message when the reset comes.
    await new Promise<void>((r) => c.write(body.subarray(0, body.length >> 1), () => r()));
    await sleep(5);
    c.sock.resetAndDestroy();
  } finally {
    c.done();
  }
}

/** Reads the greeting and says nothing: 421 after timeouts.idle, then close. */
async function idleSession(port: number): Promise<void> {
  const c = new Conn(port, BAD_TIMEOUT_MS, true);
  try {
    await expect(c, 'greeting', '220');
    const t0 = Date.now();
    const r = await c.reply();
    if (r === null) throw new Fail(`idle: closed without 421 (${c.why()})`);
    if (!/^421 4\.4\.2 /.test(r)) throw new Fail(`idle: expected 421 4.4.2, got ${JSON.stringify(r)}`);
    if (Date.now() - t0 < 1500) throw new Fail(`idle: 421 after ${Date.now() - t0} ms, timeouts.idle is 2 s`);
    await c.whenClosed();
    if (c.timedOut) throw new Fail('idle: not closed after 421');
  } finally {
    c.done();
  }
}

// ---------------------------------------------------------------------------------------------
// Processes.

function vmRss(pid: number): number {
  const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

interface Sink {
  port: number;
  count(): number;
  waitCount(n: number, timeoutMs: number): Promise<number>;
  stop(): Promise<void>;
}

function stopChild(child: ChildProcess, timeoutMs: number): Promise<{ code: number | null; signal: string | null }> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve({ code: child.exitCode, signal: child.signalCode });
    const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('exit', (code, signal) => {
      clearTimeout(t);
      resolve({ code, signal });
    });
    child.kill('SIGTERM');
  });
}

async function startSink(): Promise<Sink> {
  await requireBinary(SMTP_SINK, 'postfix');
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const args = [...(process.getuid?.() === 0 ? ['-u', 'nobody'] : []), '-m', '20000', '-c', `127.0.0.1:${port}`, '4096'];
    const child = spawn(SMTP_SINK, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const unregister = cleanupOnExit(() => child.kill('SIGKILL'));
    let tail = '';
    let stderr = '';
    // -c rewrites one line in place: "sess=N quit=N mesg=N\r".
    child.stdout!.on('data', (d: Buffer) => (tail = (tail + d.toString('latin1')).slice(-256)));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    let exited = false;
    child.on('exit', () => (exited = true));
    const count = (): number => {
      const all = [...tail.matchAll(/mesg=(\d+)/g)];
      return all.length ? Number(all.at(-1)![1]) : 0;
    };
    try {
      await waitForBanner(port, 10_000, () => exited);
    } catch (err) {
      await stopChild(child, 2000);
      unregister();
      if (attempt < 3 && /Address already in use/.test(stderr)) continue;
      throw new Error(`smtp-sink did not start: ${(err as Error).message}\n${stderr}`);
    }
    return {
      port,
      count,
      async waitCount(n, timeoutMs) {
        const deadline = Date.now() + timeoutMs;
        while (count() < n && Date.now() < deadline) await sleep(50);
        return count();
      },
      async stop() {
        await stopChild(child, 5000);
        unregister();
      },
    };
  }
}

interface PosternProc {
  port: number;
  pid: number;
  child: ChildProcess;
  stderr(): string;
  levels: Record<string, number>;
  logSamples: string[];
  stop(): Promise<{ code: number | null; signal: string | null }>;
}

async function startPosternProcess(sinkPort: number, dir: string): Promise<PosternProc> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const file = path.join(dir, 'postern.yaml');
    writeFileSync(
      file,
      `server_name: proxy.test
listen: ["127.0.0.1:${port}"]
route: { static: "127.0.0.1:${sinkPort}" }
xclient: false
log: { level: warn, access: false }
timeouts: { idle: 2s }
max_errors: 5
`,
    );
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', '--config', file], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    const unregister = cleanupOnExit(() => child.kill('SIGKILL'));
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => {
      if (stderr.length < 1 << 20) stderr += d.toString();
    });
    const levels: Record<string, number> = {};
    const logSamples: string[] = [];
    let partial = '';
    child.stdout!.on('data', (d: Buffer) => {
      const lines = (partial + d.toString()).split('\n');
      partial = lines.pop()!;
      for (const line of lines) {
        if (!line) continue;
        let level = 'unparsed';
        try {
          level = String((JSON.parse(line) as { level?: unknown }).level);
        } catch {}
        levels[level] = (levels[level] ?? 0) + 1;
        if (logSamples.length < MAX_SAMPLES) logSamples.push(line);
      }
    });
    let exited = false;
    child.on('exit', () => (exited = true));
    try {
      await waitForBanner(port, 20_000, () => exited);
    } catch (err) {
      await stopChild(child, 2000);
      unregister();
      if (attempt < 3 && /EADDRINUSE|cannot listen/.test(stderr + logSamples.join('\n'))) continue;
      throw new Error(`Postern did not start: ${(err as Error).message}\n${stderr}\n${logSamples.join('\n')}`);
    }
    return {
      port,
      pid: child.pid!,
      child,
      stderr: () => stderr,
      levels,
      logSamples,
      async stop() {
        const r = await stopChild(child, 10_000);
        unregister();
        return r;
      },
    };
  }
}

// ---------------------------------------------------------------------------------------------

export async function soak(opts: SoakOptions): Promise<SoakResult> {
  const { sessions, concurrency } = opts;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'postern-soak-'));
  const unregisterDir = cleanupOnExit(() => rmSync(dir, { recursive: true, force: true }));
  const sink = await startSink();
  let postern: PosternProc | undefined;
  try {
    postern = await startPosternProcess(sink.port, dir);
    const port = postern.port;
    const pid = postern.pid;

    const byKind = Object.fromEntries(KINDS.map((k) => [k, 0])) as Record<Kind, number>;
    const msByKind = Object.fromEntries(KINDS.map((k) => [k, 0])) as Record<Kind, number>;
    const badUnexpected = { junk: 0, abuse: 0, early: 0, abandon: 0, idle: 0 } satisfies Record<BadKind, number>;
    const badUnexpectedSamples: string[] = [];
    const goodFailures: string[] = [];
    let goodFailureCount = 0;
    let goodAccepted = 0;
    let goodMaxMs = 0;
    let done = 0;
    let started = 0;
    let aborted = false;
    let open = 0;
    let maxOpen = 0;
    const samples: Sample[] = [];
    let rssPeak = 0;
    let fdsPeak = 0;
    const sampleEvery = Math.max(1, Math.ceil(sessions / 10));

    const takeSample = (): void => {
      try {
        const s = { done, rss: vmRss(pid), fds: fdCount(pid) };
        samples.push(s);
        rssPeak = Math.max(rssPeak, s.rss);
        fdsPeak = Math.max(fdsPeak, s.fds);
        opts.progress?.(`${s.done}/${sessions} sessions, rss ${(s.rss / 2 ** 20).toFixed(1)} MiB, fds ${s.fds}, good ${goodAccepted}, sink ${sink.count()}`);
      } catch {
        // Postern is gone: the invariants will say so.
      }
    };

    const accepted = (): void => {
      goodAccepted++;
    };

    const runOne = async (i: number): Promise<void> => {
      const kind = kindOf(i);
      byKind[kind]++;
      if (++open > maxOpen) maxOpen = open;
      const t0 = Date.now();
      try {
        switch (kind) {
          case 'good':
            await goodSession(port, i, accepted);
            break;
          case 'pipelined':
            await pipelinedSession(port, i, accepted);
            break;
          case 'junk':
            await junkSession(port, i);
            break;
          case 'abuse':
            await abuseSession(port, i);
            break;
          case 'early':
            await earlySession(port);
            break;
          case 'abandon':
            await abandonSession(port, i);
            break;
          case 'idle':
            await idleSession(port);
            break;
        }
        if (kind === 'good' || kind === 'pipelined') goodMaxMs = Math.max(goodMaxMs, Date.now() - t0);
      } catch (err) {
        const msg = `#${i} ${kind}: ${err instanceof Fail ? err.message : (err as Error).stack}`;
        if (kind === 'good' || kind === 'pipelined') {
          goodFailureCount++;
          if (goodFailures.length < MAX_SAMPLES) goodFailures.push(msg);
          aborted = true; // a lost good session fails the run: stop here
        } else {
          badUnexpected[kind]++;
          if (badUnexpectedSamples.length < MAX_SAMPLES) badUnexpectedSamples.push(msg);
        }
      }
      msByKind[kind] += Date.now() - t0;
      open--;
      done++;
      if (done % sampleEvery === 0) takeSample();
    };

    // `concurrency` workers each run one session at a time. An idle session does not hold its
    // worker: it is left to wait out timeouts.idle on its own, or its 2 s would take most of the
    // workers' time (1 in 50 sessions × 2 s against a few ms for the others) and the run would be
    // mostly waiting. So up to `concurrency` active sessions are open at once, plus the idle ones
    // of the last 2 s (maxOpen reports the real figure).
    const idlePending = new Set<Promise<void>>();
    const runRange = async (from: number, to: number): Promise<void> => {
      let next = from;
      const worker = async (): Promise<void> => {
        while (!aborted && next < to) {
          const i = next++;
          started++;
          if (kindOf(i) === 'idle') {
            const p = runOne(i).finally(() => idlePending.delete(p));
            idlePending.add(p);
          } else {
            await runOne(i);
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(concurrency, to - from) }, worker));
      await Promise.all([...idlePending]);
    };

    const warmN = Math.max(1, Math.round(sessions * 0.1));
    const t0 = Date.now();
    await runRange(0, warmN);
    let runMs = Date.now() - t0;
    // Both measurements are taken with no session open and after the same settle, so they compare
    // like with like (closed sockets gone, timers fired).
    await sleep(SETTLE_MS);
    const rssWarm = vmRss(pid);
    const fdsWarm = fdCount(pid);
    opts.progress?.(`warm-up done: ${warmN} sessions, rss ${(rssWarm / 2 ** 20).toFixed(1)} MiB, fds ${fdsWarm}`);

    const t1 = Date.now();
    await runRange(warmN, sessions);
    runMs += Date.now() - t1;

    // Every good session has had its 250 by now; give the sink's counter time to arrive, then settle.
    await sink.waitCount(goodAccepted, 10_000);
    await sleep(SETTLE_MS);
    const posternAliveAtEnd = postern.child.exitCode === null && postern.child.signalCode === null;
    let rssEnd = 0;
    let fdsEnd = 0;
    try {
      rssEnd = vmRss(pid);
      fdsEnd = fdCount(pid);
    } catch {}
    const sinkCount = sink.count();

    // A fresh session at the end: Postern still answers and still delivers.
    let freshSessionOk = false;
    let freshSessionDetail = 'ok';
    try {
      await goodSession(port, 0, () => (freshSessionOk = true));
    } catch (err) {
      freshSessionDetail = err instanceof Fail ? err.message : String(err);
    }
    const sinkCountAfterFresh = await sink.waitCount(sinkCount + 1, 5000);

    const badByKind = { junk: byKind.junk, abuse: byKind.abuse, early: byKind.early, abandon: byKind.abandon, idle: byKind.idle };
    const posternExit = await postern.stop();
    return {
      sessions: started,
      good: byKind.good + byKind.pipelined,
      goodAccepted,
      sinkCount,
      badByKind,
      byKind,
      rssWarm,
      rssEnd,
      fdsWarm,
      fdsEnd,
      rssPeak,
      fdsPeak,
      samples,
      durationMs: runMs,
      maxOpen,
      goodMaxMs,
      meanMsByKind: Object.fromEntries(KINDS.map((k) => [k, byKind[k] ? Math.round((msByKind[k] / byKind[k]) * 10) / 10 : 0])) as Record<Kind, number>,
      goodFailures,
      goodFailureCount,
      badUnexpected,
      badUnexpectedSamples,
      freshSessionOk,
      freshSessionDetail,
      sinkCountAfterFresh,
      posternAliveAtEnd,
      posternExit,
      posternStderr: postern.stderr(),
      posternLogLevels: { ...postern.levels },
      posternLogSamples: [...postern.logSamples],
    };
  } finally {
    await postern?.stop();
    await sink.stop();
    rmSync(dir, { recursive: true, force: true });
    unregisterDir();
  }
}

/** The figures as text, for the long profile's output and docs/reliability.md. */
export function formatResult(r: SoakResult): string {
  const mib = (n: number): string => `${(n / 2 ** 20).toFixed(1)} MiB`;
  const lines = [
    `sessions:        ${r.sessions}`,
    `good:            ${r.good} (plain ${r.byKind.good}, pipelined ${r.byKind.pipelined}); 250 after the dot: ${r.goodAccepted}; slowest ${r.goodMaxMs} ms`,
    `sink counted:    ${r.sinkCount} (after the fresh session: ${r.sinkCountAfterFresh})`,
    `bad by kind:     ${Object.entries(r.badByKind).map(([k, n]) => `${k} ${n}`).join(', ')}`,
    `bad unexpected:  ${Object.entries(r.badUnexpected).map(([k, n]) => `${k} ${n}`).join(', ')}`,
    `rss warm / end:  ${mib(r.rssWarm)} / ${mib(r.rssEnd)} (peak under load ${mib(r.rssPeak)})`,
    `fds warm / end:  ${r.fdsWarm} / ${r.fdsEnd} (peak under load ${r.fdsPeak})`,
    `mean ms by kind: ${Object.entries(r.meanMsByKind).map(([k, n]) => `${k} ${n}`).join(', ')}`,
    `duration:        ${(r.durationMs / 1000).toFixed(1)} s (${Math.round(r.sessions / (r.durationMs / 1000))} sessions/s), at most ${r.maxOpen} sessions open at once`,
    `samples:         ${r.samples.map((s) => `${s.done}:${mib(s.rss)}/${s.fds}fd`).join('  ')}`,
    `postern:         alive at end ${r.posternAliveAtEnd}, exit ${JSON.stringify(r.posternExit)}, log levels ${JSON.stringify(r.posternLogLevels)}, stderr ${r.posternStderr.length} bytes`,
  ];
  if (r.goodFailures.length) lines.push(`good failures (${r.goodFailureCount}):`, ...r.goodFailures.map((f) => `  ${f}`));
  if (r.badUnexpectedSamples.length) lines.push('bad unexpected samples:', ...r.badUnexpectedSamples.map((f) => `  ${f}`));
  if (r.posternLogSamples.length) lines.push('postern log samples:', ...r.posternLogSamples.map((f) => `  ${f}`));
  return lines.join('\n');
}
