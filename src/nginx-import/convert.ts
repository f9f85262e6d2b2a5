/**
 * An nginx configuration's `mail {}` block as a Postern configuration object, with the comments
 * that say what did not carry over. nginx's inheritance is kept: a directive in `mail {}` is the
 * default of every `server {}` that does not set it (merged by directive name, as nginx merges).
 * A directive of one protocol (smtp_*, imap_*, pop3_*, xclient, resolver…) is inherited only by
 * the servers of that protocol, as nginx reads it only there. One server becomes the top level;
 * several become `servers:`, with what they all share from `mail {}` at the top level and each
 * block stating only what differs (Postern merges auth, tls, backend_tls and timeouts one level
 * deep and replaces every other key whole). Servers of different protocols are never one block.
 */
import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { configSchema } from '../config/schema.js';
import { asWritten, at, type Directive } from './parse.js';
import { mailboxPart } from './mailbox.js';
import { convertServer, notCarried, type Obj, type RawNote, type Scope } from './server.js';
import { protocolOfDirective, REASONS, type MailProtocol } from './unsupported.js';
import { duration, listenAddress, nginxTime, protocolOfPort } from './values.js';

/** A comment for the output: at the top level or in `servers[scope]`, next to `key` when it is there. */
export interface Note {
  scope: 'top' | number;
  key?: string;
  text: string;
}

export interface Imported {
  config: Obj;
  /** Comments for the head of the file. */
  header: string[];
  notes: Note[];
}

/** The nginx file cannot be converted at all (no mail {}, no server in it). */
export class ImportError extends Error {
  override name = 'ImportError';
}

/** Keys Postern merges one level deep from the top level into a server block (src/config/load.ts). */
const MERGED = new Set(['auth', 'tls', 'backend_tls', 'timeouts']);
/** SMTP settings that Postern's IMAP and POP3 servers never read: at the top level when every SMTP server shares them. */
const SMTP_ONLY_KEYS = new Set(['capabilities', 'max_message_size', 'proxy_smtp_auth']);
const MAIN_KEPT = new Set(['worker_processes', 'user', 'worker_shutdown_timeout']);

