/**
 * The three balancing methods of a pool, as nginx implements them (nginx source, src/stream/):
 *
 * - `round_robin`: smooth weighted round robin, ngx_stream_upstream_get_peer() in
 *   ngx_stream_upstream_round_robin.c.
 * - `least_conn`: fewest connections relative to weight, ties broken by smooth weighted round robin
 *   among the tied servers, ngx_stream_upstream_get_least_conn_peer() in
 *   ngx_stream_upstream_least_conn_module.c.
 * - `hash`: nginx's `hash $key consistent`, a ketama ring, ngx_stream_upstream_init_chash() and
 *   ngx_stream_upstream_get_chash_peer() in ngx_stream_upstream_hash_module.c.
 *
 * A failed session lowers the server's effective weight as ngx_stream_upstream_free_round_robin_peer()
 * does (`effective_weight -= weight / max_fails`, not below 0); each smooth round the server takes part
 * in raises it by 1 again, up to its weight.
 *
 * Backup servers (`backup: true`) form a second tier with its own state, used only when every primary
 * server is skipped: nginx's `peers->next` list, which round robin and least_conn fall back to. (nginx
 * refuses `backup` with `hash`; here the backups get a ring of their own, keyed the same way.)
 *
 * Pure and synchronous: no I/O, no clock, no randomness. `skip(i)` and `activeOf(i)` are asked at
 * most once per server per pick.
 */
import { crc32 } from 'node:zlib';
import type { Balancer, BalanceMethod, PoolServer } from './types.js';

export interface BalancerOptions {
  /**
   * nginx `max_fails`: one failure takes `floor(weight / maxFails)` off the effective weight
   * (default 1: a failure drops it to 0). 0 means failures do not lower it (nginx: `if (peer->max_fails)`).
   */
  maxFails?: number;
}

/** A balancer that also shows its servers' effective weights (for `postern status` and tests). */
export interface PoolBalancer extends Balancer {
  /** nginx `effective_weight`: the weight lowered by failures, ramping back to the configured one. */
  effectiveWeight(i: number): number;
}

/** Points per unit of weight on the ring (nginx: `npoints = peer->weight * 160`). */
export const POINTS_PER_WEIGHT = 160;

/** One point of the ketama ring: its hash and the group of same-named servers it belongs to. */
interface Point {
  hash: number;
  group: number;
}

/** The servers of one tier (primaries, or backups) and, with `hash`, their ring. */
interface Tier {
  members: number[];
  /** Sorted by hash, duplicates removed (empty unless the method is `hash`). */
  ring: Point[];
  /** Ring groups: servers with the same `host \0 port` (nginx compares the `server` names). */
  groups: number[][];
}

/**
 * The name nginx hashes for a server: its `server` text split at the last `:` into host and port,
 * so an IPv6 host keeps its brackets (`[2001:db8::1]`), and the port is the decimal number.
 */
export function ringHost(server: Pick<PoolServer, 'host' | 'port'>): { host: string; port: string } {
  return { host: server.host.includes(':') ? `[${server.host}]` : server.host, port: String(server.port) };
}

/**
 * A server's ketama points in the order nginx makes them (ngx_stream_upstream_init_chash):
 * `base = crc32(HOST "\0" PORT)` (running, not finalised), then for j in 0 … 160·weight−1
 * `point[j] = crc32(HOST "\0" PORT PREV)` where PREV is the previous point as 4 little-endian bytes,
 * 4 zero bytes for the first point ("compatible with Cache::Memcached::Fast"). crc32 is the IEEE one
 * (zlib's, as nginx's ngx_crc32), so `crc32(PREV, crc32(HOST "\0" PORT))` is the same value.
 */
export function ketamaPoints(host: string, port: string, weight: number): number[] {
  const base = crc32(Buffer.concat([Buffer.from(host, 'utf8'), Buffer.from([0]), Buffer.from(port, 'utf8')]));
  const prev = Buffer.alloc(4);
  const out: number[] = [];
  for (let j = 0; j < weight * POINTS_PER_WEIGHT; j++) {
    const hash = crc32(prev, base);
    out.push(hash);
    prev.writeUInt32LE(hash, 0);
  }
  return out;
}

