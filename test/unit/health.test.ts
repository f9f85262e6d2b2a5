/**
 * ServerHealth on a fake clock: every transition of the active checks (rise/fall), of passive
 * detection (max_fails/fail_timeout, the trial after it), of the two combined, and of a worker
 * applying the primary's verdicts; exactly one transition per change of usable(), with its reason.
 * Also the status file's path, writer and `postern status` formatting.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import type { HealthSnapshotEntry } from '../../src/pools/checker.js';
import { ServerHealth, type HealthOptions, type HealthTransition } from '../../src/pools/health.js';
import { formatStatus, readStatus, statusFilePath, StatusWriter, type StatusFile } from '../../src/pools/status.js';

function make(opts: Partial<HealthOptions> = {}): { h: ServerHealth; clock: { t: number } } {
  const clock = { t: 1000 };
  const h = new ServerHealth({ rise: 2, fall: 3, maxFails: 1, failTimeout: 10_000, ...opts }, () => clock.t);
  return { h, clock };
}

const down = (reason: string, source: HealthTransition['source']): HealthTransition => ({ up: false, reason, source });
const up = (reason: string, source: HealthTransition['source']): HealthTransition => ({ up: true, reason, source });

describe('ServerHealth: active checks (rise/fall)', () => {
  it('starts up and stays up on good checks', () => {
    const { h } = make();
    assert.equal(h.usable(), true);
    assert.equal(h.activeUp, true);
    for (let i = 0; i < 5; i++) assert.equal(h.checked(true, 'ok'), null);
    assert.equal(h.usable(), true);
  });

  it('goes down after `fall` failures in a row, with the last failure as the reason, once', () => {
    const { h, clock } = make({ fall: 3 });
    assert.equal(h.checked(false, 'connect ECONNREFUSED'), null);
    assert.equal(h.checked(false, 'connect ECONNREFUSED'), null);
    assert.equal(h.usable(), true, 'still up after fall - 1 failures');
    clock.t = 5000;
    assert.deepEqual(h.checked(false, 'greeting 421 4.3.2 busy'), down('check failed 3 times: greeting 421 4.3.2 busy', 'check'));
    assert.equal(h.usable(), false);
    assert.equal(h.since, 5000);
    // Further failures are no new change.
    assert.equal(h.checked(false, 'greeting 421 4.3.2 busy'), null);
    assert.equal(h.usable(), false);
  });

  it('a good check breaks a run of failures', () => {
    const { h } = make({ fall: 3 });
    h.checked(false, 'x');
    h.checked(false, 'x');
    assert.equal(h.checked(true, 'ok'), null);
    assert.equal(h.checked(false, 'x'), null);
    assert.equal(h.checked(false, 'x'), null);
    assert.equal(h.usable(), true, 'only 2 failures since the good check');
    assert.equal(h.checked(false, 'x')?.up, false);
  });

  it('fall: 1 takes it down on the first failure', () => {
    const { h } = make({ fall: 1 });
    assert.deepEqual(h.checked(false, 'timeout after 5000 ms at ehlo'), down('check failed 1 time: timeout after 5000 ms at ehlo', 'check'));
  });

  it('comes back after `rise` good checks in a row, once; a failure restarts the count', () => {
    const { h, clock } = make({ fall: 1, rise: 2 });
    h.checked(false, 'x');
    assert.equal(h.checked(true, 'ok'), null);
    assert.equal(h.checked(false, 'x'), null, 'failure while down: no change');
    assert.equal(h.checked(true, 'ok'), null);
    assert.equal(h.usable(), false, 'one good check since the failure');
    clock.t = 9000;
    assert.deepEqual(h.checked(true, 'ok'), up('recovered: check passed 2 times', 'check'));
    assert.equal(h.usable(), true);
    assert.equal(h.since, 9000);
    assert.equal(h.checked(true, 'ok'), null);
  });

  it('rise: 1 brings it back on the first good check', () => {
    const { h } = make({ fall: 1, rise: 1 });
    h.checked(false, 'x');
    assert.deepEqual(h.checked(true, 'ok'), up('recovered: check passed 1 time', 'check'));
  });
});

describe('ServerHealth: passive detection (max_fails/fail_timeout)', () => {
  it('max_fails: 1 takes it out at the first failed session, for fail_timeout', () => {
    const { h, clock } = make({ maxFails: 1, failTimeout: 10_000 });
    assert.deepEqual(h.failed('connect ECONNREFUSED'), down('1 failed session within 10000 ms: connect ECONNREFUSED; out for 10000 ms', 'passive'));
    assert.equal(h.usable(), false);
    assert.equal(h.passivelyOut, true);
    assert.equal(h.activeUp, true, 'the active verdict is untouched');
    assert.equal(h.nextChangeAt(), 11_000);
    clock.t = 10_999;
    assert.equal(h.usable(), false);
    assert.equal(h.refresh(), null);
  });

  it('after fail_timeout it is usable for a trial; refresh() reports that once', () => {
    const { h, clock } = make({ maxFails: 1, failTimeout: 10_000 });
    h.failed('x');
    clock.t = 11_000;
    assert.equal(h.usable(), true);
    assert.equal(h.nextChangeAt(), null);
    assert.deepEqual(h.refresh(), { ...up('fail_timeout of 10000 ms passed: on trial', 'passive'), trial: true });
    assert.equal(h.refresh(), null);
  });

  it('a successful trial clears the count: the next failure needs max_fails again', () => {
    const { h, clock } = make({ maxFails: 2, failTimeout: 10_000 });
    h.failed('x');
    assert.equal(h.usable(), true, 'one failure of two');
    assert.equal(h.failed('y')?.up, false);
    clock.t += 10_000;
    assert.equal(h.refresh()?.up, true);
    assert.equal(h.succeeded(), null, 'usable already; the trial ends quietly');
    assert.equal(h.failed('z'), null, 'count cleared: 1 of 2');
    assert.equal(h.usable(), true);
    assert.deepEqual(h.failed('w'), down('2 failed sessions within 10000 ms: w; out for 10000 ms', 'passive'));
  });

  it('a failed trial takes it out again for fail_timeout from that failure', () => {
    const { h, clock } = make({ maxFails: 3, failTimeout: 10_000 });
    h.failed('a');
    h.failed('b');
    h.failed('c');
    clock.t += 10_000;
    assert.equal(h.refresh()?.up, true);
    clock.t += 500;
    assert.deepEqual(h.failed('greeting 421 busy'), { ...down('trial failed: greeting 421 busy; out for 10000 ms', 'passive'), trial: true });
    assert.equal(h.nextChangeAt(), clock.t + 10_000);
    clock.t += 9_999;
    assert.equal(h.usable(), false);
    clock.t += 1;
    assert.deepEqual(h.refresh(), { ...up('fail_timeout of 10000 ms passed: on trial', 'passive'), trial: true });
  });

  it('a trial that succeeds before anyone looked is reported by succeeded()', () => {
    const { h, clock } = make({ maxFails: 1, failTimeout: 1000 });
    h.failed('x');
    clock.t += 1000;
    assert.deepEqual(h.succeeded(), up('fail_timeout of 1000 ms passed: trial succeeded', 'passive'));
    assert.equal(h.failed('y')?.up, false, 'count was cleared, and max_fails is 1');
  });

  it('a failed trial nobody saw begin is no change (still out, the hold extended)', () => {
    const { h, clock } = make({ maxFails: 1, failTimeout: 1000 });
    h.failed('x');
    clock.t += 1500;
    assert.equal(h.failed('y'), null);
    assert.equal(h.usable(), false);
    assert.equal(h.nextChangeAt(), clock.t + 1000);
  });

  it('failures further apart than fail_timeout do not add up', () => {
    const { h, clock } = make({ maxFails: 2, failTimeout: 10_000 });
    h.failed('a');
    clock.t += 10_001;
    assert.equal(h.failed('b'), null, 'the window of the first failure has passed');
    assert.equal(h.usable(), true);
    clock.t += 9_000;
    assert.equal(h.failed('c')?.up, false, 'two failures within 10 s');
  });

  it('a failure during the hold extends it; a success during the hold does not lift it (nginx)', () => {
    const { h, clock } = make({ maxFails: 1, failTimeout: 10_000 });
    h.failed('a');
    clock.t += 5_000;
    assert.equal(h.succeeded(), null);
    assert.equal(h.usable(), false);
    assert.equal(h.failed('b'), null, 'already out');
    clock.t += 9_000;
    assert.equal(h.usable(), false, 'held for 10 s from the second failure');
    clock.t += 1_000;
    assert.equal(h.refresh()?.up, true);
  });

  it('max_fails: 0 never takes a server out', () => {
    const { h } = make({ maxFails: 0 });
    for (let i = 0; i < 100; i++) assert.equal(h.failed('x'), null);
    assert.equal(h.usable(), true);
    assert.equal(h.nextChangeAt(), null);
  });

  it('succeeded() on a healthy server is no change', () => {
    const { h } = make();
    assert.equal(h.succeeded(), null);
    assert.equal(h.refresh(), null);
  });
});

describe('ServerHealth: active and passive combined', () => {
  it('held out and then down by check: one line (the first); back only when both allow', () => {
    const { h, clock } = make({ maxFails: 1, failTimeout: 10_000, fall: 1, rise: 1 });
    assert.equal(h.failed('a')?.up, false);
    assert.equal(h.checked(false, 'x'), null, 'already unusable');
    clock.t += 10_000;
    assert.equal(h.refresh(), null, 'the hold is over but the check says down');
    assert.equal(h.usable(), false);
    assert.deepEqual(h.checked(true, 'ok'), up('recovered: check passed 1 time', 'check'));
  });

  it('down by check and then recovered while still held: usable only when the hold ends', () => {
    const { h, clock } = make({ maxFails: 1, failTimeout: 10_000, fall: 1, rise: 1 });
    assert.equal(h.checked(false, 'x')?.up, false);
    assert.equal(h.failed('a'), null);
    clock.t += 1000;
    assert.equal(h.checked(true, 'ok'), null, 'the check is good but failed sessions hold it out');
    assert.equal(h.activeUp, true);
    assert.equal(h.usable(), false);
    clock.t += 9_000;
    assert.deepEqual(h.refresh(), { ...up('fail_timeout of 10000 ms passed: on trial', 'passive'), trial: true });
  });

  it('a check result reports a trial that time has opened (no separate refresh needed)', () => {
    const { h, clock } = make({ maxFails: 1, failTimeout: 1000 });
    h.failed('a');
    clock.t += 1000;
    assert.deepEqual(h.checked(true, 'ok'), { ...up('fail_timeout of 1000 ms passed: on trial', 'passive'), trial: true });
  });

  it('usable() changes exactly when a transition says so (random walk)', () => {
    let seed = 7;
    const rnd = (): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    const { h, clock } = make({ maxFails: 2, failTimeout: 3000, fall: 2, rise: 2 });
    let shown = true;
    for (let i = 0; i < 5000; i++) {
      clock.t += Math.floor(rnd() * 1500);
      const r = rnd();
      const t =
        r < 0.25 ? h.checked(false, 'bad') : r < 0.5 ? h.checked(true, 'ok') : r < 0.7 ? h.failed('f') : r < 0.85 ? h.succeeded() : r < 0.95 ? h.refresh() : h.setActive(rnd() < 0.5, 'primary');
      if (t) {
        assert.notEqual(t.up, shown, `step ${i}: a transition must change the state`);
        shown = t.up;
      }
      assert.equal(h.usable(), shown, `step ${i}: usable() changed without a transition`);
    }
  });
});

describe('ServerHealth.setActive: a worker applying the primary verdicts', () => {
  it('applies the reason given, once; repeated (a snapshot after a change) is no change', () => {
    const { h } = make();
    assert.deepEqual(h.setActive(false, 'check failed 3 times: x'), down('check failed 3 times: x', 'check'));
    assert.equal(h.setActive(false, 'check failed 3 times: x'), null);
    assert.equal(h.usable(), false);
    assert.deepEqual(h.setActive(true, 'recovered: check passed 2 times'), up('recovered: check passed 2 times', 'check'));
    assert.equal(h.setActive(true, 'recovered'), null);
  });

  it('an up verdict does not end a passive hold', () => {
    const { h } = make({ maxFails: 1 });
    h.setActive(false, 'down');
    h.failed('x');
    assert.equal(h.setActive(true, 'recovered'), null);
    assert.equal(h.usable(), false);
  });
});

function entry(pool: string, server: string, up: boolean, extra: Partial<HealthSnapshotEntry> = {}): HealthSnapshotEntry {
  return { pool, server, up, reason: up ? 'up until checks say otherwise' : 'check failed 3 times: connect ECONNREFUSED', since: 0, lastCheck: 60_000, lastResult: up ? 'ok' : 'connect ECONNREFUSED', checked: true, ...extra };
}

describe('status file', () => {
  it('path: the temporary directory, sha1 of the absolute config path, 12 hex', () => {
    const p = statusFilePath('/etc/postern/postern.yaml');
    assert.equal(path.dirname(p), os.tmpdir());
    assert.match(path.basename(p), /^postern-status-[0-9a-f]{12}\.json$/);
    // sha1("/etc/postern/postern.yaml")
    assert.equal(path.basename(p), 'postern-status-19fda42b7183.json');
    assert.equal(statusFilePath(path.relative(process.cwd(), '/etc/postern/postern.yaml')), p, 'relative paths resolve to the same file');
    assert.notEqual(statusFilePath('/etc/postern/other.yaml'), p);
  });

  it('the writer writes atomically (no temporary file left), coalesces, and removes the file', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'postern-status-test-'));
    const file = path.join(dir, 'status.json');
    const w = new StatusWriter('/x/postern.yaml', undefined, file);
    const writes = [w.write([entry('a', '1:25', true)]), w.write([entry('a', '1:25', false)]), w.write([entry('a', '1:25', true), entry('b', '2:25', false)])];
    await Promise.all(writes);
    const s = readStatus(file)!;
    assert.equal(s.version, 1);
    assert.equal(s.pid, process.pid);
    assert.equal(s.config, '/x/postern.yaml');
    assert.deepEqual(s.servers.map((e) => e.server), ['1:25', '2:25'], 'the newest snapshot wins');
    assert.deepEqual(readdirSync(dir), ['status.json']);
    assert.doesNotThrow(() => JSON.parse(readFileSync(file, 'utf8')));
    await w.remove();
    assert.equal(existsSync(file), false);
    await w.write([entry('a', '1:25', true)]);
    assert.equal(existsSync(file), false, 'nothing written after remove()');
  });

  it('formatStatus: one line per server; 0 when every pool has a usable server, 1 otherwise', () => {
    const base: StatusFile = { version: 1, pid: process.pid, written: 120_000, config: '/x', servers: [] };
    const ok = formatStatus({ ...base, servers: [entry('mx', '10.0.0.1:25', true), entry('mx', '10.0.0.2:25', false), entry('sub', '[2001:db8::1]:587', true, { checked: false, reason: 'not checked (health.enabled: false)', lastCheck: null, lastResult: null })] }, 120_000);
    assert.equal(ok.code, 0);
    assert.equal(ok.lines.length, 3);
    assert.match(ok.lines[0]!, /^mx +10\.0\.0\.1:25 +up +since 1970-01-01T00:00:00Z \(2m\) +up until checks say otherwise; last check 60s ago: ok$/);
    assert.match(ok.lines[1]!, /^mx +10\.0\.0\.2:25 +DOWN +since .* check failed 3 times: connect ECONNREFUSED; last check 60s ago: connect ECONNREFUSED$/);
    assert.match(ok.lines[2]!, /^sub +\[2001:db8::1\]:587 +up +since .* not checked \(health\.enabled: false\)$/);
    const bad = formatStatus({ ...base, servers: [entry('mx', '10.0.0.1:25', true), entry('lmtp', '10.0.0.9:24', false), entry('lmtp', '10.0.0.8:24', false)] }, 120_000);
    assert.equal(bad.code, 1);
    assert.equal(bad.lines.at(-1), 'no usable server in pool lmtp');
  });
});
