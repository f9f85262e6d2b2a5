/**
 * Health verdicts across the cluster's IPC channel (node:cluster): the primary runs the checks
 * (./checker.ts) and tells the workers, whose pools apply them.
 */
import cluster, { type Worker } from 'node:cluster';
import type { HealthChange } from './types.js';

/*
 * Health of pool servers across the cluster. The checks run once per instance, in the primary
 * (src/pools/checker.ts); its verdicts reach the workers over the cluster IPC channel:
 *
 *   primary → worker  { type: 'postern:health', change: HealthChange }            each state change
 *   worker → primary  { type: 'postern:health-sync' }                             when a worker subscribes
 *   primary → worker  { type: 'postern:health-snapshot', changes: HealthChange[] } the answer: every server's state
 *
 * A new worker asks for the snapshot once it listens rather than being sent one at fork or
 * 'online': a message that reaches a worker before its 'message' listener exists is lost.
 * Changes broadcast before the answer are in it; those after it follow it, in order.
 */

export interface HealthMessage {
  type: 'postern:health';
  change: HealthChange;
}
export interface HealthSnapshotMessage {
  type: 'postern:health-snapshot';
  changes: HealthChange[];
}
const HEALTH_SYNC = 'postern:health-sync';

function sendTo(w: Worker, msg: HealthMessage | HealthSnapshotMessage): void {
  // A worker that is exiting may refuse the message; its replacement will ask for the snapshot.
  if (w.isConnected()) w.send(msg, () => {});
}

/** Primary: sends one state change to every worker. */
export function broadcastHealth(change: HealthChange): void {
  for (const w of Object.values(cluster.workers ?? {})) if (w) sendTo(w, { type: 'postern:health', change });
}

/** Primary: answers each worker's snapshot request with `snapshot()`. Returns the function that stops it. */
export function serveHealthSnapshots(snapshot: () => HealthChange[]): () => void {
  const onMessage = (w: Worker, msg: unknown): void => {
    if ((msg as { type?: unknown } | null)?.type === HEALTH_SYNC) sendTo(w, { type: 'postern:health-snapshot', changes: snapshot() });
  };
  cluster.on('message', onMessage);
  return () => cluster.removeListener('message', onMessage);
}

/**
 * Worker: calls `cb` for every server in the primary's snapshot (`fromSnapshot` true), then for
 * every change. Returns the function that unsubscribes. (The listener keeps the IPC channel
 * referenced, as the worker's channel already is until its final disconnect().)
 */
export function onHealthMessages(cb: (change: HealthChange, fromSnapshot: boolean) => void): () => void {
  const onMessage = (msg: unknown): void => {
    const m = msg as { type?: unknown; change?: HealthChange; changes?: unknown } | null;
    if (m?.type === 'postern:health' && m.change) cb(m.change, false);
    else if (m?.type === 'postern:health-snapshot' && Array.isArray(m.changes)) for (const c of m.changes as HealthChange[]) cb(c, true);
  };
  process.on('message', onMessage);
  process.send?.({ type: HEALTH_SYNC });
  return () => process.removeListener('message', onMessage);
}
