/**
 * The converted configuration as YAML, with each comment next to the key it is about (the
 * `yaml` package's Document API keeps them), and `postern import-nginx FILE` itself.
 */
import { Document, isMap, isScalar, isSeq, type YAMLMap } from 'yaml';
import { ConfigError, parseConfig } from '../config/load.js';
import { convertNginx, ImportError, type Imported, type Note } from './convert.js';
import { NginxSyntaxError, parseNginxFile } from './parse.js';

/** Lists whose entries are short scalars, written on one line. */
const FLOW = new Set(['smtp_auth', 'capabilities', 'auth', 'servers']);

export function renderYaml(imp: Imported): string {
  const doc = new Document(imp.config);
  const root = doc.contents as YAMLMap;
  flowLists(root);
  const head = [...imp.header];
  const mapOf = (scope: Note['scope']): YAMLMap | undefined => {
    if (scope === 'top') return root;
    const servers = root.get('servers', true);
    const m = isSeq(servers) ? servers.items[scope] : undefined;
    return isMap(m) ? m : undefined;
  };
  for (const n of imp.notes) {
    const map = mapOf(n.scope);
    const idx = map && n.key !== undefined ? map.items.findIndex((p) => isScalar(p.key) && p.key.value === n.key) : -1;
    const pair = map?.items[idx];
    if (pair && isScalar(pair.key) && !(n.scope !== 'top' && idx === 0)) {
      pair.key.commentBefore = join(pair.key.commentBefore, n.text);
    } else if (map && n.scope !== 'top') {
      // A server block's comment without its key: at the head of the block.
      map.commentBefore = join(map.commentBefore, n.text);
    } else {
      head.push(n.text);
    }
  }
  doc.commentBefore = head.map((l) => ` ${l}`).join('\n');
  return doc.toString({ lineWidth: 0 });
}

function join(before: string | null | undefined, text: string): string {
  return before ? `${before}\n ${text}` : ` ${text}`;
}

function flowLists(node: unknown): void {
  if (isMap(node)) {
    for (const p of node.items) {
      if (isScalar(p.key) && FLOW.has(String(p.key.value)) && isSeq(p.value) && p.value.items.every(isScalar)) p.value.flow = true;
      flowLists(p.value);
    }
  } else if (isSeq(node)) {
    for (const i of node.items) flowLists(i);
  }
}

/** How many of the comments say that a directive was not carried over (or an include not followed). */
export function droppedCount(imp: Imported): number {
  return imp.notes.filter((n) => / — not (carried over|followed):/.test(n.text)).length + imp.header.filter((h) => / — not (carried over|followed):/.test(h)).length;
}

/**
 * `postern import-nginx FILE`: the YAML on stdout (exit 0); a syntax error, a file without a
 * mail {} server, or a result that does not validate on stderr (exit 1).
 */
export function importNginxCommand(file: string | undefined, out: (s: string) => void, err: (s: string) => void): number {
  if (!file) {
    err('postern: import-nginx needs the nginx configuration file: postern import-nginx FILE\n');
    return 2;
  }
  let imp: Imported;
  try {
    imp = convertNginx(parseNginxFile(file), file);
  } catch (e) {
    if (e instanceof NginxSyntaxError || e instanceof ImportError) {
      err(`postern: import-nginx: ${e.message}\n`);
      return 1;
    }
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'EACCES' || code === 'EISDIR') {
      err(`postern: import-nginx: cannot read ${file}: ${code}\n`);
      return 1;
    }
    throw e;
  }
  const yaml = renderYaml(imp);
  out(yaml);
  try {
    parseConfig(yaml, 'the converted configuration');
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    err(`postern: import-nginx: ${e.message}\n`);
    return 1;
  }
  const n = droppedCount(imp);
  if (n > 0) err(`postern: import-nginx: ${n} directive${n === 1 ? '' : 's'} not carried over: see the "# nginx:" comments\n`);
  return 0;
}