/**
 * The ring of a tier, as nginx builds it: every server's points, sorted by hash (ngx_qsort), equal
 * hashes collapsed to the first. nginx's qsort order among equal hashes is unspecified; here the
 * first is the one of the earlier server in the list, so the ring is deterministic.
 */
function buildRing(servers: readonly PoolServer[], members: readonly number[]): Pick<Tier, 'ring' | 'groups'> {
  const groups: number[][] = [];
  const groupOf = new Map<string, number>();
  const all: Point[] = [];
  for (const i of members) {
    const s = servers[i]!;
    const { host, port } = ringHost(s);
    const name = `${host}\0${port}`;
    let group = groupOf.get(name);
    if (group === undefined) {
      group = groups.length;
      groupOf.set(name, group);
      groups.push([]);
    }
    groups[group]!.push(i);
    for (const hash of ketamaPoints(host, port, s.weight)) all.push({ hash, group });
  }
  // Array.prototype.sort is stable: among equal hashes the earlier server's point comes first.
  all.sort((a, b) => a.hash - b.hash);
  const ring: Point[] = [];
  for (const p of all) if (ring.length === 0 || ring[ring.length - 1]!.hash !== p.hash) ring.push(p);
  return { ring, groups };
}

/** The first point with hash ≥ h, or ring.length (ngx_stream_upstream_find_chash_point). */
function findPoint(ring: readonly Point[], h: number): number {
  let i = 0;
  let j = ring.length;
  while (i < j) {
    const k = (i + j) >>> 1;
    const v = ring[k]!.hash;
    if (h > v) i = k + 1;
    else if (h < v) j = k;
    else return k;
  }
  return i;
}

