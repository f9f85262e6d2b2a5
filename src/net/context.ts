/**
 * What the connections of one server block share: its frozen config and what was built from it
 * — the protocol module, the composed router, the TLS contexts, the observers.
 */
import { authFailureGuard } from '../auth/failure-guard.js';
import { AuthHttpRouter } from '../auth/auth-http.js';
import { composeRouter, StaticRouter, type Router, type RouterLayer } from '../auth/router.js';
import { RuleRouter } from '../auth/rules.js';
import type { ListenerConfig, ServerConfig } from '../config/schema.js';
import { WindowLimiter, type Limiter } from '../limits/limiter.js';
import type { Logger } from '../log/logger.js';
import { accessLog } from '../observe/access-log.js';
import { serverMetrics, timedAuthHttp } from '../observe/metrics.js';
import type { SessionObserver } from '../observe/observer.js';
import type { ProtocolModule, ProtocolSession } from '../protocol.js';
import { protocolModule } from '../protocols/registry.js';
import { NO_CONNECT_CHECKS, type ConnectChecks } from '../checks/connect.js';
import { dnsConnectChecks } from '../checks/connect-dns.js';
import { PolicyChecks } from '../checks/policy-checks.js';
import { StageChecks, type StageCheck } from '../checks/stage.js';
import { poolLayer } from '../pools/layer.js';
import { PoolRegistry } from '../pools/pool.js';
import { TlsContexts } from '../tls/contexts.js';

const noLogger = { warn() {}, info() {}, debug() {}, error() {} } as unknown as Logger;

export interface ListenerContext {
  readonly config: ListenerConfig;
  /** `host:port` as configured, for the rule router's `listener` condition. */
  readonly name: string;
  readonly newSession: () => ProtocolSession;
}

export interface ServerContext {
  readonly config: ServerConfig;
  readonly protocol: ProtocolModule;
  readonly router: Router;
  readonly logger: Logger;
  /** Server certificates; null when no listener of this server uses TLS. */
  readonly tls: TlsContexts | null;
  readonly listeners: readonly ListenerContext[];
  readonly observers: readonly SessionObserver[];
  /** Reverse DNS and blocklists, asked once per connection before the session starts. */
  readonly connectChecks: ConnectChecks;
  /** Checks at HELO/EHLO, MAIL and DATA (limits first, then policy servers). */
  readonly stageChecks: StageChecks;
}

/** The server's own router: static or auth_http, with the layers that wrap it (pools, the AUTH guard). */
export function createRouter(
  config: ServerConfig,
  pools: PoolRegistry = new PoolRegistry({}, noLogger),
  extra: readonly RouterLayer[] = [],
  authFailures: Limiter = new WindowLimiter(config.auth.max_failures_per_client, config.auth.failure_window),
  /** The server's policy servers; the router closes them (every stage shares them). */
  policy: PolicyChecks | null = null,
): Router {
  const r = config.route;
  const base = 'static' in r
    ? new StaticRouter(r.static)
    : 'auth_http' in r
      ? new AuthHttpRouter(r.auth_http, config.timeouts.auth)
      : new RuleRouter(r.rules, r.rules.auth_http ? new AuthHttpRouter(r.rules.auth_http, config.timeouts.auth) : null);
  const layers = [authFailureGuard(authFailures), ...extra];
  if (policy) layers.push(policy.layer());
  return composeRouter(timedAuthHttp(base), [...layers, poolLayer(pools)]);
}

export interface ContextOptions {
  logger: Logger;
  accessLog: boolean;
  /** The worker's pools, shared by its server blocks. */
  pools: PoolRegistry;
  /** Router layers of the process (the recipient rate), outermost after the AUTH guard. */
  layers?: readonly RouterLayer[];
  /** The AUTH-failure counter of this server block (in the limits store). */
  authFailures?: Limiter;
  connectChecks?: ConnectChecks;
  /** Stage checks of the process (the message limits), run before this server's policy servers. */
  stageChecks?: readonly StageCheck[];
  /** Replaces the configured router (tests). */
  router?: Router;
}

export function buildContext(config: ServerConfig, o: ContextOptions): ServerContext {
  const needsTls = config.listen.some((l) => l.implicit_tls || l.starttls !== 'off');
  const metrics = serverMetrics(config, o.pools);
  const protocol = metrics.protocol(protocolModule(config, o.logger, o.pools));
  const policy = config.checks.policy.length > 0 ? new PolicyChecks(config.checks.policy, config.proxy_mode, (level, fields, msg) => o.logger[level](fields, msg)) : null;
  const stageChecks = new StageChecks([...(o.stageChecks ?? []), ...(policy && policyAtStages(policy) ? [policy.stageCheck()] : [])]);
  const listeners = config.listen.map((l) => ({ config: l, name: `${l.address.host}:${l.address.port}`, newSession: protocol.sessions(l, stageChecks.stages) }));
  return {
    config,
    protocol,
    router: o.router ?? createRouter(config, o.pools, o.layers ?? [], o.authFailures, policy),
    logger: o.logger,
    tls: needsTls ? new TlsContexts(config.tls) : null,
    listeners,
    observers: [...(o.accessLog ? [accessLog(o.logger)] : []), metrics.observer],
    stageChecks,
    connectChecks: connectChecksOf(config, o.connectChecks, policy),
  };
}

const policyAtStages = (p: PolicyChecks): boolean => p.has('helo') || p.has('mail') || p.has('data');

/** DNS first (its name is the policy servers' client_name), then the policy servers asked at connect. */
function connectChecksOf(config: ServerConfig, given: ConnectChecks | undefined, policy: PolicyChecks | null): ConnectChecks {
  const dns = given ?? (config.resolver && (config.checks.reverse_dns || config.checks.dnsbl) ? dnsConnectChecks(config.resolver, config.checks) : NO_CONNECT_CHECKS);
  return policy?.has('connect') ? policy.connect(dns) : dns;
}
