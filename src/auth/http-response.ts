/**
 * An incremental, strict reader for one HTTP/1.x response (RFC 9112), enough for an auth_http
 * answer: the status line, the header block (size-limited), and the body skipped by its framing
 * (Content-Length, chunked, or until close) so the connection can be reused. Pure: no I/O.
 */

export interface HttpHead {
  status: number;
  /** Header names lower-cased; the first occurrence of a repeated header wins. */
  headers: Record<string, string>;
  /** The connection may carry another request once the body has been read. */
  keepAlive: boolean;
}

type State = 'head' | 'length' | 'chunk-size' | 'chunk-data' | 'chunk-crlf' | 'trailers' | 'until-close' | 'done' | 'error';

const TCHAR = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// eslint-disable-next-line no-control-regex
const BAD_VALUE = /[\x00-\x08\x0a-\x1f\x7f]/;
const STATUS_LINE = /^HTTP\/1\.([01]) (\d{3})(?: [^\r\n]*)?$/;
const EMPTY = Buffer.alloc(0);

export class HttpResponseReader {
  head: HttpHead | null = null;
  error: string | null = null;
  #state: State = 'head';
  #buf: Buffer = EMPTY;
  #left = 0;
  readonly #maxHeaderSize: number;

  constructor(maxHeaderSize: number) {
    this.#maxHeaderSize = maxHeaderSize;
  }

  /** The whole response, body included, has been read: the connection is free again. */
  get complete(): boolean {
    return this.#state === 'done';
  }

  /** Feeds bytes; afterwards check `error`, `head` and `complete`. Bytes after the response are an error. */
  feed(chunk: Buffer): void {
    if (this.#state === 'error') return;
    if (this.#state === 'until-close') return;
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    while (this.#buf.length > 0 && this.#step()) {
      /* each step consumes from #buf */
    }
    if (this.#state === 'done' && this.#buf.length > 0) this.#fail('bytes after the end of the response');
  }

  /** One state step; false when more input is needed. */
  #step(): boolean {
    switch (this.#state) {
      case 'head':
        return this.#readHead();
      case 'length':
      case 'chunk-data': {
        const n = Math.min(this.#left, this.#buf.length);
        this.#left -= n;
        this.#buf = this.#buf.subarray(n);
        if (this.#left > 0) return false;
        this.#state = this.#state === 'length' ? 'done' : 'chunk-crlf';
        return true;
      }
      case 'chunk-crlf': {
        const line = this.#line();
        if (line === null) return false;
        if (line.length !== 0) return this.#fail('chunk not followed by CRLF');
        this.#state = 'chunk-size';
        return true;
      }
      case 'chunk-size': {
        const line = this.#line();
        if (line === null) return false;
        const m = /^([0-9A-Fa-f]{1,8})(?:[ \t]*;.*)?$/.exec(line);
        if (!m) return this.#fail('malformed chunk size');
        this.#left = parseInt(m[1]!, 16);
        this.#state = this.#left === 0 ? 'trailers' : 'chunk-data';
        return true;
      }
      case 'trailers': {
        const line = this.#line();
        if (line === null) return false;
        if (line.length === 0) this.#state = 'done';
        return true;
      }
      default:
        return false;
    }
  }

  /** Takes one CRLF- (or LF-) terminated line from the buffer, bounded like the header block. */
  #line(): string | null {
    const lf = this.#buf.indexOf(0x0a);
    if (lf === -1 || lf > this.#maxHeaderSize) {
      // The same limit whether or not the line's end has arrived in this read.
      if (this.#buf.length > this.#maxHeaderSize) this.#fail('line too long');
      return null;
    }
    const end = lf > 0 && this.#buf[lf - 1] === 0x0d ? lf - 1 : lf;
    const line = this.#buf.toString('latin1', 0, end);
    this.#buf = this.#buf.subarray(lf + 1);
    return line;
  }

  #readHead(): boolean {
    const { end, sep } = headEnd(this.#buf);
    if (end === -1 || end + sep > this.#maxHeaderSize) {
      if (this.#buf.length > this.#maxHeaderSize || end !== -1) return this.#fail(`response header block over ${this.#maxHeaderSize} bytes`);
      return false;
    }
    const lines = this.#buf.toString('latin1', 0, end).split('\n');
    this.#buf = this.#buf.subarray(end + sep);
    const status = STATUS_LINE.exec(stripCR(lines[0]!));
    if (!status) return this.#fail('no HTTP/1.x status line');
    const headers: Record<string, string> = {};
    for (let i = 1; i < lines.length; i++) {
      const line = stripCR(lines[i]!);
      const colon = line.indexOf(':');
      if (colon <= 0) return this.#fail(`malformed header line ${JSON.stringify(line.slice(0, 40))}`);
      const name = line.slice(0, colon);
      const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '');
      // A name that is not a token (spaces, obs-fold) or a value with CR, LF or NUL is refused:
      // these are how a response smuggles extra headers.
      if (!TCHAR.test(name)) return this.#fail(`invalid header name ${JSON.stringify(name.slice(0, 40))}`);
      if (BAD_VALUE.test(value)) return this.#fail(`control character in header ${name}`);
      const key = name.toLowerCase();
      if (!(key in headers)) headers[key] = value;
    }
    const code = Number(status[2]);
    const http10 = status[1] === '0';
    const conn = (headers.connection ?? '').toLowerCase();
    let keepAlive = http10 ? conn === 'keep-alive' : conn !== 'close';
    if (code < 200) return this.#fail('1xx responses are not expected from an auth service');
    if (code === 204 || code === 304) {
      this.#state = 'done';
    } else if ((headers['transfer-encoding'] ?? '').toLowerCase() === 'chunked') {
      this.#state = 'chunk-size';
    } else if (headers['content-length'] !== undefined) {
      if (!/^\d{1,15}$/.test(headers['content-length'])) return this.#fail('invalid Content-Length');
      this.#left = Number(headers['content-length']);
      this.#state = this.#left === 0 ? 'done' : 'length';
    } else {
      // Framed by the end of the connection: the answer is complete, the connection is not reusable.
      keepAlive = false;
      this.#state = 'until-close';
    }
    this.head = { status: code, headers, keepAlive };
    return true;
  }

  #fail(reason: string): false {
    this.error = reason;
    this.#state = 'error';
    this.#buf = EMPTY;
    return false;
  }
}

/**
 * Where the header block ends: the first empty line, whichever line ending (CRLF or bare LF) the
 * response uses. Looking for CRLFCRLF first would find one inside the body of a bare-LF response.
 */
function headEnd(buf: Buffer): { end: number; sep: number } {
  let from = 0;
  for (;;) {
    const lf = buf.indexOf(0x0a, from);
    if (lf === -1) return { end: -1, sep: 0 };
    const next = lf + 1;
    if (buf[next] === 0x0a) return { end: lf > 0 && buf[lf - 1] === 0x0d ? lf - 1 : lf, sep: lf > 0 && buf[lf - 1] === 0x0d ? 3 : 2 };
    if (buf[next] === 0x0d && buf[next + 1] === 0x0a) return { end: lf > 0 && buf[lf - 1] === 0x0d ? lf - 1 : lf, sep: lf > 0 && buf[lf - 1] === 0x0d ? 4 : 3 };
    if (next >= buf.length) return { end: -1, sep: 0 };
    from = next;
  }
}

function stripCR(line: string): string {
  return line.endsWith('\r') ? line.slice(0, -1) : line;
}
