/**
 * The connect-time check seam: what is learnt about a client before it is greeted — its
 * verified reverse name (FCrDNS, as Postfix and nginx's `resolver` do) and whether a DNS
 * blocklist refuses it. The driver asks once per connection, before the session starts; a
 * refusal becomes the session's reply (the protocol knows its words), a name becomes Client-Host
 * and XCLIENT NAME.
 */
import type { ErrorCode } from '../errors.js';

export interface ConnectVerdict {
  /** A verified host name, or `[UNAVAILABLE]` / `[TEMPUNAVAIL]` (nginx's and Postfix's spelling). */
  name: string;
  /** Refuse the connection with this catalogue code; `detail` is logged (e.g. the lists that matched). */
  refuse?: { code: ErrorCode; detail: string; /** The reply line instead of the code's (a policy server's own text). */ reply?: string };
  /** Header lines to add at the top of every message of the session (a policy server's PREPEND; transaction mode). */
  prepend?: readonly string[];
  /** What the checks found, for the access record (`checks` field). */
  record?: Record<string, unknown>;
}

/** The client being checked, and the local end it reached (Postfix's server_address/port). */
export interface ConnectingClient {
  addr: string;
  port: number;
  serverAddr?: string;
  serverPort?: number;
}

export interface ConnectChecks {
  /** Never rejects; answers within the checks' own deadline. */
  check(client: ConnectingClient): ConnectVerdict | Promise<ConnectVerdict>;
}

/** Without resolver or lists: every client is `[UNAVAILABLE]`, as nginx without `resolver`. */
export const NO_CONNECT_CHECKS: ConnectChecks = { check: () => UNCHECKED };
const UNCHECKED: ConnectVerdict = Object.freeze({ name: '[UNAVAILABLE]' });
