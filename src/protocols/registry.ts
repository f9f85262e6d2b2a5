/**
 * The protocol module of a server block, by its `protocol` key: the one place that knows every
 * protocol Postern speaks (nginx's list of ngx_mail_protocol_t modules).
 */
import type { ServerConfig } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import type { PoolRegistry } from '../pools/pool.js';
import type { ProtocolModule } from '../protocol.js';
import { ImapProtocol } from './imap.js';
import { Pop3Protocol } from './pop3.js';
import { SmtpProtocol } from './smtp.js';

export function protocolModule(config: ServerConfig, logger: Logger, pools: PoolRegistry | null): ProtocolModule {
  switch (config.protocol) {
    case 'smtp':
      return new SmtpProtocol(config, logger, pools);
    case 'imap':
      return new ImapProtocol(config, logger, pools);
    case 'pop3':
      return new Pop3Protocol(config, logger, pools);
    default:
      throw new Error(`protocol ${config.protocol} is not built yet`);
  }
}
