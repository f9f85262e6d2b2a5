/**
 * xtext encoding (RFC 3461 §4), used for XCLIENT attribute values (Postfix XCLIENT_README).
 * Every byte outside `!`..`~`, and `+` and `=`, becomes `+XX` (upper-case hex), so a value can
 * never carry a space, CR or LF into the command line.
 */
export function xtext(value: string | Buffer): string {
  const buf = typeof value === 'string' ? Buffer.from(value, 'latin1') : value;
  let out = '';
  for (let i = 0; i < buf.length; i++) {
    const b = buf[i]!;
    if (b < 0x21 || b > 0x7e || b === 0x2b || b === 0x3d) {
      out += `+${b < 16 ? '0' : ''}${b.toString(16).toUpperCase()}`;
    } else {
      out += String.fromCharCode(b);
    }
  }
  return out;
}

/** Decodes xtext (for tests and for reading back what a peer received). Throws on malformed input. */
export function unxtext(text: string): Buffer {
  const bytes: number[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x2b) {
      const hex = text.slice(i + 1, i + 3);
      if (!/^[0-9A-F]{2}$/.test(hex)) throw new Error(`bad xtext escape at ${i}`);
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else {
      bytes.push(c);
    }
  }
  return Buffer.from(bytes);
}
