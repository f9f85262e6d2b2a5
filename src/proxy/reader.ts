/**
 * ProxyHeaderReader: the PROXY protocol header (v1 or v2, HAProxy's doc/proxy-protocol.txt) at the start of a
 * connection, read from Buffers as they arrive. Pure: no sockets, no timers (the listener owns the deadline,
 * spec §2: "at least 3 seconds to cover a TCP retransmit").
 *
 * - Tolerant of fragmented headers (spec §2: "Recommendation is to be tolerant"): the result never depends on
 *   how the bytes were cut into reads.
 * - Fails as soon as the bytes cannot start a valid header: a first byte other than `P` (v1) or CR (v2), a byte
 *   off the v1 prefix or the v2 signature, a bad version, command or family, a v2 length over the limit.
 *   It never waits for more bytes than the header has.
 * - Reads no byte past the header: what followed it in the same read comes back as `rest`.
 * - The receiver must be configured for PROXY (spec §5: never guess); that is the listener's business.
 *
 * After `error`, every push returns the same error; after `done`, pushing is a programming error (throws).
 * Error reasons are fixed phrases: they never contain received bytes, so they can go to a log line as they
 * are (the bytes, for a hex dump, are in {@link ProxyHeaderReader.buffered}).
 */
import { V2_ABSOLUTE_MAX, V2_DEFAULT_MAX, V2_FIXED, type ProxyHeader } from './header.js';
import { scanV1 } from './v1.js';
import { checkV2Prefix, parseV2 } from './v2.js';

export type ProxyReadResult =
  | { kind: 'more' }
  | { kind: 'done'; header: ProxyHeader; rest: Buffer }
  | { kind: 'error'; reason: string };

export interface ProxyHeaderReaderOptions {
  /**
   * Largest v2 header accepted, its 16 fixed bytes included; default 4096 (nginx's limit). At least 16
   * (then only address-less headers fit), at most 65551. A longer header fails as soon as its length is read.
   */
  maxV2Bytes?: number;
}

const EMPTY = Buffer.alloc(0);
const MORE: ProxyReadResult = { kind: 'more' };

export class ProxyHeaderReader {
  readonly #max: number;
  #chunks: Buffer[] = [];
  #size = 0;
  /** Bytes of the whole v2 header once its length is known; until then 0. */
  #need = 0;
  #error: ProxyReadResult | undefined;
  #done = false;

  constructor(options: ProxyHeaderReaderOptions = {}) {
    const max = options.maxV2Bytes ?? V2_DEFAULT_MAX;
    if (!Number.isInteger(max) || max < V2_FIXED || max > V2_ABSOLUTE_MAX) {
      throw new RangeError(`maxV2Bytes must be an integer from ${V2_FIXED} to ${V2_ABSOLUTE_MAX}, not ${max}`);
    }
    this.#max = max;
  }

  /** Feeds the next bytes read from the connection. */
  push(chunk: Buffer): ProxyReadResult {
    if (this.#done) throw new Error('ProxyHeaderReader: the header is already complete');
    if (this.#error) return this.#error;
    if (chunk.length === 0) return MORE;
    this.#chunks.push(chunk);
    this.#size += chunk.length;
    // The rest of a v2 header is still coming: keep the reads apart, copy once when all are in.
    if (this.#need > 0 && this.#size < this.#need) return MORE;
    const data = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks, this.#size);
    this.#chunks = [data];
    const r = this.#read(data);
    if (r.kind === 'error') {
      this.#error = r;
    } else if (r.kind === 'done') {
      this.#done = true;
      this.#chunks = [];
      this.#size = 0;
    }
    return r;
  }

  #read(data: Buffer): ProxyReadResult {
    const first = data[0];
    if (first === 0x50) {
      const r = scanV1(data);
      return r.kind === 'done' ? { kind: 'done', header: r.header, rest: data.subarray(r.header.length) } : r;
    }
    if (first !== 0x0d) return { kind: 'error', reason: 'not a PROXY protocol header' };
    if (this.#need === 0) {
      const p = checkV2Prefix(data, this.#max);
      if (p.kind !== 'need') return p;
      this.#need = p.total;
      if (data.length < p.total) return MORE;
    }
    const r = parseV2(data.subarray(0, this.#need));
    return r.kind === 'done' ? { kind: 'done', header: r.header, rest: data.subarray(this.#need) } : r;
  }

  /** The bytes received and held so far (empty after `done`): what a log line shows of a rejected header. */
  get buffered(): Buffer {
    return this.#chunks.length === 0 ? EMPTY : this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks, this.#size);
  }
}
