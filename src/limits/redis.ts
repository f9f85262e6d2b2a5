/**
 * The ioredis client the shared limiters use, configured so that nothing waits on Redis:
 *
 * - `enableOfflineQueue: false`: while not connected, a command fails at once (the limiter then
 *   answers from memory) instead of queueing until Redis is back;
 * - `maxRetriesPerRequest: 0`: a command in flight when the connection drops fails, it is not resent;
 * - `commandTimeout`: a command Redis does not answer (Redis stalled, a network black hole) fails
 *   after that long, so ioredis does not pile them up (the limiter's own deadline answers first);
 * - `connectTimeout`: a connection attempt to a silent address gives up after that long;
 * - reconnects forever, 100 ms, 200 ms … at most every `maxReconnectMs`: Redis coming back is
 *   noticed within about that, and the limiters use it again at their next call;
 * - `protocol: 2`: ioredis 6 speaks RESP3 by default; the limiters' scripts and
 *   rate-limiter-flexible were written against RESP2 replies, and RESP2 works with any Redis;
 * - an 'error' listener: ioredis would otherwise print each connection error to stderr; the
 *   limiters report an outage once through their onDown callback.
 */
import { Redis, type RedisOptions } from 'ioredis';

export interface RedisClientOptions {
  host?: string;
  port?: number;
  /** A Unix socket path instead of host and port. */
  path?: string;
  password?: string;
  username?: string;
  db?: number;
  /** Default 1000 ms. */
  connectTimeoutMs?: number;
  /** Default 500 ms. */
  commandTimeoutMs?: number;
  /** Longest pause between reconnect attempts. Default 1000 ms. */
  maxReconnectMs?: number;
  /** Extra ioredis options (e.g. `tls`); the ones above win. */
  extra?: RedisOptions;
}

export function createRedisClient(opts: RedisClientOptions = {}): Redis {
  const maxReconnectMs = opts.maxReconnectMs ?? 1000;
  const client = new Redis({
    ...opts.extra,
    host: opts.host ?? '127.0.0.1',
    port: opts.port ?? 6379,
    ...(opts.path !== undefined ? { path: opts.path } : {}),
    ...(opts.password !== undefined ? { password: opts.password } : {}),
    ...(opts.username !== undefined ? { username: opts.username } : {}),
    db: opts.db ?? 0,
    protocol: 2,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    connectTimeout: opts.connectTimeoutMs ?? 1000,
    commandTimeout: opts.commandTimeoutMs ?? 500,
    retryStrategy: (times: number) => Math.min(times * 100, maxReconnectMs),
  });
  client.on('error', noop);
  return client;
}

function noop(): void {}
