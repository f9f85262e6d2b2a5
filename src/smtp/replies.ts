/**
 * Pre-built reply Buffers for one configuration, so the dialog writes fixed bytes instead of
 * formatting strings per command.
 */
import { ERRORS, type ErrorCode } from '../errors.js';

export interface ReplyOptions {
  serverName: string;
  /** EHLO keywords after the greeting line, e.g. `['PIPELINING', 'SIZE 10485760']`. */
  capabilities: readonly string[];
  /** Offer STARTTLS in EHLO before TLS is active. */
  starttls?: boolean;
  /** SASL mechanisms for the EHLO AUTH line (RFC 4954 §3). */
  auth?: readonly string[];
}

/** Formats a possibly multi-line reply (RFC 5321 §4.2.1): `code-text` on all but the last line. */
export function formatReply(code: number | string, lines: readonly string[]): Buffer {
  let out = '';
  for (let i = 0; i < lines.length; i++) {
    out += `${code}${i === lines.length - 1 ? ' ' : '-'}${lines[i]}\r\n`;
  }
  return Buffer.from(out, 'latin1');
}

/** Turns a one-line reply text such as `451 4.3.2 Busy` into wire bytes. */
export function lineReply(text: string): Buffer {
  return Buffer.from(`${text}\r\n`, 'latin1');
}

export class ReplyBook {
  readonly greeting: Buffer;
  readonly helo: Buffer;
  readonly startTls: Buffer;
  readonly authOk: Buffer;
  readonly authPlain: Buffer;
  readonly authUser: Buffer;
  readonly authPass: Buffer;
  /** EHLO replies by [STARTTLS offered][AUTH offered]; nginx's order: AUTH, then STARTTLS last. */
  readonly #ehlo: Buffer[][];
  readonly ok: Buffer;
  readonly mailOk: Buffer;
  readonly bye: Buffer;
  readonly vrfy: Buffer;
  readonly help: Buffer;
  readonly #errors: Map<ErrorCode, Buffer>;

  constructor(opts: ReplyOptions) {
    const name = opts.serverName;
    this.greeting = lineReply(`220 ${name} ESMTP ready`);
    this.helo = lineReply(`250 ${name}`);
    const authLine = opts.auth?.length ? [`AUTH ${opts.auth.join(' ')}`] : [];
    const build = (starttls: boolean, auth: boolean): Buffer =>
      formatReply(250, [name, ...opts.capabilities, ...(auth ? authLine : []), ...(starttls && opts.starttls ? ['STARTTLS'] : [])]);
    this.#ehlo = [
      [build(false, false), build(false, true)],
      [build(true, false), build(true, true)],
    ];
    this.startTls = lineReply('220 2.0.0 Start TLS'); // nginx's text
    this.authOk = lineReply('235 2.0.0 OK'); // nginx's text
    this.authPlain = lineReply('334 ');
    this.authUser = lineReply('334 VXNlcm5hbWU6'); // "Username:"
    this.authPass = lineReply('334 UGFzc3dvcmQ6'); // "Password:"
    this.ok = lineReply('250 2.0.0 OK');
    this.mailOk = lineReply('250 2.1.0 OK');
    this.bye = lineReply('221 2.0.0 Bye');
    // RFC 5321 §3.5.3: a server that will not verify answers 252, not an error.
    this.vrfy = lineReply('252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery');
    this.help = lineReply('214 2.0.0 See RFC 5321');
    this.#errors = new Map();
    for (const code of Object.keys(ERRORS) as ErrorCode[]) {
      const r = ERRORS[code].reply;
      if (r !== null) this.#errors.set(code, lineReply(r.replace('{host}', name)));
    }
  }

  /** The EHLO reply: STARTTLS listed before TLS on a STARTTLS listener, AUTH when it may be used now. */
  ehlo(starttls: boolean, auth: boolean): Buffer {
    return this.#ehlo[starttls ? 1 : 0]![auth ? 1 : 0]!;
  }

  /** The catalogue reply for an error code (empty for codes that send none). */
  error(code: ErrorCode): Buffer {
    return this.#errors.get(code) ?? Buffer.alloc(0);
  }
}

/** The reply code of the last complete line in a chunk when it starts with three digits, else 0 (for the access log). */
export function lastReplyCode(chunk: Buffer): number {
  const n = chunk.length;
  if (n < 5 || chunk[n - 1] !== 0x0a) return 0;
  const start = chunk.lastIndexOf(0x0a, n - 2) + 1;
  const a = chunk[start]! - 0x30, b = chunk[start + 1]! - 0x30, c = chunk[start + 2]! - 0x30;
  if (a < 0 || a > 9 || b < 0 || b > 9 || c < 0 || c > 9) return 0;
  return a * 100 + b * 10 + c;
}
