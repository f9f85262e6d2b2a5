/**
 * `user` and `group`: started as root, Postern binds its ports (25, 465, 587) and reads its keys
 * as root, then runs as the unprivileged user, as nginx's master does for its workers with
 * `user` — except that here every process drops, the primary included.
 *
 * - One process: right after its server has started (every listener bound, every key read).
 * - Cluster: a worker reads its keys and asks the primary for its listeners, which the primary
 *   binds while it is still root; the worker drops right after its start and tells the primary
 *   (`postern:privileges-dropped`), which drops once every worker has (so before its workers'
 *   readiness reaches systemd, src/service/notify.ts). Workers forked later (a crashed one
 *   replaced, more after a reload) are forked by the unprivileged primary: they start as the user.
 * - The order is initgroups (the user's supplementary groups, e.g. ssl-cert; setgroups with the
 *   one group for a uid without a name), setgid, setuid; then the ids are checked, and that root
 *   cannot be had back (setuid(0) must fail). Any failure is a fatal log line and exit status 1:
 *   Postern never runs on as root when `user` was asked for.
 * - Before the drop, files Postern goes on writing are handed to the user (owner only, as nginx
 *   does with its log files): `log.file` (so that SIGUSR1 can open it again) and the pools'
 *   status file (src/pools/status.ts, in $TMPDIR; a file root wrote there could not be replaced
 *   by the user in a sticky /tmp). The pid file stays root's; its directory decides whether it
 *   can be removed at exit.
 * - Started as another user with `user` set: that user already is fine; anything else is fatal
 *   (only root can change users). Without `user`, nothing changes.
 *
 * Names are looked up with getent(1) (so NSS sources count), or in /etc/passwd and /etc/group
 * where there is no getent.
 */
import { execFileSync } from 'node:child_process';
import cluster from 'node:cluster';
import { accessSync, chownSync, constants, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from '../log/logger.js';
import { whenStatusWritersIdle } from '../pools/status.js';

/** What this module reads of the configuration (`log.file` if the schema has it). */
export interface PrivilegeSettings {
  user?: string | number | undefined;
  group?: string | number | undefined;
  log?: { readonly [key: string]: unknown; file?: string | undefined };
}

/** Who Postern runs as after the drop. */
export interface Target {
  /** As configured (for log lines). */
  user: string;
  group: string;
  uid: number;
  gid: number;
  /** The user's name in the user database, for initgroups; undefined for a uid without an entry. */
  name: string | undefined;
}

/** worker → primary: this worker has bound its listeners and runs as the user now. */
const DROPPED_MESSAGE = 'postern:privileges-dropped';

interface Entry {
  name: string;
  id: number;
  /** passwd: the primary group. */
  gid?: number;
}

const numeric = (v: string | number): boolean => typeof v === 'number' || /^\d+$/.test(v);

function parse(db: 'passwd' | 'group', line: string): Entry | null {
  const f = line.split(':');
  const id = Number(f[2]);
  if (f.length < 4 || !f[0] || !Number.isInteger(id)) return null;
  return db === 'passwd' ? { name: f[0], id, gid: Number(f[3]) } : { name: f[0], id };
}

/** One entry of the user or group database, by name or id; null when there is none. */
export function lookup(db: 'passwd' | 'group', key: string | number): Entry | null {
  const k = String(key);
  try {
    const out = execFileSync('getent', [db, k], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 10_000 });
    return parse(db, out.split('\n')[0] ?? '');
  } catch (err) {
    // getent: 2 is "not found"; no getent at all (or another failure): the files.
    if ((err as { status?: number }).status === 2) return null;
  }
  let text = '';
  try {
    text = readFileSync(`/etc/${db}`, 'utf8');
  } catch {
    return null;
  }
  for (const line of text.split('\n')) {
    const e = parse(db, line);
    if (e && (numeric(k) ? e.id === Number(k) : e.name === k)) return e;
  }
  return null;
}

