/**
 * Postfix's policy delegation protocol (SMTPD_POLICY_README), pure: the request block a policy
 * server expects, the reader of its reply block, and the mapping of its `action=` to the reply
 * Postfix's smtpd would give (smtpd_check.c `check_table_result`, access(5)). No I/O here.
 *
 * Request: `name=value\n` lines, then an empty line, in the order Postfix 3.7 sends them.
 * Reply: `action=...\n` (other attributes are ignored, as Postfix ignores them), then an empty line.
 *
 * Reply texts, as Postfix 3.7 formats them (`%d %s <%s>: %s rejected: %s`):
 *   REJECT [text]          554 5.7.1 <name>: <Class> rejected: <text | Access denied>
 *   DEFER [text]           450 4.7.1 <name>: <Class> rejected: <text | Access denied>
 *   DEFER_IF_PERMIT [text] 450 4.7.1 <name>: <Class> rejected: <text | Service unavailable>
 *   DEFER_IF_REJECT [text] 450 4.7.1 <name>: <Class> rejected: <text | Service unavailable>
 *   4NN/5NN text           NNN X.7.1 <name>: <Class> rejected: <text | Access denied>
 * where a text that starts with an RFC 3463 code (`5.7.23 ...`) supplies the enhanced code, whose
 * class digit is then forced to the reply code's (DEFER 5.7.1 → 450 4.7.1), and X.1.Y address codes
 * are fixed per class as smtpd_dsn_fix does. The line is cut at 510 characters and every
 * non-printable character becomes a space (Postfix's `printable(text, ' ')`, ASCII only here).
 * <name>/<Class> per stage: recipient `<rcpt>`/Recipient address, sender `<from>`/Sender address
 * (`<>` for the null sender), helo `<helo>`/Helo command, client `<name[addr]>`/Client host,
 * etrn `<domain>`/Etrn command, data `<DATA>`/Data command, eod `<END-OF-MESSAGE>`/End-of-data.
 * The "server down or garbage" default (smtpd_policy_service_default_action) is
 * `451 4.3.5 <name>: <Class> rejected: Server configuration problem`.
 */

/** The attributes of one request, named as Postfix names them. Missing ones are sent empty (numbers: 0). */
export interface PolicyAttributes {
  /** CONNECT, EHLO, HELO, MAIL, RCPT, DATA, END-OF-MESSAGE, VRFY, ETRN. */
  protocol_state?: string;
  /** SMTP or ESMTP. */
  protocol_name?: string;
  client_address?: string;
  /** Verified reverse name, or `unknown`. */
  client_name?: string;
  client_port?: string | number;
  reverse_client_name?: string;
  server_address?: string;
  server_port?: string | number;
  helo_name?: string;
  sender?: string;
  recipient?: string;
  /** Postfix sends 0 before DATA. */
  recipient_count?: number;
  queue_id?: string;
  /** Same for every request of one message (servers such as policyd-spf cache per instance). */
  instance?: string;
  size?: number;
  etrn_domain?: string;
  /** `yes` under stress, else empty. */
  stress?: string;
  sasl_method?: string;
  sasl_username?: string;
  sasl_sender?: string;
  ccert_subject?: string;
  ccert_issuer?: string;
  ccert_fingerprint?: string;
  ccert_pubkey_fingerprint?: string;
  encryption_protocol?: string;
  encryption_cipher?: string;
  encryption_keysize?: number;
  policy_context?: string;
  compatibility_level?: string;
  mail_version?: string;
}

/** Postfix 3.7's order (smtpd_check.c check_policy_service); `request` comes first. */
export const POLICY_ATTRIBUTE_NAMES = [
  'protocol_state', 'protocol_name', 'client_address', 'client_name', 'client_port', 'reverse_client_name',
  'server_address', 'server_port', 'helo_name', 'sender', 'recipient', 'recipient_count', 'queue_id',
  'instance', 'size', 'etrn_domain', 'stress', 'sasl_method', 'sasl_username', 'sasl_sender',
  'ccert_subject', 'ccert_issuer', 'ccert_fingerprint', 'ccert_pubkey_fingerprint',
  'encryption_protocol', 'encryption_cipher', 'encryption_keysize',
  'policy_context', 'compatibility_level', 'mail_version',
] as const satisfies readonly (keyof PolicyAttributes)[];

const NUMERIC = new Set<string>(['recipient_count', 'size', 'encryption_keysize']);

