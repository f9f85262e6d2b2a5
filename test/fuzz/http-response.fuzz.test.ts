/**
 * The auth_http response reader: arbitrary bytes, and generated valid responses (status line,
 * random headers, Content-Length / chunked / close-framed bodies) in any chunking.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { HttpResponseReader, type HttpHead } from '../../src/auth/http-response.js';
import { b, buf, bytes, chunking, split, type Chunking } from './arb.js';
import { runs } from './runs.js';

interface Outcome {
  head: HttpHead | null;
  error: string | null;
  complete: boolean;
}

function read(input: Buffer, c: Chunking, max: number): Outcome {
  const r = new HttpResponseReader(max);
  for (const chunk of split(input, c)) r.feed(chunk);
  return { head: r.head, error: r.error, complete: r.complete };
}

const FRAMING = new Set(['content-length', 'transfer-encoding', 'connection']);
const token = fc.stringMatching(/^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,16}$/).filter((n) => !FRAMING.has(n.toLowerCase()));
/** A header value as the reader returns it: no CR/LF/NUL or other controls (TAB inside is fine), no surrounding SP/HTAB. */
const valueChar = fc
  .oneof(fc.integer({ min: 0x21, max: 0x7e }), fc.integer({ min: 0x80, max: 0xff }), fc.constantFrom(0x20, 0x09))
  .map((c) => String.fromCharCode(c));
const value = fc.string({ unit: valueChar, maxLength: 30 }).map((v) => v.replace(/^[ \t]+|[ \t]+$/g, ''));
/** Chunk extensions and trailer values, sometimes long (lines longer than a small maxHeaderSize). */
const ext = fc.oneof(fc.constantFrom('', ';x=y', ' ; name="v"', ';a'), fc.integer({ min: 1, max: 300 }).map((n) => `;x=${'e'.repeat(n)}`));
const trailerValue = fc.oneof(value, fc.integer({ min: 1, max: 300 }).map((n) => 't'.repeat(n)));
/** Body bytes, often with the sequences a sloppy reader could mistake for framing. */
const body = fc
  .array(fc.oneof(fc.constantFrom('\r\n', '\n', '\r\n\r\n', '\n\n', '0\r\n\r\n', 'HTTP/1.1 200 OK'), bytes(24).map((x) => x.toString('latin1'))), { maxLength: 6 })
  .map((p) => p.join(''));

type Framing =
  | { kind: 'length'; body: string; name: string }
  | { kind: 'chunked'; chunks: Array<{ data: string; ext: string }>; trailers: Array<[string, string]>; te: string }
  | { kind: 'close'; body: string };

interface Resp {
  minor: '0' | '1';
  status: number;
  reason: string;
  headers: Array<[string, string]>;
  connection: string | null;
  framing: Framing;
}

const framing: fc.Arbitrary<Framing> = fc.oneof(
  fc.record({ kind: fc.constant('length' as const), body, name: fc.constantFrom('Content-Length', 'content-length', 'CONTENT-LENGTH') }),
  fc.record({
    kind: fc.constant('chunked' as const),
    chunks: fc.array(fc.record({ data: body.filter((d) => d.length > 0), ext }), { maxLength: 4 }),
    trailers: fc.array(fc.tuple(token, trailerValue), { maxLength: 2 }),
    te: fc.constantFrom('chunked', 'Chunked', 'CHUNKED'),
  }),
  fc.record({ kind: fc.constant('close' as const), body }),
);

const resp: fc.Arbitrary<Resp> = fc
  .record({
    minor: fc.constantFrom('0' as const, '1' as const),
    status: fc.oneof(fc.integer({ min: 200, max: 599 }), fc.constantFrom(200, 204, 304)),
    reason: fc.constantFrom('', ' ', ' OK', ' No Content', ' Internal Server Error'),
    headers: fc.array(fc.tuple(token, value), { maxLength: 8 }),
    connection: fc.constantFrom(null, 'close', 'keep-alive', 'Keep-Alive', 'upgrade'),
    framing,
  })
  // 204 and 304 never have a body (RFC 9112 §6.3): the reader is complete after the head.
  .map((r) => (r.status === 204 || r.status === 304 ? { ...r, framing: { kind: 'length' as const, body: '', name: 'Content-Length' } } : r));

