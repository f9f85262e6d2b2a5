/**
 * One nginx mail `server {}`, with what it inherits from `mail {}` already merged in (by
 * directive name, as nginx merges), as the settings of one Postern server, plus a comment for
 * every directive that does not carry over. What every protocol has (listeners, auth_http, ssl_*,
 * timeouts, PROXY protocol) is here with SMTP's own directives; IMAP's and POP3's are in ./mailbox.ts.
 */
import { asWritten, at, variablesOf, type Directive } from './parse.js';
import { anchorOf, reasonFor, type MailProtocol } from './unsupported.js';
import { authHttpUrl, duration, flag, listenAddress, nginxSize, nginxTime, resolverAddress } from './values.js';

export type Obj = Record<string, unknown>;

/** A comment about one directive, to go next to `key` of the server it belongs to. */
export interface RawNote {
  d: Directive;
  key?: string;
  text: string;
}

export interface ServerOut {
  settings: Obj;
  notes: RawNote[];
}

/** Directive name → every occurrence in the server's effective scope. */
export type Scope = Map<string, Directive[]>;

const MECHANISMS = new Set(['none', 'plain', 'login', 'cram-md5', 'external']);
const RESERVED_CAPS = ['CHUNKING', 'STARTTLS', 'AUTH', 'XCLIENT', 'XFORWARD', 'BDAT'];
const CAPABILITY = /^[A-Za-z0-9][A-Za-z0-9-]*( [\x21-\x7e]+)*$/;
const LISTEN_PARAMS = new Set(['ssl', 'proxy_protocol']);

export function notCarried(d: Directive, why: string, key = anchorOf(d.name)): RawNote {
  return { d, key, text: `nginx: ${asWritten(d)} — not carried over: ${why}` };
}

type Take = (name: string) => Directive[];
type One = (name: string, anyArgs?: boolean) => Directive | undefined;

/** What a protocol's own part of the conversion works with (the directives it takes are not commented as unknown). */
export interface Tools {
  take: Take;
  one: One;
  time: (name: string, zero?: boolean) => string | undefined;
  bool: (name: string) => boolean | undefined;
  notes: RawNote[];
  scope: Scope;
  /** The server {} (null for the settings of mail {} itself). */
  self: Directive | null;
}

/** The directives of one protocol into the settings `s`. */
export type ProtocolPart = (t: Tools, s: Obj) => void;

/**
 * Converts the effective directives of one server; `listens` are the server's own `listen` lines.
 * `part` converts the protocol's own directives (SMTP's by default); a directive of another
 * protocol in `scope` is commented (nginx ignores it there).
 */
