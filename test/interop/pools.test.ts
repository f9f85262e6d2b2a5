/**
 * Pools with real back-ends under continuous load: Postern as its own process (`postern --config`)
 * in front of a pool of a real Postfix and two smtp-sinks, Postfix's smtp-source sending batch
 * after batch of one-message sessions (as mail arrives at an MX) while one member is
 *   (a) stopped (connection refused), then
 *   (b) replaced on its port by a server that greets `421 4.3.2 busy`, then
 *   (c) by one that accepts and never says a word, then
 *   (d) restored (a new smtp-sink on the same port).
 * Every smtp-source run must succeed (it aborts on any 4xx/5xx or dropped connection), every
 * message must be found exactly once across the sinks' dumps and Postfix's maildir, and the
 * restored member must receive mail again. Then: a pool's backup gets nothing while a primary is
 * up and all the mail once every primary is down; and every member down gives the client
 * `451 4.3.2 No back-end available, try again later` with one PST_POOL_EXHAUSTED line, naming each
 * server tried (passive detection) or, once the active checks have taken every server out,
 * saying that none was usable.
 *
 * The cycle runs twice, through two Posterns on the same pool: one with passive detection only
 * (nginx max_fails / fail_timeout: every fault is found by a session, which moves on — the
 * failover path under load), one with the active checks as well (every 250 ms, fall 2, rise 2:
 * the checks take the member out and bring it back). Each message is told apart by its envelope
 * recipient: smtp-source -N prepends a sequence number (1…m) to `<run><batch>@y.test`.
 *
 * Switches happen under load, except (a): stopping smtp-sink cuts the sessions it is relaying,
 * and once a client has seen the back-end's bytes no proxy can move it elsewhere (its client
 * would retry later; nothing is lost, but smtp-source would abort). So the stop itself waits for
 * the batch in flight to end; the sessions that follow find the port closed.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { LogRecord } from '../helpers/postern.js';
import { startPosternProcess, type PosternProcess } from '../helpers/postern-process.js';
import { requireBinary, startPostfix, type PostfixInstance } from '../helpers/postfix.js';
import { SmtpClient } from '../helpers/smtp-client.js';
import { startSmtpSink, type SmtpSinkInstance } from '../helpers/smtp-sink.js';
import { startStandIn, type StandIn } from '../helpers/stand-in.js';

const SMTP_SOURCE = '/usr/sbin/smtp-source';
const tmp = mkdtempSync(path.join(os.tmpdir(), 'postern-pools-interop-'));
// smtp-sink writes its dumps as nobody: it must get through to the sinks' directories.
chmodSync(tmp, 0o755);

interface Batch {
  /** The recipient base: messages go to <1…m><prefix><n>@y.test. */
  prefix: string;
  n: number;
  phase: string;
  messages: number;
  code: number | null;
  stderr: string;
  ms: number;
}

const failed = (b: Batch): boolean => b.code !== 0 || /fatal|warning/.test(b.stderr);

/** One smtp-source run: `sessions` parallel sessions, one message each, `messages` in all, to `<1…m><prefix><n>@y.test`. */
function smtpSource(port: number, prefix: string, n: number, o: { sessions: number; messages: number; size: number }): Promise<Omit<Batch, 'phase'>> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(SMTP_SOURCE, [
      '-N', '-s', String(o.sessions), '-m', String(o.messages), '-l', String(o.size),
      '-f', 'a@x.test', '-t', `${prefix}${n}@y.test`, '-M', 'load.test', `127.0.0.1:${port}`,
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('exit', (code) => resolve({ prefix, n, messages: o.messages, code, stderr, ms: Date.now() - t0 }));
  });
}

/**
 * smtp-source batches back to back (with a short pause, to keep the total to a few hundred
 * messages), each recorded with the phase it ran in. `between(fn)` runs fn once the batch in
 * flight has ended and before the next starts.
 */