function render(r: Resp, eol: string): Buffer {
  const lines = [`HTTP/1.${r.minor} ${r.status}${r.reason}`];
  for (const [n, v] of r.headers) lines.push(`${n}: ${v}`);
  if (r.connection !== null) lines.push(`Connection: ${r.connection}`);
  const f = r.framing;
  let tail = '';
  if (f.kind === 'length') {
    if (r.status !== 204 && r.status !== 304) lines.push(`${f.name}: ${b(f.body).length}`);
    tail = f.body;
  } else if (f.kind === 'chunked') {
    lines.push(`Transfer-Encoding: ${f.te}`);
    for (const c of f.chunks) tail += `${b(c.data).length.toString(16)}${c.ext}${eol}${c.data}${eol}`;
    tail += `0${eol}`;
    for (const [n, v] of f.trailers) tail += `${n}: ${v}${eol}`;
    tail += eol;
  } else {
    tail = f.body;
  }
  return b(`${lines.join(eol)}${eol}${eol}${tail}`);
}

function expected(r: Resp): Outcome {
  const headers: Record<string, string> = {};
  for (const [n, v] of r.headers) if (!(n.toLowerCase() in headers)) headers[n.toLowerCase()] = v;
  if (r.connection !== null && !('connection' in headers)) headers.connection = r.connection;
  const f = r.framing;
  if (f.kind === 'length' && r.status !== 204 && r.status !== 304) headers['content-length'] = String(b(f.body).length);
  if (f.kind === 'chunked') headers['transfer-encoding'] = f.te;
  const conn = (r.connection ?? '').toLowerCase();
  const keepAlive = f.kind !== 'close' && (r.minor === '0' ? conn === 'keep-alive' : conn !== 'close');
  return { head: { status: r.status, headers, keepAlive }, error: null, complete: f.kind !== 'close' };
}

const BAD_VALUE = /[\r\n\0]/;

function checkHead(o: Outcome): void {
  if (o.head === null) return;
  assert.ok(o.head.status >= 200 && o.head.status <= 999);
  for (const [k, v] of Object.entries(o.head.headers)) {
    assert.match(k, /^[!#$%&'*+\-.^_`|~0-9a-z]+$/, `header name ${JSON.stringify(k)}`);
    assert.doesNotMatch(v, BAD_VALUE, `${k}: ${JSON.stringify(v)}`);
  }
}

/** Valid responses with random corruption: bytes inserted, replaced or cut. */
const mangled = fc
  .tuple(resp, fc.constantFrom('\r\n', '\n'), fc.array(fc.tuple(fc.nat(), fc.nat({ max: 3 }), fc.constantFrom('\r', '\n', '\0', ':', ' ', '\r\n', 'X', '\x7f', '\xff', '\t')), { maxLength: 4 }))
  .map(([r, eol, edits]) => {
    let s = render(r, eol).toString('latin1');
    for (const [at, del, ins] of edits) {
      const i = at % (s.length + 1);
      s = s.slice(0, i) + ins + s.slice(i + del);
    }
    return buf(s);
  });

describe('fuzz: HttpResponseReader', () => {
  it('never throws on any bytes in any chunking; header values never hold CR, LF or NUL', () => {
    fc.assert(
      fc.property(fc.oneof(bytes(200), mangled), chunking, fc.integer({ min: 1, max: 2048 }), (input, c, max) => {
        checkHead(read(input, c, max));
      }),
      { numRuns: runs(1000) },
    );
  });

  it('a valid CRLF response gives its head, no error and the right completion, in any chunking', () => {
    fc.assert(
      fc.property(resp, chunking, (r, c) => {
        const o = read(render(r, '\r\n'), c, 1 << 16);
        assert.deepEqual(o, expected(r));
      }),
      { numRuns: runs(1000) },
    );
  });

  // Reproduction: 'HTTP/1.1 200 OK\nContent-Length: 4\n\n\r\n\r\n' in one read gives error 'malformed header line ""';
  // the head and the 4-byte body in two reads give the head, no error, complete.
  it(
    'a valid bare-LF response (accepted, as nginx does) gives the same outcome in any chunking',
    () => {
      fc.assert(
        fc.property(resp, chunking, (r, c) => {
          const input = render(r, '\n');
          const one = read(input, { cuts: [] }, 1 << 16);
          assert.deepEqual(read(input, c, 1 << 16), one, 'outcome depends on chunking');
          assert.deepEqual(one, expected(r));
        }),
        { numRuns: runs(1000) },
      );
    },
  );

  // Reproduction (maxHeaderSize 64): 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: ' + 'a' x 100 + '\r\n\r\n'
  // in one read is complete without error; cut after byte 80 it is "line too long". Same with a long chunk extension.
  it(
    'with any maxHeaderSize the outcome of a valid response does not depend on chunking',
    () => {
      fc.assert(
        fc.property(resp, chunking, fc.integer({ min: 1, max: 400 }), (r, c, max) => {
          const input = render(r, '\r\n');
          const got = read(input, c, max);
          checkHead(got);
          assert.deepEqual(got, read(input, { cuts: [] }, max), 'outcome depends on chunking');
        }),
        { numRuns: runs(1000) },
      );
    },
  );
});