export function convertServer(scope: Scope, listens: Directive[], self: Directive | null, protocol: MailProtocol = 'smtp', part: ProtocolPart = convertSmtp): ServerOut {
  const smtp = protocol === 'smtp';
  const notes: RawNote[] = [];
  const s: Obj = {};
  const taken = new Set<string>(['listen', 'protocol', 'server']);
  const take = (name: string): Directive[] => {
    taken.add(name);
    const ds = scope.get(name) ?? [];
    for (const d of ds) {
      const vars = variablesOf(d);
      if (vars.length) notes.push({ d, key: anchorOf(name), text: `nginx: ${asWritten(d)} — ${vars.join(', ')} kept as written: nginx's mail module does not expand variables either` });
    }
    return ds;
  };
  /** The one occurrence of a single-valued directive (with exactly one argument unless `anyArgs`); others are commented. */
  const one = (name: string, anyArgs = false): Directive | undefined => {
    const [first, ...dups] = take(name);
    for (const d of dups) notes.push(notCarried(d, `a second ${name} (nginx refuses it as a duplicate); the first one is used`));
    if (first && (anyArgs ? first.args.length === 0 : first.args.length !== 1)) {
      notes.push(notCarried(first, `${name} takes one value here`));
      return undefined;
    }
    return first;
  };
  const time = (name: string, zero = false): string | undefined => {
    const d = one(name);
    if (!d) return undefined;
    const ms = nginxTime(d.args[0]!);
    if (ms === 0 && zero) return '0s';
    if (ms === null || ms <= 0) {
      notes.push(notCarried(d, ms === null ? 'not an nginx time' : 'Postern needs a time above zero'));
      return undefined;
    }
    return duration(ms);
  };
  const bool = (name: string): boolean | undefined => {
    const d = one(name);
    if (!d) return undefined;
    const v = flag(d.args[0]);
    if (v === null) notes.push(notCarried(d, 'expected on or off'));
    return v ?? undefined;
  };
  const tls: Obj = {};
  const timeouts: Obj = {};

  const name = one('server_name');
  if (name) {
    if (/^[A-Za-z0-9.-]+$/.test(name.args[0]!)) s.server_name = name.args[0];
    else notes.push(notCarried(name, 'Postern\'s server_name is one host name (letters, digits, "." and "-")', 'server_name'));
  }

  // Listeners carry what nginx sets per server: starttls, smtp_auth, listen … ssl.
  const starttlsD = one('starttls');
  let starttls = starttlsD?.args[0] ?? 'off';
  if (!['on', 'off', 'only'].includes(starttls)) {
    notes.push(notCarried(starttlsD!, 'expected on, only or off'));
    starttls = 'off';
  }
  const sslOn = bool('ssl') === true;
  const authDs = smtp ? take('smtp_auth') : [];
  const mechanisms: string[] = [];
  for (const d of authDs) {
    const bad = d.args.filter((m) => !MECHANISMS.has(m));
    if (bad.length) notes.push(notCarried(d, `unknown mechanism ${bad.join(', ')} (nginx has none, plain, login, cram-md5, external)`));
    for (const m of d.args) if (MECHANISMS.has(m) && !mechanisms.includes(m)) mechanisms.push(m);
  }
  // nginx's default is `smtp_auth plain login`: AUTH required, no unauthenticated mail.
  if (smtp && (authDs.length === 0 || mechanisms.length === 0)) mechanisms.push('plain', 'login');
  const authMechs = mechanisms.some((m) => m !== 'none');
  // PROXY protocol: the trusted load balancers (inbound), and the header to the back-end (outbound).
  const realIp = take('set_real_ip_from');
  const nets: string[] = [];
  for (const d of realIp) {
    if (d.args.length === 1 && /^[0-9A-Fa-f.:]+(\/\d{1,3})?$/.test(d.args[0]!)) nets.push(d.args[0]!);
    else notes.push(notCarried(d, 'Postern takes addresses and networks (CIDR) only, no host names or unix:'));
  }
  if (nets.length) s.set_real_ip_from = nets;
  const listen: unknown[] = [];
  const listenOf: Directive[] = [];
  let plaintextNoted = false;
  for (const d of listens) {
    const [addr, ...params] = d.args;
    const a = listenAddress(addr ?? '');
    if ('error' in a) {
      notes.push(notCarried(d, a.error, 'listen'));
      continue;
    }
    const entry: Obj = { address: a.address };
    const implicit = sslOn || params.includes('ssl');
    if (implicit) entry.implicit_tls = true;
    else if (starttls !== 'off') entry.starttls = starttls;
    if (smtp) entry.smtp_auth = [...mechanisms];
    const dropped = params.filter((p) => !LISTEN_PARAMS.has(p));
    if (params.includes('proxy_protocol')) {
      // Postern takes the header only from set_real_ip_from peers; nginx without it believes none.
      if (nets.length > 0) entry.proxy_protocol = true;
      else dropped.unshift('proxy_protocol');
    }
    if (dropped.length) {
      const why = dropped.map((p) => p === 'proxy_protocol' ? 'proxy_protocol needs set_real_ip_from (the load balancers allowed to send the header), which this server has not' : `${p.split('=')[0]} has no Postern equivalent`);
      notes.push(notCarried(d, `${why.join('; ')}; the address is carried over`, 'listen'));
    }
    if (authMechs && !implicit && starttls === 'off') {
      // No TLS at all on this port: nginx takes AUTH in the clear, and so must Postern or AUTH is never possible.
      entry.auth_plaintext = true;
      const about = authDs[0] ?? d;
      if (!plaintextNoted) notes.push({ d: about, key: 'listen', text: `nginx: ${asWritten(about)} — AUTH in the clear where there is no TLS, as nginx does (auth_plaintext: true)` });
      plaintextNoted = true;
    }
    listenOf.push(d);
    const plain = smtp ? Object.keys(entry).length === 2 && (entry.smtp_auth as string[]).join() === 'none' : Object.keys(entry).length === 1;
    listen.push(plain ? a.address : entry);
  }
  mergeWildcards(listen, listenOf, notes);
  if (listens.length) s.listen = listen;
  if (starttlsD && starttls === 'on' && authMechs && listen.some((e) => typeof e === 'object' && (e as Obj).starttls === 'on')) {
    notes.push({ d: starttlsD, key: 'listen', text: `nginx: ${asWritten(starttlsD)} — AUTH is offered only after STARTTLS (nginx offers it before too); auth_plaintext: true on a listener restores nginx's way` });
  }

  // route: nginx always asks auth_http.
  const auth = one('auth_http');
  const headers: Obj = {};
  for (const d of take('auth_http_header')) {
    if (d.args.length !== 2) notes.push(notCarried(d, 'auth_http_header takes a name and a value'));
    else if (!/^[A-Za-z0-9-]+$/.test(d.args[0]!)) notes.push(notCarried(d, 'Postern\'s header names are letters, digits and "-"'));
    else if (/[\x00-\x08\x0a-\x1f\x7f]/.test(d.args[1]!)) notes.push(notCarried(d, 'a header value with control characters'));
    else headers[d.args[0]!] = d.args[1];
  }
  if (auth) {
    const u = authHttpUrl(auth.args[0]!);
    if ('error' in u) notes.push(notCarried(auth, u.error));
    else s.route = { auth_http: Object.keys(headers).length ? { url: u.url, headers } : { url: u.url } };
  } else if (self) {
    notes.push({ d: self, key: undefined, text: `nginx: server {} at ${at(self)} has no auth_http (nginx refuses that); Postern's default route, static 127.0.0.1:25, applies` });
  }
  const authTimeout = time('auth_http_timeout');
  if (authTimeout) timeouts.auth = authTimeout;
  const passCert = bool('auth_http_pass_client_cert');
  if (passCert !== undefined) tls.pass_client_cert = passCert;

  const pp = one('proxy_protocol');
  if (pp) {
    const v = pp.args[0];
    if (v === 'on' || v === 'v2' || v === 'off') s.proxy_protocol = v === 'on' ? 'v1' : v;
    else notes.push(notCarried(pp, 'proxy_protocol takes on, v2 or off'));
  }
  const ppem = bool('proxy_pass_error_message');
  if (ppem !== undefined) s.proxy_pass_error_message = ppem;
  const maxErrors = one('max_errors');
  if (maxErrors) {
    const n = Number(maxErrors.args[0]);
    if (!Number.isInteger(n) || n < 0) notes.push(notCarried(maxErrors, 'not a number'));
    else s.max_errors = Math.max(n, 1);
  }
  part({ take, one, time, bool, notes, scope, self }, s);

  convertSsl(take, one, time, tls, notes);
  if (Object.keys(tls).length) s.tls = tls;

  const idle = time('timeout');
  if (idle) Object.assign(timeouts, { idle, backend: idle, handshake: idle });
  const relay = time('proxy_timeout');
  if (relay) timeouts.relay_idle = relay;
  if (Object.keys(timeouts).length) s.timeouts = timeouts;

  for (const [n, ds] of scope) {
    if (taken.has(n)) continue;
    for (const d of ds) {
      if (n === 'include' && d.notFollowed) notes.push({ d, key: undefined, text: `nginx: ${asWritten(d)} — not followed: ${d.notFollowed}` });
      else notes.push(notCarried(d, reasonFor(n, protocol)));
    }
  }
  return { settings: s, notes };
}

