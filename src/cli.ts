#!/usr/bin/env node
/**
 * Command line: `postern [run] --config FILE`, `postern check-config --config FILE`,
 * `postern status --config FILE`, `postern import-nginx FILE`, `--version`.
 */
import { readFileSync } from 'node:fs';
import cluster from 'node:cluster';
import { parseArgs } from 'node:util';
import { ConfigError, loadConfig } from './config/load.js';
import { createLogger } from './log/logger.js';
import { runPrimary, workerCount } from './net/cluster.js';
import { onHealthMessages } from './pools/ipc.js';
import { startLimitsPrimary } from './limits/primary.js';
import { startHealthChecks } from './pools/checker.js';
import { PosternServer } from './net/server.js';
import { statusCommand } from './pools/status.js';
import { importNginxCommand } from './nginx-import/yaml.js';
import { readBackendCa, TlsContexts, TlsLoadError } from './tls/contexts.js';

const USAGE = `Usage:
  postern [run] --config FILE        run the proxy
  postern check-config --config FILE validate the configuration and exit (like nginx -t)
  postern status --config FILE       pool servers' health as the running Postern sees it
                                     (exit 0: every pool has a usable server, 1: not, 2: no status)
  postern import-nginx FILE          print an nginx mail {} configuration as Postern YAML
                                     (what cannot carry over is a "# nginx:" comment)
  postern --version                  print the version

Options:
  -c, --config FILE   configuration file (default: /etc/postern/postern.yaml)
  -h, --help          this text`;

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c', default: '/etc/postern/postern.yaml' },
        version: { type: 'boolean', short: 'v' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    process.stderr.write(`postern: ${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (values.version) {
    process.stdout.write(`postern ${version()}\n`);
    return 0;
  }
  const command = positionals[0] ?? 'run';
  if (command === 'status') {
    // Reads the running instance's status file (src/pools/status.ts); the configuration itself is not loaded.
    return statusCommand(values.config, (s) => process.stdout.write(s), (s) => process.stderr.write(s));
  }
  if (command === 'import-nginx') {
    return importNginxCommand(positionals[1], (s) => process.stdout.write(s), (s) => process.stderr.write(s));
  }
  if (command !== 'run' && command !== 'check-config') {
    process.stderr.write(`postern: unknown command ${JSON.stringify(command)}\n${USAGE}\n`);
    return 2;
  }
  let config;
  try {
    config = loadConfig(values.config);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`postern: configuration ${err.message}\npostern: configuration file ${values.config} test failed\n`);
      return 1;
    }
    throw err;
  }
  const problems = tlsFileProblems(config);
  if (problems.length > 0) {
    process.stderr.write(`postern: configuration ${values.config}: ${problems.length} problem(s)\n  ${problems.join('\n  ')}\npostern: configuration file ${values.config} test failed\n`);
    return 1;
  }
  if (command === 'check-config') {
    process.stdout.write(`postern: configuration file ${values.config} syntax is ok\npostern: configuration file ${values.config} test is successful\n`);
    return 0;
  }
  return run(config, values.config);
}

/** Certificates, keys and CA files are read as check-config's last step, per server block. */
function tlsFileProblems(config: ReturnType<typeof loadConfig>): string[] {
  const problems: string[] = [];
  config.servers.forEach((srv, i) => {
    const at = config.serverBlocks ? `servers.${i}.` : '';
    for (const check of [
      () => srv.listen.some((l) => l.implicit_tls || l.starttls !== 'off') && new TlsContexts(srv.tls),
      () => srv.backend_tls.ca && readBackendCa(srv.backend_tls.ca),
    ]) {
      try {
        check();
      } catch (err) {
        if (!(err instanceof TlsLoadError)) throw err;
        problems.push(...err.problems.map((p) => at + p));
      }
    }
  });
  return problems;
}

async function run(config: ReturnType<typeof loadConfig>, configFile: string): Promise<number> {
  const logger = createLogger(config.log.level);
  // SIGHUP re-reads the TLS certificates (certificate renewal without a restart); the rest of
  // the configuration needs a restart for now.
  let reloadTls = (): void => {};
  process.on('SIGHUP', () => {
    try {
      reloadTls();
      logger.info(cluster.isPrimary && workerCount(config) > 1 ? 'SIGHUP: passed on to the workers' : 'SIGHUP: TLS certificates reloaded; other configuration changes need a restart');
    } catch (err) {
      logger.error({ err: (err as Error).message }, 'SIGHUP: TLS reload failed; the previous certificates stay in use');
    }
  });
  const workers = workerCount(config);
  if (workers > 1 && cluster.isPrimary) {
    reloadTls = () => {
      // Each worker reloads and logs its own result.
      for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGHUP');
    };
    logger.info({ version: version(), workers }, 'postern started');
    // Active pool checks run once per instance, here; the workers hear the verdicts over IPC.
    const checks = startHealthChecks(config, logger, { configFile });
    // Counters shared by the workers live in the primary (limits.store: cluster).
    const limits = config.limits.store === 'cluster' ? startLimitsPrimary() : null;
    await runPrimary(workers, logger);
    limits?.stop();
    await checks.stop();
    logger.info('postern stopped');
    await new Promise<void>((r) => logger.flush(() => r()));
    return 0;
  }
  const server = new PosternServer(config, logger);
  reloadTls = () => server.reloadTls();
  // One process checks its pools itself; a worker applies the primary's verdicts.
  const checks = cluster.isWorker ? null : startHealthChecks(config, logger, { configFile });
  checks?.checker.on('change', (c) => server.pools.setUp(c.pool, c.server, c.up));
  if (cluster.isWorker) onHealthMessages((c) => server.pools.setUp(c.pool, c.server, c.up));
  try {
    await server.start();
  } catch (err) {
    logger.fatal({ err }, 'cannot listen');
    logger.flush();
    return 1;
  }
  logger.info({ version: version(), worker: cluster.isWorker ? process.pid : undefined }, cluster.isWorker ? 'worker started' : 'postern started');
  await new Promise<void>((resolve) => {
    const stop = (signal: string): void => {
      logger.info({ signal, sessions: server.connections }, 'stopping: no new connections, draining sessions');
      void Promise.all([server.stop(), checks?.stop()]).then(() => resolve());
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  logger.info(cluster.isWorker ? 'worker stopped' : 'postern stopped');
  await new Promise<void>((r) => logger.flush(() => r()));
  // A worker's IPC channel would keep it alive after its server has drained.
  if (cluster.isWorker) cluster.worker!.disconnect();
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`postern: ${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 1;
  },
);