const cache = new Map<string, { target: Target | null; problems: string[] }>();

/** The user and group to run as (null: no `user`), or the problems by key. */
export function resolveTarget(settings: PrivilegeSettings): { target: Target | null; problems: string[] } {
  const { user, group } = settings;
  const key = JSON.stringify([user, group]);
  let r = cache.get(key);
  if (!r) cache.set(key, (r = resolve(user, group)));
  return r;
}

function resolve(user: string | number | undefined, group: string | number | undefined): { target: Target | null; problems: string[] } {
  if (user === undefined) {
    return { target: null, problems: group === undefined ? [] : ['group: needs user (the group alone is never changed)'] };
  }
  const problems: string[] = [];
  const pw = lookup('passwd', user);
  if (!pw && !numeric(user)) problems.push(`user: no such user ${JSON.stringify(user)}`);
  let gid: number | undefined;
  if (group !== undefined) {
    const gr = lookup('group', group);
    if (gr) gid = gr.id;
    else if (numeric(group)) gid = Number(group);
    else problems.push(`group: no such group ${JSON.stringify(group)}`);
  } else if (pw) {
    gid = pw.gid;
  } else if (numeric(user)) {
    problems.push(`group: user ${user} has no entry in the user database, hence no primary group: set group`);
  }
  if (problems.length > 0 || gid === undefined) return { target: null, problems };
  const uid = pw ? pw.id : Number(user);
  const groupName = group !== undefined ? String(group) : (lookup('group', gid)?.name ?? String(gid));
  return { target: { user: String(user), group: groupName, uid, gid, name: pw?.name }, problems };
}

/** For check-config (as `nginx -t` checks `user`): a user or group that does not exist. */
export function privilegeProblems(settings: PrivilegeSettings): string[] {
  return resolveTarget(settings).problems;
}

function fatal(logger: Logger, fields: Record<string, unknown>, msg: string): never {
  logger.fatal({ ...fields, worker: cluster.isWorker ? process.pid : undefined }, msg);
  // pino writes what is queued when the process exits.
  process.exit(1);
}

/**
 * At start, before anything is bound: false (logged at fatal) when `user` cannot be honoured —
 * it does not resolve, or the process is neither root nor already that user.
 */
export function checkPrivileges(settings: PrivilegeSettings, logger: Logger): boolean {
  const { target, problems } = resolveTarget(settings);
  if (problems.length > 0) {
    logger.fatal({ problems }, 'cannot run as the configured user');
    return false;
  }
  if (!target || process.getuid!() === 0) return true;
  if (process.getuid!() !== target.uid) {
    logger.fatal({ user: target.user, uid: process.getuid!(), wanted: target.uid },
      `user: Postern runs as uid ${process.getuid!()}, not as ${target.user} (uid ${target.uid}); only root can change its user: start it as root or as ${target.user}`);
    return false;
  }
  if (process.getgid!() !== target.gid) {
    logger.warn({ group: target.group, gid: process.getgid!(), wanted: target.gid }, `group: Postern runs with gid ${process.getgid!()}, not ${target.gid}; only root can change it`);
  }
  return true;
}

/** Files this process goes on writing: given to the user (owner only) if it does not own them yet. */
function handOver(files: string[], uid: number, logger: Logger): void {
  for (const file of files) {
    try {
      const st = statSync(file);
      if (st.isFile() && st.uid !== uid) chownSync(file, uid, -1);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') logger.warn({ file, err: (err as Error).message }, 'cannot give the file to the user Postern runs as; it may not be able to write it');
    }
  }
}

/** Node 20 has it; @types/node no longer declares it. */
function initgroups(user: string, extraGroup: number): void {
  const p = process as NodeJS.Process & { initgroups?: (user: string | number, extraGroup: string | number) => void };
  if (!p.initgroups) throw new Error('process.initgroups is not available');
  p.initgroups(user, extraGroup);
}

