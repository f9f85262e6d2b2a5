/**
 * Cutting a byte stream into reads, as TCP may deliver it, and feeding the reads to a reader.
 * A reader's result must not depend on where the cuts fall.
 */

/** `buf` cut at `offsets` (any order, each 0…length; equal offsets give empty reads). The parts concatenate back to `buf`. */
export function cutAt(buf: Buffer, offsets: readonly number[]): Buffer[] {
  const out: Buffer[] = [];
  let last = 0;
  for (const p of [...offsets].sort((x, y) => x - y)) {
    out.push(buf.subarray(last, p));
    last = p;
  }
  out.push(buf.subarray(last));
  return out;
}

/** `buf` in reads of `step` bytes (the last one shorter); an empty `buf` is one empty read. */
export function cutEvery(buf: Buffer, step: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < buf.length; i += step) out.push(buf.subarray(i, i + step));
  if (out.length === 0) out.push(buf);
  return out;
}

/**
 * Every cutting the unit tests try: the whole buffer in one read, cut in two at every offset,
 * byte by byte, and in reads of 2, 3, 5, 7, 11 and 64 bytes.
 */
export function splits(buf: Buffer): Buffer[][] {
  const out: Buffer[][] = [[buf]];
  for (let i = 1; i < buf.length; i++) out.push(cutAt(buf, [i]));
  for (const step of [1, 2, 3, 5, 7, 11, 64]) out.push(cutEvery(buf, step));
  return out;
}

/** How a cutting is named in an assertion message: the read sizes, `3+1+7`. */
export function describeCut(chunks: readonly Buffer[]): string {
  return `split ${chunks.map((c) => c.length).join('+')}`;
}

/** A reader that is pushed bytes and then asked for items (lines, replies) until it has none: null. */
export interface PullReader<T> {
  push(chunk: Buffer): void;
  next(): T | null;
}

/**
 * Pushes the chunks one by one into `reader` and, after each push, yields every item it has
 * complete, as the session and the replay read. Lazy: the caller handles an item (say, a
 * `skip` after a BDAT line) before the next one is asked for; leaving the loop stops the feeding.
 */
export function* pull<T>(reader: PullReader<T>, chunks: Iterable<Buffer>): Generator<T> {
  for (const chunk of chunks) {
    reader.push(chunk);
    for (let item = reader.next(); item !== null; item = reader.next()) yield item;
  }
}
