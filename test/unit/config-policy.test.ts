/**
 * checks.policy in the configuration: its defaults, and the cross-key rule that `stages: [data]`
 * and `prepend: true` need `proxy_mode: transaction` (in session mode DATA and the message go to
 * the back-end unseen), named by key path at the top level (`checks.policy.0.stages`) and inside
 * server blocks (`servers.1.checks.policy.0.prepend`), as `postern check-config` prints them.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { parseConfig } from '../../src/config/load.js';
import { configProblems } from '../helpers/config.js';

const problems = configProblems;

const DATA_PROBLEM = 'stages: data needs proxy_mode: transaction (in session mode DATA goes to the back-end unseen)';
const PREPEND_PROBLEM = 'prepend: adding headers needs proxy_mode: transaction (in session mode the message is relayed unseen)';

/** The keys this file is about (others, such as connections, have their own tests). */
const pick = ({ server, default: def, timeout, stages, prepend }: { server: string; default: string; timeout: number; stages: readonly string[]; prepend: boolean }) => ({ server, default: def, timeout, stages, prepend });

const policy = (entries: string[]): string => `checks:\n  policy:\n${entries.map((e) => `    - ${e}\n`).join('')}`;

describe('checks.policy', () => {
  it('defaults: rcpt only, default defer, 10 s, no prepend', () => {
    const c = parseConfig(policy(['{ server: "tcp:127.0.0.1:10023" }']));
    assert.equal(c.servers[0]!.checks.policy.length, 1);
    assert.deepEqual(pick(c.servers[0]!.checks.policy[0]!), { server: 'tcp:127.0.0.1:10023', default: 'defer', timeout: 10_000, stages: ['rcpt'], prepend: false });
  });

  it('session mode takes every stage but data; repeated stages count once', () => {
    const c = parseConfig(policy(['{ server: "127.0.0.1:10023", stages: [connect, helo, mail, rcpt, mail], default: dunno, timeout: 300ms }']));
    assert.deepEqual(pick(c.servers[0]!.checks.policy[0]!), { server: '127.0.0.1:10023', default: 'dunno', timeout: 300, stages: ['connect', 'helo', 'mail', 'rcpt'], prepend: false });
  });

  it('transaction mode takes stages: [data] and prepend: true', () => {
    const c = parseConfig(`proxy_mode: transaction\n${policy(['{ server: "unix:/run/policy.sock", stages: [data, rcpt], prepend: true }'])}`);
    assert.deepEqual(c.servers[0]!.checks.policy[0]!.stages, ['data', 'rcpt']);
    assert.equal(c.servers[0]!.checks.policy[0]!.prepend, true);
  });

  it('stages: [data] in the default (session) mode is refused at checks.policy.N.stages', () => {
    assert.deepEqual(problems(policy(['{ server: "tcp:127.0.0.1:1", stages: [data] }'])), [`checks.policy.0.${DATA_PROBLEM}`]);
    assert.deepEqual(problems(policy(['{ server: "tcp:127.0.0.1:1" }', '{ server: "tcp:127.0.0.1:2", stages: [rcpt, data] }'])), [`checks.policy.1.${DATA_PROBLEM}`]);
    assert.deepEqual(problems(`proxy_mode: session\n${policy(['{ server: "tcp:127.0.0.1:1", stages: [data] }'])}`), [`checks.policy.0.${DATA_PROBLEM}`]);
  });

  it('prepend: true in the default (session) mode is refused at checks.policy.N.prepend', () => {
    assert.deepEqual(problems(policy(['{ server: "tcp:127.0.0.1:1", prepend: true }'])), [`checks.policy.0.${PREPEND_PROBLEM}`]);
    assert.deepEqual(problems(policy(['{ server: "tcp:127.0.0.1:1", stages: [data], prepend: true }'])), [`checks.policy.0.${DATA_PROBLEM}`, `checks.policy.0.${PREPEND_PROBLEM}`]);
  });

  it('inside server blocks: servers.N.checks.policy…, for the block\'s own checks and for inherited ones', () => {
    const own = `servers:
  - listen: ["127.0.0.1:2525"]
    proxy_mode: transaction
    checks: { policy: [{ server: "tcp:127.0.0.1:1", stages: [data], prepend: true }] }
  - listen: ["127.0.0.1:2526"]
    checks: { policy: [{ server: "tcp:127.0.0.1:1" }, { server: "tcp:127.0.0.1:2", stages: [data], prepend: true }] }
`;
    assert.deepEqual(problems(own), [`servers.1.checks.policy.1.${DATA_PROBLEM}`, `servers.1.checks.policy.1.${PREPEND_PROBLEM}`]);
    // Top-level checks are every block's default: each block is judged with its own proxy_mode.
    const inherited = `proxy_mode: transaction
checks: { policy: [{ server: "tcp:127.0.0.1:1", stages: [data], prepend: true }] }
servers:
  - listen: ["127.0.0.1:2525"]
  - listen: ["127.0.0.1:2526"]
    proxy_mode: session
`;
    assert.deepEqual(problems(inherited), [`servers.1.checks.policy.0.${DATA_PROBLEM}`, `servers.1.checks.policy.0.${PREPEND_PROBLEM}`]);
  });

  it('a stage that does not exist, no stage, or a malformed server is a schema error at its path', () => {
    assert.match(problems(policy(['{ server: "tcp:127.0.0.1:1", stages: [eod] }']))[0]!, /^checks\.policy\.0\.stages\.0: /);
    assert.match(problems(policy(['{ server: "tcp:127.0.0.1:1", stages: [] }']))[0]!, /^checks\.policy\.0\.stages: /);
    assert.match(problems(policy(['{ server: "tcp:127.0.0.1:1", default: reject }']))[0]!, /^checks\.policy\.0\.default: /);
    assert.match(problems(policy(['{ server: "tcp:127.0.0.1 10023" }']))[0]!, /^checks\.policy\.0\.server: /);
    assert.match(problems(policy(['{ server: "tcp:127.0.0.1:1", prepnd: true }']))[0]!, /^checks\.policy\.0: unknown key "prepnd"/);
  });
});

