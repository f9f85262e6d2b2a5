/**
 * The auth service connection pool against scripted HTTP servers: reuse, the cap on connections,
 * a keep-alive connection closed under it, timeouts, and every way a response can be framed.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, it } from 'node:test';
import { HttpPool } from '../../src/auth/http-pool.js';

const REQ = Buffer.from('GET /auth HTTP/1.1\r\nHost: x\r\n\r\n');

/** A server that answers each request (one per "\r\n\r\n") with `respond(n)`; n counts requests. */
async function server(respond: (n: number, s: net.Socket) => string | null): Promise<{ port: number; connections: () => number; close(): void }> {
  let conns = 0;
  let n = 0;
  const srv = net.createServer((s) => {
    conns++;
    s.on('error', () => {});
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString('latin1');
      for (let i = buf.indexOf('\r\n\r\n'); i !== -1; i = buf.indexOf('\r\n\r\n')) {
        buf = buf.slice(i + 4);
        const out = respond(++n, s);
        if (out !== null) s.write(out);
      }
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return { port: (srv.address() as net.AddressInfo).port, connections: () => conns, close: () => srv.close() };
}

function pool(port: number, o: Partial<ConstructorParameters<typeof HttpPool>[1]> = {}): HttpPool {
  return new HttpPool(new URL(`http://127.0.0.1:${port}/auth`), { maxConnections: 4, timeoutMs: 1000, maxHeaderSize: 1024, keepAliveMs: 5000, ...o });
}

const OK = 'HTTP/1.1 204 No Content\r\nAuth-Status: OK\r\n\r\n';

describe('HttpPool', () => {
  it('reuses one connection for sequential requests, bodies included', async () => {
    const srv = await server((n) => (n % 2 ? OK : 'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nAuth-Status: OK\r\n\r\nabc'));
    const p = pool(srv.port);
    for (let i = 0; i < 6; i++) assert.equal((await p.request(REQ)).ok, true);
    assert.equal(srv.connections(), 1);
    await p.close();
    srv.close();
  });

  it('never opens more than maxConnections; the rest wait their turn', async () => {
    const srv = await server(() => OK);
    const p = pool(srv.port, { maxConnections: 2 });
    const results = await Promise.all(Array.from({ length: 20 }, () => p.request(REQ)));
    assert.ok(results.every((r) => r.ok));
    assert.ok(srv.connections() <= 2, `${srv.connections()} connections`);
    await p.close();
    srv.close();
  });

  it('retries once on a new connection when the server closed the idle one', async () => {
    const srv = await server((n, s) => {
      if (n === 2) {
        s.destroy(); // the second request meets a connection the server has dropped
        return null;
      }
      return OK;
    });
    const p = pool(srv.port);
    assert.equal((await p.request(REQ)).ok, true);
    const second = await p.request(REQ);
    assert.equal(second.ok, true, JSON.stringify(second));
    assert.equal(srv.connections(), 2);
    await p.close();
    srv.close();
  });

  it('a fresh connection that fails is not retried: unavailable', async () => {
    const srv = await server((_n, s) => {
      s.destroy();
      return null;
    });
    const p = pool(srv.port);
    const r = await p.request(REQ);
    assert.deepEqual(r.ok ? null : r.reason, 'unavailable');
    await p.close();
    srv.close();
  });

  it('a server that never answers: timeout, and the connection is not reused', async () => {
    const srv = await server((n) => (n === 1 ? null : OK));
    const p = pool(srv.port, { timeoutMs: 200 });
    const r = await p.request(REQ);
    assert.equal(r.ok ? null : r.reason, 'timeout');
    assert.equal((await p.request(REQ)).ok, true);
    assert.equal(srv.connections(), 2);
    await p.close();
    srv.close();
  });

  it('Connection: close and close-framed bodies: answered, then a new connection next time', async () => {
    const srv = await server((n) => (n === 1 ? 'HTTP/1.1 204 No Content\r\nConnection: close\r\nAuth-Status: OK\r\n\r\n' : 'HTTP/1.0 200 OK\r\nAuth-Status: OK\r\n\r\nbody'));
    const p = pool(srv.port);
    assert.equal((await p.request(REQ)).ok, true);
    assert.equal((await p.request(REQ)).ok, true);
    assert.equal((await p.request(REQ)).ok, true);
    assert.equal(srv.connections(), 3);
    await p.close();
    srv.close();
  });

  it('garbage: invalid; refused connection: unavailable', async () => {
    const srv = await server(() => 'SMTP/1.0 220 hello\r\n\r\n');
    const p = pool(srv.port);
    assert.equal(((await p.request(REQ)) as { reason: string }).reason, 'invalid');
    await p.close();
    srv.close();
    const dead = pool(1);
    assert.equal(((await dead.request(REQ)) as { reason: string }).reason, 'unavailable');
    await dead.close();
  });
});
