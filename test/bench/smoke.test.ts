/**
 * A smoke run of the benchmark harness (a handful of messages, 200 idle connections): it starts
 * every process, counts delivered messages at the sink and prints the table. Speed itself is
 * never asserted here; `npm run bench` measures it.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { it } from 'node:test';
import { promisify } from 'node:util';

const run = promisify(execFile);
const root = path.resolve(import.meta.dirname, '../..');

it('npm run bench (BENCH_QUICK=1) runs all three targets and loses nothing', async () => {
  const { stdout, stderr } = await run(process.execPath, ['--import', 'tsx', path.join(root, 'bench/run.ts')], {
    cwd: root,
    env: { ...process.env, BENCH_QUICK: '1' },
    timeout: 120_000,
  });
  assert.doesNotMatch(stderr, /LOST|FAIL/);
  for (const target of ['direct', 'nginx', 'postern']) assert.match(stdout, new RegExp(`\\| 4 KiB × 5 sessions \\| ${target} \\| \\d+`));
  assert.match(stdout, /\| postern \| [\d.]+ KiB \| 0 \|/, 'idle connections held, none dropped');
});
