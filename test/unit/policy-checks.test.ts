/**
 * PolicyChecks (src/checks/policy-checks.ts) against a scripted policy server on loopback: which
 * servers a stage asks and in what order, what an unsupported action counts as, when PREPEND is
 * let through, and the `instance` Postfix would send (one per message).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { PolicyChecks, type PolicyCheckConfig } from '../../src/checks/policy-checks.js';
import type { RouteRequest } from '../../src/domain.js';
import { scriptedPolicyServer, type ScriptedServer } from '../helpers/policy-servers.js';

/** Answers with the action named by the recipient's local part (`hold@x` → HOLD …). */
const ACTIONS: Record<string, string> = {
  hold: 'HOLD quarantined by filter', discard: 'DISCARD', prepend: 'PREPEND X-Checked: yes', ok: 'OK', dunno: 'DUNNO',
};

const req = (rcpt: string, session = 's1', transaction = 1): RouteRequest => ({
  envelope: { helo: 'c.test', esmtp: true, mailLine: 'MAIL FROM:<a@b.test>', rcptLine: `RCPT TO:<${rcpt}>`, mailFrom: 'a@b.test', rcptTo: rcpt, attempt: 1, transaction },
  clientAddr: '192.0.2.1', clientPort: 4000, clientHost: '[UNAVAILABLE]', session, serverAddr: '127.0.0.1', serverPort: 25,
});

describe('PolicyChecks', () => {
  let first: ScriptedServer;
  let second: ScriptedServer;
  const logs: string[] = [];
  const log = (_l: string, f: Record<string, unknown>): void => void logs.push(String(f.code));
  before(async () => {
    const answer = (s: { write(b: string): void }, action: string): void => s.write(`action=${action}\n\n`);
    first = await scriptedPolicyServer((r, s) => answer(s, ACTIONS[(r.attrs.get('recipient') ?? '').split('@')[0]!] ?? 'DUNNO'));
    second = await scriptedPolicyServer((_r, s) => answer(s, 'DUNNO'));
  });
  after(async () => {
    await first?.close();
    await second?.close();
  });
  const conf = (s: ScriptedServer, o: Partial<PolicyCheckConfig> = {}): PolicyCheckConfig => ({ server: s.address, default: 'defer', timeout: 2000, stages: ['rcpt'], prepend: false, ...o });

  it('an unsupported action is DUNNO by default, or Postfix\'s DEFER/REJECT reply with the server\'s text', async () => {
    for (const [unsupported, expect] of [
      ['dunno', null],
      ['defer', '450 4.7.1 <hold@y.test>: Recipient address rejected: quarantined by filter'],
      ['reject', '554 5.7.1 <hold@y.test>: Recipient address rejected: quarantined by filter'],
    ] as const) {
      const p = new PolicyChecks([conf(first, { unsupported })], 'transaction', log);
      try {
        const o = await p.ask('rcpt', req('hold@y.test'));
        assert.equal('refuse' in o ? o.refuse.reply : null, expect, unsupported);
        // An action without text gets a text of ours that names it.
        const d = await p.ask('rcpt', req('discard@y.test'));
        if (unsupported !== 'dunno') assert.match('refuse' in d ? d.refuse.reply : '', /DISCARD is not supported here$/);
      } finally {
        await p.close();
      }
    }
    assert.ok(logs.filter((c) => c === 'PSW_POLICY_UNSUPPORTED').length >= 6);
  });

  it('OK from the first server skips the second; DUNNO goes on to it', async () => {
    const p = new PolicyChecks([conf(first), conf(second)], 'session', log);
    try {
      const before2 = second.requests.length;
      await p.ask('rcpt', req('ok@y.test'));
      assert.equal(second.requests.length, before2);
      await p.ask('rcpt', req('dunno@y.test'));
      assert.equal(second.requests.length, before2 + 1);
    } finally {
      await p.close();
    }
  });

  it('PREPEND only with prepend: true in transaction mode; otherwise logged', async () => {
    const cases = [['transaction', true, ['X-Checked: yes']], ['transaction', false, undefined], ['session', true, undefined]] as const;
    for (const [mode, prepend, expect] of cases) {
      const p = new PolicyChecks([conf(first, { prepend })], mode, log);
      try {
        const o = await p.ask('rcpt', req('prepend@y.test'));
        assert.deepEqual('prepend' in o ? o.prepend : 'refused', expect, `${mode} prepend=${prepend}`);
      } finally {
        await p.close();
      }
    }
    assert.ok(logs.includes('PSW_POLICY_PREPEND'));
  });

  it('instance: the same for every request about one message, another for the next message or session', async () => {
    const p = new PolicyChecks([conf(first)], 'transaction', log);
    try {
      const n = first.requests.length;
      await p.ask('rcpt', req('dunno@y.test', 's1', 1));
      await p.ask('rcpt', req('dunno2@y.test', 's1', 1));
      await p.ask('rcpt', req('dunno@y.test', 's1', 2));
      await p.ask('rcpt', req('dunno@y.test', 's2', 1));
      const inst = first.requests.slice(n).map((r) => r.attrs.get('instance'));
      assert.equal(inst[0], inst[1]);
      assert.equal(new Set(inst).size, 3, JSON.stringify(inst));
      for (const r of first.requests.slice(n)) {
        assert.equal(r.attrs.get('server_address'), '127.0.0.1');
        assert.equal(r.attrs.get('protocol_state'), 'RCPT');
      }
    } finally {
      await p.close();
    }
  });
});
