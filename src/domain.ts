/**
 * The shared domain types: what a session learns about its client (identity, TLS, credentials,
 * envelope) and what a router decides from it. Every layer imports these from here and nothing
 * else, so the protocol machines, the routers and the back-end code never import each other
 * just to name a type (docs/architecture.md, "Seams").
 */
import type { ErrorCode } from './errors.js';

/** The mail protocol a session speaks (nginx's `Auth-Protocol`). */
export type ProtocolName = 'smtp' | 'imap' | 'pop3';

/** What the auth service is asked about (nginx's Auth-Method, Auth-User, Auth-Pass, Auth-Salt). */
export interface Credentials {
  /** nginx's value: `plain` for PLAIN, LOGIN and USER/PASS, `cram-md5`, `external`, `apop` (POP3); ours: `xoauth2`, `oauthbearer`. */
  method: 'plain' | 'cram-md5' | 'external' | 'apop' | 'xoauth2' | 'oauthbearer';
  user: string;
  /** Password, CRAM-MD5 or APOP digest, or OAuth bearer token; empty for EXTERNAL. */
  pass: string;
  /** The CRAM-MD5 challenge (as sent base64-encoded in the 334), or POP3's APOP timestamp (`<…>`). */
  salt?: string;
}

/** What the client's TLS session tells the auth service, in nginx's formats. */
export interface TlsInfo {
  protocol: string;
  cipher: string;
  /** `SUCCESS`, `FAILED:<reason>` or `NONE`; undefined when verify_client is off. */
  verify?: string;
  subject?: string;
  issuer?: string;
  serial?: string;
  fingerprint?: string;
  /** PEM, URL-escaped as nginx sends it (only with pass_client_cert). */
  cert?: string;
}

/** The client as the back-end should see it (XCLIENT ADDR, PORT, NAME). */
export interface ClientIdentity {
  /** Client IP address without port (IPv4-mapped IPv6 already unmapped). */
  addr: string;
  port: number;
  /** Verified reverse name, or `[UNAVAILABLE]` / `[TEMPUNAVAIL]` as nginx sends them. */
  name: string;
  /** The address and port the client connected to (Postern's listener, or the load balancer's): an outgoing PROXY header's destination. */
  serverAddr?: string;
  serverPort?: number;
}

/** What the router needs to choose a back-end, and what the replay sends to it. */
export interface Envelope {
  /** HELO/EHLO argument, empty when the client never greeted. */
  helo: string;
  /** True when the client greeted with EHLO. */
  esmtp: boolean;
  /** The MAIL command line as the client typed it, without CRLF (replayed verbatim, nginx's Auth-SMTP-From). */
  mailLine: string;
  /** The RCPT command line being routed, without CRLF (nginx's Auth-SMTP-To). */
  rcptLine: string;
  mailFrom: string;
  rcptTo: string;
  /** 1 for the first routing request of the session, +1 for each later one (Auth-Login-Attempt). */
  attempt: number;
  /** Which MAIL of the session this is about (1 for the first one asked about or taken; 0 before any). */
  transaction?: number;
  /** Set when routing follows a completed AUTH (nginx's authenticated path): no MAIL/RCPT yet. */
  auth?: Credentials;
  /**
   * Transaction-aware proxying only: the position of this recipient in its transaction (1 for
   * the first RCPT), sent as `X-Postern-Recipient` so an auth service may tell them apart.
   */
  recipient?: number;
}

/** The auth service's choice of TLS to this back-end (Postern's own response headers). */
export interface BackendTlsChoice {
  mode?: 'off' | 'opportunistic' | 'required' | 'implicit';
  name?: string;
}

export interface RouteRequest {
  /** The session's protocol (nginx's Auth-Protocol); `smtp` when not given. */
  protocol?: ProtocolName;
  envelope: Envelope;
  clientAddr: string;
  clientPort: number;
  /** Reverse name or `[UNAVAILABLE]`, sent as Client-Host. */
  clientHost: string;
  /** The client's TLS session, when there is one (Auth-SSL-* headers). */
  tls?: TlsInfo;
  /** The listener the session came in on, `host:port` as configured (the rule router's `listener`). */
  listener?: string;
  /** This connection, unique within the process (with the transaction: a policy request's `instance`). */
  session?: string;
  /** The PROXY protocol header the connection came with (Proxy-Protocol-* auth headers). */
  proxy?: ProxiedFrom;
  /** The local address and port the client reached (Postfix's server_address, server_port). */
  serverAddr?: string;
  serverPort?: number;
}