/** A value on one attribute line: CR, LF and NUL (which would end the line or the block) become spaces. */
export function policyValue(v: string | number | undefined): string {
  if (v === undefined) return '';
  return String(v).replace(/[\r\n\0]/g, ' ');
}

/** The request block: `request=smtpd_access_policy`, every attribute in Postfix's order, an empty line. */
export function policyRequest(attrs: PolicyAttributes): Buffer {
  let s = 'request=smtpd_access_policy\n';
  for (const name of POLICY_ATTRIBUTE_NAMES) {
    const v = attrs[name];
    s += `${name}=${v === undefined && NUMERIC.has(name) ? '0' : policyValue(v)}\n`;
  }
  return Buffer.from(s + '\n', 'utf8');
}

/** The restriction list the check sits in, which names the thing rejected (smtpd_dsn_fix.h). */
export type PolicyStage = 'client' | 'helo' | 'sender' | 'recipient' | 'etrn' | 'data' | 'eod';

/** What a reject reply names: `<name>: <Class> rejected: ...`. */
export interface ReplyTarget {
  stage: PolicyStage;
  /** The recipient, sender, HELO name, `name[addr]`…; ignored for data and eod. */
  name: string;
}

const CLASS: Record<PolicyStage, string> = {
  client: 'Client host',
  helo: 'Helo command',
  sender: 'Sender address',
  recipient: 'Recipient address',
  etrn: 'Etrn command',
  data: 'Data command',
  eod: 'End-of-data',
};

/** The target Postfix would name for a request at its `protocol_state` (RCPT and VRFY: the recipient…). */
export function replyTarget(attrs: PolicyAttributes): ReplyTarget {
  switch ((attrs.protocol_state ?? 'RCPT').toUpperCase()) {
    case 'CONNECT':
      return { stage: 'client', name: `${attrs.client_name || 'unknown'}[${attrs.client_address ?? ''}]` };
    case 'HELO':
    case 'EHLO':
      return { stage: 'helo', name: attrs.helo_name ?? '' };
    case 'MAIL':
      return { stage: 'sender', name: attrs.sender ?? '' };
    case 'ETRN':
      return { stage: 'etrn', name: attrs.etrn_domain ?? '' };
    case 'DATA':
    case 'BDAT':
      return { stage: 'data', name: 'DATA' };
    case 'END-OF-MESSAGE':
      return { stage: 'eod', name: 'END-OF-MESSAGE' };
    default:
      return { stage: 'recipient', name: attrs.recipient ?? '' };
  }
}

/** A refusal, as the SMTP reply Postfix would send (one line, no CRLF). */
export interface PolicyRefusal {
  /** `554 5.7.1 <b@y.test>: Recipient address rejected: Access denied`. */
  reply: string;
  code: number;
  dsn: string;
  /** The policy server's text after sanitising, or Postfix's default text. */
  text: string;
}

/** Why the client answered with its configured default instead of the server's verdict. */
export interface PolicyFallback {
  reason: 'timeout' | 'unavailable' | 'invalid' | 'closed';
  detail: string;
}

export type PolicyVerdict = (
  /** OK, RELAY, PERMIT or an all-numeric action: accept (and skip later checks). */
  | { kind: 'ok'; action: string }
  /** DUNNO (and PREPEND without a valid header, which Postfix ignores). */
  | { kind: 'dunno'; action: string; warning?: string }
  /** REJECT or 5NN: refuse. */
  | ({ kind: 'reject'; action: string } & PolicyRefusal)
  /** DEFER or 4NN: refuse temporarily. */
  | ({ kind: 'defer'; action: string } & PolicyRefusal)
  /** Defer if the rest of the checks would accept, else as they say (a lone check: defer). */
  | ({ kind: 'defer_if_permit'; action: string } & PolicyRefusal)
  /** Defer instead of a later rejection; accepted otherwise. */
  | ({ kind: 'defer_if_reject'; action: string } & PolicyRefusal)
  /** Prepend `header` (`Name: value`) to the message. */
  | { kind: 'prepend'; action: string; header: string }
  /** Meaningful to Postfix only (HOLD, FILTER, REDIRECT, DISCARD, BCC, WARN, INFO, HANGUP, DELAY). */
  | { kind: 'unsupported'; action: string; text: string }
  /** No usable answer: a malformed block, no `action`, an unknown action. */
  | { kind: 'invalid'; detail: string }
) & { fallback?: PolicyFallback };

const UNSUPPORTED = new Set(['HOLD', 'FILTER', 'REDIRECT', 'DISCARD', 'BCC', 'WARN', 'INFO', 'HANGUP', 'DELAY']);

