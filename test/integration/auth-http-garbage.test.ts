/**
 * Auth services that answer with bytes no HTTP parser should accept: garbage, oversized header
 * blocks, a closed connection mid-header. Each is 451 4.3.2 to the client and a log line.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, it } from 'node:test';
import { startPostern } from '../helpers/postern.js';
import { toRcpt } from '../helpers/preamble.js';

async function rawAuth(respond: (s: net.Socket) => void): Promise<{ url: string; close(): Promise<void> }> {
  const server = net.createServer((s) => {
    s.on('error', () => {});
    s.once('data', () => respond(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/`,
    close: () => new Promise<void>((r) => {
      server.close(() => r());
      server.unref();
    }),
  };
}

describe('auth_http: garbage answers', () => {
  const cases: [string, (s: net.Socket) => void, string][] = [
    ['binary garbage', (s) => s.end(Buffer.from([0, 1, 2, 0xff, 0x0d, 0x0a, 0x0d, 0x0a])), 'PST_AUTH_HTTP_INVALID'],
    ['1 MB of headers', (s) => s.end(`HTTP/1.1 200 OK\r\n${'X-Pad: '.padEnd(1000, 'a')}\r\n`.repeat(1000)), 'PST_AUTH_HTTP_INVALID'],
    ['a header with CR/LF injection attempt', (s) => s.end('HTTP/1.1 200 OK\r\nAuth-Status: OK\rAuth-Server: 10.0.0.1\r\n\r\n'), 'PST_AUTH_HTTP_INVALID'],
    ['a connection closed mid-header', (s) => s.end('HTTP/1.1 200 OK\r\nAuth-Status: OK\r\n'), 'PST_AUTH_HTTP_UNAVAILABLE'],
  ];
  for (const [name, respond, code] of cases) {
    it(`${name}: 451 4.3.2 and ${code}`, async () => {
      const auth = await rawAuth(respond);
      const p = await startPostern({ route: { auth_http: { url: auth.url } }, timeouts: { auth: '2s' } });
      try {
        const { c, rcpt } = await toRcpt(p.port);
        assert.equal(rcpt, '451 4.3.2 Internal server error');
        assert.ok(await c.waitClosed());
        await p.waitForLog((r) => r.code === code);
      } finally {
        await p.stop();
        await auth.close();
      }
    });
  }
});
