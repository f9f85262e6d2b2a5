/**
 * Soak, long profile: `npm run test:soak` (not part of `npm test`: the file is not *.test.ts).
 * SOAK_SESSIONS sessions (default 100,000), 100 at once, of the mix described in soak.ts, with
 * the fast profile's invariants. Prints the figures quoted in docs/reliability.md.
 *
 *   npm run test:soak
 *   SOAK_SESSIONS=20000 npm run test:soak
 */
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { formatResult, soak, type SoakResult } from './soak.js';

const SESSIONS = Number(process.env.SOAK_SESSIONS ?? 100_000);
const CONCURRENCY = 100;
const MiB = 2 ** 20;

describe(`soak (long): ${SESSIONS} sessions, ${CONCURRENCY} at once, good and bad clients mixed`, () => {
  let r: SoakResult;
  before(async () => {
    assert.ok(Number.isInteger(SESSIONS) && SESSIONS >= 100, `SOAK_SESSIONS must be an integer ≥ 100, got ${process.env.SOAK_SESSIONS}`);
    r = await soak({ sessions: SESSIONS, concurrency: CONCURRENCY, progress: (line) => process.stdout.write(`progress: ${line}\n`) });
    process.stdout.write(`${formatResult(r)}\n`);
  });

  it('every good session got 250 after its dot', () => {
    assert.deepEqual(r.goodFailures, [], `${r.goodFailureCount} good session(s) failed`);
    assert.equal(r.sessions, SESSIONS);
    assert.ok(r.good > 0);
    assert.equal(r.goodAccepted, r.good);
  });

  it('the sink counted exactly the good messages: no abandoned half message was delivered', () => {
    assert.ok(r.badByKind.abandon > 0);
    assert.equal(r.sinkCount, r.goodAccepted);
  });

  it('every bad client was answered and closed as expected (421 for abuse and idle)', () => {
    assert.deepEqual(r.badUnexpectedSamples, []);
    assert.deepEqual(r.badUnexpected, { junk: 0, abuse: 0, early: 0, abandon: 0, idle: 0 });
  });

  it('no file descriptor leak: fdsEnd ≤ fdsWarm + 10', () => {
    assert.ok(r.fdsEnd <= r.fdsWarm + 10, `fds ${r.fdsWarm} after the warm-up, ${r.fdsEnd} at the end`);
  });

  it('no memory growth: rssEnd ≤ rssWarm × 1.5 + 20 MiB', () => {
    // The same bound as the fast profile: generous for V8's lazy heap growth and retained pages,
    // but over 100,000 sessions a leak of ~300 bytes per session (30 MiB) breaks it.
    assert.ok(r.rssWarm > 0 && r.rssEnd > 0, 'Postern\'s /proc/<pid>/status was readable');
    const bound = r.rssWarm * 1.5 + 20 * MiB;
    assert.ok(r.rssEnd <= bound, `rss ${(r.rssWarm / MiB).toFixed(1)} MiB after the warm-up, ${(r.rssEnd / MiB).toFixed(1)} MiB at the end (bound ${(bound / MiB).toFixed(1)} MiB)`);
  });

  it('Postern still answers and delivers a fresh session at the end', () => {
    assert.ok(r.freshSessionOk, r.freshSessionDetail);
    assert.equal(r.sinkCountAfterFresh, r.sinkCount + 1);
  });

  it('Postern did not crash: still running, no uncaught exception on stderr, no error records, clean stop', () => {
    assert.ok(r.posternAliveAtEnd);
    assert.doesNotMatch(r.posternStderr, /uncaught|Error\b|^\s+at /im);
    assert.equal(r.posternLogLevels.error ?? 0, 0, r.posternLogSamples.join('\n'));
    assert.equal(r.posternLogLevels.fatal ?? 0, 0, r.posternLogSamples.join('\n'));
    assert.deepEqual(r.posternExit, { code: 0, signal: null });
  });
});