/** SMTP's own directives: xclient, proxy_smtp_auth, smtp_capabilities, smtp_client_buffer, smtp_greeting_delay, resolver. */
function convertSmtp({ take, one, time, bool, notes, scope }: Tools, s: Obj): void {
  const xclient = bool('xclient');
  if (xclient !== undefined) s.xclient = xclient;
  const psa = bool('proxy_smtp_auth');
  if (psa !== undefined) s.proxy_smtp_auth = psa ? 'plain' : 'off';
  const capDs = take('smtp_capabilities');
  if (capDs.length) {
    const caps: string[] = [];
    for (const d of capDs) {
      const dropped: string[] = [];
      for (const c of d.args) {
        const kw = c.split(' ')[0]!.toUpperCase();
        if (RESERVED_CAPS.includes(kw) || !CAPABILITY.test(c)) dropped.push(c);
        else if (kw === 'SIZE') {
          const n = Number(c.split(' ')[1] ?? '0');
          if (!caps.includes('SIZE')) caps.push('SIZE');
          if (Number.isInteger(n) && n >= 0) s.max_message_size = n;
        } else if (!caps.includes(c)) caps.push(c);
      }
      if (dropped.length) {
        const why = dropped.map((c) => CAPABILITY.test(c) ? `${c} (Postern adds STARTTLS and AUTH itself and cannot honour CHUNKING, BDAT, XCLIENT or XFORWARD before the hand-off)` : `${JSON.stringify(c)} (not an EHLO keyword)`);
        notes.push(notCarried(d, `${why.join('; ')}; the others are carried over`));
      }
    }
    s.capabilities = caps;
  }
  const buf = one('smtp_client_buffer');
  if (buf) {
    const n = nginxSize(buf.args[0]!);
    if (n === null) notes.push(notCarried(buf, 'not an nginx size'));
    else {
      s.max_line_length = Math.max(n, 512);
      if (n < 512) notes.push({ d: buf, key: 'max_line_length', text: `nginx: ${asWritten(buf)} — raised to 512, the least RFC 5321 allows` });
    }
  }
  const delay = time('smtp_greeting_delay', true);
  if (delay) s.greeting_delay = delay;

  // nginx resolves every client's name when it has a resolver (Client-Host, XCLIENT NAME).
  const resolverD = one('resolver', true);
  const rtimeout = time('resolver_timeout');
  if (resolverD && resolverD.args[0] !== 'off') {
    const servers: string[] = [];
    const dropped: string[] = [];
    for (const a of resolverD.args) {
      const v = a.includes('=') ? null : resolverAddress(a);
      if (v) servers.push(v);
      else dropped.push(a);
    }
    if (dropped.length) notes.push(notCarried(resolverD, `${dropped.join(', ')}: Postern takes IP addresses (ip, ip:port, [ipv6]:port) and no parameters; the rest is carried over`));
    if (servers.length) {
      const r: Obj = { servers };
      if (rtimeout) {
        r.deadline = rtimeout;
        if (nginxTime(rtimeout)! < 1000) r.timeout = rtimeout;
      }
      s.resolver = r;
      s.checks = { reverse_dns: true };
    }
  } else if (rtimeout) {
    notes.push(notCarried(scope.get('resolver_timeout')![0]!, 'there is no resolver'));
  }
}

