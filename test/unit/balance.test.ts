/**
 * The pool balancers (src/pools/balance.ts) against nginx's algorithms: smooth weighted round robin
 * (ngx_stream_upstream_round_robin.c), least_conn (ngx_stream_upstream_least_conn_module.c) and the
 * ketama ring of `hash … consistent` (ngx_stream_upstream_hash_module.c).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { crc32 } from 'node:zlib';
import { createBalancer, ketamaPoints, ringHost } from '../../src/pools/balance.js';
import type { PoolServer } from '../../src/pools/types.js';

function server(host: string, weight = 1, backup = false, port = 25): PoolServer {
  const id = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  return { id, host, port, weight, backup, maxConnections: 0 };
}
const none = (_i: number): boolean => false;
const idle = (_i: number): number => 0;

function picks(b: { pick(key: string | null, skip: (i: number) => boolean): number }, count: number, skip: (i: number) => boolean = none, key: string | null = null): number[] {
  const out: number[] = [];
  for (let k = 0; k < count; k++) out.push(b.pick(key, skip));
  return out;
}
function tally(list: number[], n: number): number[] {
  const c = new Array<number>(n).fill(0);
  for (const i of list) if (i >= 0) c[i]!++;
  return c;
}
const letters = (list: number[]) => list.map((i) => 'abcdefgh'[i]).join(' ');

describe('round_robin (nginx smooth weighted round robin)', () => {
  const abc = [server('a', 5), server('b', 1), server('c', 1)];

  it('gives nginx\'s smooth order for weights 5, 1, 1: a a b a c a a', () => {
    const b = createBalancer('round_robin', abc, idle);
    assert.equal(letters(picks(b, 7)), 'a a b a c a a');
    assert.equal(letters(picks(b, 7)), 'a a b a c a a', 'the cycle repeats: current weights are back to 0');
  });

  it('honours the weights exactly over many picks (5000/1000/1000 of 7000)', () => {
    const b = createBalancer('round_robin', abc, idle);
    assert.deepEqual(tally(picks(b, 7000), 3), [5000, 1000, 1000]);
  });

  it('ignores the key', () => {
    const b1 = createBalancer('round_robin', abc, idle);
    const b2 = createBalancer('round_robin', abc, idle);
    assert.deepEqual(picks(b1, 14, none, 'example.com'), picks(b2, 14));
  });

  it('never picks a skipped server, and spreads over the others by weight', () => {
    const b = createBalancer('round_robin', abc, idle);
    const skipA = (i: number) => i === 0;
    assert.deepEqual(tally(picks(b, 1000, skipA), 3), [0, 500, 500]);
  });

  it('returns -1 when every server is skipped, or there are none', () => {
    assert.equal(createBalancer('round_robin', abc, idle).pick(null, () => true), -1);
    assert.equal(createBalancer('round_robin', [], idle).pick(null, none), -1);
  });

  it('asks skip() once per server per pick', () => {
    const b = createBalancer('round_robin', abc, idle);
    const asked: number[] = [];
    b.pick(null, (i) => (asked.push(i), false));
    assert.deepEqual(asked, [0, 1, 2]);
  });

  it('failed() drops the effective weight, which ramps back by 1 a round (max_fails 1)', () => {
    const b = createBalancer('round_robin', [server('a', 3), server('b', 1)], idle);
    assert.equal(letters(picks(b, 4)), 'a a b a');
    b.failed(0);
    assert.equal(b.effectiveWeight(0), 0);
    // a: cw 0 (eff→1) b: cw 1 → b | a 1 (→2) b 1 → a | a 1 (→3) b 2 → b | a 4, b 0 → a
    const after: number[] = [];
    const eff: number[] = [];
    for (let k = 0; k < 4; k++) {
      after.push(b.pick(null, none));
      eff.push(b.effectiveWeight(0));
    }
    assert.equal(letters(after), 'b a b a');
    assert.deepEqual(eff, [1, 2, 3, 3]);
    assert.equal(letters(picks(b, 8)), 'a a b a a a b a', 'back to the 3:1 cycle');
  });

  it('failed() takes weight / max_fails (integer division, not below 0); max_fails 0 changes nothing', () => {
    const b = createBalancer('round_robin', [server('a', 7), server('b', 1)], idle, { maxFails: 3 });
    b.failed(0);
    assert.equal(b.effectiveWeight(0), 5);
    b.failed(0);
    b.failed(0);
    b.failed(0);
    assert.equal(b.effectiveWeight(0), 0);
    b.failed(1); // 1 / 3 = 0
    assert.equal(b.effectiveWeight(1), 1);
    const off = createBalancer('round_robin', [server('a', 7)], idle, { maxFails: 0 });
    off.failed(0);
    assert.equal(off.effectiveWeight(0), 7);
  });

  it('does not ramp a skipped server back (it takes no part in the rounds)', () => {
    const b = createBalancer('round_robin', [server('a', 2), server('b', 1)], idle);
    b.failed(0);
    picks(b, 5, (i) => i === 0);
    assert.equal(b.effectiveWeight(0), 0);
    b.pick(null, none);
    assert.equal(b.effectiveWeight(0), 1);
  });

  it('uses backup servers only when every primary is skipped', () => {
    const list = [server('a'), server('x', 1, true), server('b'), server('y', 1, true)];
    const b = createBalancer('round_robin', list, idle);
    assert.deepEqual(tally(picks(b, 100), 4), [50, 0, 50, 0]);
    assert.deepEqual(tally(picks(b, 100, (i) => i === 0), 4), [0, 0, 100, 0]);
    assert.deepEqual(tally(picks(b, 100, (i) => i === 0 || i === 2), 4), [0, 50, 0, 50]);
    assert.equal(b.pick(null, () => true), -1);
  });

  it('refuses bad weights and options, and failed() of a server that is not there', () => {
    assert.throws(() => createBalancer('round_robin', [server('a', 0)], idle), RangeError);
    assert.throws(() => createBalancer('round_robin', [server('a', 1.5)], idle), RangeError);
    assert.throws(() => createBalancer('round_robin', [server('a')], idle, { maxFails: -1 }), RangeError);
    assert.throws(() => createBalancer('round_robin', [server('a')], idle).failed(1), RangeError);
    assert.throws(() => createBalancer('round_robin', [server('a')], idle).failed(-1), RangeError);
  });
});

describe('least_conn (nginx)', () => {
  it('picks the server with the fewest connections relative to its weight', () => {
    const list = [server('a', 1), server('b', 2), server('c', 1)];
    const conns = [1, 1, 1];
    const b = createBalancer('least_conn', list, (i) => conns[i]!);
    assert.equal(b.pick(null, none), 1, 'b: 1 of weight 2');
    conns[0] = 0;
    assert.equal(b.pick(null, none), 0);
    conns.splice(0, 3, 3, 5, 2);
    assert.equal(b.pick(null, none), 2, '2/1 < 5/2 < 3/1');
  });

  it('breaks ties by smooth weighted round robin (all idle: same as round_robin)', () => {
    const list = [server('a', 1), server('b', 2), server('c', 1)];
    const b = createBalancer('least_conn', list, idle);
    // a 1, b 2, c 1 → b | a 2, b 0, c 2 → a | a -1, b 2, c 3 → c | a 0, b 4, c 0 → b
    assert.equal(letters(picks(b, 8)), 'b a c b b a c b');
  });

  it('breaks ties only among the tied servers, equal by conns × weight', () => {
    // a: 1/1, b: 2/2, c: 0/1 → c alone; then c 1/1 ties with a and b (1*2 == 2*1).
    const list = [server('a', 1), server('b', 2), server('c', 1)];
    const conns = [1, 2, 0];
    const b = createBalancer('least_conn', list, (i) => conns[i]!);
    assert.equal(b.pick(null, none), 2);
    conns[2] = 1;
    assert.equal(letters(picks(b, 4)), 'b a c b');
    // Only b and c tied (a busier): a's current weight is left alone, b and c share 2:1.
    conns.splice(0, 3, 5, 2, 1);
    assert.deepEqual(tally(picks(b, 300), 3), [0, 200, 100]);
  });

  it('honours skip, falls back to backups, and returns -1 when all are skipped', () => {
    const list = [server('a'), server('b'), server('x', 1, true)];
    const conns = [0, 5, 9];
    const b = createBalancer('least_conn', list, (i) => conns[i]!);
    assert.equal(b.pick(null, (i) => i === 0), 1);
    assert.equal(b.pick(null, (i) => i !== 2), 2);
    assert.equal(b.pick(null, () => true), -1);
  });

  it('failed() lowers the effective weight used in tie-breaking, which ramps back', () => {
    const b = createBalancer('least_conn', [server('a', 3), server('b', 1)], idle);
    b.failed(0);
    assert.equal(b.effectiveWeight(0), 0);
    assert.equal(letters(picks(b, 4)), 'b a b a', 'as round_robin after the failure');
    assert.equal(b.effectiveWeight(0), 3);
  });
});

describe('hash (nginx `hash … consistent`, ketama)', () => {
  const four = [server('10.0.0.1'), server('10.0.0.2'), server('10.0.0.3'), server('10.0.0.4')];
  const keys = Array.from({ length: 10_000 }, (_, k) => `d${k}.example`);
  const assign = (list: readonly PoolServer[], skip: (i: number) => boolean = none) => {
    const b = createBalancer('hash', list, idle);
    return keys.map((key) => {
      const i = b.pick(key, skip);
      return i < 0 ? '' : list[i]!.id;
    });
  };

  it('builds points as crc32(HOST \\0 PORT PREV), PREV the previous point little-endian, 0 first', () => {
    const pts = ketamaPoints('10.0.0.1', '25', 2);
    assert.equal(pts.length, 320);
    let prev = Buffer.alloc(4);
    for (const p of pts) {
      assert.equal(p, crc32(Buffer.concat([Buffer.from('10.0.0.1\x0025'), prev])));
      prev = Buffer.alloc(4);
      prev.writeUInt32LE(p, 0);
    }
    assert.deepEqual(ringHost({ host: '2001:db8::1', port: 2525 }), { host: '[2001:db8::1]', port: '2525' });
    assert.deepEqual(ringHost({ host: 'mx.example', port: 25 }), { host: 'mx.example', port: '25' });
  });

  it('looks a key up as the first point clockwise from crc32(key)', () => {
    const list = [server('10.0.0.1'), server('10.0.0.2')];
    const ring = list
      .flatMap((s, i) => ketamaPoints(s.host, '25', 1).map((hash) => ({ hash, i })))
      .sort((a, b) => a.hash - b.hash);
    const b = createBalancer('hash', list, idle);
    for (const key of keys.slice(0, 500)) {
      const h = crc32(key);
      const want = (ring.find((p) => p.hash >= h) ?? ring[0]!).i;
      assert.equal(b.pick(key, none), want, key);
    }
  });

  it('sends the same key to the same server, whatever else was picked', () => {
    const b = createBalancer('hash', four, idle);
    const first = keys.slice(0, 200).map((k) => b.pick(k, none));
    picks(b, 50); // key-less picks in between
    assert.deepEqual(keys.slice(0, 200).map((k) => b.pick(k, none)), first);
  });

  it('spreads keys roughly in proportion to the weights', () => {
    const list = [server('10.0.0.1', 1), server('10.0.0.2', 2), server('10.0.0.3', 3)];
    const b = createBalancer('hash', list, idle);
    const got = tally(keys.map((k) => b.pick(k, none)), 3);
    [1, 2, 3].forEach((w, i) => {
      const want = (keys.length * w) / 6;
      assert.ok(Math.abs(got[i]! - want) < want * 0.2, `server ${i}: ${got[i]} keys, want about ${want}`);
    });
  });

  it('adding a fifth server moves at most 1/5 + 5% of the keys, all to the new server', () => {
    const before = assign(four);
    const after = assign([...four, server('10.0.0.5')]);
    let moved = 0;
    before.forEach((id, k) => {
      if (after[k] === id) return;
      moved++;
      assert.equal(after[k], '10.0.0.5:25', `key ${keys[k]} moved from ${id} to ${after[k]}`);
    });
    assert.ok(moved > 0 && moved <= keys.length * (1 / 5 + 0.05), `moved ${moved}`);
  });

  it('removing a server moves only that server\'s keys', () => {
    const five = [...four, server('10.0.0.5')];
    const before = assign(five);
    const after = assign(five.filter((_, i) => i !== 2));
    before.forEach((id, k) => {
      if (id === '10.0.0.3:25') assert.notEqual(after[k], id);
      else assert.equal(after[k], id, `key ${keys[k]} moved from ${id} to ${after[k]}`);
    });
  });

  it('sends a skipped server\'s keys to the others (the next point clockwise), and back after', () => {
    const before = assign(four);
    const skip2 = (i: number) => i === 1;
    const during = assign(four, skip2);
    let moved = 0;
    before.forEach((id, k) => {
      if (id === '10.0.0.2:25') {
        moved++;
        assert.ok(during[k] !== '' && during[k] !== id);
      } else {
        assert.equal(during[k], id, 'nobody else\'s keys move');
      }
    });
    assert.ok(moved > 1000);
    // Same as the ring without that server.
    assert.deepEqual(during, assign(four.filter((_, i) => i !== 1)));
    assert.deepEqual(assign(four), before, 'back when no longer skipped');
  });

  it('returns -1 when every server is skipped; a key-less pick is smooth weighted round robin', () => {
    const list = [server('10.0.0.1', 5), server('10.0.0.2', 1), server('10.0.0.3', 1)];
    const b = createBalancer('hash', list, idle);
    assert.equal(b.pick('example.com', () => true), -1);
    assert.equal(letters(picks(b, 7)), 'a a b a c a a');
  });

  it('uses a ring of the backups only when every primary is skipped', () => {
    const list = [...four, server('10.0.1.1', 1, true), server('10.0.1.2', 1, true)];
    const primariesDown = (i: number) => i < 4;
    const b = createBalancer('hash', list, idle);
    const got = keys.slice(0, 1000).map((k) => b.pick(k, none));
    assert.ok(got.every((i) => i < 4));
    const backup = keys.slice(0, 1000).map((k) => b.pick(k, primariesDown));
    assert.ok(backup.every((i) => i === 4 || i === 5));
    assert.deepEqual(keys.slice(0, 1000).map((k) => b.pick(k, primariesDown)), backup, 'and stays put');
  });
});
