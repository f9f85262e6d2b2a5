/**
 * Back-end connections kept warm between sessions (issue 13; Postfix's own SMTP client does this
 * with smtp_connection_cache_on_demand). A connection whose transaction is over is reset (RSET)
 * and parked here, keyed by its back-end and the options its session was set up with; the next
 * session routed there takes it instead of connecting, waiting for a greeting and saying EHLO
 * (./replay.ts `warm`). Bounded as Postfix bounds its cache: idle time
 * (smtp_connection_cache_time_limit, 2 s), sessions per connection
 * (smtp_connection_reuse_count_limit), connection age (smtp_connection_reuse_time_limit, 300 s)
 * and connections per back-end. A parked connection that closes, fails or says anything
 * unasked (a 421 before an idle close) is dropped at once, so a taker never gets a dead one; one
 * that dies after being taken is the taker's to replace before any byte reaches its client, as
 * failover does.
 */
import type { Socket } from 'node:net';

export interface CacheLimits {
  /** An idle connection is closed (QUIT) after this long. */
  idleMs: number;
  /** Sessions one connection may carry before it is closed instead of parked. */
  maxSessions: number;
  /** A connection older than this is closed instead of parked. */
  maxAgeMs: number;
  /** Parked connections per key; more are closed. */
  maxPerKey: number;
}

/** What a warm start needs to know of a parked connection. */
export interface Parked {
  socket: Socket;
  /** The back-end's EHLO keywords from its last EHLO reply. */
  capabilities: ReadonlyMap<string, string>;
  /** The connection is TLS (STARTTLS or implicit); its protocol for the records. */
  tls: string | null;
  /** The server that took it (a pool's member), for the records. */
  name: string;
  /** Sessions it has carried, this one included. */
  sessions: number;
  /** When it was connected (ms, the cache's clock). */
  since: number;
}

interface Slot extends Parked {
  timer: NodeJS.Timeout;
  drop: () => void;
}

export interface BackendCacheOptions extends CacheLimits {
  now?: () => number;
  /** A connection the cache lets go of (idle too long, full, too old): say goodbye and close it. */
  close?: (socket: Socket) => void;
}

const QUIT = Buffer.from('QUIT\r\n', 'latin1');

function politeClose(socket: Socket): void {
  if (socket.destroyed) return;
  socket.on('error', () => {});
  socket.end(QUIT);
  socket.setTimeout(2000, () => socket.destroy());
}

export class BackendCache {
  readonly #slots = new Map<string, Slot[]>();
  readonly #o: Required<BackendCacheOptions>;
  /** Counters for the records and the metrics. */
  readonly stats = { parked: 0, taken: 0, expired: 0, dropped: 0, refused: 0 };

  constructor(options: BackendCacheOptions) {
    this.#o = { now: Date.now, close: politeClose, ...options };
  }

  /** How many connections are parked now (under `key`, or in all). */
  size(key?: string): number {
    if (key !== undefined) return this.#slots.get(key)?.length ?? 0;
    let n = 0;
    for (const l of this.#slots.values()) n += l.length;
    return n;
  }

  /**
   * Parks `p` under `key`, or closes it when a bound says so. The socket must be idle: its
   * transaction reset and acknowledged, nothing of the last session's left to read.
   */
  park(key: string, p: Parked): boolean {
    const o = this.#o;
    const list = this.#slots.get(key) ?? [];
    if (p.socket.destroyed || p.sessions >= o.maxSessions || o.now() - p.since >= o.maxAgeMs || list.length >= o.maxPerKey) {
      this.stats.refused++;
      o.close(p.socket);
      return false;
    }
    const slot: Slot = { ...p, timer: undefined as unknown as NodeJS.Timeout, drop: () => {} };
    const gone = (): void => {
      if (this.#remove(key, slot)) this.stats.dropped++;
      slot.socket.destroy();
    };
    slot.drop = () => {
      slot.socket.removeListener('data', gone);
      slot.socket.removeListener('close', gone);
      slot.socket.removeListener('error', gone);
      slot.socket.removeListener('end', gone);
      clearTimeout(slot.timer);
    };
    // Anything from an idle back-end is a goodbye (421) or garbage: not a connection to hand out.
    slot.socket.on('data', gone);
    slot.socket.on('close', gone);
    slot.socket.on('error', gone);
    slot.socket.on('end', gone);
    slot.socket.resume();
    slot.timer = setTimeout(() => {
      if (this.#remove(key, slot)) {
        this.stats.expired++;
        o.close(slot.socket);
      }
    }, o.idleMs);
    slot.timer.unref();
    list.push(slot);
    this.#slots.set(key, list);
    this.stats.parked++;
    return true;
  }

  /** The most recently parked live connection under `key`, now the caller's (paused, no listeners of ours); or null. */
  take(key: string): Parked | null {
    const list = this.#slots.get(key);
    while (list && list.length > 0) {
      const slot = list.pop()!;
      if (list.length === 0) this.#slots.delete(key);
      slot.drop();
      if (slot.socket.destroyed || slot.socket.readyState !== 'open') {
        this.stats.dropped++;
        continue;
      }
      slot.socket.pause();
      this.stats.taken++;
      const { timer: _t, drop: _d, ...parked } = slot;
      return { ...parked, sessions: parked.sessions + 1 };
    }
    return null;
  }

  /** Closes the parked connections whose key starts with `prefix` (a server taken out of rotation). */
  closeWhere(prefix: string): number {
    let n = 0;
    for (const [key, list] of this.#slots) {
      if (!key.startsWith(prefix)) continue;
      for (const slot of list) {
        slot.drop();
        this.#o.close(slot.socket);
        n++;
      }
      this.#slots.delete(key);
    }
    return n;
  }

  /** Closes every parked connection (shutdown, reload). */
  close(): void {
    for (const [key, list] of this.#slots) {
      for (const slot of list) {
        slot.drop();
        this.#o.close(slot.socket);
      }
      this.#slots.delete(key);
    }
  }

  #remove(key: string, slot: Slot): boolean {
    const list = this.#slots.get(key);
    const i = list ? list.indexOf(slot) : -1;
    if (i < 0) return false;
    list!.splice(i, 1);
    if (list!.length === 0) this.#slots.delete(key);
    slot.drop();
    return true;
  }
}
