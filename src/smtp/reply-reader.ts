/**
 * Reads a back-end's replies (RFC 5321 §4.2), including multi-line ones split across reads.
 * Pure: the caller pushes bytes and pulls whole replies.
 */

export interface Reply {
  /** Three-digit reply code. */
  code: number;
  /** Text of each line after `code-` / `code ` (may be empty). */
  lines: string[];
  /** The reply exactly as received, terminators included. */
  raw: Buffer;
}

/** Returned by {@link ReplyReader.next} for a reply that is malformed or larger than the limit. */
export class ReplyError {
  constructor(readonly reason: string) {}
}

const LF = 0x0a;
const CR = 0x0d;
const EMPTY = Buffer.alloc(0);

function isDigit(b: number | undefined): boolean {
  return b !== undefined && b >= 0x30 && b <= 0x39;
}

export class ReplyReader {
  #data: Buffer = EMPTY;
  readonly #maxReply: number;

  /** @param maxReply largest reply accepted, in bytes (a whole multi-line EHLO reply counts as one). */
  constructor(maxReply = 65536) {
    this.#maxReply = maxReply;
  }

  push(chunk: Buffer): void {
    this.#data = this.#data.length === 0 ? chunk : Buffer.concat([this.#data, chunk]);
  }

  /** The next complete reply, `null` if more bytes are needed, or a {@link ReplyError}. */
  next(): Reply | ReplyError | null {
    const data = this.#data;
    let pos = 0;
    let code = -1;
    const lines: string[] = [];
    for (;;) {
      const lf = data.indexOf(LF, pos);
      if (lf === -1) {
        return data.length > this.#maxReply ? new ReplyError('reply too long') : null;
      }
      if (lf + 1 > this.#maxReply) return new ReplyError('reply too long');
      const end = lf > pos && data[lf - 1] === CR ? lf - 1 : lf;
      if (end - pos < 3 || !isDigit(data[pos]) || !isDigit(data[pos + 1]) || !isDigit(data[pos + 2])) {
        return new ReplyError(`malformed reply line ${JSON.stringify(data.toString('latin1', pos, Math.min(end, pos + 64)))}`);
      }
      const lineCode = (data[pos]! - 0x30) * 100 + (data[pos + 1]! - 0x30) * 10 + (data[pos + 2]! - 0x30);
      if (code === -1) code = lineCode;
      else if (lineCode !== code) return new ReplyError(`reply code changed from ${code} to ${lineCode} mid-reply`);
      const sep = end > pos + 3 ? data[pos + 3] : 0x20;
      if (sep !== 0x20 && sep !== 0x2d) return new ReplyError('malformed reply separator');
      lines.push(data.toString('latin1', Math.min(pos + 4, end), end));
      pos = lf + 1;
      if (sep === 0x20) {
        const raw = data.subarray(0, pos);
        this.#data = pos === data.length ? EMPTY : data.subarray(pos);
        return { code, lines, raw };
      }
    }
  }

  /** Bytes received after the last complete reply. */
  rest(): Buffer {
    const r = this.#data;
    this.#data = EMPTY;
    return r;
  }
}
