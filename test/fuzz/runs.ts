/**
 * Run counts for the property-based fuzz tests. `npm test` uses each property's fast count;
 * `FUZZ_RUNS=200000 npm run test:fuzz` (or any FUZZ_RUNS) runs every property that many times.
 */
export const runs = (fast: number): number => Number(process.env.FUZZ_RUNS ?? fast);
