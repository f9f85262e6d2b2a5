/**
 * MAIL FROM / RCPT TO argument parsing (RFC 5321 §4.1.1.2, §4.1.1.3, §4.1.2).
 *
 * Postern checks only what it needs before the hand-off: that a path is present and that the
 * SIZE parameter (RFC 1870) fits the configured limit. Everything else in the line is replayed to
 * the back-end verbatim, which has the final word on addresses and parameters.
 */

export interface PathArg {
  /** The address between the angle brackets (may be empty for the null reverse-path). */
  address: string;
  /** ESMTP parameters after the path, as typed. */
  params: string;
}

/**
 * Parses `FROM:<path> params` or `TO:<path> params`. Like Postfix with
 * `strict_rfc821_envelopes = no`, a space after the colon and a path without brackets are tolerated.
 * Returns null on a syntax error.
 */
export function parsePathArg(arg: string, keyword: 'FROM:' | 'TO:'): PathArg | null {
  if (arg.length < keyword.length || arg.slice(0, keyword.length).toUpperCase() !== keyword) return null;
  // Only SP and HTAB are whitespace here: trim() would also eat 0xA0, which the replay keeps.
  let rest = arg.slice(keyword.length).replace(/^[ \t]+/, '');
  if (rest.length === 0) return null;
  let address: string;
  if (rest[0] === '<') {
    const close = closingBracket(rest);
    if (close === -1) return null;
    address = rest.slice(1, close);
    rest = rest.slice(close + 1);
    if (rest.length > 0 && rest[0] !== ' ') return null;
  } else {
    const sp = rest.indexOf(' ');
    address = sp === -1 ? rest : rest.slice(0, sp);
    rest = sp === -1 ? '' : rest.slice(sp);
  }
  if (address.includes('<') || (address.includes(' ') && !address.includes('"'))) return null;
  return { address, params: rest.replace(/^[ \t]+|[ \t]+$/g, '') };
}

/** Index of the `>` closing the path, skipping a quoted local part (RFC 5321 §4.1.2 Quoted-string). */
function closingBracket(s: string): number {
  let quoted = false;
  for (let i = 1; i < s.length; i++) {
    const c = s[i];
    if (c === '\\' && quoted) i++;
    else if (c === '"') quoted = !quoted;
    else if (c === '>' && !quoted) return i;
  }
  return -1;
}

/** The value of the SIZE parameter (RFC 1870 §6), NaN when malformed, or undefined when absent. */
export function sizeParam(params: string): number | undefined {
  if (params.length === 0) return undefined;
  for (const p of params.split(' ')) {
    if (p.length >= 5 && p.slice(0, 5).toUpperCase() === 'SIZE=') {
      const v = p.slice(5);
      return /^\d{1,20}$/.test(v) ? Number(v) : NaN;
    }
  }
  return undefined;
}
