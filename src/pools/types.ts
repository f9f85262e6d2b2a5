/**
 * The shapes shared by the pool modules: a pool's servers, a balancer's contract, and what health
 * tracking reports. (Pools: named groups of back-ends with balancing, health checks and failover
 * before the client has seen a back-end byte; docs/configuration.md, "pools".)
 */

/** One back-end of a pool, as configured. */
export interface PoolServer {
  /** `host:port` (IPv6 in brackets): the server's name in logs, status and health messages. */
  id: string;
  host: string;
  port: number;
  /** Relative share of the sessions (nginx `weight`), ≥ 1. */
  weight: number;
  /** Used only when no primary server of the pool is usable (nginx/HAProxy `backup`). */
  backup: boolean;
  /** Most back-end connections at once from one worker (0: no limit; nginx `max_conns`). */
  maxConnections: number;
}

export type BalanceMethod = 'round_robin' | 'least_conn' | 'hash';

/** What the consistent hash is keyed on. */
export type HashKey = 'rcpt_domain' | 'sender_domain' | 'client' | 'user';

/**
 * Picks a server among a fixed list. `skip(i)` says which servers may not be picked now (down,
 * at their connection limit, already tried for this session); the result is an index into the
 * list, or -1 when every server is skipped. Balancers are pure and synchronous.
 */
export interface Balancer {
  pick(key: string | null, skip: (i: number) => boolean): number;
  /** A session to server `i` failed before the client saw a byte (nginx lowers its effective weight). */
  failed(i: number): void;
}

/** A health verdict on one server, from an active check or from passive detection. */
export interface HealthChange {
  pool: string;
  server: string;
  up: boolean;
  /** Why, for the log line and `postern status`: `check failed 3 times: 421 4.3.2 busy`, `recovered`, … */
  reason: string;
}

/** One server in the snapshot (and in the status file). */
export interface HealthSnapshotEntry {
  pool: string;
  server: string;
  /** The active checks' verdict (always true for a pool with `health.enabled: false`). */
  up: boolean;
  /** Why it is in this state: the reason of its last change, or why it is up without one. */
  reason: string;
  /** Since when (ms since the epoch): the last change, or when the checks started. */
  since: number;
  /** When the last check finished (ms since the epoch), null before the first. */
  lastCheck: number | null;
  /** The last check's own result (`ok`, `greeting 421 4.3.2 busy`, …), null before the first. */
  lastResult: string | null;
  /** False for a pool with `health.enabled: false`: never checked. */
  checked: boolean;
}
