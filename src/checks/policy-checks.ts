/**
 * Postfix policy servers (check_policy_service) at the stages the admin chooses: connect, HELO/EHLO,
 * MAIL, RCPT and DATA — Postfix's smtpd_{client,helo,sender,recipient,data}_restrictions with
 * smtpd_delay_reject = no, so each verdict answers the command it is about. One keep-alive client
 * per server is shared by every stage. Each stage asks the servers in order: OK skips the rest,
 * DUNNO goes on, a refusal answers the command with the text Postfix would give, a failing server
 * its configured default (./policy/protocol.ts). At RCPT this is a router layer (after the limits,
 * before the auth service); at HELO, MAIL and DATA a stage check (./stage.ts); at connect it
 * follows the DNS checks, whose verified name it sends as client_name.
 *
 * PREPEND is the one change to a message Postern makes, and only where the admin allows it for
 * that server (`prepend: true`) in transaction mode; elsewhere it is logged (PSW_POLICY_PREPEND).
 */
import type { RouterLayer } from '../auth/router.js';
import type { CheckRequest, CheckStage, CheckVerdict, RouteDecision, RouteRequest } from '../domain.js';
import type { ErrorCode } from '../errors.js';
import type { ConnectChecks, ConnectingClient, ConnectVerdict } from './connect.js';
import { PolicyClient } from './policy/client.js';
import { policyAction, replyTarget, type PolicyAttributes, type PolicyVerdict } from './policy/protocol.js';
import type { StageCheck } from './stage.js';

export type PolicyStageName = 'connect' | CheckStage | 'rcpt';

export interface PolicyCheckConfig {
  server: string;
  default: 'defer' | 'dunno';
  timeout: number;
  /** Connections open at once per process. */
  connections?: number;
  stages: readonly PolicyStageName[];
  prepend: boolean;
  /** What HOLD, FILTER, REDIRECT, DISCARD, BCC… (which a proxy cannot do) count as. Default dunno. */
  unsupported?: 'dunno' | 'defer' | 'reject';
}

export interface PolicyLog {
  (level: 'debug' | 'info' | 'warn' | 'error', fields: Record<string, unknown>, msg: string): void;
}

/** What a policy request is built from: a route or check request, or a client just connected. */
type Asked = Pick<RouteRequest, 'clientAddr' | 'clientPort' | 'clientHost' | 'tls' | 'serverAddr' | 'serverPort' | 'session'> & { envelope?: RouteRequest['envelope']; recipientCount?: number; size?: number };

const STATE: Record<PolicyStageName, string> = { connect: 'CONNECT', helo: 'HELO', mail: 'MAIL', rcpt: 'RCPT', data: 'DATA' };

/** The attributes Postfix sends at `stage`, from what the session knows (Postfix's names and forms). */
export function policyAttributes(stage: PolicyStageName, req: Asked, instance: string): PolicyAttributes {
  const e = req.envelope;
  const known = req.clientHost.startsWith('[') ? 'unknown' : req.clientHost;
  const state = stage === 'helo' && e?.esmtp ? 'EHLO' : STATE[stage];
  return {
    protocol_state: state,
    protocol_name: e?.esmtp ? 'ESMTP' : 'SMTP',
    client_address: req.clientAddr,
    client_port: req.clientPort,
    client_name: known,
    reverse_client_name: known,
    ...(req.serverAddr ? { server_address: req.serverAddr, server_port: req.serverPort ?? 0 } : {}),
    helo_name: wire(e?.helo ?? ''),
    sender: wire(e?.mailFrom ?? ''),
    recipient: stage === 'rcpt' ? wire(e?.rcptTo ?? '') : '',
    // Postfix: the accepted recipients at DATA; 0 before.
    recipient_count: stage === 'data' ? (req.recipientCount ?? 0) : 0,
    instance,
    ...(req.size !== undefined ? { size: req.size } : {}),
    ...(e?.auth ? { sasl_method: e.auth.method === 'plain' ? 'PLAIN' : e.auth.method.toUpperCase(), sasl_username: wire(e.auth.user) } : {}),
    ...(req.tls ? { encryption_protocol: req.tls.protocol, encryption_cipher: req.tls.cipher } : {}),
    ...(req.tls?.subject ? { ccert_subject: req.tls.subject } : {}),
    ...(req.tls?.issuer ? { ccert_issuer: req.tls.issuer } : {}),
    ...(req.tls?.fingerprint ? { ccert_fingerprint: req.tls.fingerprint.replace(/:/g, '') } : {}),
  };
}

