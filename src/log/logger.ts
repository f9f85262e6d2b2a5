/**
 * Structured logging (pino, JSON lines on stdout and/or `log.file`: ./output.ts). One child
 * logger per session would cost an allocation per connection, so session fields are passed per
 * record instead.
 */
import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { pid: process.pid },
      // Credentials never reach the log, whatever a caller passes (AUTH payloads, Auth-Pass).
      redact: { paths: ['pass', 'password', '*.pass', '*.password', 'headers["auth-pass"]'], censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination ?? pino.destination({ dest: 1, sync: false }),
  );
}
