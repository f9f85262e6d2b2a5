/**
 * Tokenises one SMTP command line (RFC 5321 §4.1.1) into a verb and its argument text.
 * Pure: no I/O, no state.
 */

/** Verbs Postern recognises before the hand-off. Anything else is `UNKNOWN`. */
export type Verb =
  | 'HELO' | 'EHLO' | 'MAIL' | 'RCPT' | 'DATA' | 'BDAT' | 'RSET' | 'NOOP' | 'QUIT'
  | 'VRFY' | 'EXPN' | 'HELP' | 'STARTTLS' | 'AUTH' | 'XCLIENT' | 'XFORWARD' | 'HTTP' | 'UNKNOWN';

const KNOWN = new Set<string>([
  'HELO', 'EHLO', 'MAIL', 'RCPT', 'DATA', 'BDAT', 'RSET', 'NOOP', 'QUIT',
  'VRFY', 'EXPN', 'HELP', 'STARTTLS', 'AUTH', 'XCLIENT', 'XFORWARD',
]);

/**
 * Request methods of HTTP/1.x. A browser or scanner pointed at the SMTP port sends one of these
 * first; like Postfix (`smtpd_forbidden_commands`) and smtp-server, we end the session at once
 * instead of answering every header line with an error.
 */
const HTTP_METHODS = new Set<string>(['GET', 'POST', 'HEAD', 'PUT', 'DELETE', 'OPTIONS', 'CONNECT', 'PATCH', 'TRACE']);

const SP = 0x20;
const MAX_VERB = 10;

export interface Command {
  verb: Verb;
  /** Argument text after the verb and its separating space, latin1-decoded so bytes round-trip. */
  arg: string;
}

/**
 * True when the line holds a byte no command may contain: NUL and other C0 controls except TAB,
 * a CR not part of the terminator, or DEL. Rejecting these keeps CR/LF out of every value Postern
 * later writes into an auth_http header or a back-end command.
 */
export function hasForbiddenByte(line: Buffer): boolean {
  for (let i = 0; i < line.length; i++) {
    const b = line[i]!;
    if ((b < 0x20 && b !== 0x09) || b === 0x7f) return true;
  }
  return false;
}

/** Splits a line (without CRLF, already checked by {@link hasForbiddenByte}) into verb and argument. */
export function parseCommand(line: Buffer): Command {
  let end = line.indexOf(SP);
  if (end === -1) end = line.length;
  if (end === 0 || end > MAX_VERB) return { verb: 'UNKNOWN', arg: '' };
  const word = line.toString('latin1', 0, end).toUpperCase();
  // Only SP and HTAB are trimmed: String#trim would also eat 0xA0 and other 8-bit bytes.
  const arg = end < line.length ? line.toString('latin1', end + 1).replace(/^[ \t]+|[ \t]+$/g, '') : '';
  if (KNOWN.has(word)) return { verb: word as Verb, arg };
  if (HTTP_METHODS.has(word) && /^\S+ HTTP\/\d/.test(arg)) return { verb: 'HTTP', arg };
  return { verb: 'UNKNOWN', arg: '' };
}
