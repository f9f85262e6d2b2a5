/**
 * `user` / `group`: Postern started as root, as a process, on a port below 1024 of 127.0.0.1, as
 * one process and with two workers. It answers there, and every one of its processes (the
 * primary, found by its pid, and its children, found by the ppid in /proc/<pid>/stat) runs as
 * nobody: real, effective, saved and file-system ids, no supplementary group 0, no capability
 * left. A SIGHUP that adds another port below 1024 is refused (PSW_RELOAD_REFUSED, EACCES) and the
 * old listener keeps serving; the pools' status file stays the user's (it is removed at stop).
 * A user that does not exist: a clear error, exit status 1. Started as another user than `user`:
 * fatal, exit 1; started as that user already: it runs.
 *
 * Needs root: the tests run as root here and in CI, where not being root is a failure (CI=true);
 * elsewhere the tests are skipped.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { stringify } from 'yaml';
import { statusFilePath } from '../../src/pools/status.js';
import { startPosternProcess, type PosternProcess } from '../helpers/postern-process.js';
import { greetingLine } from '../helpers/smtp-client.js';

const root = path.resolve(import.meta.dirname, '../..');
const NOBODY = 65534;
const tmp = mkdtempSync(path.join(os.tmpdir(), 'postern-privileges-'));
chmodSync(tmp, 0o755); // Postern reads its configuration here as nobody
after(() => rmSync(tmp, { recursive: true, force: true }));

/** Root, or the test cannot run: a failure in CI, a skip elsewhere. */
function requireRoot(t: TestContext): boolean {
  if (process.getuid?.() === 0) return true;
  if (process.env.CI === 'true') assert.fail('the privilege tests must run as root in CI');
  t.skip('not root');
  return false;
}

const groupName = (): string => {
  try {
    execFileSync('getent', ['group', 'nogroup'], { stdio: 'ignore' });
    return 'nogroup';
  } catch {
    return 'nobody';
  }
};

function gidOf(group: string): number {
  return Number(execFileSync('getent', ['group', group], { encoding: 'utf8' }).split(':')[2]);
}

