/** What every connection of one server shares: the frozen config and what was built from it. */
import type { Router } from '../auth/router.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import type { SessionLimits } from '../session/session.js';
import { ReplyBook } from '../smtp/replies.js';

export interface ServerContext {
  readonly config: Readonly<Config>;
  readonly book: ReplyBook;
  readonly limits: SessionLimits;
  readonly router: Router;
  readonly logger: Logger;
  /** Back-ends already warned about for not offering XCLIENT (warn once each, not per session). */
  readonly noXclient: Set<string>;
}

export function buildContext(config: Readonly<Config>, router: Router, logger: Logger): ServerContext {
  const capabilities = config.capabilities.map((c) =>
    c.toUpperCase() === 'SIZE' && config.max_message_size > 0 ? `SIZE ${config.max_message_size}` : c,
  );
  return {
    config,
    router,
    logger,
    noXclient: new Set(),
    book: new ReplyBook({ serverName: config.server_name, capabilities }),
    limits: {
      maxLineLength: config.max_line_length,
      maxErrors: config.max_errors,
      maxMessageSize: config.max_message_size,
      requireHelo: config.require_helo,
      greetingDelay: config.greeting_delay > 0,
    },
  };
}
