/**
 * Connections held per client, shared by the workers of one instance (`cluster`) or by every
 * instance using one Redis (`redis`); `memory` is the per-process ConcurrencyLimiter.
 *
 * Every process is the authority for what it holds itself: it keeps its own count per key, and
 * each message it sends to the store says "I hold N of this key" (never "+1"/"-1"). The store
 * keeps one count per holder and adds them up. So a lost, late or repeated message is corrected
 * by the next one for that key, a holder that goes away takes its counts with it, and after an
 * outage the counts are simply sent again.
 *
 * - `cluster`: the primary keeps each worker's counts (./primary.ts) and drops a worker's
 *   counts when it exits, however it exits.
 * - `redis`: one hash per key, one field per holding process (host:pid:random), each with its
 *   own lease: `count|expiry-ms` (Redis's clock). A take or release renews this process's lease;
 *   while it holds anything it renews all its leases every `leaseMs / 3` (and so re-sends its
 *   counts after Redis was away). A crashed instance stops renewing: its fields are ignored once
 *   expired and deleted at the next take of that key, and the whole hash expires `leaseMs` after
 *   its last write. A plain INCR/DECR counter with a TTL would keep a crashed instance's counts as
 *   long as the client keeps connecting (every take renews the TTL): hence a lease per holder.
 *
 * A take is checked and recorded in one step in the store (a Lua script; a message handled in
 * turn by the primary), so two instances never both take the last place. Takes of one key that
 * are in flight at once count each other (conservative: at the limit, a concurrent take may be
 * refused that a moment later would not be).
 *
 * When the store fails or is late (./guard.ts: `timeoutMs`, `onDown`/`onUp` once per outage),
 * the take is decided on this process's own holds against the same limit, that is, the limit
 * then applies per process; when the store answers again, counts are re-sent with the next
 * message or lease renewal.
 */
import { randomBytes } from 'node:crypto';
import cluster from 'node:cluster';
import os from 'node:os';
import type { Redis } from 'ioredis';
import { StoreGuard, type GuardOptions } from './guard.js';
import { ConcurrencyLimiter, type LimitVerdict, type Limiter } from './limiter.js';
import { CONC_REPLY, CONC_REQUEST, type ConcReply, type ConcRequest } from './primary.js';
import type { LimiterStore } from './rate.js';

export interface ConcurrencySpec {
  /** Unique per limiter. */
  name: string;
  /** Held at once per key; 0 means no limit. */
  limit: number;
}

export interface ConcurrencyOptions extends GuardOptions {
  /** Redis: how long a holder's counts outlive its last renewal. Default 60 000 ms. */
  leaseMs?: number;
}

/** A store of counts per holder (the primary, Redis). */
interface HoldStore {
  readonly kind: string;
  /** Records `held` (this take's `cost` included) if the key's total stays within `limit`, else `held - cost`. */
  take(key: string, held: number, cost: number, limit: number): Promise<{ allowed: boolean; count: number }>;
  /** Records `held` for this holder. */
  set(key: string, held: number): Promise<void>;
  /** The key's total over all holders. */
  peek(key: string): Promise<number>;
  /** Renews the holder's leases (Redis) with its current counts. */
  renew?(held: ReadonlyMap<string, number>): Promise<void>;
  readonly leaseMs?: number;
  close?(): void;
}

export function createConcurrencyLimiter(spec: ConcurrencySpec, store: LimiterStore = { kind: 'memory' }, opts: ConcurrencyOptions = {}): Limiter & { close(): void } {
  if (!(spec.limit >= 0) || !Number.isInteger(spec.limit)) throw new Error(`concurrency limiter ${spec.name}: limit must be an integer >= 0`);
  if (store.kind === 'memory' || (store.kind === 'cluster' && !cluster.isWorker)) {
    const l = new ConcurrencyLimiter(spec.limit);
    return Object.assign(l, { close() {} });
  }
  const hs = store.kind === 'redis' ? new RedisHoldStore(spec.name, store.client, store.prefix ?? 'postern', opts.leaseMs ?? 60_000) : new ClusterHoldStore(spec.name);
  return new SharedConcurrencyLimiter(spec, hs, opts);
}

export class SharedConcurrencyLimiter implements Limiter {
  readonly #limit: number;
  readonly #store: HoldStore;
  readonly #guard: StoreGuard;
  /** What this process holds per key, takes in flight included. */
  readonly #held = new Map<string, number>();
  #renewTimer: NodeJS.Timeout | undefined;

