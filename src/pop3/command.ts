/**
 * One POP3 command line before login (RFC 1939 §3, RFC 2449, RFC 5034), parsed as nginx parses
 * it (ngx_mail_pop3_parse_command in ngx_mail_parse.c). Pure: no I/O, no state. Lines come from
 * the line reader of src/smtp/line-reader.ts (CRLF or bare LF, max_line_length), which keeps
 * every byte after the last line taken out so pipelined commands reach the back-end untouched.
 */
import { hasForbiddenByte } from '../smtp/command.js';

/** The commands of the AUTHORIZATION state that nginx knows; anything else is "-ERR invalid command". */
export type Pop3Verb = 'USER' | 'PASS' | 'APOP' | 'AUTH' | 'CAPA' | 'STLS' | 'NOOP' | 'QUIT';

const VERBS = new Set<string>(['USER', 'PASS', 'APOP', 'AUTH', 'CAPA', 'STLS', 'NOOP', 'QUIT']);

export type Pop3Command =
  | { kind: 'command'; verb: Pop3Verb; args: string[] }
  /** Not a command nginx accepts (unknown verb, more than three arguments, an empty line). */
  | { kind: 'invalid' }
  /** NUL, a bare CR or another control byte: never a value Postern passes on. */
  | { kind: 'bad-bytes' };

/** At most three arguments, as nginx (`s->args.nelts <= 2` before a new one). */
const MAX_ARGS = 3;

/**
 * Parses a line without its terminator. The verb is four letters, any case (RFC 1939 §3:
 * "keywords are case-insensitive"). Arguments are separated by runs of spaces; for USER and PASS
 * the rest of the line after the first space run is one argument, spaces included (nginx: "the
 * space should be considered as part of the username or password").
 */
export function parsePop3Command(line: Buffer): Pop3Command {
  if (hasForbiddenByte(line)) return { kind: 'bad-bytes' };
  const text = line.toString('latin1');
  const sp = text.indexOf(' ');
  const word = (sp < 0 ? text : text.slice(0, sp)).toUpperCase();
  // A TAB is no separator for nginx either: "USER\tx" is an unknown verb.
  if (!VERBS.has(word)) return { kind: 'invalid' };
  const verb = word as Pop3Verb;
  const rest = sp < 0 ? '' : text.slice(sp + 1).replace(/^ +/, '');
  if (rest === '') return { kind: 'command', verb, args: [] };
  if (verb === 'USER' || verb === 'PASS') return { kind: 'command', verb, args: [rest] };
  const args = rest.split(/ +/).filter((a) => a !== '');
  if (args.length > MAX_ARGS) return { kind: 'invalid' };
  return { kind: 'command', verb, args };
}
