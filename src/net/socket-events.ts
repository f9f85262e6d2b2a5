/**
 * The socket events of a connection, routed to its driver by module-level handlers (the ws
 * style): no closure is allocated per connection, and the owner is found through a symbol on
 * the socket. The driver implements {@link SocketOwner}.
 */
import type { Socket } from 'node:net';
import type { ErrorCode } from '../errors.js';

export interface SocketOwner {
  onData(chunk: Buffer): void;
  onEnd(): void;
  onError(err: Error): void;
  onTimeout(): void;
  onClose(): void;
  onDrain(): void;
  onBackendData(chunk: Buffer): void;
  onBackendGone(code: ErrorCode, detail: string): void;
}

const kConn = Symbol('postern.connection');
interface OwnedSocket extends Socket {
  [kConn]: SocketOwner;
}

// Module-level handlers (the ws style): no closures allocated per connection.
function clientOnData(this: OwnedSocket, chunk: Buffer): void {
  this[kConn].onData(chunk);
}
function clientOnEnd(this: OwnedSocket): void {
  this[kConn].onEnd();
}
function clientOnError(this: OwnedSocket, err: Error): void {
  this[kConn].onError(err);
}
function clientOnTimeout(this: OwnedSocket): void {
  this[kConn].onTimeout();
}
function clientOnClose(this: OwnedSocket): void {
  this[kConn].onClose();
}
function clientOnDrain(this: OwnedSocket): void {
  this[kConn].onDrain();
}
function backendOnData(this: OwnedSocket, chunk: Buffer): void {
  this[kConn].onBackendData(chunk);
}
function backendOnError(this: OwnedSocket, err: NodeJS.ErrnoException): void {
  this[kConn].onBackendGone('PST_BACKEND_CLOSED', err.code ?? err.message);
}
function backendOnEnd(this: OwnedSocket): void {
  this[kConn].onBackendGone('PST_BACKEND_CLOSED', 'closed the connection');
}
function backendOnClose(this: OwnedSocket): void {
  this[kConn].onBackendGone('PST_BACKEND_CLOSED', 'connection closed');
}
function backendOnTimeout(this: OwnedSocket): void {
  this[kConn].onBackendGone('PST_BACKEND_TIMEOUT', 'no reply within the timeout');
}
function backendOnDrain(this: OwnedSocket): void {
  this[kConn].onDrain();
}
function noop(): void {}

type Handlers = readonly (readonly [string, (this: OwnedSocket, ...args: never[]) => void])[];

const CLIENT: Handlers = [['data', clientOnData], ['end', clientOnEnd], ['error', clientOnError], ['timeout', clientOnTimeout], ['close', clientOnClose], ['drain', clientOnDrain]];
const BACKEND: Handlers = [['data', backendOnData], ['error', backendOnError], ['end', backendOnEnd], ['close', backendOnClose], ['timeout', backendOnTimeout], ['drain', backendOnDrain]];

function on(socket: Socket, conn: SocketOwner, handlers: Handlers): void {
  (socket as OwnedSocket)[kConn] = conn;
  for (const [ev, fn] of handlers) socket.on(ev, fn as (...args: unknown[]) => void);
}

function off(socket: Socket, handlers: Handlers): void {
  for (const [ev, fn] of handlers) socket.removeListener(ev, fn as (...args: unknown[]) => void);
}

export function attach(socket: Socket, conn: SocketOwner): void {
  on(socket, conn, CLIENT);
}

/** The TCP socket under a TLS socket is the TLS layer's now: Postern's handlers come off it. */
export function detach(socket: Socket): void {
  off(socket, CLIENT);
  socket.setTimeout(0);
}

export function unmapIPv4(addr: string): string {
  return addr.startsWith('::ffff:') && addr.includes('.') ? addr.slice(7) : addr;
}

/** Session mode: the relay takes over reading the client socket. */
export function stopReading(socket: Socket): void {
  socket.removeListener('data', clientOnData);
  socket.setTimeout(0);
}

/** Transaction mode: the back-end socket's events go to the driver too. */
export function attachBackend(socket: Socket, conn: SocketOwner): void {
  on(socket, conn, BACKEND);
}

/** The back-end session is over: its events are nobody's any more (a late error is ignored). */
export function detachBackend(socket: Socket): void {
  off(socket, BACKEND);
  // Once per socket: a kept back-end connection (backend_reuse) is detached after every session.
  if (!socket.listeners('error').includes(noop)) socket.on('error', noop);
}

/** Closes `s` once everything written to it is with the kernel, which still sends it, then FIN. */
export function closeWhenWritten(s: Socket): void {
  if (s.destroyed) return;
  if (s.writableLength === 0) s.destroy();
  else s.once('drain', () => s.destroy());
}
