/**
 * The PROXY protocol settings in the configuration: a `proxy_protocol` listener needs
 * `set_real_ip_from` (an open one would let any client claim any address), every network there is
 * checked and named by its index, the defaults, server blocks inheriting the list, and the same
 * refusals from `postern check-config` as an admin runs it.
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

const root = path.resolve(import.meta.dirname, '../..');
const NEEDS = 'needs set_real_ip_from, the load balancers allowed to send the header';

const problems = configProblems;

describe('config: PROXY protocol', () => {
  it('defaults: no listener expects a header, nothing is trusted, nothing is sent, 5 s to read one', () => {
    const c = parseConfig('listen: ["127.0.0.1:2525", {address: "127.0.0.1:2526"}]\n');
    assert.deepEqual(c.listen.map((l) => l.proxy_protocol), [false, false]);
    assert.deepEqual(c.set_real_ip_from, []);
    assert.equal(c.proxy_protocol, 'off');
    assert.equal(c.timeouts.proxy_protocol, 5000);
  });

  it('a proxy_protocol listener with set_real_ip_from, outbound v1/v2, and timeouts.proxy_protocol are taken', () => {
    const c = parseConfig('listen: [{address: "127.0.0.1:2525", proxy_protocol: true}, "127.0.0.1:2526"]\nset_real_ip_from: [10.0.0.0/8, 192.0.2.7, "2001:db8::/32"]\nproxy_protocol: v2\ntimeouts: {proxy_protocol: 300ms}\n');
    assert.deepEqual(c.listen.map((l) => l.proxy_protocol), [true, false]);
    assert.deepEqual(c.set_real_ip_from, ['10.0.0.0/8', '192.0.2.7', '2001:db8::/32']);
    assert.equal(c.proxy_protocol, 'v2');
    assert.equal(c.timeouts.proxy_protocol, 300);
    assert.equal(parseConfig('listen: ["127.0.0.1:2525"]\nproxy_protocol: v1\n').proxy_protocol, 'v1');
  });

  it('proxy_protocol: true without set_real_ip_from is refused, by the listener\'s path', () => {
    assert.deepEqual(problems('listen: [{address: "127.0.0.1:2525", proxy_protocol: true}]\n'), [`listen.0.proxy_protocol: ${NEEDS}`]);
    assert.deepEqual(problems('listen: ["127.0.0.1:2524", {address: "127.0.0.1:2525", proxy_protocol: true}]\nset_real_ip_from: []\n'), [`listen.1.proxy_protocol: ${NEEDS}`]);
  });

  it('a bad network in set_real_ip_from names its index', () => {
    assert.deepEqual(problems('listen: ["127.0.0.1:2525"]\nset_real_ip_from: [nonsense]\n'), ['set_real_ip_from.0: an address or network, e.g. 192.0.2.0/24 or 2001:db8::/32']);
    assert.deepEqual(problems('listen: ["127.0.0.1:2525"]\nset_real_ip_from: ["10.0.0.0/33"]\n'), ['set_real_ip_from.0: can never match: "10.0.0.0/33" has a prefix longer than the 32 bits of an IPv4 address']);
    assert.deepEqual(problems('listen: ["127.0.0.1:2525"]\nset_real_ip_from: ["127.0.0.1", "::1/129"]\n'), ['set_real_ip_from.1: can never match: "::1/129" has a prefix longer than the 128 bits of an IPv6 address']);
  });

  it('outbound proxy_protocol is off, v1 or v2; timeouts.proxy_protocol above zero', () => {
    assert.match(problems('listen: ["127.0.0.1:2525"]\nproxy_protocol: on\n')[0]!, /^proxy_protocol: /);
    assert.match(problems('listen: ["127.0.0.1:2525"]\ntimeouts: {proxy_protocol: 0s}\n')[0]!, /^timeouts\.proxy_protocol: must be above zero/);
  });

  it('server blocks: set_real_ip_from is inherited from the top level; a block without it is named', () => {
    const c = parseConfig('set_real_ip_from: [127.0.0.1]\nservers:\n  - listen: [{address: "127.0.0.1:2525", proxy_protocol: true}]\n');
    assert.deepEqual(c.servers[0]!.set_real_ip_from, ['127.0.0.1']);
    assert.deepEqual(
      problems('servers:\n  - listen: [{address: "127.0.0.1:2525", proxy_protocol: true}]\n  - listen: [{address: "127.0.0.1:2526", proxy_protocol: true}]\n    set_real_ip_from: [127.0.0.1]\n'),
      [`servers.0.listen.0.proxy_protocol: ${NEEDS}`],
    );
  });

  describe('postern check-config', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'postern-config-proxy-'));
    after(() => rmSync(dir, { recursive: true, force: true }));

    async function checkConfig(yaml: string): Promise<{ code: number; stderr: string }> {
      const f = path.join(dir, 'postern.yaml');
      writeFileSync(f, yaml);
      return promisify(execFile)(process.execPath, ['--import', 'tsx', path.join(root, 'src/cli.ts'), 'check-config', '-c', f], { cwd: root }).then(
        ({ stderr }) => ({ code: 0, stderr }),
        (e: { code: number; stderr: string }) => e,
      );
    }

    it('refuses both, naming their key paths, and exits 1', async () => {
      const r = await checkConfig('listen: [{address: "127.0.0.1:2525", proxy_protocol: true}]\nroute: {static: "127.0.0.1:25"}\n');
      assert.equal(r.code, 1);
      assert.match(r.stderr, /listen\.0\.proxy_protocol: needs set_real_ip_from/);
      const r2 = await checkConfig('listen: [{address: "127.0.0.1:2525", proxy_protocol: true}]\nset_real_ip_from: ["10.0.0.0/33"]\nroute: {static: "127.0.0.1:25"}\n');
      assert.equal(r2.code, 1);
      assert.match(r2.stderr, /set_real_ip_from\.0: can never match/);
      const ok = await checkConfig('listen: [{address: "127.0.0.1:2525", proxy_protocol: true}]\nset_real_ip_from: [10.0.0.0/8]\nroute: {static: "127.0.0.1:25"}\n');
      assert.equal(ok.code, 0, ok.stderr);
    });
  });
});
