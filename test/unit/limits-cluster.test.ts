/**
 * The `cluster` store with real node:cluster workers: this file is both the primary (the test)
 * and, forked, the two workers. The workers share one rate (rate-limiter-flexible's
 * RateLimiterCluster against the RateLimiterClusterMaster of startLimitsPrimary()) and one
 * connection limit (our IPC), and a worker that exits frees what it held. Steps are sequential
 * (the primary tells one worker at a time what to take), so the verdicts are exact; the store's
 * deadline is long (2 s) so that a slow machine is not mistaken for an outage.
 */
import assert from 'node:assert/strict';
import cluster, { type Worker } from 'node:cluster';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createConcurrencyLimiter } from '../../src/limits/concurrency.js';
import { startLimitsPrimary } from '../../src/limits/primary.js';
import { RateLimiter } from '../../src/limits/rate.js';

interface Cmd {
  seq: number;
  cmd: 'rate' | 'take' | 'release' | 'peek' | 'exit';
  n?: number;
}
interface Reply {
  seq: number;
  results: boolean[];
  count?: number;
  downs: number;
}

if (cluster.isWorker) {
  let downs = 0;
  const opts = { timeoutMs: 2000, onDown: () => void downs++ };
  const rate = new RateLimiter({ name: 'cl-rate', points: 5, durationMs: 60_000 }, { kind: 'cluster' }, opts);
  const conc = createConcurrencyLimiter({ name: 'cl-conc', limit: 3 }, { kind: 'cluster' }, opts);
  process.on('message', (m: Cmd) => {
    void (async () => {
      const results: boolean[] = [];
      let count: number | undefined;
      if (m.cmd === 'exit') process.exit(0);
      for (let i = 0; i < (m.n ?? 0); i++) {
        if (m.cmd === 'rate') results.push((await rate.take('192.0.2.1/32')).allowed);
        if (m.cmd === 'take') results.push((await conc.take('192.0.2.1/32')).allowed);
        if (m.cmd === 'release') await conc.release('192.0.2.1/32');
      }
      if (m.cmd === 'peek') count = (await conc.peek('192.0.2.1/32')).count;
      process.send!({ seq: m.seq, results, count, downs } satisfies Reply);
    })();
  });
  process.send!({ ready: true });
} else {
  describe('cluster store (2 forked workers)', () => {
    const workers: Worker[] = [];
    after(() => {
      for (const w of workers) if (!w.isDead()) w.process.kill('SIGKILL');
    });

    const fork = (): Promise<Worker> =>
      new Promise((resolve, reject) => {
        const w = cluster.fork();
        workers.push(w);
        w.process.stdout?.resume();
        w.process.stderr?.pipe(process.stderr);
        const t = setTimeout(() => reject(new Error('worker did not start within 15 s')), 15_000);
        w.on('message', (m: { ready?: boolean }) => {
          if (m.ready) {
            clearTimeout(t);
            resolve(w);
          }
        });
        w.once('exit', (code) => reject(new Error(`worker exited early (${code})`)));
      });

    let seq = 0;
    const ask = (w: Worker, cmd: Cmd['cmd'], n = 1): Promise<Reply> =>
      new Promise((resolve, reject) => {
        const mine = ++seq;
        const t = setTimeout(() => reject(new Error(`no answer to ${cmd} within 10 s`)), 10_000);
        const on = (m: Reply): void => {
          if (m.seq !== mine) return;
          clearTimeout(t);
          w.off('message', on);
          resolve(m);
        };
        w.on('message', on);
        w.send({ seq: mine, cmd, n } satisfies Cmd);
      });

    it('two workers share one rate and one connection limit; an exiting worker frees its connections', { timeout: 60_000 }, async () => {
      const { table, stop } = startLimitsPrimary();
      after(stop);
      // silent: the workers' stdout is not the test runner's (this process reports to it over stdout).
      cluster.setupPrimary({ exec: fileURLToPath(import.meta.url), execArgv: ['--import', 'tsx'], silent: true });
      const [a, b] = await Promise.all([fork(), fork()]);

      // Rate: 5 per minute for both together.
      assert.deepEqual((await ask(a!, 'rate', 3)).results, [true, true, true]);
      assert.deepEqual((await ask(b!, 'rate', 3)).results, [true, true, false]);
      assert.deepEqual((await ask(a!, 'rate', 1)).results, [false]);

      // Connections: 3 at once for both together.
      assert.deepEqual((await ask(a!, 'take', 2)).results, [true, true]);
      assert.deepEqual((await ask(b!, 'take', 2)).results, [true, false]);
      assert.equal((await ask(b!, 'peek')).count, 3);
      await ask(b!, 'release', 1);
      assert.equal((await ask(a!, 'peek')).count, 2, 'b released its one');
      assert.deepEqual((await ask(b!, 'take', 2)).results, [true, false]);

      // a exits holding 2: the primary forgets them.
      const gone = new Promise<void>((r) => a!.once('exit', () => r()));
      a!.send({ seq: 0, cmd: 'exit' } satisfies Cmd);
      await gone;
      const after_ = await ask(b!, 'take', 3);
      assert.deepEqual(after_.results, [true, true, false], "a's places are free");
      assert.equal(after_.downs, 0, 'the primary answered every time (no fallback)');
      assert.equal(table.size, 1);
    });
  });
}
