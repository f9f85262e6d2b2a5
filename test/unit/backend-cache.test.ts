/**
 * BackendCache (src/backend/cache.ts) with real loopback sockets: a parked connection comes back
 * to the next taker with its capabilities and one more session; the bounds (sessions, age, per
 * key, idle time) close connections politely (QUIT); a parked connection that the back-end
 * closes or talks on (a 421 before its idle close) is never handed out.
 */
import assert from 'node:assert/strict';
import net, { type AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { BackendCache, type Parked } from '../../src/backend/cache.js';

describe('BackendCache', () => {
  let srv: net.Server;
  let port = 0;
  /** What each accepted back-end connection received, and its socket. */
  const peers: { socket: net.Socket; got: string }[] = [];
  before(async () => {
    srv = net.createServer((socket) => {
      const peer = { socket, got: '' };
      peers.push(peer);
      socket.on('data', (d: Buffer) => {
        peer.got += d.toString('latin1');
        if (peer.got.endsWith('QUIT\r\n')) socket.end('221 2.0.0 Bye\r\n');
      });
      socket.on('error', () => {});
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    port = (srv.address() as AddressInfo).port;
  });
  after(() => srv.close());

  const connect = async (): Promise<{ client: net.Socket; peer: { socket: net.Socket; got: string } }> => {
    const n = peers.length;
    const client = net.connect(port, '127.0.0.1');
    await new Promise((r) => client.once('connect', r));
    while (peers.length === n) await sleep(2);
    return { client, peer: peers[peers.length - 1]! };
  };
  const parked = (socket: net.Socket, over: Partial<Parked> = {}): Parked => ({ socket, capabilities: new Map([['PIPELINING', '']]), tls: null, name: `127.0.0.1:${port}`, sessions: 1, since: Date.now(), ...over });
  const limits = { idleMs: 5000, maxSessions: 100, maxAgeMs: 300_000, maxPerKey: 2 };

  it('hands a parked connection to the next taker, the most recent first, with one more session', async () => {
    const cache = new BackendCache(limits);
    const a = await connect();
    const b = await connect();
    assert.equal(cache.park('k', parked(a.client)), true);
    assert.equal(cache.park('k', parked(b.client, { sessions: 3 })), true);
    assert.equal(cache.size('k'), 2);
    const t = cache.take('k')!;
    assert.equal(t.socket, b.client);
    assert.equal(t.sessions, 4);
    assert.equal(t.capabilities.has('PIPELINING'), true);
    assert.equal(cache.take('other'), null);
    // The taker owns it: no listener of the cache is left on it.
    assert.equal(t.socket.listenerCount('data'), 0);
    cache.close();
    t.socket.destroy();
    await sleep(50);
    assert.match(a.peer.got, /QUIT\r\n$/, 'close() says QUIT to what is parked');
  });

  it('refuses (with QUIT) a connection over its session count, its age, or the per-key bound', async () => {
    const cache = new BackendCache(limits);
    const [a, b, c, d] = [await connect(), await connect(), await connect(), await connect()];
    assert.equal(cache.park('k', parked(a.client, { sessions: 100 })), false);
    assert.equal(cache.park('k', parked(b.client, { since: Date.now() - 400_000 })), false);
    assert.equal(cache.park('k', parked(c.client)), true);
    assert.equal(cache.park('k', parked(d.client)), true);
    const e = await connect();
    assert.equal(cache.park('k', parked(e.client)), false);
    await sleep(50);
    for (const x of [a, b, e]) assert.match(x.peer.got, /^QUIT\r\n$/);
    assert.equal(cache.stats.refused, 3);
    cache.close();
  });

  it('closes an idle one after idleMs (QUIT), and drops one the back-end closes or talks on', async () => {
    const cache = new BackendCache({ ...limits, idleMs: 100 });
    const idle = await connect();
    cache.park('idle', parked(idle.client));
    const closed = await connect();
    cache.park('closed', parked(closed.client));
    const talker = await connect();
    cache.park('talker', parked(talker.client));
    closed.peer.socket.destroy();
    talker.peer.socket.write('421 4.4.2 mx Error: timeout exceeded\r\n');
    await sleep(40);
    assert.equal(cache.take('closed'), null);
    assert.equal(cache.take('talker'), null);
    assert.equal(cache.stats.dropped, 2);
    await sleep(150);
    assert.equal(cache.size(), 0);
    assert.equal(cache.stats.expired, 1);
    assert.match(idle.peer.got, /^QUIT\r\n$/);
  });
});