export function convertNginx(tree: Directive[], file: string): Imported {
  const header = [`Converted from ${path.basename(file)} by postern import-nginx.`];
  const mainNotes: RawNote[] = [];
  const main: Obj = {};
  const ignored: string[] = [];
  const mails: Directive[] = [];
  for (const d of tree) {
    if (d.name === 'mail' && d.block) mails.push(d);
    else if (d.name === 'worker_processes') workers(d, main, mainNotes);
    else if (d.name === 'user') user(d, main, mainNotes);
    else if (d.name === 'worker_shutdown_timeout') {
      const ms = nginxTime(d.args[0] ?? '');
      if (ms === null || d.args.length !== 1) mainNotes.push(notCarried(d, 'not an nginx time'));
      else main.timeouts = { shutdown: duration(ms) };
    } else if (d.name === 'include' && d.notFollowed) mainNotes.push({ d, text: `nginx: ${asWritten(d)} — not followed: ${d.notFollowed}` });
    else if (!ignored.includes(d.block ? `${d.name} {}` : d.name)) ignored.push(d.block ? `${d.name} {}` : d.name);
  }
  if (ignored.length) header.push(`nginx: outside mail {} only ${[...MAIN_KEPT].join(', ')} are read; ignored: ${ignored.join(', ')}`);
  const [mail, ...extra] = mails;
  if (!mail) throw new ImportError(`${file}: no mail {} block`);
  for (const d of extra) mainNotes.push(notCarried(d, `a second mail {} (nginx refuses it); only the one at line ${mail.line} is converted`));

  const mailLevel = mail.block!.filter((d) => !(d.name === 'server' && d.block));
  const mailSet = new Set<Directive>(mailLevel);
  const mailScope = scopeOf(mailLevel.filter((d) => d.name !== 'listen' && d.name !== 'protocol'));
  for (const d of mailLevel) if (d.name === 'listen' || d.name === 'protocol') mainNotes.push(notCarried(d, REASONS[d.name]!));

  const smtp: { self: Directive; protocol: MailProtocol; out: ReturnType<typeof convertServer> }[] = [];
  for (const srv of mail.block!.filter((d) => d.name === 'server' && d.block)) {
    const own = srv.block!;
    const listens = own.filter((d) => d.name === 'listen');
    const protoD = own.find((d) => d.name === 'protocol');
    const ports = listens.map((d) => listenAddress(d.args[0] ?? '')).flatMap((a) => ('port' in a ? [a.port] : []));
    const inferred = ports.map(protocolOfPort).find((p) => p !== null) ?? null;
    const written = protoD?.args[0] ?? inferred;
    const where = `server {} at ${at(srv)}`;
    if (listens.length === 0) {
      mainNotes.push({ d: srv, text: `nginx: ${where} — not carried over: it has no listen (nginx refuses that)` });
      continue;
    }
    const serverNotes: RawNote[] = [];
    const protocol: MailProtocol = written === 'imap' || written === 'pop3' ? written : 'smtp';
    if (written !== protocol) {
      const why = written === null ? 'no protocol and no port that names one (25, 465, 587, 110, 995, 143, 993), which nginx refuses' : `unknown protocol ${written}`;
      serverNotes.push({ d: protoD ?? srv, key: 'listen', text: `nginx: ${where} — ${why}; taken as SMTP` });
    }
    // What mail {} sets for another protocol is not this server's (nginx ignores it here).
    const scope: Scope = new Map([...mailScope].filter(([name]) => (protocolOfDirective(name) ?? protocol) === protocol));
    for (const [name, ds] of scopeOf(own.filter((d) => d.name !== 'listen' && d.name !== 'protocol'))) scope.set(name, ds);
    const out = convertServer(scope, listens, srv, protocol, protocol === 'smtp' ? undefined : mailboxPart(protocol));
    out.notes.unshift(...serverNotes);
    const authD = scope.get('auth_http')?.[0];
    const url = ((out.settings.route as Obj | undefined)?.auth_http as Obj | undefined)?.url;
    const hint = authD && typeof url === 'string' ? responderHint(tree, url) : null;
    if (hint) out.notes.push({ d: authD!, key: 'route', text: `nginx: ${asWritten(authD!)} — note: ${hint}` });
    smtp.push({ self: srv, protocol, out });
  }
  if (smtp.length === 0) throw new ImportError(`${file}: no server {} in mail {} at line ${mail.line}`);
  const protocols = new Set(smtp.map((s) => s.protocol));
  for (const d of mailLevel) {
    const p = protocolOfDirective(d.name);
    if (p && !protocols.has(p)) mainNotes.push(notCarried(d, `there is no ${p.toUpperCase()} server {} in this mail {} (nginx reads it only in ${p.toUpperCase()} servers)`));
  }

  const notes: Note[] = [];
  const seen = new Set<string>();
  const add = (scope: Note['scope'], n: RawNote): void => {
    const id = `${scope}|${n.key}|${n.text}`;
    if (seen.has(id)) return;
    seen.add(id);
    notes.push({ scope, key: n.key, text: n.text });
  };
  for (const n of sortNotes(mainNotes)) add('top', n);
  const all = smtp.map((s) => s.out.settings);
  // The top level is what every server takes from mail {}: as that protocol's when they all speak one.
  const only = protocols.size === 1 ? [...protocols][0]! : 'smtp';
  const top = all.length > 1 ? common(convertServer(mailScope, [], null, only, only === 'smtp' ? undefined : mailboxPart(only)).settings, all, smtp.map((s) => s.protocol === 'smtp')) : {};
  // Servers of one protocol that differ only in their listeners (starttls, smtp_auth, ssl: per
  // listener in Postern, per server in nginx) become one Postern server with several listeners.
  const groups: { block: Obj; protocol: MailProtocol; members: number[] }[] = [];
  all.map((s) => blockOf(s, top)).forEach((block, i) => {
    const { listen, ...rest } = block;
    const protocol = smtp[i]!.protocol;
    const g = groups.find((x) => x.protocol === protocol && isDeepStrictEqual({ ...x.block, listen: undefined }, { ...rest, listen: undefined }));
    if (g) g.block.listen = [...(g.block.listen as unknown[]), ...(listen as unknown[])];
    else groups.push({ block: { ...block, listen: [...(listen as unknown[])] }, protocol, members: [i] });
    if (g) g.members.push(i);
  });
  const many = groups.length > 1;
  const config = many
    ? { ...withMain(main, top), servers: groups.map((g) => g.block) }
    : withMain(main, { ...all[0]!, listen: groups[0]!.block.listen });
  smtp.forEach(({ out }, i) => {
    const scope = groups.findIndex((g) => g.members.includes(i));
    for (const n of sortNotes(out.notes)) add(many && !mailSet.has(n.d) ? scope : 'top', n);
  });
  return { config: ordered(config), header, notes };
}

