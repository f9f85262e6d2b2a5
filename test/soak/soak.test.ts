/**
 * Soak, fast profile (runs in `npm test`): 1,500 sessions, 50 at once, of good and bad clients
 * through a Postern process, smtp-sink behind it. The long profile is soak-long.ts
 * (`npm run test:soak`, 100,000 sessions); the kinds of client are described in soak.ts.
 */
import { soak } from './soak.js';
import { soakSuite } from './invariants.js';

const SESSIONS = 1500;

soakSuite(`soak: ${SESSIONS} sessions, 50 at once, good and bad clients mixed`, SESSIONS, () => soak({ sessions: SESSIONS, concurrency: 50 }), 110_000);
