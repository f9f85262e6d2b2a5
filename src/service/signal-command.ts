/**
 * `postern reload` and `postern reopen` (nginx's `-s reload` and `-s reopen`): the running
 * instance is found through the configuration's `pid_file` and sent SIGHUP or SIGUSR1. `reload`
 * validates the file first, as `check-config` does, and sends nothing when it has errors — they
 * are printed here by key path, where the admin who ran the command sees them (the instance
 * would refuse them too, in its log).
 */
import { readFileSync } from 'node:fs';
import { loadConfig, ConfigError } from '../config/load.js';
import { rereadConfig } from '../net/instance.js';

type Out = (s: string) => void;

export function signalCommand(command: 'reload' | 'reopen', configFile: string, out: Out, err: Out): number {
  let pidFile: string | undefined;
  if (command === 'reload') {
    const r = rereadConfig(configFile);
    if ('problems' in r) {
      err(`postern: configuration ${configFile}: ${r.problems.length} problem(s)\n  ${r.problems.join('\n  ')}\npostern: not reloaded: the running configuration stays\n`);
      return 1;
    }
    pidFile = r.config.pid_file;
  } else {
    try {
      pidFile = loadConfig(configFile).pid_file;
    } catch (e) {
      err(`postern: configuration ${e instanceof ConfigError ? e.message : (e as Error).message}\n`);
      return 1;
    }
  }
  if (pidFile === undefined) {
    err(`postern: ${configFile} has no pid_file, so the running instance cannot be found; set pid_file, or send ${command === 'reload' ? 'SIGHUP' : 'SIGUSR1'} yourself (systemctl ${command === 'reload' ? 'reload' : 'kill -s USR1 --kill-whom=main'} postern)\n`);
    return 1;
  }
  let pid: number;
  try {
    pid = Number(readFileSync(pidFile, 'utf8').trim());
  } catch (e) {
    err(`postern: cannot read pid_file ${pidFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message} (is Postern running?)\n`);
    return 1;
  }
  if (!Number.isInteger(pid) || pid <= 1) {
    err(`postern: pid_file ${pidFile} holds no process id\n`);
    return 1;
  }
  try {
    process.kill(pid, command === 'reload' ? 'SIGHUP' : 'SIGUSR1');
  } catch (e) {
    err(`postern: cannot signal process ${pid} from ${pidFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}\n`);
    return 1;
  }
  out(`postern: ${command === 'reload' ? 'SIGHUP (reload)' : 'SIGUSR1 (reopen logs)'} sent to ${pid}; its log says whether it took\n`);
  return 0;
}
