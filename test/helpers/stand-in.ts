/**
 * A stand-in for a back-end that is sick rather than gone, listening on a port given by the caller
 * (the port of a pool member that was just stopped): it greets `421 4.3.2 busy` and closes, as
 * Postfix does when it is overloaded (RFC 5321 §3.8), or it accepts the connection and never says
 * a word (a hung MTA, a black-holing firewall). Unlike FakeBackend it takes a fixed port and has
 * only these two faults; it counts the connections it saw, so a test can tell the member was tried.
 */
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export type StandInMode =
  /** Send this line (CRLF added) as the greeting, then close: e.g. `421 4.3.2 busy`. */
  | { greeting: string }
  /** Accept and stay silent until the peer gives up or stop() is called. */
  | 'stall';

export interface StandIn {
  port: number;
  /** Connections accepted so far. */
  readonly connections: number;
  /** Closes the listener and every connection still open; the port is free when it resolves. */
  stop(): Promise<void>;
}

/** Listens on 127.0.0.1:`port`; a port another process has just released is retried for up to 2 s. */
export async function startStandIn(port: number, mode: StandInMode): Promise<StandIn> {
  const open = new Set<net.Socket>();
  let connections = 0;
  const server = net.createServer((socket) => {
    connections++;
    open.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => open.delete(socket));
    if (mode !== 'stall') socket.end(`${mode.greeting}\r\n`);
  });
  const deadline = Date.now() + 2_000;
  for (;;) {
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host: '127.0.0.1', port, exclusive: true }, () => {
          server.removeListener('error', reject);
          resolve();
        });
      });
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || Date.now() >= deadline) throw err;
      await sleep(100);
    }
  }
  let stopped: Promise<void> | undefined;
  return {
    port,
    get connections() {
      return connections;
    },
    stop: () =>
      (stopped ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of open) s.destroy();
      })),
  };
}
