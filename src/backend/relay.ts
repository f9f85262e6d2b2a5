/**
 * The transparent phase: bytes both ways, untouched, with explicit backpressure (a side that
 * cannot keep up pauses the other) and half-close passed through, until both sides are done.
 */
import type { Socket } from 'node:net';

export interface RelayStats {
  /** Last reply code seen at the start of a back-end line (for the access log). */
  lastCode: number;
  /** Why the relay ended abnormally, or null for a normal end. */
  failure: 'PST_BACKEND_LOST' | 'PST_CLIENT_LOST' | 'PST_RELAY_IDLE_TIMEOUT' | null;
}

export function relay(client: Socket, backend: Socket, idleMs: number, stats: RelayStats, onDone: () => void): void {
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
    const code = lastReplyCode(chunk);
    if (code > 0) stats.lastCode = code;
    if (!client.write(chunk)) backend.pause();
  });
  client.on('drain', () => backend.resume());

  client.on('end', () => backend.end());
  backend.on('end', () => client.end());
  client.on('error', () => fail('PST_CLIENT_LOST'));
  backend.on('error', () => fail('PST_BACKEND_LOST'));
  client.on('close', closed);
  backend.on('close', closed);

  client.setTimeout(idleMs, () => fail('PST_RELAY_IDLE_TIMEOUT'));
  backend.setTimeout(idleMs, () => fail('PST_RELAY_IDLE_TIMEOUT'));
  client.resume();
}

/** The code of the last complete line in a chunk when it starts with three digits, else 0. */
export function lastReplyCode(chunk: Buffer): number {
  const n = chunk.length;
  if (n < 5 || chunk[n - 1] !== 0x0a) return 0;
  const start = chunk.lastIndexOf(0x0a, n - 2) + 1;
  const a = chunk[start]! - 0x30, b = chunk[start + 1]! - 0x30, c = chunk[start + 2]! - 0x30;
  if (a < 0 || a > 9 || b < 0 || b > 9 || c < 0 || c > 9) return 0;
  return a * 100 + b * 10 + c;
}
