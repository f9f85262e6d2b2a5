/**
 * The back-end half of transaction-aware proxying (`proxy_mode: transaction`): after the first
 * route the session keeps reading the client's commands, and this link forwards the ones that
 * belong to the back-end — RCPT, MAIL (on a fixed route), DATA and its body, RSET — reads the
 * back-end's replies in order and relays each to the client, and keeps the per-message record.
 *
 * Pure: it is fed back-end bytes and pushes actions. Replies leave in command order because the
 * session hands it one command at a time and waits for the reply it is owed before reading the
 * next (RFC 2920 §3.1: a server answers pipelined commands in order). The body is relayed
 * byte-exact; the end of data is found by {@link DataScanner}; the reply after the final dot is
 * always the back-end's own (never a 250 of Postern's: docs/reliability.md, invariant 1).
 */
import { backendName, type RouteTarget } from '../domain.js';
import type { ErrorCode } from '../errors.js';
import { DataScanner } from '../smtp/data-scanner.js';
import { ReplyError, ReplyReader, type Reply } from '../smtp/reply-reader.js';
import type { Action, MessageRecord, RecipientRecord } from '../protocol.js';

/** The record of the transaction in progress; the session starts one at each MAIL. */
export interface MessageDraft {
  from: string;
  recipients: RecipientRecord[];
  /** Header lines the checks asked to add at the top of the message (PREPEND), set by DATA. */
  prepend?: string[];
  /** A recipient's PREPEND lines, added to `prepend` once the back-end accepts that recipient. */
  rcptPrepend?: Map<string, readonly string[]>;
}

/** What a reply owed by the back-end is for. */
type Owed =
  /** The MAIL of a routed transaction (Postern already said 250): must be 2xx; `rcpt` follows unless pipelined. */
  | { kind: 'mail'; rcpt: Buffer | null; to: string; draft: MessageDraft }
  /** MAIL on a fixed route: relayed to the client. */
  | { kind: 'mail-relay' }
  | { kind: 'rcpt'; to: string; draft: MessageDraft }
  | { kind: 'data' }
  | { kind: 'final'; draft: MessageDraft }
  | { kind: 'rset' }
  /** An RSET of Postern's own (after EHLO mid-transaction): the reply is consumed. */
  | { kind: 'silent' };

/** The outcome of feeding back-end bytes. */
export type LinkStatus =
  | { kind: 'ok' }
  /** The body may start: everything the client sends next goes through {@link TransactionProxy.body}. */
  | { kind: 'data' }
  /** The back-end failed its part: the session ends with this code. */
  | { kind: 'fail'; code: ErrorCode; detail: string };

export type BodyStatus =
  | { kind: 'more' }
  /** The end of data was seen; `rest` are the bytes after it (pipelined commands). */
  | { kind: 'end'; rest: Buffer }
  | { kind: 'smuggling' };

const OK: LinkStatus = Object.freeze({ kind: 'ok' });
const DATA: LinkStatus = Object.freeze({ kind: 'data' });
const MORE: BodyStatus = Object.freeze({ kind: 'more' });
const EMPTY = Buffer.alloc(0);

const DATA_LINE = Buffer.from('DATA\r\n', 'latin1');
const RSET_LINE = Buffer.from('RSET\r\n', 'latin1');

export class TransactionProxy {
  readonly target: RouteTarget;
  readonly name: string;
  /** The route is the session's, fixed at AUTH: recipients are not routed one by one. */
  readonly fixed: boolean;
  readonly #pipelining: boolean;
  readonly #owed: Owed[] = [];
  readonly #replies = new ReplyReader();
  readonly #scanner = new DataScanner();
  /** The back-end has accepted MAIL for the current transaction. */
  #open = false;
  #accepted = 0;
  #size = 0;
  /** The draft of the message whose body is being relayed. */
  #final: MessageDraft | null = null;

