/**
 * A smoke run of the benchmark harness (a handful of messages, 200 idle connections): it starts
 * HAProxy, the bare Node relay (bench/node-relay.mjs), nginx and
 * every process (Postern seven times: proxy_mode session and transaction through the auth
 * responder, transaction again with backend_reuse on, session mode again with a policy server and the limits on and again with the
 * metrics listener on (scraped by the bench), a static route and a one-server pool; and the
 * policy responder), counts delivered messages at the sink, policy requests at the responder and
 * relayed sessions in the metrics, and prints the tables. Speed itself is never asserted here; `npm run
 * bench` measures it.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { it } from 'node:test';
import { promisify } from 'node:util';

const run = promisify(execFile);
const root = path.resolve(import.meta.dirname, '../..');
const TARGETS = ['direct', 'haproxy', 'node-relay', 'nginx', 'postern', 'postern-checks', 'postern-metrics', 'postern-tx', 'postern-reuse', 'postern-static', 'postern-pool'];

it('npm run bench (BENCH_QUICK=1) runs all eleven targets and every one delivers every message', async () => {
  const { stdout, stderr } = await run(process.execPath, ['--import', 'tsx', path.join(root, 'bench/run.ts')], {
    cwd: root,
    env: { ...process.env, BENCH_QUICK: '1' },
    timeout: 120_000,
  }).catch((err: { stdout?: string; stderr?: string; message: string }) => {
    assert.fail(`bench exited non-zero: ${err.message}\n${err.stderr ?? ''}\n${err.stdout ?? ''}`);
  });
  assert.doesNotMatch(stderr, /LOST|FAIL/);
  for (const scenario of ['4 KiB × 5 sessions', '100 KiB × 2 sessions']) {
    for (const target of TARGETS) assert.match(stdout, new RegExp(`\\| ${scenario} \\| ${target} \\| \\d+`), `${target} measured in ${scenario}`);
    // One ratio row per comparison section: transaction ÷ session, pool ÷ static, checks ÷ plain, metrics ÷ plain.
    assert.equal(stdout.match(new RegExp(`^\\| ${scenario} \\| [\\d.–]`, 'gm'))?.length, 4, `ratio rows for ${scenario}`);
  }
  assert.match(stdout, /## Transaction mode ÷ session mode/);
  assert.match(stdout, /## Pool ÷ static route \(postern-pool ÷ postern-static\)/);
  assert.match(stdout, /## Checks on \(policy server \+ limits\)/);
  assert.match(stdout, /## Metrics on \(Prometheus listener, scraped every second\)/);
  // Back-end reuse: its ratios to nginx and to postern-tx, and fewer back-end sessions than messages.
  assert.match(stdout, /## Back-end reuse \(postern-reuse ÷ nginx and ÷ postern-tx\)/);
  for (const scenario of ['4 KiB × 5 sessions', '100 KiB × 2 sessions']) {
    for (const b of ['nginx', 'postern-tx']) assert.match(stdout, new RegExp(`^\\| ${scenario} \\| ${b} \\| [\\d.–]`, 'm'), `postern-reuse ÷ ${b} in ${scenario}`);
  }
  const reuse = /which leaves (-?\d+) for postern-reuse's (\d+) messages/.exec(stdout);
  assert.ok(reuse, 'back-end session count');
  assert.ok(Number(reuse[1]) >= 1 && Number(reuse[1]) < Number(reuse[2]), `postern-reuse: fewer back-end sessions (${reuse[1]}) than messages (${reuse[2]})`);
  // Every scrape of postern-metrics' /metrics answered, and its counters hold every session it relayed.
  const scrapes = /^Scrapes: (\d+) answered, (\d+) failed,.* the final scrape counts (\d+) relayed sessions for (\d+) messages sent to postern-metrics/m.exec(stdout);
  assert.ok(scrapes, 'scrape tally');
  assert.ok(Number(scrapes[1]) >= 2, 'scraped during the run and at its end');
  assert.equal(scrapes[2], '0', 'no scrape failed');
  assert.equal(scrapes[3], scrapes[4], 'one relayed session counted per message');
  // The policy server was asked once per message postern-checks relayed.
  const policy = /^Policy requests answered: (\d+) for (\d+) messages sent to postern-checks.*without `=`: (\d+)\.$/m.exec(stdout);
  assert.ok(policy, 'policy request count');
  assert.ok(Number(policy[1]) > 0, 'the policy server was asked');
  assert.equal(policy[1], policy[2], 'one policy request per message');
  assert.equal(policy[3], '0', 'no malformed request lines');
  // The delivery ledger: what smtp-source sent to each target and what reached smtp-sink.
  for (const target of TARGETS) {
    const row = new RegExp(`^\\| ${target} \\| (\\d+) \\| (\\d+) \\| (\\d+) \\|$`, 'm').exec(stdout);
    assert.ok(row, `delivery row for ${target}`);
    const [, sent, delivered, errors] = row.map(Number);
    assert.ok(sent! > 0, `${target}: messages sent`);
    assert.equal(delivered, sent, `${target}: every message reached the sink`);
    assert.equal(errors, 0, `${target}: no smtp-source errors`);
  }
  // 200 connections move RSS by less than a GC does: the figure may come out negative in a smoke run.
  for (const target of ['haproxy', 'nginx', 'postern', 'postern-tx']) assert.match(stdout, new RegExp(`\\| ${target} \\| -?[\\d.]+ KiB \\| 0 \\|`), `${target}: idle connections held, none dropped`);
});