export function createBalancer(
  method: BalanceMethod,
  servers: readonly PoolServer[],
  activeOf: (i: number) => number,
  opts: BalancerOptions = {},
): PoolBalancer {
  const n = servers.length;
  const maxFails = opts.maxFails ?? 1;
  if (!Number.isInteger(maxFails) || maxFails < 0) throw new RangeError(`maxFails must be an integer ≥ 0, got ${maxFails}`);

  // nginx ngx_stream_upstream_rr_peer_t: weight, effective_weight (starts at weight), current_weight (0).
  const weight: number[] = [];
  for (const s of servers) {
    if (!Number.isInteger(s.weight) || s.weight < 1) throw new RangeError(`server ${s.id}: weight must be an integer ≥ 1, got ${s.weight}`);
    weight.push(s.weight);
  }
  const effective = weight.slice();
  const current: number[] = new Array<number>(n).fill(0);

  const tiers: Tier[] = [false, true].map((backup) => {
    const members: number[] = [];
    servers.forEach((s, i) => {
      if (s.backup === backup) members.push(i);
    });
    return method === 'hash' ? { members, ...buildRing(servers, members) } : { members, ring: [], groups: [] };
  });

  /** One pick's view of skip() and activeOf(): each asked at most once per server. */
  function view(skip: (i: number) => boolean) {
    const skipped = new Int8Array(n); // 0 unknown, 1 skipped, 2 eligible
    const conns: (number | undefined)[] = new Array<number | undefined>(n);
    return {
      eligible(i: number): boolean {
        if (skipped[i] === 0) skipped[i] = skip(i) ? 1 : 2;
        return skipped[i] === 2;
      },
      conns(i: number): number {
        return (conns[i] ??= activeOf(i));
      },
    };
  }
  type View = ReturnType<typeof view>;

  /**
   * One round of smooth weighted round robin over `members` (ngx_stream_upstream_get_peer):
   *   for each eligible peer: current_weight += effective_weight; total += effective_weight;
   *                           if (effective_weight < weight) effective_weight++;
   *                           best = the first peer with the largest current_weight
   *   best.current_weight -= total
   * `also(i)` narrows the eligible peers further (least_conn's tied ones).
   */
  function swrr(members: readonly number[], v: View, also?: (i: number) => boolean): number {
    let best = -1;
    let total = 0;
    for (const i of members) {
      if (!v.eligible(i) || (also && !also(i))) continue;
      current[i]! += effective[i]!;
      total += effective[i]!;
      if (effective[i]! < weight[i]!) effective[i]!++;
      if (best === -1 || current[i]! > current[best]!) best = i;
    }
    if (best !== -1) current[best]! -= total;
    return best;
  }

  /**
   * ngx_stream_upstream_get_least_conn_peer: the eligible peer with the fewest connections relative to
   * weight, compared as `conns * best.weight < best.conns * weight` (no division); when several tie,
   * smooth weighted round robin among the tied ones only (nginx's `many`: their current and effective
   * weights move, the others' do not). With a single best, no weight changes (nginx: total is 0).
   */
  function leastConn(members: readonly number[], v: View): number {
    let best = -1;
    let many = false;
    for (const i of members) {
      if (!v.eligible(i)) continue;
      if (best === -1) {
        best = i;
        many = false;
        continue;
      }
      const lhs = v.conns(i) * weight[best]!;
      const rhs = v.conns(best) * weight[i]!;
      if (lhs < rhs) {
        best = i;
        many = false;
      } else if (lhs === rhs) {
        many = true;
      }
    }
    if (best === -1 || !many) return best;
    const first = best;
    const tied = (i: number) => v.conns(i) * weight[first]! === v.conns(first) * weight[i]!;
    // nginx walks from the first tied peer on; every tied peer comes after it in the list.
    return swrr(members.slice(members.indexOf(first)), v, tied);
  }

  /**
   * ngx_stream_upstream_get_chash_peer: crc32(key) → the first point with hash ≥ it (wrapping), and
   * smooth weighted round robin among the eligible servers of that point's name (one server, unless
   * two share host and port). When none is eligible, walk clockwise to the next point, at most once
   * round the whole ring, as nginx does (hp->hash++ until tries reach points->number, then NGX_BUSY).
   * So a skipped server's keys go to the servers of the points after its own, and come back when it
   * is no longer skipped; nobody else's keys move. (The 20 rehashes and the round-robin fallback are
   * nginx's non-consistent `hash`, not this.)
   */
  function ketama(tier: Tier, key: string, v: View): number {
    const { ring, groups } = tier;
    if (ring.length === 0) return -1;
    const dead = new Uint8Array(groups.length);
    let deadCount = 0;
    const start = findPoint(ring, crc32(key));
    for (let t = 0; t < ring.length && deadCount < groups.length; t++) {
      const group = ring[(start + t) % ring.length]!.group;
      if (dead[group]) continue;
      const best = swrr(groups[group]!, v);
      if (best !== -1) return best;
      dead[group] = 1;
      deadCount++;
    }
    return -1;
  }

  function pickIn(tier: Tier, key: string | null, v: View): number {
    switch (method) {
      case 'round_robin':
        return swrr(tier.members, v);
      case 'least_conn':
        return leastConn(tier.members, v);
      case 'hash':
        // No key to hash on (e.g. the null sender's domain): nginx's plain round robin.
        return key === null ? swrr(tier.members, v) : ketama(tier, key, v);
    }
  }

  function check(i: number): void {
    if (!Number.isInteger(i) || i < 0 || i >= n) throw new RangeError(`no server ${i} in a pool of ${n}`);
  }

  return {
    pick(key, skip) {
      const v = view(skip);
      for (const tier of tiers) {
        const i = pickIn(tier, key, v);
        if (i !== -1) return i;
      }
      return -1;
    },
    failed(i) {
      check(i);
      // ngx_stream_upstream_free_round_robin_peer, NGX_PEER_FAILED: integer division as in C.
      if (maxFails === 0) return;
      effective[i] = Math.max(0, effective[i]! - Math.floor(weight[i]! / maxFails));
    },
    effectiveWeight(i) {
      check(i);
      return effective[i]!;
    },
  };
}