  /** `server`: the one that took the session when the target is a pool (else the target's name). */
  constructor(target: RouteTarget, pipelining: boolean, fixed: boolean, server?: string) {
    this.target = target;
    this.name = server ?? backendName(target);
    this.#pipelining = pipelining;
    this.fixed = fixed;
  }

  /** A reply is owed that the client waits for: the session reads no further command meanwhile. */
  get waiting(): 'none' | 'reply' | 'final' {
    for (const o of this.#owed) {
      if (o.kind === 'final') return 'final';
      if (o.kind !== 'silent') return 'reply';
    }
    return 'none';
  }

  /** A transaction is open at the back-end (MAIL accepted). */
  get open(): boolean {
    return this.#open;
  }

  /**
   * No transaction open and no reply owed: the back-end is where a new session starts (RFC 5321
   * §4.1.1.4: the reply to the end of data, or to RSET, ends the transaction), so a kept
   * connection needs no RSET before it is parked.
   */
  get idle(): boolean {
    return !this.#open && this.#owed.length === 0;
  }

  /** Recipients of the current transaction the back-end accepted. */
  get accepted(): number {
    return this.#accepted;
  }

  /** The connect-and-replay put MAIL and this RCPT through already; `reply` is the back-end's to the RCPT. */
  joined(draft: MessageDraft, to: string, reply: Reply, out: Action[]): void {
    this.#open = true;
    this.#accepted = 0;
    this.#recipient(draft, to, reply, out);
  }

