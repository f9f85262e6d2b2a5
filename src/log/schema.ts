/**
 * The `log` settings (their place in the whole file: src/config/schema.ts; docs/configuration.md
 * documents each key).
 */
import { z } from 'zod';

export const logSchema = z
  .strictObject({
    level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
    /** One record per session at its end. */
    access: z.boolean().default(true),
    /** The records also go to this file (O_APPEND; SIGUSR1 closes and opens it again, for logrotate). */
    file: z.string().min(1).optional(),
    /** The records go to standard output too (default); `false` needs `file`. */
    stdout: z.boolean().default(true),
  })
  .refine((l) => l.stdout || l.file !== undefined, { path: ['stdout'], message: 'false needs log.file: the records would go nowhere (log.level: silent turns logging off)' })
  .prefault({});

export type LogConfig = z.output<typeof logSchema>;
