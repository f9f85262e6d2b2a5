/**
 * The auth_http response reader: framing, strictness, and identical results however the bytes
 * are split.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { HttpResponseReader } from '../../src/auth/http-response.js';
import { describeCut, splits } from '../helpers/split.js';

interface Outcome {
  head: unknown;
  error: string | null;
  complete: boolean;
}

/** Feeds the reads in order. */
function feed(chunks: Buffer[], max = 1024): Outcome {
  const r = new HttpResponseReader(max);
  for (const c of chunks) r.feed(c);
  return { head: r.head, error: r.error, complete: r.complete };
}

function read(text: string | Buffer, max = 1024): Outcome {
  return feed([typeof text === 'string' ? Buffer.from(text, 'latin1') : text], max);
}

/** The same outcome for the whole input and for every cutting of it into reads. */
function readAllWays(text: string, max = 1024): Outcome {
  const whole = read(text, max);
  for (const chunks of splits(Buffer.from(text, 'latin1'))) assert.deepEqual(feed(chunks, max), whole, describeCut(chunks));
  return whole;
}

const NGINX = 'HTTP/1.1 204 No Content\r\nServer: nginx\r\nDate: x\r\nConnection: keep-alive\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 25\r\n\r\n';

describe('HttpResponseReader', () => {
  it('reads an nginx-style 204 answer: lower-cased names, complete, reusable', () => {
    const o = readAllWays(NGINX);
    assert.equal(o.error, null);
    assert.equal(o.complete, true);
    assert.deepEqual(o.head, {
      status: 204,
      keepAlive: true,
      headers: { server: 'nginx', date: 'x', connection: 'keep-alive', 'auth-status': 'OK', 'auth-server': '127.0.0.1', 'auth-port': '25' },
    });
  });

  it('skips a Content-Length body and a chunked body, then is complete', () => {
    const cl = readAllWays('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nAuth-Status: OK\r\n\r\nhello');
    assert.equal(cl.complete, true);
    const ch = readAllWays('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nAuth-Status: OK\r\n\r\n5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n');
    assert.equal(ch.complete, true);
    assert.equal(ch.error, null);
  });

  it('a body framed by close: head available, not reusable, not complete', () => {
    const o = readAllWays('HTTP/1.0 200 OK\r\nAuth-Status: OK\r\n\r\nbody until close');
    assert.equal((o.head as { keepAlive: boolean }).keepAlive, false);
    assert.equal(o.complete, false);
    assert.equal(o.error, null);
  });

  it('Connection: close and HTTP/1.0 without keep-alive are not reused', () => {
    assert.equal((readAllWays('HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n').head as { keepAlive: boolean }).keepAlive, false);
    assert.equal((readAllWays('HTTP/1.0 204 No Content\r\n\r\n').head as { keepAlive: boolean }).keepAlive, false);
    assert.equal((readAllWays('HTTP/1.0 204 No Content\r\nConnection: Keep-Alive\r\n\r\n').head as { keepAlive: boolean }).keepAlive, true);
  });

  it('accepts bare-LF line ends (nginx does) and ignores the status code', () => {
    const o = readAllWays('HTTP/1.1 500 Oops\nAuth-Status: Go away\nContent-Length: 0\n\n');
    assert.equal((o.head as { status: number }).status, 500);
    assert.equal((o.head as { headers: Record<string, string> }).headers['auth-status'], 'Go away');
  });

  for (const [name, text, reason] of [
    ['no status line', 'Auth-Status: OK\r\n\r\n', /status line/],
    ['binary garbage', '\x00\x01\x02\xff\r\n\r\n', /status line/],
    ['a bare CR smuggling a header', 'HTTP/1.1 204 OK\r\nAuth-Status: OK\rAuth-Server: 10.0.0.1\r\n\r\n', /control character/],
    ['a header name with a space', 'HTTP/1.1 204 OK\r\nAuth Status: OK\r\n\r\n', /invalid header name/],
    ['obs-fold continuation', 'HTTP/1.1 204 OK\r\nAuth-Status: OK\r\n continued\r\n\r\n', /header/],
    ['a line without a colon', 'HTTP/1.1 204 OK\r\nAuth-Status OK\r\n\r\n', /malformed header line/],
    ['a bad Content-Length', 'HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n', /Content-Length/],
    ['a bad chunk size', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n', /chunk size/],
    ['bytes after the response', 'HTTP/1.1 204 OK\r\n\r\nHTTP/1.1 204 OK\r\n\r\n', /after the end/],
    ['a 1xx response', 'HTTP/1.1 100 Continue\r\n\r\n', /1xx/],
  ] as const) {
    it(`refuses ${name}`, () => {
      const o = readAllWays(text);
      assert.match(o.error ?? '', reason);
    });
  }

  it('refuses a header block over the limit, even one that never ends', () => {
    assert.match(read(`HTTP/1.1 200 OK\r\nX: ${'a'.repeat(2000)}\r\n\r\n`).error ?? '', /over 1024 bytes/);
    const r = new HttpResponseReader(1024);
    for (let i = 0; i < 100 && !r.error; i++) r.feed(Buffer.from('X-Pad: aaaaaaaaaaaaaaaaaaaa\r\n'));
    assert.match(r.error ?? '', /over 1024 bytes/);
  });

  it('the first of a repeated header wins', () => {
    const o = read('HTTP/1.1 204 OK\r\nAuth-Server: 10.0.0.1\r\nAuth-Server: 10.6.6.6\r\n\r\n');
    assert.equal((o.head as { headers: Record<string, string> }).headers['auth-server'], '10.0.0.1');
  });
});
