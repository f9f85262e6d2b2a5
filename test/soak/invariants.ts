/**
 * The soak invariants, shared by the fast profile (soak.test.ts, in `npm test`) and the long one
 * (soak-long.ts, `npm run test:soak`).
 */
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { formatResult, type SoakResult } from './soak.js';

const MiB = 2 ** 20;

export function soakSuite(title: string, sessions: number, run: () => Promise<SoakResult>, timeoutMs?: number): void {
  describe(title, () => {
    let r: SoakResult;
    before(async () => {
      r = await run();
      process.stdout.write(`${formatResult(r)}\n`);
    }, timeoutMs === undefined ? {} : { timeout: timeoutMs });

    it('every good session got 250 after its dot', () => {
      assert.deepEqual(r.goodFailures, [], `${r.goodFailureCount} good session(s) failed`);
      assert.equal(r.sessions, sessions);
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
      // Generous on purpose: V8 grows its heap lazily up to a plateau and RSS keeps freed pages, so
      // a settled process may sit well above its warm-up figure without leaking. Over 1,500 sessions
      // this only catches a gross leak (> ~10 KiB per session); the long profile's 100,000 sessions
      // under the same bound catch one of ~300 bytes per session.
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
}