/**
 * nginx binds `[::]:25` with ipv6only=on, so `listen 25; listen [::]:25;` is its usual pair.
 * Postern's `[::]:25` takes IPv4 as well (Linux without net.ipv6.bindv6only), so 0.0.0.0:25 next
 * to it could not be bound: the pair becomes `[::]:25` alone.
 */
function mergeWildcards(listen: unknown[], from: Directive[], notes: RawNote[]): void {
  const addr = (e: unknown): string => (typeof e === 'string' ? e : String((e as Obj).address));
  const rest = (e: unknown): string => JSON.stringify(typeof e === 'string' ? {} : { ...(e as Obj), address: undefined });
  for (let i = listen.length - 1; i >= 0; i--) {
    const m = /^0\.0\.0\.0:(\d+)$/.exec(addr(listen[i]));
    const v6 = m ? listen.find((e) => addr(e) === `[::]:${m[1]}`) : undefined;
    if (!m || v6 === undefined) continue;
    const d = from[i]!;
    const same = rest(v6) === rest(listen[i]);
    notes.push({ d, key: 'listen', text: `nginx: ${asWritten(d)} — ${same ? 'merged into' : 'not carried over: it differs from'} [::]:${m[1]}, which also takes IPv4 in Postern (nginx binds [::] with ipv6only=on; Postern cannot bind both)` });
    listen.splice(i, 1);
    from.splice(i, 1);
  }
}

