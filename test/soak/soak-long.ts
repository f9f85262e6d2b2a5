/**
 * Soak, long profile: `npm run test:soak` (not part of `npm test`: the file is not *.test.ts).
 * SOAK_SESSIONS sessions (default 100,000), 100 at once, of the mix described in soak.ts, with
 * the fast profile's invariants. Prints the figures quoted in docs/reliability.md.
 *
 *   npm run test:soak
 *   SOAK_SESSIONS=20000 npm run test:soak
 */
import assert from 'node:assert/strict';
import { soak } from './soak.js';
import { soakSuite } from './invariants.js';

const SESSIONS = Number(process.env.SOAK_SESSIONS ?? 100_000);
const CONCURRENCY = 100;

soakSuite(`soak (long): ${SESSIONS} sessions, ${CONCURRENCY} at once, good and bad clients mixed`, SESSIONS, () => {
  assert.ok(Number.isInteger(SESSIONS) && SESSIONS >= 100, `SOAK_SESSIONS must be an integer ≥ 100, got ${process.env.SOAK_SESSIONS}`);
  return soak({ sessions: SESSIONS, concurrency: CONCURRENCY, progress: (line) => process.stdout.write(`progress: ${line}\n`) });
});