/**
 * The session keeps what the client typed as latin1 strings (one char per byte); the policy
 * request is UTF-8. Decoding first sends an SMTPUTF8 address (RFC 6531) as the bytes the client
 * sent, as Postfix does, instead of encoding each byte again. (Bytes that are not UTF-8 become
 * U+FFFD; plain ASCII, the common case, is returned as it is.)
 */
function wire(s: string): string {
  // eslint-disable-next-line no-control-regex
  return /^[\x00-\x7f]*$/.test(s) ? s : Buffer.from(s, 'latin1').toString('utf8');
}

/** One stage's outcome over all servers: a refusal, or go on with the headers to prepend. */
type Outcome = { refuse: { reply: string; reason: string; code: ErrorCode } } | { prepend: string[] | undefined };

interface Server {
  readonly config: PolicyCheckConfig;
  readonly client: PolicyClient;
}

export class PolicyChecks {
  readonly #servers: readonly Server[];
  readonly #log: PolicyLog;
  /** Headers may be added (transaction mode); per server, `prepend` must allow it too. */
  readonly #mayChange: boolean;
  #instance = 0;

  constructor(configs: readonly PolicyCheckConfig[], proxyMode: 'session' | 'transaction', log: PolicyLog) {
    this.#log = log;
    this.#mayChange = proxyMode === 'transaction';
    this.#servers = configs.map((c) => ({
      config: c,
      client: new PolicyClient({ server: c.server, default: c.default, timeoutMs: c.timeout, ...(c.connections ? { maxConnections: c.connections } : {}), log: (level, msg) => log(level, { server: c.server }, msg) }),
    }));
  }

  has(stage: PolicyStageName): boolean {
    return this.#servers.some((s) => s.config.stages.includes(stage));
  }

  /** Asks each server configured for `stage`, in order (OK stops, DUNNO goes on, a refusal wins). */
  async ask(stage: PolicyStageName, req: Asked): Promise<Outcome> {
    const attrs = policyAttributes(stage, req, this.#instanceOf(req));
    let prepend: string[] | undefined;
    for (const { config, client } of this.#servers) {
      if (!config.stages.includes(stage)) continue;
      const v = await client.ask(attrs);
      if ('fallback' in v && v.fallback) this.#log('warn', { code: 'PSW_POLICY_FAILED', server: config.server, stage, detail: v.fallback.detail }, 'policy server failed: its default applied');
      if (v.kind === 'ok') break;
      if (v.kind === 'dunno' && v.warning) this.#log('info', { code: 'PSW_POLICY_PREPEND', server: config.server, stage, detail: v.warning }, 'policy PREPEND without a valid header: ignored');
      if (v.kind === 'prepend') {
        if (this.#mayChange && config.prepend) (prepend ??= []).push(v.header);
        else this.#log('info', { code: 'PSW_POLICY_PREPEND', server: config.server, stage, header: v.header }, 'policy PREPEND not applied');
        continue;
      }
      const refusal = this.#refusal(v, config, stage, attrs);
      if (refusal) return { refuse: refusal };
    }
    return { prepend };
  }

  /**
   * Postfix's `instance`: the same for every request about one message (policyd-spf and others
   * cache their verdict under it), another for the next message. Without a session id (a caller
   * outside the driver) every request gets its own.
   */
  #instanceOf(req: Asked): string {
    const t = req.envelope?.transaction;
    if (req.session === undefined || t === undefined) return `postern.${process.pid}.x${(++this.#instance).toString(36)}`;
    return `postern.${process.pid}.${req.session}.${t}`;
  }

  #refusal(v: PolicyVerdict, config: PolicyCheckConfig, stage: PolicyStageName, attrs: PolicyAttributes): { reply: string; reason: string; code: ErrorCode } | null {
    const server = config.server;
    switch (v.kind) {
      case 'reject':
      case 'defer':
      case 'defer_if_permit': // a lone check: nothing later could reject, so defer
        return { reply: v.reply, reason: `policy ${server} at ${STATE[stage]}: ${v.action}`, code: 'PST_POLICY_REFUSED' };
      case 'unsupported': {
        const as = config.unsupported ?? 'dunno';
        this.#log('warn', { code: 'PSW_POLICY_UNSUPPORTED', server, stage, action: v.action, treated_as: as }, `policy server action that a proxy cannot honour: treated as ${as}`);
        if (as === 'dunno') return null;
        // Postfix's reply for that REJECT or DEFER, with the server's own text if it gave one.
        const r = policyAction(`${as.toUpperCase()} ${v.text || `${v.action} is not supported here`}`, replyTarget(attrs));
        return 'reply' in r ? { reply: r.reply, reason: `policy ${server} at ${STATE[stage]}: ${v.action} (unsupported: ${as})`, code: 'PST_POLICY_REFUSED' } : null;
      }
      default:
        return null; // DUNNO, DEFER_IF_REJECT (nothing else rejects)
    }
  }

  /** RCPT: before the recipient is routed (logins are the auth service's to judge). Closing the router closes the clients. */
  layer(): RouterLayer {
    const atRcpt = this.has('rcpt');
    return (inner) => ({
      route: !atRcpt ? (req) => inner.route(req) : async (req: RouteRequest): Promise<RouteDecision> => {
        if (req.envelope.mailLine === '') return inner.route(req);
        const o = await this.ask('rcpt', req);
        if ('refuse' in o) return { kind: 'reject', reply: o.refuse.reply, waitMs: 0, reason: o.refuse.reason, keepOpen: true, code: o.refuse.code };
        const d = await inner.route(req);
        return o.prepend && d.kind === 'ok' ? { ...d, prepend: [...(d.prepend ?? []), ...o.prepend] } : d;
      },
      close: async () => {
        await this.close();
        await inner.close();
      },
    });
  }

  /** HELO/EHLO, MAIL, DATA: the stages some server is configured for, as one stage check. */
  stageCheck(): StageCheck {
    const stages = (['helo', 'mail', 'data'] as const).filter((s) => this.has(s));
    return {
      name: 'checks.policy',
      stages,
      check: async (req: CheckRequest): Promise<CheckVerdict> => {
        const o = await this.ask(req.stage, req);
        if ('refuse' in o) return { kind: 'reject', ...o.refuse };
        return o.prepend ? { kind: 'pass', prepend: o.prepend } : { kind: 'pass' };
      },
    };
  }

  /**
   * Connect: after `inner` (the DNS checks, whose name is client_name). A refusal closes the
   * connection with the server's reply; a temporary one is said as 421 (RFC 5321 §3.8: a
   * greeting is 220 or 554, and a 4yz before it can only mean "closing").
   */
  connect(inner: ConnectChecks): ConnectChecks {
    return {
      check: async (c: ConnectingClient): Promise<ConnectVerdict> => {
        const v = await inner.check(c);
        if (v.refuse) return v;
        const o = await this.ask('connect', { clientAddr: c.addr, clientPort: c.port, clientHost: v.name, ...(c.serverAddr ? { serverAddr: c.serverAddr, serverPort: c.serverPort ?? 0 } : {}) });
        if ('refuse' in o) {
          const r = o.refuse.reply;
          const reply = r.startsWith('4') ? `421${r.slice(3)}` : r;
          return { ...v, refuse: { code: 'PST_POLICY_CONNECT_REFUSED', detail: o.refuse.reason, reply } };
        }
        return o.prepend ? { ...v, prepend: o.prepend } : v;
      },
    };
  }

  async close(): Promise<void> {
    await Promise.all(this.#servers.map((s) => s.client.close()));
  }
}