function convertSsl(take: Take, one: One, time: (n: string) => string | undefined,
  tls: Obj, notes: RawNote[]): void {
  const certs = take('ssl_certificate');
  const keys = take('ssl_certificate_key');
  const pairs: Obj[] = [];
  certs.forEach((c, i) => {
    const k = keys[i];
    const bad = [c, k].find((d) => d && /^(data|engine|store):/.test(d.args[0] ?? ''));
    if (!k) notes.push(notCarried(c, 'no ssl_certificate_key for it (they pair up in order)'));
    else if (bad) notes.push(notCarried(bad, 'Postern reads certificates and keys from PEM files only (no data:, engine: or store:)'));
    else pairs.push({ cert: c.args[0], key: k.args[0] });
  });
  for (const k of keys.slice(certs.length)) notes.push(notCarried(k, 'no ssl_certificate for it (they pair up in order)'));
  if (pairs.length) tls.certificates = pairs;
  if (pairs.length > 1) {
    notes.push({ d: certs[1]!, key: 'tls', text: `nginx: ${asWritten(certs[1]!)} — nginx picks among its certificates by key type (RSA, ECDSA), Postern by the SNI name; the first is the default` });
  }
  const protocols = one('ssl_protocols', true);
  if (protocols) {
    const modern: string[] = protocols.args.filter((p) => p === 'TLSv1.2' || p === 'TLSv1.3');
    const old = protocols.args.filter((p) => !modern.includes(p));
    if (modern.length) tls.min_version = modern.includes('TLSv1.2') ? 'TLSv1.2' : 'TLSv1.3';
    const why: string[] = [];
    if (old.length) why.push(`${old.join(', ')}: Postern never offers TLS below 1.2`);
    if (modern.length && !modern.includes('TLSv1.3')) why.push('Postern always offers TLS 1.3 as well');
    if (why.length) notes.push(notCarried(protocols, `${why.join('; ')}${modern.length ? ` (min_version ${String(tls.min_version)})` : ''}`));
  }
  const ciphers = one('ssl_ciphers');
  if (ciphers) tls.ciphers = ciphers.args[0];
  const passwords = one('ssl_password_file');
  if (passwords) tls.password_file = passwords.args[0];
  const prefer = one('ssl_prefer_server_ciphers');
  if (prefer && prefer.args[0] !== 'off') notes.push(notCarried(prefer, reasonFor('ssl_prefer_server_ciphers')));
  const tickets = one('ssl_session_tickets');
  if (tickets && tickets.args[0] !== 'on') notes.push(notCarried(tickets, reasonFor('ssl_session_tickets')));
  const st = time('ssl_session_timeout');
  if (st) tls.session_timeout = st;
  const verify = one('ssl_verify_client');
  if (verify) {
    if (['on', 'off', 'optional', 'optional_no_ca'].includes(verify.args[0]!)) tls.verify_client = verify.args[0];
    else notes.push(notCarried(verify, 'expected on, off, optional or optional_no_ca'));
  }
  const ca = one('ssl_client_certificate');
  const trusted = one('ssl_trusted_certificate');
  if (ca) tls.client_ca = ca.args[0];
  else if (trusted) tls.client_ca = trusted.args[0];
  if (ca && trusted) notes.push(notCarried(trusted, reasonFor('ssl_trusted_certificate')));
  const depth = one('ssl_verify_depth');
  if (depth) {
    const n = Number(depth.args[0]);
    if (Number.isInteger(n) && n >= 1 && n <= 10) tls.verify_depth = n;
    else notes.push(notCarried(depth, 'Postern takes a depth of 1 to 10'));
  }
}
