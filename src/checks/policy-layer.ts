/**
 * Postfix policy servers as a router layer (smtpd's check_policy_service at RCPT): before a
 * recipient is routed, each configured policy server is asked with the attributes Postfix would
 * send; a refusal becomes that recipient's reply (the texts Postfix gives), a failing server its
 * configured default, and OK/DUNNO let routing go on. Runs cheapest first: after the connect
 * checks, before the auth service is asked.
 */
import type { RouterLayer } from '../auth/router.js';
import type { RouteDecision, RouteRequest } from '../domain.js';
import { PolicyClient } from './policy/client.js';
import type { PolicyAttributes, PolicyVerdict } from './policy/protocol.js';

export interface PolicyCheckConfig {
  server: string;
  default: 'defer' | 'dunno';
  timeout: number;
}

export interface PolicyLog {
  (level: 'debug' | 'info' | 'warn' | 'error', fields: Record<string, unknown>, msg: string): void;
}

/** The attributes of an RCPT-stage request, from what the session knows (Postfix's names and forms). */
export function rcptAttributes(req: RouteRequest, instance: string): PolicyAttributes {
  const e = req.envelope;
  const known = req.clientHost.startsWith('[') ? 'unknown' : req.clientHost;
  return {
    protocol_state: 'RCPT',
    protocol_name: e.esmtp ? 'ESMTP' : 'SMTP',
    client_address: req.clientAddr,
    client_port: req.clientPort,
    client_name: known,
    reverse_client_name: known,
    helo_name: e.helo,
    sender: e.mailFrom,
    recipient: e.rcptTo,
    recipient_count: 0,
    instance,
    ...(e.auth ? { sasl_method: e.auth.method === 'plain' ? 'PLAIN' : e.auth.method.toUpperCase(), sasl_username: e.auth.user } : {}),
    ...(req.tls ? { encryption_protocol: req.tls.protocol, encryption_cipher: req.tls.cipher } : {}),
    ...(req.tls?.subject ? { ccert_subject: req.tls.subject } : {}),
    ...(req.tls?.issuer ? { ccert_issuer: req.tls.issuer } : {}),
    ...(req.tls?.fingerprint ? { ccert_fingerprint: req.tls.fingerprint.replace(/:/g, '') } : {}),
  };
}

/** The recipient's refusal, or null to go on (OK, DUNNO, DEFER_IF_REJECT, PREPEND; unsupported actions are logged). */
export function refusalOf(v: PolicyVerdict, log: PolicyLog, server: string): RouteDecision | null {
  switch (v.kind) {
    case 'reject':
    case 'defer':
    case 'defer_if_permit': // a lone check: nothing later could reject, so defer
      return { kind: 'reject', reply: v.reply, waitMs: 0, reason: `policy ${server}: ${v.action}`, keepOpen: true, code: 'PST_POLICY_REFUSED' };
    case 'unsupported':
    case 'invalid':
      log('warn', { code: 'PSW_POLICY_UNSUPPORTED', server, action: v.kind === 'unsupported' ? v.action : undefined, detail: v.kind === 'invalid' ? v.detail : undefined }, 'policy server action that a proxy cannot honour: treated as DUNNO');
      return null;
    case 'prepend':
      // Postern does not change messages (yet): the header is logged, not added.
      log('debug', { server, header: v.header }, 'policy PREPEND not applied');
      return null;
    default:
      return null;
  }
}

export function policyLayer(configs: readonly PolicyCheckConfig[], log: PolicyLog): RouterLayer {
  const clients = configs.map((c) => ({ name: c.server, client: new PolicyClient({ server: c.server, default: c.default, timeoutMs: c.timeout, log: (level, msg) => log(level, { server: c.server }, msg) }) }));
  let instance = 0;
  return (inner) => ({
    async route(req: RouteRequest): Promise<RouteDecision> {
      // Only recipients are checked here; a login (AUTH) is the auth service's to judge.
      if (req.envelope.mailLine !== '') {
        const attrs = rcptAttributes(req, `postern.${process.pid}.${(++instance).toString(36)}`);
        for (const { name, client } of clients) {
          const v = await client.ask(attrs);
          if ('fallback' in v && v.fallback) log('warn', { code: 'PSW_POLICY_FAILED', server: name, detail: v.fallback.detail }, 'policy server failed: its default applied');
          if (v.kind === 'ok') break;
          const refusal = refusalOf(v, log, name);
          if (refusal) return refusal;
        }
      }
      return inner.route(req);
    },
    async close() {
      await Promise.all(clients.map((c) => c.client.close()));
      await inner.close();
    },
  });
}
