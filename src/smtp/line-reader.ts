/**
 * Splits a client's byte stream into command lines without copying or decoding.
 *
 * The reader never interprets bytes it has not been asked for: whatever follows the last
 * line taken out stays available through {@link LineReader.rest}, byte for byte. That is
 * what lets the session hand pipelined input (RFC 2920) to the back-end untouched when
 * routing happens in the middle of a client's write.
 */

/** Returned by {@link LineReader.next} when a line exceeds the limit (nginx: "client sent too long command"). */
export const LINE_TOO_LONG: unique symbol = Symbol('LINE_TOO_LONG');

const LF = 0x0a;
const CR = 0x0d;
const EMPTY = Buffer.alloc(0);

export class LineReader {
  #data: Buffer = EMPTY;
  #pos = 0;
  #skip = 0;
  readonly #maxLine: number;

  /** @param maxLine longest accepted line in bytes, including its CRLF. */
  constructor(maxLine: number) {
    this.#maxLine = maxLine;
  }

  /** Appends bytes read from the client. Consumes pending skip bytes first (BDAT payloads). */
  push(chunk: Buffer): void {
    if (this.#skip > 0) {
      const n = Math.min(this.#skip, chunk.length);
      this.#skip -= n;
      if (n === chunk.length) return;
      chunk = chunk.subarray(n);
    }
    if (this.#pos >= this.#data.length) {
      this.#data = chunk;
    } else {
      // Only the unconsumed tail is kept; a partial line is at most #maxLine bytes.
      this.#data = Buffer.concat([this.#data.subarray(this.#pos), chunk]);
    }
    this.#pos = 0;
  }

  /**
   * The next complete line without its terminator (CRLF or a bare LF, as nginx and Postfix accept
   * for commands), `null` when no complete line is buffered, or {@link LINE_TOO_LONG}.
   * The returned Buffer is a view valid until the next `push`.
   */
  next(): Buffer | null | typeof LINE_TOO_LONG {
    const data = this.#data;
    const start = this.#pos;
    const lf = data.indexOf(LF, start);
    if (lf === -1) {
      return data.length - start >= this.#maxLine ? LINE_TOO_LONG : null;
    }
    if (lf - start + 1 > this.#maxLine) return LINE_TOO_LONG;
    this.#pos = lf + 1;
    const end = lf > start && data[lf - 1] === CR ? lf - 1 : lf;
    return data.subarray(start, end);
  }

  /** Discards the next `n` bytes, including bytes not yet received (used to step over a BDAT chunk). */
  skip(n: number): void {
    const avail = this.#data.length - this.#pos;
    const now = Math.min(avail, n);
    this.#pos += now;
    this.#skip += n - now;
  }

  /** Bytes pending in a skip that have not arrived yet. */
  get skipping(): number {
    return this.#skip;
  }

  /** True when unconsumed bytes are buffered. */
  get buffered(): number {
    return this.#data.length - this.#pos;
  }

  /** Takes every unconsumed byte out of the reader (the hand-off to the back-end, or a STARTTLS discard). */
  rest(): Buffer {
    const rest = this.#data.subarray(this.#pos);
    this.#data = EMPTY;
    this.#pos = 0;
    return rest;
  }
}
