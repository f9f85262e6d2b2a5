#!/usr/bin/env node
/**
 * Command line: `postern [run] --config FILE`, `postern check-config --config FILE`,
 * `postern status --config FILE`, `postern reload|reopen --config FILE`, `postern import-nginx FILE`,
 * `--version`.
 */
import { readFileSync } from 'node:fs';
import cluster from 'node:cluster';
import { parseArgs } from 'node:util';
import { ConfigError, loadConfig } from './config/load.js';
import { createLogger, type Logger } from './log/logger.js';
import { RELOAD_MESSAGE, reloadWorkers, RETIRE_MESSAGE, runPrimary, workerCount } from './net/cluster.js';
import { Instance, rereadConfig, restartOnly, tlsFileProblems } from './net/instance.js';
import { startLimitsPrimary } from './limits/primary.js';
import { startHealthChecks } from './pools/checker.js';
import { startMetrics } from './observe/http.js';
import { statusCommand } from './pools/status.js';
import { importNginxCommand } from './nginx-import/yaml.js';
import { checkPrivileges, dropPrivileges, dropPrivilegesWhenWorkersReady, privilegeProblems } from './service/privileges.js';
import { openLogOutput, reopenLogsOnSignal } from './log/output.js';
import { announceReady, notifyWhenWorkersReady } from './service/notify.js';
import { writePidFile } from './service/pid-file.js';
import { signalCommand } from './service/signal-command.js';

const USAGE = `Usage:
  postern [run] --config FILE        run the proxy
  postern check-config --config FILE validate the configuration and exit (like nginx -t)
  postern status --config FILE       pool servers' health as the running Postern sees it
                                     (exit 0: every pool has a usable server, 1: not, 2: no status)
  postern reload --config FILE       validate the file, then tell the running instance (pid_file) to
                                     re-read it (SIGHUP, like nginx -s reload)
  postern reopen --config FILE       tell it to reopen log.file (SIGUSR1, like nginx -s reopen)
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
  if (command === 'reload' || command === 'reopen') {
    return signalCommand(command, values.config, (s) => process.stdout.write(s), (s) => process.stderr.write(s));
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
  const problems = [...tlsFileProblems(config), ...privilegeProblems(config)];
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

async function run(config: ReturnType<typeof loadConfig>, configFile: string): Promise<number> {
  const logs = openLogOutput(config.log);
  if (!logs) return 1;
  const logger = createLogger(config.log.level, logs.stream);
  reopenLogsOnSignal(logs, logger); // SIGUSR1 (logrotate): log.file opened again; a primary passes it on
  if (cluster.isPrimary && !writePidFile(config.pid_file, logger)) return 1;
  const workers = workerCount(config);
  if (!checkPrivileges(config, logger)) return 1; // `user`: it exists, and this is root or already that user
  if (workers > 1 && cluster.isPrimary) return runCluster(config, configFile, logger, workers);
  // SIGHUP: the whole configuration is read again and applied in place (src/net/instance.ts).
  const instance = new Instance(config, configFile, logger);
  process.on('SIGHUP', () => void instance.reload());
  if (cluster.isWorker) {
    process.on('message', (m: { type?: string } | null) => {
      if (m?.type === RELOAD_MESSAGE) void instance.reload();
      else if (m?.type === RETIRE_MESSAGE) void instance.drain().then(() => process.emit('SIGTERM', 'SIGTERM'));
    });
  }
  try {
    await instance.start();
    await startMetrics(config, logger, { version: version(), server: () => instance.server, checker: () => instance.checker, config: () => instance.config }); // metrics.listen (a worker answers its primary)
  } catch (err) {
    logger.fatal({ err }, 'cannot listen');
    logger.flush();
    return 1;
  }
  await dropPrivileges(config, logger); // `user`: ports bound, keys read; from here on as the user (src/service/privileges.ts)
  logger.info({ version: version(), worker: cluster.isWorker ? process.pid : undefined }, cluster.isWorker ? 'worker started' : 'postern started');
  announceReady(logger); // a worker tells the primary; one process tells systemd (NOTIFY_SOCKET)
  await new Promise<void>((resolve) => {
    const stop = (signal: string): void => {
      logger.info({ signal, sessions: instance.connections }, 'stopping: no new connections, draining sessions');
      void instance.stop().then(() => resolve());
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

/** The primary of several workers: forks them, runs the instance's health checks and shared counters, reloads. */
async function runCluster(config: ReturnType<typeof loadConfig>, configFile: string, logger: Logger, workers: number): Promise<number> {
  logger.info({ version: version(), workers }, 'postern started');
  // Active pool checks run once per instance, here; the workers hear the verdicts over IPC.
  let checks = startHealthChecks(config, logger, { configFile });
  await startMetrics(config, logger, { version: version(), checker: () => checks.checker }); // metrics.listen: the workers' metrics, merged
  // Counters shared by the workers live in the primary (limits.store: cluster).
  const limits = config.limits.store === 'cluster' ? startLimitsPrimary() : null;
  let running = config;
  process.on('SIGHUP', () => {
    // Validated once here, so that a broken file is refused with one log line, not one per worker.
    const r = rereadConfig(configFile);
    if ('problems' in r) return void logger.error({ code: 'PSW_RELOAD_REFUSED', problems: r.problems }, 'reload: the configuration has errors; the running one stays');
    const n = workerCount(r.config);
    if (n < 2) logger.warn({ code: 'PSW_RELOAD_PARTIAL', workers: r.config.workers }, 'reload: a change of workers between one and several needs a restart; the rest is applied');
    const fixed = restartOnly(running, r.config);
    if (fixed.length > 0) logger.warn({ code: 'PSW_RELOAD_PARTIAL', keys: fixed }, 'reload: these settings need a restart; the rest is applied');
    running = r.config;
    logger.level = r.config.log.level;
    void checks.stop().then(() => {
      checks = startHealthChecks(r.config, logger, { configFile });
    });
    reloadWorkers(Math.max(n, 1), logger);
  });
  dropPrivilegesWhenWorkersReady(workers, config, logger); // `user`: once every worker listens
  notifyWhenWorkersReady(workers, logger); // systemd's READY=1 once every worker listens
  await runPrimary(workers, logger);
  limits?.stop();
  await checks.stop();
  logger.info('postern stopped');
  await new Promise<void>((r) => logger.flush(() => r()));
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
