/**
 * Finds the end of a DATA body (RFC 5321 §4.1.1.4: the line `.` alone, i.e. `CRLF.CRLF`, where
 * the first CRLF may be the one that ended the DATA command) in a stream of chunks, without
 * copying or changing a byte: dot-stuffing, bare LF and 8-bit bytes pass as sent.
 *
 * It also refuses what the 2023 "SMTP smuggling" attacks rely on: a dot line framed by a bare LF
 * (`LF.LF`, `LF.CRLF`, `CRLF.LF`). A back-end that takes a bare LF as a line end would see the
 * message end there and read the bytes after it as new commands that Postern never checked or
 * routed; Postfix's answer is `smtpd_forbid_bare_newline`. Postern stops before such a sequence
 * reaches the back-end.
 *
 * Work is per line, not per byte: the scanner jumps from LF to LF with `indexOf` and looks only at
 * the few bytes after each one. Its state survives chunk boundaries, so the result is the same
 * however the stream is split.
 */

const LF = 0x0a;
const CR = 0x0d;
const DOT = 0x2e;

const enum S {
  /** Inside a line. */
  Mid,
  /** At the start of a line that followed CRLF. */
  Start,
  /** At the start of a line that followed a bare LF. */
  BareStart,
  /** `.` at the start of a CRLF line. */
  Dot,
  /** `.` CR at the start of a CRLF line. */
  DotCr,
  /** `.` at the start of a bare-LF line. */
  BareDot,
}

export type ScanResult =
  /** The whole chunk is body. */
  | { kind: 'body' }
  /** The body ends after `end` bytes of this chunk (the terminating `.CRLF` included). */
  | { kind: 'end'; end: number }
  /** A smuggling sequence starts in this chunk: only the first `safe` bytes may be forwarded. */
  | { kind: 'smuggling'; safe: number };

const BODY: ScanResult = Object.freeze({ kind: 'body' });

export class DataScanner {
  #state: S = S.Start;
  /** The last byte of the previous chunk was CR (for a CRLF split across chunks). */
  #prevCr = false;
  /** Offset (possibly negative: in an earlier chunk) where the current dot line began. */
  #dotAt = 0;

  /** Starts a new body: the DATA command's own CRLF counts as the line end before it. */
  reset(): void {
    this.#state = S.Start;
    this.#prevCr = false;
  }

  scan(chunk: Buffer): ScanResult {
    const n = chunk.length;
    let i = 0;
    let st = this.#state;
    let dotAt = this.#dotAt;
    while (i < n) {
      const c = chunk[i]!;
      switch (st) {
        case S.Mid: {
          const lf = chunk.indexOf(LF, i);
          if (lf === -1) {
            i = n;
            continue;
          }
          const cr = lf > 0 ? chunk[lf - 1] === CR : this.#prevCr;
          st = cr ? S.Start : S.BareStart;
          i = lf + 1;
          continue;
        }
        case S.Start:
          if (c === DOT) {
            st = S.Dot;
            dotAt = i;
            i++;
          } else st = S.Mid;
          continue;
        case S.BareStart:
          if (c === DOT) {
            st = S.BareDot;
            dotAt = i;
            i++;
          } else st = S.Mid;
          continue;
        case S.Dot:
          if (c === CR) {
            st = S.DotCr;
            i++;
          } else if (c === LF) {
            return this.#smuggling(dotAt);
          } else st = S.Mid;
          continue;
        case S.DotCr:
          if (c === LF) {
            this.reset();
            return { kind: 'end', end: i + 1 };
          }
          st = S.Mid; // `.` CR and another byte: an ordinary line (bare CR is not a line end)
          continue;
        case S.BareDot:
          if (c === CR || c === LF) return this.#smuggling(dotAt);
          st = S.Mid;
          continue;
      }
    }
    this.#state = st;
    this.#prevCr = n > 0 && chunk[n - 1] === CR;
    // A dot line still open at the end of the chunk continues in the next one, at offset dotAt - n.
    this.#dotAt = dotAt - n;
    return BODY;
  }

  #smuggling(dotAt: number): ScanResult {
    this.reset();
    // Withhold the dot and what follows; bytes of an earlier chunk were already forwarded, but a
    // lone `.` without its line end is harmless.
    return { kind: 'smuggling', safe: Math.max(0, dotAt) };
  }
}