/** Printable ASCII only: any other character becomes a space (Postfix: `printable(s, ' ')`). */
export function printableText(s: string): string {
  return s.replace(/[^\x20-\x7e]/g, ' ');
}

const DSN = /^([245])\.(\d{1,3})\.(\d{1,3})(?=$|[ \t])/;

/** Postfix's dsn_split: an RFC 3463 code at the start of `text` wins over `def`. */
function dsnSplit(def: string, text: string): { dsn: string; text: string } {
  const m = DSN.exec(text);
  if (!m) return { dsn: def, text };
  return { dsn: m[0], text: text.slice(m[0].length).replace(/^[ \t]+/, '') };
}

const SENDER_FIX: Record<string, string> = { 1: '4.1.7', 2: '4.1.8', 3: '4.1.7', 4: '4.1.7', 5: '4.1.0', 6: '4.1.7', 7: '4.1.7', 8: '4.1.8' };
const RCPT_FIX: Record<string, string> = { 1: '4.1.1', 2: '4.1.2', 3: '4.1.3', 4: '4.1.4', 5: '4.1.5', 6: '4.1.6', 7: '4.1.3', 8: '4.1.2' };

/** smtpd_dsn_fix: an X.1.Y (address) code is made to fit what is rejected; the class digit is set later. */
function dsnFix(dsn: string, stage: PolicyStage): string {
  const m = /^\d\.1\.(\d+)$/.exec(dsn);
  if (!m) return dsn;
  if (stage === 'sender') return SENDER_FIX[m[1]!] ?? '4.1.0';
  if (stage === 'recipient') return RCPT_FIX[m[1]!] ?? '4.1.0';
  return '4.0.0';
}

/** smtpd_check_reject's formatting: code range check, class digits agree, 510 characters, printable. */
function refusal(code: number, dsn: string, text: string, t: ReplyTarget): PolicyRefusal {
  let reply: string;
  let fixed = dsnFix(dsn, t.stage);
  if (code < 400 || code > 599) {
    code = 450;
    fixed = '4.7.1';
    text = 'Service unavailable';
    reply = '450 4.7.1 Service unavailable';
  } else {
    fixed = `${String(code)[0]}${fixed.slice(1)}`;
    reply = `${code} ${fixed} <${t.name}>: ${CLASS[t.stage]} rejected: ${text}`;
  }
  reply = printableText(reply.slice(0, 510));
  return { reply, code, dsn: fixed, text: printableText(text) };
}

const DEFAULT_TARGET: ReplyTarget = { stage: 'recipient', name: '' };

/**
 * The verdict for one `action=` value, as Postfix's check_table_result reads it: the first word
 * (case-insensitive) is the action, the rest after blanks its text.
 */
export function policyAction(value: string, target: ReplyTarget = DEFAULT_TARGET): PolicyVerdict {
  const v = value.replace(/^[ \t]+/, '').replace(/[ \t\r]+$/, '');
  const cut = v.search(/[ \t]/);
  const word = cut === -1 ? v : v.slice(0, cut);
  const rawText = cut === -1 ? '' : v.slice(cut).replace(/^[ \t]+/, '');
  const text = printableText(rawText);
  const action = printableText(word).toUpperCase();
  if (word === '') return { kind: 'invalid', detail: 'empty action' };
  const refuse = <K extends 'reject' | 'defer' | 'defer_if_permit' | 'defer_if_reject'>(kind: K, code: number, defDsn: string, defText: string) => {
    const d = dsnSplit(defDsn, text);
    return { kind, action, ...refusal(code, d.dsn, d.text || defText, target) };
  };
  switch (action) {
    case 'OK':
    case 'RELAY':
    case 'PERMIT':
      return { kind: 'ok', action };
    case 'DUNNO':
      return { kind: 'dunno', action };
    case 'REJECT':
      return refuse('reject', 554, '5.7.1', 'Access denied');
    case 'DEFER':
      return refuse('defer', 450, '4.7.1', 'Access denied');
    case 'DEFER_IF_PERMIT':
      return refuse('defer_if_permit', 450, '4.7.1', 'Service unavailable');
    case 'DEFER_IF_REJECT':
      return refuse('defer_if_reject', 450, '4.7.1', 'Service unavailable');
    case 'PREPEND':
      // Postfix's is_header(): a name of printable non-blank characters other than ':', then ':'.
      if (!/^[\x21-\x39\x3b-\x7e]+[ \t]*:/.test(rawText) || /[\r\n\0]/.test(rawText)) {
        return { kind: 'dunno', action, warning: `PREPEND without a "header: text" (${JSON.stringify(text.slice(0, 80))})` };
      }
      return { kind: 'prepend', action, header: text };
  }
  if (UNSUPPORTED.has(action)) return { kind: 'unsupported', action, text };
  // All-numeric means OK (an out-of-band authentication timestamp, says Postfix): `550` alone is OK.
  if (/^\d+$/.test(v)) return { kind: 'ok', action };
  if (/^[45]\d\d$/.test(word) && text !== '') {
    const d = dsnSplit(`${word[0]}.7.1`, text);
    return { kind: word[0] === '5' ? 'reject' : 'defer', action, ...refusal(Number(word), d.dsn, d.text || 'Access denied', target) };
  }
  return { kind: 'invalid', detail: `unknown action ${JSON.stringify(printableText(v.slice(0, 80)))}` };
}