function scopeOf(ds: Directive[]): Scope {
  const m: Scope = new Map();
  for (const d of ds) m.set(d.name, [...(m.get(d.name) ?? []), d]);
  return m;
}

function workers(d: Directive, main: Obj, notes: RawNote[]): void {
  const v = d.args[0];
  const n = Number(v);
  if (d.args.length === 1 && v === 'auto') main.workers = 'auto';
  else if (d.args.length === 1 && Number.isInteger(n) && n >= 1 && n <= 256) main.workers = n;
  else notes.push(notCarried(d, 'Postern takes 1 to 256 workers, or auto', 'workers'));
}

/** `user name [group]`: `user` and `group` (without a group Postern takes the user's primary group, nginx the one named like the user). */
function user(d: Directive, main: Obj, notes: RawNote[]): void {
  const [name, group] = d.args;
  if (name && d.args.length <= 2 && configSchema.safeParse({ user: name, group }).success) {
    main.user = name;
    if (group !== undefined) main.group = group;
  } else {
    notes.push(notCarried(d, 'expected a user name and optionally a group name', 'workers'));
  }
}

/** The process-wide main-context settings, and worker_shutdown_timeout merged into timeouts. */
function withMain(main: Obj, settings: Obj): Obj {
  const out: Obj = { ...settings };
  if (main.workers !== undefined) out.workers = main.workers;
  if (main.user !== undefined) out.user = main.user;
  if (main.group !== undefined) out.group = main.group;
  if (main.timeouts) out.timeouts = { ...(settings.timeouts as Obj | undefined), ...(main.timeouts as Obj) };
  return out;
}

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** What every server has, taken from the mail {} settings: the top level of `servers:`. */
function common(mailSettings: Obj, all: Obj[], isSmtp: boolean[]): Obj {
  const top: Obj = {};
  const smtpServers = all.filter((_, i) => isSmtp[i]);
  for (const [k, v] of Object.entries(mailSettings)) {
    if (k === 'listen') continue;
    if (SMTP_ONLY_KEYS.has(k)) {
      if (smtpServers.length && smtpServers.every((s) => isDeepStrictEqual(s[k], v))) top[k] = v;
      continue;
    }
    if (MERGED.has(k) && isObj(v)) {
      const sub: Obj = {};
      for (const [sk, sv] of Object.entries(v)) if (all.every((s) => isObj(s[k]) && isDeepStrictEqual((s[k] as Obj)[sk], sv))) sub[sk] = sv;
      if (Object.keys(sub).length) top[k] = sub;
    } else if (all.every((s) => isDeepStrictEqual(s[k], v))) {
      top[k] = v;
    }
  }
  return top;
}