class SourceLoop {
  readonly batches: Batch[] = [];
  phase = 'all up';
  #next = 1;
  #running = true;
  #between: { fn: () => Promise<void>; done: (err?: unknown) => void } | null = null;
  readonly #done: Promise<void>;

  constructor(port: number, prefix: string, o: { sessions: number; messages: number; size: number; pauseMs: number }) {
    this.#done = (async () => {
      while (this.#running) {
        const pending = this.#between;
        if (pending) {
          this.#between = null;
          await pending.fn().then(() => pending.done(), pending.done);
        }
        const phase = this.phase;
        this.batches.push({ ...(await smtpSource(port, prefix, this.#next++, o)), phase });
        await sleep(o.pauseMs);
      }
    })();
  }

  between(fn: () => Promise<void>): Promise<void> {
    return new Promise((resolve, reject) => (this.#between = { fn, done: (err) => (err ? reject(err) : resolve()) }));
  }

  async stop(): Promise<void> {
    this.#running = false;
    await this.#done;
  }

  /** Every recipient smtp-source was asked to send to. */
  sent(): string[] {
    return this.batches.flatMap((b) => Array.from({ length: b.messages }, (_, i) => `${i + 1}${b.prefix}${b.n}@y.test`));
  }
}

/** The envelope recipient of each message an smtp-sink dumped (its X-Rcpt-Args line). */
async function sinkRecipients(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const f of await readdir(dir)) {
    const text = await readFile(path.join(dir, f), 'latin1');
    const m = /^X-Rcpt-Args: <([^>]*)>/m.exec(text);
    out.push(m ? m[1]! : `?unparsed ${f}`);
  }
  return out;
}

/** The envelope recipient of each message in Postfix's maildir (virtual(8) writes X-Original-To). */
async function maildirRecipients(pf: PostfixInstance): Promise<string[]> {
  const files = await readdir(pf.mailDir).catch(() => [] as string[]);
  const out: string[] = [];
  for (const f of files) {
    const text = await readFile(path.join(pf.mailDir, f), 'latin1');
    const m = /^X-Original-To: (\S+)/m.exec(text) ?? /^Delivered-To: (\S+)/m.exec(text);
    out.push(m ? m[1]! : `?unparsed ${f}`);
  }
  return out;
}

async function until(cond: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(25);
  }
}

/** Every value that occurs more than once, with its count. */
function duplicates(xs: string[]): Record<string, number> {
  const n = new Map<string, number>();
  for (const x of xs) n.set(x, (n.get(x) ?? 0) + 1);
  return Object.fromEntries([...n].filter(([, c]) => c > 1));
}

/** Postern's log lines about server `server` with `code` (and, for failovers, the cause), from record `from` on. */
const logged = (p: PosternProcess, code: string, server: string, from = 0, error?: string): LogRecord[] =>
  p.logs.slice(from).filter((r) => r.code === code && r.server === server && (error === undefined || r.error === error));

/** The active checks' last verdict on `server` ('up' before any). */
const checkState = (p: PosternProcess, server: string): 'up' | 'down' => {
  const last = p.logs.filter((r) => (r.code === 'PSW_POOL_CHECK_UP' || r.code === 'PSW_POOL_CHECK_DOWN') && r.server === server).at(-1);
  return last?.code === 'PSW_POOL_CHECK_DOWN' ? 'down' : 'up';
};

describe('pools: real back-ends under continuous load', () => {
  let postfix: PostfixInstance;
  let sinkA: SmtpSinkInstance;
  /** The member that goes away and comes back: an smtp-sink, replaced by a new one on the same port after each cycle. */
  let sinkB: SmtpSinkInstance;
  let portB: number;
  /** passive: max_fails/fail_timeout only; active: health checks every 250 ms as well. */
  let passive: PosternProcess;
  let active: PosternProcess;
  let names: { postfix: string; a: string; b: string };
  const sinkDir = (name: string): string => path.join(tmp, 'sinks', name);

  const pool = (health: Record<string, unknown>): Record<string, unknown> => ({
    servers: [names.postfix, names.a, names.b],
    health,
    max_fails: 1,
    fail_timeout: '500ms',
  });

  before(async () => {
    await requireBinary(SMTP_SOURCE, 'postfix');
    [postfix, sinkA, sinkB] = await Promise.all([startPostfix(), startSmtpSink({ dumpDir: sinkDir('a') }), startSmtpSink({ dumpDir: sinkDir('b') })]);
    portB = sinkB.port;
    names = { postfix: `127.0.0.1:${postfix.port}`, a: `127.0.0.1:${sinkA.port}`, b: `127.0.0.1:${portB}` };
    // timeouts.backend 1s: a stalled member costs the session one second, then the next server takes it.
    const common = { route: { static: 'mx' }, timeouts: { backend: '1s' } };
    [passive, active] = await Promise.all([
      startPosternProcess({ ...common, pools: { mx: pool({ enabled: false }) } }),
      startPosternProcess({ ...common, pools: { mx: pool({ enabled: true, interval: '250ms', timeout: '500ms', rise: 2, fall: 2 }) } }),
    ]);
  });

  after(async () => {
    await Promise.all([passive?.stop(), active?.stop()]);
    await Promise.all([postfix?.stop(), sinkA?.stop(), sinkB?.stop()]);
    rmSync(tmp, { recursive: true, force: true });
  });

  /** Every message that reached a back-end whose recipient belongs to `prefix`'s smtp-source runs, per back-end. */
  const delivered = async (prefix: string): Promise<Record<string, string[]>> => {
    const mine = (r: string): boolean => new RegExp(`^\\d+${prefix}\\d+@y\\.test$`).test(r) || r.startsWith('?');
    const out: Record<string, string[]> = { postfix: (await maildirRecipients(postfix)).filter(mine) };
    for (const d of await readdir(path.join(tmp, 'sinks'))) out[`sink ${d}`] = (await sinkRecipients(sinkDir(d))).filter(mine);
    return out;
  };

  interface Evidence {
    /** Proof, from record `from` of the log on, that the member was found out in each phase. */
    refused(from: number): boolean;
    busy(from: number, standIn: StandIn): boolean;
    stalled(from: number, standIn: StandIn): boolean;
  }

  /**
   * One fault cycle of member B under load through `p`, smtp-source recipients `<i><prefix><n>@y.test`:
   * (a) stopped, (b) 421, (c) stalled, (d) a new smtp-sink on its port. Asserts that no client saw an
   * error, every message arrived exactly once, the restored member got mail again; returns diagnostics.
   */
  async function faultCycle(p: PosternProcess, prefix: string, evidence: Evidence): Promise<string[]> {
    const t0 = Date.now();
    const timing: string[] = [];
    const mark = (what: string): void => void timing.push(`${what} +${((Date.now() - t0) / 1000).toFixed(1)}s`);
    const logFrom = p.logs.length;
    const load = new SourceLoop(p.port, prefix, { sessions: 3, messages: 6, size: 2048, pauseMs: 60 });
    let standIn: StandIn | undefined;
    let tried421 = 0;
    let triedStall = 0;
    let restored = '';
    try {
      await until(() => load.batches.length >= 3, 10_000, 'the first batches');
      mark('(a) stop');
      await load.between(async () => {
        await sinkB.stop();
        load.phase = '(a) refused';
      });
      let from = p.logs.length;
      await sleep(1200);
      await until(() => evidence.refused(from), 5_000, 'the refusing member to be found out');

      mark('(b) 421');
      standIn = await startStandIn(portB, { greeting: '421 4.3.2 busy' });
      load.phase = '(b) 421 greeting';
      from = p.logs.length;
      await sleep(1200);
      await until(() => evidence.busy(from, standIn!), 5_000, 'the 421 stand-in to be found out');
      tried421 = standIn.connections;
      await standIn.stop();

      mark('(c) stall');
      standIn = await startStandIn(portB, 'stall');
      load.phase = '(c) stalled';
      from = p.logs.length;
      await sleep(1500);
      await until(() => evidence.stalled(from, standIn!), 5_000, 'the stalled stand-in to be found out');
      triedStall = standIn.connections;
      await standIn.stop();
      standIn = undefined;

      mark('(d) restore');
      restored = `b-${prefix}-restored`;
      sinkB = await startSmtpSink({ port: portB, dumpDir: sinkDir(restored) });
      load.phase = '(d) restored';
      await until(async () => (await readdir(sinkDir(restored))).length >= 3, 10_000, 'the restored member to receive mail');
      mark('(d) back in rotation');
      await sleep(300);
    } finally {
      await load.stop();
      await standIn?.stop();
    }
    mark('load stopped');

    // Client side: every smtp-source run succeeded (it aborts at any 4xx/5xx or lost connection).
    const bad = load.batches.filter(failed);
    assert.deepEqual(bad.map((b) => `batch ${b.n} in ${b.phase}: exit ${b.code}: ${b.stderr.trim()}`), [], 'no smtp-source run saw a 4xx/5xx or a dropped session');

    // Server side: every message exactly once across the members (Postfix delivers asynchronously).
    const sent = load.sent();
    const total = (c: Record<string, string[]>): number => Object.values(c).reduce((n, xs) => n + xs.length, 0);
    await until(async () => total(await delivered(prefix)) >= sent.length, 15_000, `${sent.length} messages at the back-ends`);
    await sleep(300); // anything late (a duplicate) would show up now
    const got = await delivered(prefix);
    mark('all counted');
    const all = Object.values(got).flat();
    assert.deepEqual(duplicates(all), {}, 'no message delivered twice');
    const seen = new Set(all);
    assert.deepEqual(sent.filter((r) => !seen.has(r)), [], 'no message lost');
    const wanted = new Set(sent);
    assert.deepEqual(all.filter((r) => !wanted.has(r)), [], 'nothing delivered that was not sent');
    assert.equal(all.length, sent.length);
    assert.ok(got.postfix!.length > 0 && got['sink a']!.length > 0, 'the healthy members carried mail');
    assert.ok(got[`sink ${restored}`]!.length >= 3, 'the restored member is back in rotation');

    // Postern's side: one access record per session, each relayed up to the 221 to QUIT. smtp-source
    // closes with SO_LINGER 0, so a session it ends after 221 is reset rather than closed: the record
    // then says PST_CLIENT_LOST, with 221 as the last reply the client was sent.
    const access = p.logs.slice(logFrom).filter((r) => r.type === 'access');
    assert.equal(access.length, sent.length, 'one access record per session (one message each)');
    const badSessions = access.filter((r) => (r.code as unknown) !== 221 || !['relayed', 'quit', 'PST_CLIENT_LOST'].includes(String(r.outcome)));
    assert.deepEqual(badSessions, [], 'every session relayed up to the 221 to QUIT');
    // Each record names the member that took the session: per member, as many as it holds messages.
    const byBackend: Record<string, number> = {};
    for (const r of access) byBackend[String(r.backend)] = (byBackend[String(r.backend)] ?? 0) + 1;
    const atB = Object.entries(got).filter(([k]) => k.startsWith('sink b')).reduce((n, [, v]) => n + v.length, 0);
    assert.deepEqual(byBackend, { [names.postfix]: got.postfix!.length, [names.a]: got['sink a']!.length, [names.b]: atB }, 'the access records name the member that holds each message');
    assert.equal(p.logs.slice(logFrom).filter((r) => r.code === 'PST_POOL_EXHAUSTED').length, 0, 'the pool was never exhausted');

    const perPhase = new Map<string, { batches: number; messages: number; ms: number }>();
    for (const b of load.batches) {
      const e = perPhase.get(b.phase) ?? { batches: 0, messages: 0, ms: 0 };
      perPhase.set(b.phase, { batches: e.batches + 1, messages: e.messages + b.messages, ms: Math.max(e.ms, b.ms) });
    }
    const codes = (c: string): number => p.logs.slice(logFrom).filter((r) => r.code === c).length;
    const diag = [
      `${sent.length} messages in ${load.batches.length} smtp-source runs, each exactly once: ${Object.entries(got).map(([k, v]) => `${k} ${v.length}`).join(', ')}`,
      `per phase: ${[...perPhase].map(([ph, e]) => `${ph}: ${e.messages} msgs / ${e.batches} runs (slowest ${e.ms} ms)`).join('; ')}`,
      `connections to the sick member: 421 stand-in ${tried421}, stalled stand-in ${triedStall}; timeline: ${timing.join(', ')}`,
      `log: ${['PSW_POOL_FAILOVER', 'PSW_POOL_SERVER_DOWN', 'PSW_POOL_SERVER_UP', 'PSW_POOL_CHECK_DOWN', 'PSW_POOL_CHECK_UP'].map((c) => `${codes(c)} ${c}`).join(', ')}`,
    ];
    // POOLS_DEBUG=1: every pool line Postern logged in the cycle.
    if (process.env.POOLS_DEBUG) diag.push(...p.logs.slice(logFrom).filter((r) => /POOL/.test(String(r.code))).map((r) => JSON.stringify(r)));
    return diag;
  }

  it('passive detection: a member refused, greeting 421, stalled and restored under load — no client sees an error, every message arrives once, the member comes back', async (t) => {
    const diag = await faultCycle(passive, 'p', {
      // Each fault, found out by a session that then moved on (PSW_POOL_FAILOVER with its cause).
      refused: (from) => logged(passive, 'PSW_POOL_FAILOVER', names.b, from, 'PST_BACKEND_UNREACHABLE').length >= 1,
      busy: (from) => logged(passive, 'PSW_POOL_FAILOVER', names.b, from, 'PST_BACKEND_REJECTED').some((r) => /421 4\.3\.2 busy/.test(String(r.detail))),
      stalled: (from) => logged(passive, 'PSW_POOL_FAILOVER', names.b, from, 'PST_BACKEND_TIMEOUT').length >= 1,
    });
    for (const d of diag) t.diagnostic(d);
  });

  it('active checks (every 250 ms, fall 2, rise 2) with passive detection: the same cycle under load, the checks take the member out and bring it back', async (t) => {
    // The checks of this Postern saw member B go and come back in the cycle above: it must be up again first.
    await until(() => checkState(active, names.b) === 'up', 5_000, 'member B up by the active checks');
    const downs = active.logs.length;
    const diag = await faultCycle(active, 'c', {
      refused: (from) => checkState(active, names.b) === 'down' && logged(active, 'PSW_POOL_CHECK_DOWN', names.b, from).length >= 1,
      // Down by the checks, so only the checks meet the stand-ins.
      busy: (_from, s) => s.connections >= 1 && checkState(active, names.b) === 'down',
      stalled: (_from, s) => s.connections >= 1 && checkState(active, names.b) === 'down',
    });
    assert.equal(checkState(active, names.b), 'up', 'member B up again by the active checks');
    assert.ok(logged(active, 'PSW_POOL_CHECK_UP', names.b, downs).length >= 1, 'PSW_POOL_CHECK_UP logged for member B');
    for (const s of [names.postfix, names.a]) assert.equal(logged(active, 'PSW_POOL_CHECK_DOWN', s, downs).length, 0, `${s} never checked down`);
    const reasons = logged(active, 'PSW_POOL_CHECK_DOWN', names.b, downs).map((r) => String(r.reason));
    t.diagnostic(`active checks took B down: ${reasons.join(' | ')}`);
    for (const d of diag) t.diagnostic(d);
  });

  it('a backup gets nothing while a primary is up, and the mail once every primary is down', async (t) => {
    // Primaries: the two smtp-sinks; backup: Postfix. Active checks on, as a deployment would have them.
    const bk = await startPosternProcess({
      pools: { bk: { servers: [names.a, names.b, { address: names.postfix, backup: true }], health: { interval: '250ms', timeout: '500ms', rise: 2, fall: 2 }, max_fails: 1, fail_timeout: '500ms' } },
      route: { static: 'bk' },
      timeouts: { backend: '1s' },
    });
    const restored = (await readdir(path.join(tmp, 'sinks'))).filter((d) => d.startsWith('b-c-'))[0] ?? 'b';
    try {
      const counts = async (): Promise<number[]> => [(await readdir(sinkDir('a'))).length, (await readdir(sinkDir(restored))).length, (await readdir(postfix.mailDir)).length];
      const run = async (n: number, messages: number): Promise<number[]> => {
        const before = await counts();
        const r = await smtpSource(bk.port, 'k', n, { sessions: 3, messages, size: 1024 });
        assert.ok(!failed({ ...r, phase: '' }), `smtp-source: exit ${r.code}: ${r.stderr}`);
        const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);
        await until(async () => sum(await counts()) - sum(before) >= messages, 10_000, `${messages} messages delivered`);
        await sleep(200);
        return (await counts()).map((c, i) => c - before[i]!);
      };
      const both = await run(1, 12);
      assert.ok(both[0]! > 0 && both[1]! > 0 && both[2] === 0, `both primaries up: they share the mail, nothing at the backup (${both})`);
      await sinkA.stop();
      assert.deepEqual(await run(2, 12), [0, 12, 0], 'one primary up: it takes everything, the backup nothing');
      await sinkB.stop();
      const none = await run(3, 12);
      assert.deepEqual(none, [0, 0, 12], 'every primary down: the backup takes the mail');
      assert.ok(bk.logs.every((r) => r.type !== 'access' || (r.code as unknown) === 221), 'every session relayed up to the 221 to QUIT');
      t.diagnostic(`primaries ${both[0]} + ${both[1]}, backup 0; one primary down: 12 at the other; both down: ${none[2]} of 12 at the backup`);
    } finally {
      await bk.stop();
    }
  });

  it('every member down: 451 4.3.2 and one PST_POOL_EXHAUSTED line naming each server tried', async (t) => {
    await Promise.all([postfix.stop(), sinkA.stop(), sinkB.stop()]);
    const session = async (p: PosternProcess): Promise<string> => {
      const from = p.logs.length;
      const c = await SmtpClient.connect(p.port);
      try {
        assert.equal((await c.reply()).code, 220);
        assert.match(await c.cmd('EHLO client.test'), /^250 /);
        assert.match(await c.cmd('MAIL FROM:<a@x.test>'), /^250 /);
        assert.equal(await c.cmd('RCPT TO:<u@y.test>'), '451 4.3.2 No back-end available, try again later');
      } finally {
        c.close();
      }
      await p.waitForLog((r) => r.type === 'access' && p.logs.indexOf(r) >= from);
      const lines = p.logs.slice(from).filter((r) => r.code === 'PST_POOL_EXHAUSTED');
      assert.equal(lines.length, 1, 'one PST_POOL_EXHAUSTED line for the session');
      return String(lines[0]!.detail);
    };
    // Passive detection only: the first session after the stop tries every server, and says so.
    const detail = await session(passive);
    for (const s of Object.values(names)) assert.match(detail, new RegExp(`${s.replace(/\./g, '\\.')} PST_BACKEND_UNREACHABLE`), `${s} named in: ${detail}`);
    t.diagnostic(`passive: ${detail}`);
    // With active checks that have taken every server out, nothing is tried at all.
    await until(() => Object.values(names).every((s) => checkState(active, s) === 'down'), 5_000, 'every member down by the active checks');
    t.diagnostic(`active, all checked down: ${await session(active)}`);
  });
});