  constructor(spec: ConcurrencySpec, store: HoldStore, opts: GuardOptions = {}) {
    this.#limit = spec.limit;
    this.#store = store;
    this.#guard = new StoreGuard(store.kind, spec.name, opts);
    if (store.renew && store.leaseMs) {
      this.#renewTimer = setInterval(() => this.#renew(), Math.max(50, Math.floor(store.leaseMs / 3)));
      this.#renewTimer.unref();
    }
  }

  async take(key: string, cost = 1): Promise<LimitVerdict> {
    const held = (this.#held.get(key) ?? 0) + cost;
    this.#held.set(key, held);
    let fellBack = false;
    const r = await this.#guard.run(
      () => this.#store.take(key, held, cost, this.#limit),
      () => {
        fellBack = true;
        return { allowed: this.#limit === 0 || held <= this.#limit, count: held };
      },
    );
    if (!r.allowed) this.#adjust(key, -cost);
    // Decided without the store: tell it what is held now, behind whatever it may still do with the take.
    if (fellBack) this.#send(key);
    return { allowed: r.allowed, count: r.count, limit: this.#limit };
  }

  async peek(key: string): Promise<LimitVerdict> {
    const mine = this.#held.get(key) ?? 0;
    const count = await this.#guard.run(
      () => this.#store.peek(key),
      () => mine,
    );
    return { allowed: this.#limit === 0 || count < this.#limit, count, limit: this.#limit };
  }

  /**
   * Resolves once the store has the new count (Redis answered, or the message to the primary is
   * sent), never rejects: a failure is an outage (logged once) and the next message or lease
   * renewal corrects the count. Callers need not wait (a Redis command gives up after its
   * commandTimeout).
   */
  release(key: string, cost = 1): Promise<void> {
    this.#adjust(key, -cost);
    return this.#store.set(key, this.#held.get(key) ?? 0).catch((err: unknown) => this.#guard.failed(err));
  }

  /** Keys this process holds something of (for tests and status). */
  get size(): number {
    return this.#held.size;
  }

  /** Stops renewing leases (the counts then lapse after leaseMs). The client is the caller's to close. */
  close(): void {
    clearInterval(this.#renewTimer);
    this.#store.close?.();
  }

  #adjust(key: string, by: number): void {
    const n = (this.#held.get(key) ?? 0) + by;
    if (n <= 0) this.#held.delete(key);
    else this.#held.set(key, n);
  }

  /** Fire and forget: a failure is an outage (logged once); the next message or renewal corrects the count. */
  #send(key: string): void {
    this.#store.set(key, this.#held.get(key) ?? 0).catch((err: unknown) => this.#guard.failed(err));
  }

  #renew(): void {
    if (this.#held.size === 0 || !this.#store.renew) return;
    this.#store.renew(this.#held).catch((err: unknown) => this.#guard.failed(err));
  }
}

// ---- cluster: the primary keeps the counts --------------------------------------------------

let nextId = 0;
const pending = new Map<number, (r: ConcReply) => void>();
let listening = false;

function onReply(msg: unknown): void {
  const m = msg as Partial<ConcReply> | null;
  if (!m || m.type !== CONC_REPLY || typeof m.id !== 'number') return;
  const done = pending.get(m.id);
  if (done) {
    pending.delete(m.id);
    done(m as ConcReply);
  }
}

class ClusterHoldStore implements HoldStore {
  readonly kind = 'cluster';
  readonly #name: string;

  constructor(name: string) {
    this.#name = name;
    if (!listening) {
      listening = true;
      process.on('message', onReply);
    }
  }

  #ask(req: Omit<ConcRequest, 'type' | 'id' | 'name'>): Promise<ConcReply> {
    return new Promise((resolve, reject) => {
      const id = ++nextId;
      // The guard's deadline answers the caller; this only keeps the map from growing.
      const timer = setTimeout(() => pending.delete(id), 30_000);
      timer.unref();
      pending.set(id, (r) => {
        clearTimeout(timer);
        resolve(r);
      });
      this.#post({ ...req, id }, (err) => {
        pending.delete(id);
        clearTimeout(timer);
        reject(err);
      });
    });
  }

  #post(req: Omit<ConcRequest, 'type' | 'name'>, onError: (err: Error) => void): void {
    const msg: ConcRequest = { type: CONC_REQUEST, name: this.#name, ...req };
    try {
      if (!process.send || !process.connected) throw new Error('no IPC channel to the primary');
      process.send(msg, undefined, undefined, (err: Error | null) => {
        if (err) onError(err);
      });
    } catch (err) {
      onError(err instanceof Error ? err : new Error(String(err)));
    }
  }

  async take(key: string, held: number, cost: number, limit: number): Promise<{ allowed: boolean; count: number }> {
    const r = await this.#ask({ op: 'take', key, held, cost, limit });
    return { allowed: r.allowed, count: r.count };
  }

  set(key: string, held: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#post({ op: 'set', key, held, cost: 0, limit: 0, id: 0 }, reject);
      resolve();
    });
  }

  async peek(key: string): Promise<number> {
    return (await this.#ask({ op: 'peek', key, held: 0, cost: 0, limit: 0 })).count;
  }
}