describe('postern check-config on checks.policy', () => {
  const root = path.resolve(import.meta.dirname, '../..');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'postern-config-policy-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  async function checkConfig(text: string): Promise<{ code: number; stdout: string; stderr: string }> {
    const f = path.join(dir, `c${Math.random().toString(36).slice(2)}.yaml`);
    writeFileSync(f, text);
    try {
      const { stdout, stderr } = await promisify(execFile)(process.execPath, ['--import', 'tsx', path.join(root, 'src/cli.ts'), 'check-config', '-c', f], { cwd: root, timeout: 15_000 });
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  }

  it('refuses stages: [data] and prepend: true in session mode with their key paths, and exits 1; accepts them in transaction mode', { timeout: 30_000 }, async () => {
    const [bad, blocks, good] = await Promise.all([
      checkConfig(`listen: ["127.0.0.1:2525"]\n${policy(['{ server: "tcp:127.0.0.1:10023", stages: [rcpt, data], prepend: true }'])}`),
      checkConfig(`servers:\n  - listen: ["127.0.0.1:2525"]\n  - listen: ["127.0.0.1:2526"]\n    checks: { policy: [{ server: "tcp:127.0.0.1:10023", stages: [data] }] }\n`),
      checkConfig(`listen: ["127.0.0.1:2525"]\nproxy_mode: transaction\n${policy(['{ server: "tcp:127.0.0.1:10023", stages: [connect, helo, mail, rcpt, data], prepend: true }'])}`),
    ]);
    assert.equal(bad.code, 1, bad.stdout);
    assert.match(bad.stderr, /2 problems/);
    assert.ok(bad.stderr.includes(`checks.policy.0.${DATA_PROBLEM}`), bad.stderr);
    assert.ok(bad.stderr.includes(`checks.policy.0.${PREPEND_PROBLEM}`), bad.stderr);
    assert.match(bad.stderr, /test failed/);
    assert.equal(blocks.code, 1, blocks.stdout);
    assert.ok(blocks.stderr.includes(`servers.1.checks.policy.0.${DATA_PROBLEM}`), blocks.stderr);
    assert.equal(good.code, 0, good.stderr);
    assert.match(good.stdout, /test is successful/);
  });
});