  /** A routed recipient for this back-end: RCPT, preceded by the held MAIL when no transaction is open yet. */
  rcpt(draft: MessageDraft, mailLine: string, rcptLine: string, to: string, out: Action[]): void {
    const rcpt = line(rcptLine);
    if (this.#open || this.fixed) {
      this.#owed.push({ kind: 'rcpt', to, draft });
      out.push({ type: 'backend-write', data: rcpt });
      return;
    }
    this.#accepted = 0;
    // With PIPELINING MAIL and RCPT leave together (RFC 2920 §3.1); their replies are still checked one by one.
    this.#owed.push({ kind: 'mail', rcpt: this.#pipelining ? null : rcpt, to, draft });
    if (this.#pipelining) this.#owed.push({ kind: 'rcpt', to, draft });
    out.push({ type: 'backend-write', data: this.#pipelining ? Buffer.concat([line(mailLine), rcpt]) : line(mailLine) });
  }

  /** MAIL on a fixed route goes to the back-end as typed, and its reply to the client. */
  mail(mailLine: string, out: Action[]): void {
    this.#accepted = 0;
    this.#owed.push({ kind: 'mail-relay' });
    out.push({ type: 'backend-write', data: line(mailLine) });
  }

  data(draft: MessageDraft, out: Action[]): void {
    this.#final = draft;
    this.#owed.push({ kind: 'data' });
    out.push({ type: 'backend-write', data: DATA_LINE });
  }

  /** RSET: the client's own (its reply relayed), or Postern's after EHLO (consumed). */
  rset(relay: boolean, out: Action[]): void {
    this.#owed.push({ kind: relay ? 'rset' : 'silent' });
    out.push({ type: 'backend-write', data: RSET_LINE });
    this.#reset();
  }

  /** Body bytes from the client, forwarded as they are up to and including the final `.CRLF`. */
  body(chunk: Buffer, out: Action[]): BodyStatus {
    const r = this.#scanner.scan(chunk);
    if (r.kind === 'body') {
      this.#size += chunk.length;
      out.push({ type: 'backend-write', data: chunk });
      return MORE;
    }
    const forward = r.kind === 'end' ? r.end : r.safe;
    if (forward > 0) out.push({ type: 'backend-write', data: chunk.subarray(0, forward) });
    this.#size += forward;
    if (r.kind === 'smuggling') return { kind: 'smuggling' };
    this.#owed.push({ kind: 'final', draft: this.#final! });
    return { kind: 'end', rest: r.end < chunk.length ? chunk.subarray(r.end) : EMPTY };
  }

  /** Back-end bytes: each whole reply settles the oldest owed one. */
  receive(chunk: Buffer, out: Action[]): LinkStatus {
    this.#replies.push(chunk);
    let status = OK;
    for (;;) {
      const r = this.#replies.next();
      if (r === null) return status;
      if (r instanceof ReplyError) return { kind: 'fail', code: 'PST_BACKEND_INVALID_REPLY', detail: `${this.name}: ${r.reason}` };
      const owed = this.#owed.shift();
      if (owed === undefined) {
        // Postfix says 421 before closing an idle connection; anything else unasked is a broken peer.
        return { kind: 'fail', code: r.code === 421 ? 'PST_BACKEND_CLOSED' : 'PST_BACKEND_INVALID_REPLY', detail: `${this.name}: unsolicited ${r.code} ${r.lines.join(' / ')}` };
      }
      const s = this.#settle(owed, r, out);
      if (s.kind === 'fail') return s;
      if (s.kind === 'data') status = DATA;
    }
  }

  #settle(owed: Owed, r: Reply, out: Action[]): LinkStatus {
    switch (owed.kind) {
      case 'mail':
        if (r.code !== 250) return { kind: 'fail', code: 'PST_BACKEND_REJECTED', detail: `${this.name} refused MAIL: ${r.code} ${r.lines.join(' / ')}` };
        this.#open = true;
        if (owed.rcpt) {
          this.#owed.unshift({ kind: 'rcpt', to: owed.to, draft: owed.draft });
          out.push({ type: 'backend-write', data: owed.rcpt });
        }
        return OK;
      case 'mail-relay':
        this.#open = r.code >= 200 && r.code < 300;
        out.push({ type: 'reply', data: r.raw });
        return OK;
      case 'rcpt':
        this.#recipient(owed.draft, owed.to, r, out);
        return OK;
      case 'data':
        out.push({ type: 'reply', data: r.raw });
        if (r.code !== 354) return OK;
        this.#scanner.reset();
        this.#size = 0;
        if (this.#final?.prepend) out.push({ type: 'backend-write', data: headerBlock(this.#final.prepend) });
        return DATA;
      case 'final':
        out.push({ type: 'reply', data: r.raw });
        out.push({ type: 'message', record: this.#record(owed.draft, r) });
        this.#reset();
        return OK;
      case 'rset':
        out.push({ type: 'reply', data: r.raw });
        return OK;
      case 'silent':
        return OK;
    }
  }

  #recipient(draft: MessageDraft, to: string, r: Reply, out: Action[]): void {
    if (r.code >= 200 && r.code < 300) {
      this.#accepted++;
      const p = draft.rcptPrepend?.get(to);
      if (p) draft.prepend = [...(draft.prepend ?? []), ...p];
    }
    draft.recipients.push({ to, backend: this.name, code: r.code });
    out.push({ type: 'reply', data: r.raw });
  }

  #record(draft: MessageDraft, r: Reply): MessageRecord {
    return {
      from: draft.from,
      recipients: draft.recipients,
      backend: this.name,
      size: this.#size,
      code: r.code,
      reply: r.lines[r.lines.length - 1] ?? '',
      ...(draft.prepend ? { prepended: draft.prepend } : {}),
    };
  }

  #reset(): void {
    this.#open = false;
    this.#accepted = 0;
    this.#size = 0;
  }
}

/**
 * Header lines for the top of a body, each ended by CRLF. Lines come from checks that already
 * refused CR, LF and NUL; a leading dot is doubled all the same (RFC 5321 §4.5.2), so no line of
 * Postern's can end the data early.
 */
export function headerBlock(lines: readonly string[]): Buffer {
  return Buffer.from(lines.map((l) => `${l.startsWith('.') ? '.' : ''}${l.replace(/[\r\n\0]/g, ' ')}\r\n`).join(''), 'latin1');
}

function line(text: string): Buffer {
  return Buffer.from(`${text}\r\n`, 'latin1');
}