function canBind(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** Ports below the first unprivileged one (1024 unless net.ipv4.ip_unprivileged_port_start says less) that are free now. */
async function privilegedPorts(count: number): Promise<number[]> {
  let start = 1024;
  try {
    start = Math.min(1024, Number(readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8').trim()));
  } catch {
    // Not Linux's /proc: 1024.
  }
  // Random ones in 600–999, not 25/465/587, which a mail server on this machine (or another test) may want.
  const candidates = Array.from({ length: 60 }, () => 600 + Math.floor(Math.random() * 400)).filter((p) => p < start);
  const free: number[] = [];
  for (const p of new Set(candidates)) {
    if (free.length === count) break;
    if (await canBind(p)) free.push(p);
  }
  assert.equal(free.length, count, `no ${count} free ports below ${start} on 127.0.0.1 (net.ipv4.ip_unprivileged_port_start)`);
  return free;
}


/** The pids whose parent is `pid` (field 4 of /proc/<pid>/stat, after the command in parentheses). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(d));
    } catch {
      // Gone meanwhile.
    }
  }
  return out;
}

/** Uid:, Gid: (real, effective, saved, file system), Groups: and CapEff: of a process. */
function credentials(pid: number): { uid: number[]; gid: number[]; groups: number[]; capEff: string; cmdline: string } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): string => new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(status)?.[1]?.trim() ?? '';
  const nums = (name: string): number[] => field(name).split(/\s+/).filter((x) => x !== '').map(Number);
  return { uid: nums('Uid'), gid: nums('Gid'), groups: nums('Groups'), capEff: field('CapEff'), cmdline: readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ') };
}

async function waitFor(cond: () => boolean, ms: number, what: string, p?: PosternProcess): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${p ? `; last records: ${JSON.stringify(p.logs.slice(-12))}\n${p.output()}` : ''}`);
    await sleep(25);
  }
}

for (const workers of [1, 2]) {
  describe(`started as root with user: nobody, workers: ${workers}`, () => {
    it('listens below 1024, every process runs as nobody, a reload adding a port below 1024 is refused', { timeout: 60_000 }, async (t) => {
      if (!requireRoot(t)) return;
      const group = groupName();
      const gid = gidOf(group);
      const [port, added] = (await privilegedPorts(2)) as [number, number];
      const settings = {
        workers, user: 'nobody', group, log: { level: 'info' }, listen: [`127.0.0.1:${port}`], route: { static: '127.0.0.1:9' },
        // A pool with active checks: its status file (in $TMPDIR) must stay the user's.
        pools: { mx: { servers: ['127.0.0.1:9'], health: { interval: '1s', fall: 1 } } },
      };
      const p: PosternProcess = await startPosternProcess(settings, 30_000);
      // The configuration must stay readable for the reload, which reads it as nobody.
      chmodSync(path.dirname(p.configFile), 0o755);
      const status = statusFilePath(p.configFile);
      let stopped = false;
      try {
        // Every worker, and then the primary, say so.
        await waitFor(() => p.logs.filter((r) => r.msg === 'privileges dropped').length >= (workers > 1 ? workers + 1 : 1), 20_000, 'the drops', p);
        const primaryDrop = p.logs.find((r) => r.msg === 'privileges dropped' && r.pid === p.pid);
        assert.ok(primaryDrop, 'the primary dropped');
        assert.deepEqual([primaryDrop.user, primaryDrop.group, primaryDrop.uid, primaryDrop.gid], ['nobody', group, NOBODY, gid]);

        assert.equal(await greetingLine(port), '220 proxy.test ESMTP ready');

        const children = childrenOf(p.pid);
        const pids = [p.pid, ...children];
        assert.equal(children.filter((c) => credentials(c).cmdline.includes('src/cli.ts')).length, workers > 1 ? workers : 0, 'the workers');
        for (const pid of pids) {
          const c = credentials(pid);
          assert.deepEqual(c.uid, [NOBODY, NOBODY, NOBODY, NOBODY], `${pid} (${c.cmdline}) Uid`);
          assert.deepEqual(c.gid, [gid, gid, gid, gid], `${pid} Gid`);
          assert.ok(!c.groups.includes(0), `${pid} Groups: ${c.groups.join(' ')}`);
          assert.match(c.capEff, /^0+$/, `${pid} CapEff`);
        }

        // The pools' status file is the user's: it can be replaced, and removed at stop.
        await waitFor(() => existsSync(status), 10_000, 'the status file', p);
        assert.equal(statSync(status).uid, NOBODY);

        // The reload: the file is valid, but nobody cannot bind the new port; the running configuration stays.
        const mark = p.logs.length;
        writeFileSync(p.configFile, stringify({ ...settings, server_name: 'new.proxy.test', listen: [`127.0.0.1:${port}`, `127.0.0.1:${added}`] }));
        process.kill(p.pid, 'SIGHUP');
        await waitFor(() => p.logs.slice(mark).filter((r) => r.code === 'PSW_RELOAD_REFUSED').length >= workers, 20_000, 'the refusals', p);
        for (const r of p.logs.slice(mark).filter((l) => l.code === 'PSW_RELOAD_REFUSED')) {
          assert.match((r.problems as string[]).join('\n'), new RegExp(`EACCES.*127\\.0\\.0\\.1:${added}`));
        }
        assert.equal(p.logs.slice(mark).filter((r) => r.code === 'PSW_RELOADED').length, 0);
        assert.equal(await greetingLine(port), '220 proxy.test ESMTP ready');
        await assert.rejects(greetingLine(added));

        assert.equal(await p.stop(), 0);
        stopped = true;
        assert.equal(existsSync(status), false, 'the status file was removed at stop');
        assert.doesNotMatch(p.output(), /\S/);
      } finally {
        if (!stopped) await p.stop();
      }
    });
  });
}

/** `postern --config FILE` with `settings`, as root or (with `uid`) as that user; its exit code and output. */
function runPostern(settings: Record<string, unknown>, opts: { uid?: number; untilLog?: RegExp } = {}): Promise<{ code: number | null; output: string }> {
  const dir = mkdtempSync(path.join(tmp, 'run-'));
  chmodSync(dir, 0o755);
  const file = path.join(dir, 'postern.yaml');
  writeFileSync(file, stringify({ server_name: 'proxy.test', route: { static: '127.0.0.1:9' }, ...settings }), { mode: 0o644 });
  const ids = opts.uid !== undefined ? { uid: opts.uid, gid: opts.uid } : {};
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(root, 'src/cli.ts'), '--config', file], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'], ...ids });
  let output = '';
  let stopping = false;
  const kill = setTimeout(() => child.kill('SIGKILL'), 30_000);
  const collect = (d: Buffer): void => {
    output += d.toString();
    // Once: a second SIGTERM ends Postern without its drain.
    if (!stopping && opts.untilLog?.test(output)) stopping = child.kill('SIGTERM');
  };
  child.stdout!.on('data', collect);
  child.stderr!.on('data', collect);
  return new Promise((resolve) => child.once('exit', (code) => {
    clearTimeout(kill);
    resolve({ code, output });
  }));
}

describe('user that cannot be honoured', () => {
  it('user: nosuchuser: a clear error naming the key, exit status 1, nothing bound', { timeout: 30_000 }, async (t) => {
    if (!requireRoot(t)) return;
    const [port] = (await privilegedPorts(1)) as [number];
    const r = await runPostern({ user: 'nosuchuser', listen: [`127.0.0.1:${port}`] });
    assert.equal(r.code, 1, r.output);
    assert.match(r.output, /^ {2}user: no such user "nosuchuser"$/m);
    assert.doesNotMatch(r.output, /"msg":"listening"/);
    // A group that does not exist, likewise.
    const g = await runPostern({ user: 'nobody', group: 'nosuchgroup', listen: [`127.0.0.1:${port}`] });
    assert.equal(g.code, 1, g.output);
    assert.match(g.output, /^ {2}group: no such group "nosuchgroup"$/m);
  });

  it('started as nobody: user daemon is fatal (exit status 1); user nobody runs', { timeout: 30_000 }, async (t) => {
    if (!requireRoot(t)) return;
    const other = await runPostern({ user: 'daemon', listen: ['127.0.0.1:0'] }, { uid: NOBODY });
    assert.equal(other.code, 1, other.output);
    const fatal = other.output.split('\n').filter((l) => l.includes('"level":"fatal"'));
    assert.equal(fatal.length, 1, other.output);
    assert.match(fatal[0]!, /Postern runs as uid 65534, not as daemon .*only root can change its user/);
    assert.doesNotMatch(other.output, /"msg":"listening"/);
    const same = await runPostern({ user: 'nobody', listen: ['127.0.0.1:0'] }, { uid: NOBODY, untilLog: /"msg":"postern started"/ });
    assert.equal(same.code, 0, same.output);
    assert.doesNotMatch(same.output, /"level":"(fatal|error|warn)"/);
    assert.doesNotMatch(same.output, /privileges dropped/);
  });
});
