/**
 * The access log (`log.access`): one `session` record per connection at its end and, in
 * transaction mode, one `message` record per message (nginx has neither).
 */
import type { Logger } from '../log/logger.js';
import type { MessageEvent, SessionObserver, SessionRecord } from './observer.js';

export function accessLog(logger: Logger): SessionObserver {
  return {
    message(e: MessageEvent): void {
      logger.info({ type: 'message', ...e }, 'message');
    },
    sessionEnd(r: SessionRecord): void {
      logger.info({ type: 'access', ...r }, 'session');
    },
  };
}