/** A server block: its listeners and what differs from the top level. */
function blockOf(s: Obj, top: Obj): Obj {
  const block: Obj = {};
  for (const [k, v] of Object.entries(s)) {
    if (k !== 'listen' && MERGED.has(k) && isObj(v)) {
      const t = isObj(top[k]) ? top[k] : {};
      const sub = Object.fromEntries(Object.entries(v).filter(([sk, sv]) => !isDeepStrictEqual(t[sk], sv)));
      if (Object.keys(sub).length) block[k] = sub;
    } else if (k === 'listen' || !isDeepStrictEqual(top[k], v)) {
      block[k] = v;
    }
  }
  return ordered(block);
}

const ORDER = ['workers', 'user', 'group', 'protocol', 'server_name', 'listen', 'route', 'xclient', 'proxy_smtp_auth', 'proxy_pass_error_message',
  'imap', 'pop3', 'capabilities', 'max_message_size', 'max_line_length', 'max_errors', 'greeting_delay', 'resolver', 'checks', 'tls', 'timeouts', 'servers'];

function ordered(o: Obj): Obj {
  const rank = (k: string): number => (ORDER.includes(k) ? ORDER.indexOf(k) : ORDER.length - 1);
  const out = Object.fromEntries(Object.entries(o).sort(([a], [b]) => rank(a) - rank(b)));
  if (isObj(out.timeouts)) {
    const t = ['idle', 'auth', 'backend', 'handshake', 'relay_idle', 'shutdown'];
    out.timeouts = Object.fromEntries(Object.entries(out.timeouts).sort(([a], [b]) => t.indexOf(a) - t.indexOf(b)));
  }
  return out;
}

function sortNotes(ns: RawNote[]): RawNote[] {
  return [...ns].sort((a, b) => (a.d.file === b.d.file ? a.d.line - b.d.line : 0));
}

/**
 * An auth_http URL served by an http {} server of the same nginx (the how-to's setup): a note
 * saying so, and when that server answers one fixed Auth-Server/Auth-Port, the static route that
 * would replace it.
 */
function responderHint(tree: Directive[], url: string): string | null {
  const u = new URL(url);
  const port = String(u.port || 80);
  const local = ['localhost', '127.0.0.1', '[::1]'].includes(u.hostname);
  const listensThere = (d: Directive): boolean => {
    const m = /^(?:(.*):)?(\d+)$/.exec(d.args[0] ?? '');
    return d.name === 'listen' && m?.[2] === port && (local || m[1] === undefined || m[1] === u.hostname);
  };
  const servers = tree.filter((d) => d.name === 'http' && d.block).flatMap((h) => h.block!.filter((d) => d.name === 'server' && d.block));
  const srv = servers.find((s) => s.block!.some(listensThere));
  if (!srv) return null;
  const headers = new Map<string, Set<string>>();
  const walk = (ds: Directive[]): void => {
    for (const d of ds) {
      const name = d.args[0]?.toLowerCase();
      if (d.name === 'add_header' && name && d.args[1] !== undefined) headers.set(name, (headers.get(name) ?? new Set()).add(d.args[1]));
      if (d.block) walk(d.block);
    }
  };
  walk(srv.block!);
  const host = [...(headers.get('auth-server') ?? [])];
  const p = [...(headers.get('auth-port') ?? [])];
  const fixed = host.length === 1 && p.length === 1 && !(host[0]! + p[0]!).includes('$') ? `${host[0]!.includes(':') ? `[${host[0]}]` : host[0]}:${p[0]}` : null;
  return `the auth_http service is this nginx's own http {} server (${at(srv)}), which Postern does not replace: keep it running${fixed ? `, or, since it answers every request with Auth-Server and Auth-Port ${fixed}, use route: {static: "${fixed}"} instead` : ''}`;
}