/** initgroups/setgroups, setgid, setuid; then the check. Throws with the step that failed. */
function drop(t: Target): void {
  const steps: [string, () => void][] = [
    [t.name !== undefined ? `initgroups(${t.name}, ${t.gid})` : `setgroups([${t.gid}])`,
      () => (t.name !== undefined ? initgroups(t.name, t.gid) : process.setgroups!([t.gid]))],
    [`setgid(${t.gid})`, () => process.setgid!(t.gid)],
    [`setuid(${t.uid})`, () => process.setuid!(t.uid)],
  ];
  for (const [step, run] of steps) {
    try {
      run();
    } catch (err) {
      throw new Error(`${step}: ${(err as Error).message}`);
    }
  }
  const ids = [process.getuid!(), process.geteuid!(), process.getgid!(), process.getegid!()];
  if (ids.join() !== [t.uid, t.uid, t.gid, t.gid].join()) throw new Error(`after the drop uid/euid/gid/egid are ${ids.join('/')}, not ${t.uid}/${t.uid}/${t.gid}/${t.gid}`);
  if (t.uid !== 0) {
    let regained = true;
    try {
      process.setuid!(0);
    } catch {
      regained = false;
    }
    if (regained) throw new Error('setuid(0) succeeded after the drop: root could be had back');
  }
}

/**
 * Root with `user` set: hands the files over, drops, checks; resolves once this process runs
 * as the user. Any failure ends the process (fatal log line, exit status 1). Otherwise a no-op.
 */
export function dropPrivileges(settings: PrivilegeSettings, logger: Logger): Promise<void> {
  const { target } = resolveTarget(settings);
  if (!target || process.getuid!() !== 0) return Promise.resolve();
  return new Promise((done) => {
    // The status file is handed over between two of its writes (src/pools/status.ts).
    whenStatusWritersIdle((statusFiles) => {
      handOver([...(settings.log?.file ? [settings.log.file] : []), ...statusFiles], target.uid, logger);
      try {
        drop(target);
      } catch (err) {
        fatal(logger, { user: target.user, group: target.group, err: (err as Error).message }, `cannot run as ${target.user}:${target.group}; not running on as root`);
      }
      logger.info({ user: target.user, group: target.group, uid: target.uid, gid: target.gid, groups: process.getgroups!(), worker: cluster.isWorker ? process.pid : undefined },
        'privileges dropped');
      if (cluster.isWorker) process.send?.({ type: DROPPED_MESSAGE });
      for (const dir of new Set(statusFiles.map((f) => path.dirname(f)))) {
        try {
          accessSync(dir, constants.W_OK | constants.X_OK);
        } catch {
          logger.warn({ dir, user: target.user }, 'the status file\'s directory ($TMPDIR) is not writable by the user Postern runs as: `postern status` will not see new states (point TMPDIR to a directory the user can write)');
        }
      }
      done();
    });
  });
}

/**
 * The cluster primary: drops (as {@link dropPrivileges}) once `n` workers are alive and each has
 * dropped after its start, so that every listener they asked for was bound while it was root (a
 * worker that died meanwhile is not waited for; its replacement, forked by root, drops too).
 */
export function dropPrivilegesWhenWorkersReady(n: number, settings: PrivilegeSettings, logger: Logger): void {
  if (!resolveTarget(settings).target || process.getuid!() !== 0) return;
  const ready = new Set<number>();
  const onMessage = (w: { id: number }, msg: unknown): void => {
    if ((msg as { type?: unknown } | null)?.type !== DROPPED_MESSAGE) return;
    ready.add(w.id);
    const alive = Object.values(cluster.workers ?? {}).filter((x) => x !== undefined && !x.isDead());
    if (alive.length < n || !alive.every((x) => ready.has(x!.id))) return;
    cluster.removeListener('message', onMessage);
    void dropPrivileges(settings, logger);
  };
  cluster.on('message', onMessage);
}