/**
 * What a PROXY protocol header said about a connection that came through a load balancer (a
 * listener with `proxy_protocol`, from a `set_real_ip_from` peer). Its source is the client.
 */
export interface ProxiedFrom {
  /** The load balancer: the TCP peer that sent the header. */
  peer: string;
  version: 1 | 2;
  /** The header's source and destination (nginx's Proxy-Protocol-Addr, -Port, -Server-Addr, -Server-Port). */
  addr: string;
  port: number;
  serverAddr: string;
  serverPort: number;
  /** v2 AUTHORITY: the name the client asked the load balancer for (TLS SNI). */
  authority?: string;
  /** v2 SSL: the client spoke TLS to the load balancer. */
  ssl?: { version?: string; cipher?: string; cn?: string; verified: boolean };
}

/** A back-end chosen by a router, with the per-route options the auth service may set. */
export interface RouteTarget {
  kind: 'ok';
  /** The back-end; empty ('' and 0) when `pool` chooses it. */
  host: string;
  port: number;
  /** A named pool: the back-end is chosen, and failed over, among its servers at connect time. */
  pool?: string;
  /**
   * For a pool balanced by hash: the server the key maps to now. Two recipients join one
   * transaction only when their pool and affinity agree (round robin: any server of the pool).
   */
  affinity?: string;
  user?: string;
  pass?: string;
  tls?: BackendTlsChoice;
  backendAuth?: 'off' | 'plain' | 'login';
  /**
   * Header lines (`Name: value`, no CRLF) a check asked to add at the top of this recipient's
   * message (a policy server's PREPEND, where the admin allows it; transaction mode only).
   */
  prepend?: readonly string[];
}

export type RouteDecision =
  | RouteTarget
  /**
   * Refused by policy: `reply` goes to the client; with `waitMs` > 0 it is delayed and the session
   * stays open (Auth-Wait); `keepOpen` keeps it open too (a policy server refused one recipient).
   */
  | { kind: 'reject'; reply: string; waitMs: number; reason: string; keepOpen?: boolean; /** The code the refusal is logged under (default PST_AUTH_REJECTED: the auth service's). */ code?: ErrorCode }
  /** The router itself failed (auth service down, garbage…): 451 4.3.2. */
  | { kind: 'error'; code: ErrorCode; detail: string };

/**
 * Two decisions name the same back-end session when host, port and every per-route option
 * agree: only then may a later recipient join the transaction already open there.
 */
export function sameBackend(a: RouteTarget, b: RouteTarget): boolean {
  return a.host === b.host && a.port === b.port && a.pool === b.pool && a.affinity === b.affinity && a.user === b.user && a.pass === b.pass && a.backendAuth === b.backendAuth
    && a.tls?.mode === b.tls?.mode && a.tls?.name === b.tls?.name;
}

/** `host:port` for logs and access records (IPv6 in brackets). */
export function backendName(t: { host: string; port: number; pool?: string }): string {
  if (t.pool !== undefined && t.host === '') return `pool ${t.pool}`;
  return t.host.includes(':') ? `[${t.host}]:${t.port}` : `${t.host}:${t.port}`;
}

/**
 * Where a check may stop a session besides connect and RCPT (Postfix's protocol_state EHLO/HELO,
 * MAIL and DATA). RCPT checks are router layers; connect checks are ./checks/connect.ts.
 */
export type CheckStage = 'helo' | 'mail' | 'data';

/** What a stage check is asked about: the route request's fields at that point of the session. */
export interface CheckRequest extends RouteRequest {
  stage: CheckStage;
  /** Recipients accepted so far in this transaction (Postfix's recipient_count; 0 before DATA). */
  recipientCount: number;
  /** MAIL's SIZE= (RFC 1870), when given. */
  size?: number;
}

/** A stage check's answer: go on (optionally with header lines to prepend), or refuse the command. */
export type CheckVerdict =
  | { kind: 'pass'; prepend?: readonly string[] }
  /** `reply` (one line, no CRLF) answers the command; the session goes on. Logged under `code`. */
  | { kind: 'reject'; reply: string; code: ErrorCode; reason: string };