/**
 * A reply block (its lines, with or without the empty line that ends it) → verdict. Lines may end
 * in CRLF. The first `action` counts, other attributes are ignored; a line without `=`, a block
 * without `action`, or an action that is not valid UTF-8 gives `invalid`.
 */
export function parsePolicyReply(block: Buffer, target: ReplyTarget = DEFAULT_TARGET): PolicyVerdict {
  let s: string;
  try {
    s = new TextDecoder('utf-8', { fatal: true }).decode(block);
  } catch {
    return { kind: 'invalid', detail: 'reply is not UTF-8' };
  }
  let action: string | undefined;
  for (const raw of s.split('\n')) {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line === '') break;
    const eq = line.indexOf('=');
    if (eq <= 0) return { kind: 'invalid', detail: `malformed reply line ${JSON.stringify(printableText(line.slice(0, 80)))}` };
    if (line.slice(0, eq).trim() === 'action' && action === undefined) action = line.slice(eq + 1);
  }
  if (action === undefined) return { kind: 'invalid', detail: 'reply has no action attribute' };
  return policyAction(action, target);
}

/** The verdict Postfix falls back to (smtpd_policy_service_default_action) when the server fails. */
export function defaultVerdict(def: 'defer' | 'dunno', target: ReplyTarget, fallback: PolicyFallback): PolicyVerdict {
  const v = def === 'defer' ? policyAction('451 4.3.5 Server configuration problem', target) : policyAction('DUNNO', target);
  return { ...v, fallback };
}

/**
 * Accumulates a reply block from reads as they come: `block` is set once the empty line arrives
 * (it excludes the empty line), `extra` when bytes follow it (a server that answers more than
 * asked cannot be trusted with the next request), `error` when the block outgrows `maxBytes`.
 */
export class PolicyReplyReader {
  readonly #max: number;
  #parts: Buffer[] = [];
  #size = 0;
  /** Whether the bytes so far end with a newline (so the next newline or CRLF ends an empty line). */
  #atLineStart = true;
  /** A line that so far is just CR: LF would make it an empty line. */
  #crOnly = false;
  block: Buffer | null = null;
  extra = false;
  error: string | null = null;

  constructor(maxBytes: number) {
    this.#max = maxBytes;
  }

  feed(chunk: Buffer): void {
    if (this.error) return;
    if (this.block) {
      if (chunk.length > 0) this.extra = true;
      return;
    }
    for (let i = 0; i < chunk.length; i++) {
      const c = chunk[i]!;
      if (c === 0x0a) {
        if (this.#atLineStart || this.#crOnly) {
          this.#take(chunk.subarray(0, i + 1));
          if (this.error) return;
          const all = Buffer.concat(this.#parts);
          // The block without its terminating empty line.
          this.block = all.subarray(0, all.length - (this.#crOnly ? 2 : 1));
          if (i + 1 < chunk.length) this.extra = true;
          this.#parts = [];
          return;
        }
        this.#atLineStart = true;
        this.#crOnly = false;
      } else if (c === 0x0d && this.#atLineStart) {
        this.#atLineStart = false;
        this.#crOnly = true;
      } else {
        this.#atLineStart = false;
        this.#crOnly = false;
      }
    }
    this.#take(chunk);
  }

  #take(b: Buffer): void {
    this.#size += b.length;
    if (this.#size > this.#max) {
      this.error = `reply exceeds ${this.#max} bytes`;
      this.#parts = [];
      return;
    }
    if (b.length > 0) this.#parts.push(b);
  }
}
