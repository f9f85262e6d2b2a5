/**
 * The blind relay (any protocol): bytes both ways, untouched, with explicit backpressure (a side that
 * cannot keep up pauses the other) and half-close passed through, until both sides are done.
 */
import type { Socket } from 'node:net';

export interface RelayStats {
  /** Last reply code seen in the back-end's stream (for the access log), by the protocol's reading. */
  lastCode: number;
  /** Why the relay ended abnormally, or null for a normal end. */
  failure: 'PST_BACKEND_LOST' | 'PST_CLIENT_LOST' | 'PST_RELAY_IDLE_TIMEOUT' | null;
}

/** `replyCode` reads the protocol's reply code at the end of a chunk (0: none), for the access log. */
export function relay(client: Socket, backend: Socket, idleMs: number, stats: RelayStats, replyCode: (chunk: Buffer) => number, onDone: () => void): void {
  let open = 2;
  const closed = (): void => {
    if (--open === 0) onDone();
  };
  const fail = (why: RelayStats['failure']): void => {
    if (stats.failure === null) stats.failure = why;
    // A broken back-end must not leave the client waiting for a reply that cannot come, nor
    // mistake a silent close for acceptance: both sides are torn down at once.
    client.destroy();
    backend.destroy();
  };

  client.on('data', (chunk: Buffer) => {
    if (!backend.write(chunk)) client.pause();
  });
  backend.on('drain', () => client.resume());
  backend.on('data', (chunk: Buffer) => {
    const code = replyCode(chunk);
    if (code > 0) stats.lastCode = code;
    if (!client.write(chunk)) backend.pause();
  });
  client.on('drain', () => backend.resume());

  client.on('end', () => backend.end());
  backend.on('end', () => client.end());
  // A client that resets after the 221 to its QUIT (smtp-source does, with SO_LINGER 0) ended normally.
  client.on('error', () => fail(stats.lastCode === 221 ? null : 'PST_CLIENT_LOST'));
  backend.on('error', () => fail('PST_BACKEND_LOST'));
  client.on('close', closed);
  backend.on('close', closed);

  client.setTimeout(idleMs, () => fail('PST_RELAY_IDLE_TIMEOUT'));
  backend.setTimeout(idleMs, () => fail('PST_RELAY_IDLE_TIMEOUT'));
  client.resume();
}