// ---- redis: a hash of leases per key --------------------------------------------------------

/** Fields of KEYS[1] other than ARGV[1] whose lease is over are deleted; returns the others' total. `now` from Redis. */
const SUM_OTHERS = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local others = 0
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then
    local v = all[i + 1]
    local sep = string.find(v, '|', 1, true)
    local n = tonumber(string.sub(v, 1, sep - 1))
    local exp = tonumber(string.sub(v, sep + 1))
    if exp <= now then redis.call('HDEL', KEYS[1], all[i]) else others = others + n end
  end
end
`;

/** Writes this holder's count (ARGV[2]) with a lease of ARGV[3] ms; the hash lives as long as its longest lease. */
const WRITE_MINE = `
local function write(mine, lease)
  if mine > 0 then
    redis.call('HSET', KEYS[1], ARGV[1], mine .. '|' .. (now + lease))
    if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
  else
    redis.call('HDEL', KEYS[1], ARGV[1])
  end
end
`;

/** ARGV: holder, held (this take included), lease ms, cost, limit. Returns {allowed 0/1, total}. */
const TAKE = `${SUM_OTHERS}${WRITE_MINE}
local held = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
if limit <= 0 or others + held <= limit then
  write(held, lease)
  return {1, others + held}
end
write(held - cost, lease)
return {0, others + held - cost}
`;

/** ARGV: holder, held, lease ms. */
const SET = `${SUM_OTHERS}${WRITE_MINE}
write(tonumber(ARGV[2]), tonumber(ARGV[3]))
return others + tonumber(ARGV[2])
`;

/** ARGV: holder ('': nobody). Returns the total of unexpired leases (expired ones are dropped on the way). */
const PEEK = `${SUM_OTHERS}
return others
`;

type HoldCommands = {
  posternConcTake(key: string, holder: string, held: number, lease: number, cost: number, limit: number): Promise<[number, number]>;
  posternConcSet(key: string, holder: string, held: number, lease: number): Promise<number>;
  posternConcPeek(key: string): Promise<number>;
};

/** This process as a holder: unique across hosts, processes and limiter instances. */
function holderId(): string {
  return `${os.hostname()}:${process.pid}:${randomBytes(4).toString('hex')}`;
}

class RedisHoldStore implements HoldStore {
  readonly kind = 'redis';
  readonly leaseMs: number;
  readonly #client: Redis & HoldCommands;
  readonly #prefix: string;
  readonly #holder = holderId();

  constructor(name: string, client: Redis, prefix: string, leaseMs: number) {
    this.leaseMs = leaseMs;
    this.#prefix = `${prefix}:${name}:`;
    const c = client as Redis & Partial<HoldCommands>;
    if (typeof c.posternConcTake !== 'function') {
      client.defineCommand('posternConcTake', { numberOfKeys: 1, lua: TAKE });
      client.defineCommand('posternConcSet', { numberOfKeys: 1, lua: SET });
      client.defineCommand('posternConcPeek', { numberOfKeys: 1, lua: PEEK });
    }
    this.#client = client as Redis & HoldCommands;
  }

  async take(key: string, held: number, cost: number, limit: number): Promise<{ allowed: boolean; count: number }> {
    this.#ready();
    const [ok, count] = await this.#client.posternConcTake(this.#prefix + key, this.#holder, held, this.leaseMs, cost, limit);
    return { allowed: ok === 1, count };
  }

  async set(key: string, held: number): Promise<void> {
    this.#ready();
    await this.#client.posternConcSet(this.#prefix + key, this.#holder, held, this.leaseMs);
  }

  async peek(key: string): Promise<number> {
    this.#ready();
    return this.#client.posternConcPeek(this.#prefix + key);
  }

  async renew(held: ReadonlyMap<string, number>): Promise<void> {
    this.#ready();
    const p = this.#client.pipeline() as unknown as { posternConcSet(...a: unknown[]): unknown; exec(): Promise<[Error | null, unknown][] | null> };
    for (const [key, n] of held) p.posternConcSet(this.#prefix + key, this.#holder, n, this.leaseMs);
    const results = await p.exec();
    const failed = results?.find(([err]) => err);
    if (failed) throw failed[0];
  }

  /** Not connected: fail now rather than at ioredis (same effect, clearer error). */
  #ready(): void {
    if (this.#client.status !== 'ready') throw new Error(`Redis connection is ${this.#client.status}`);
  }
}
