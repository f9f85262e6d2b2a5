/**
 * DNS servers on loopback for the resolver and DNSBL tests. Nothing here ever talks to a DNS server
 * outside the machine: every server listens on 127.0.0.1 and the code under test is pointed at it.
 *
 * - startCraftedDns(): a tiny UDP DNS server in this process that answers whatever the test tells it,
 *   byte for byte: PTR targets with CR, LF, spaces, dots inside a label, SERVFAIL, silence. Port 0, so it
 *   never races another test for a port.
 * - startSilentDns(): a UDP socket that reads queries and never answers (the timeout case).
 * - startDnsmasq(): Debian's dnsmasq (package dnsmasq) as an authoritative-only server: --no-resolv,
 *   --no-hosts, no config file, no pid file, local data only (--host-record, --ptr-record, --txt-record);
 *   names under `local` zones that it does not know get NXDOMAIN, never a forwarded query.
 * - startRbldnsd(): Debian's rbldnsd (package rbldnsd) serving DNSBL zones from files in a private directory.
 *
 * dnsmasq and rbldnsd need a fixed port: one is picked by binding UDP port 0 and releasing it, and the start
 * is retried (at most 3 times) when the daemon then finds it taken. Readiness is not guessed from log lines:
 * the helper queries the server until it answers (bounded, 10 s), so a slow machine only makes the start slower.
 * A missing binary throws (the tests never skip a missing peer).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { cleanupOnExit, requireBinary } from './postfix.js';

export const TYPE = { A: 1, NS: 2, CNAME: 5, SOA: 6, PTR: 12, TXT: 16, AAAA: 28 } as const;

/** What the crafted server answers to one question. */
export interface CraftedAnswer {
  /** DNS RCODE (0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, 5 REFUSED). Default 0. */
  rcode?: number;
  /** Never answer this question. */
  drop?: boolean;
  /** PTR targets: a string is split on dots; an array of Buffers gives the raw labels (dots, CR, LF inside a label). */
  ptr?: (string | Buffer[])[];
  a?: string[];
  aaaa?: string[];
  /** TTL of every record in the answer. Default 300. */
  ttl?: number;
}

export type CraftedZone = (qname: string, qtype: number) => CraftedAnswer | undefined;

export interface LoopbackDns {
  /** `127.0.0.1:PORT`, as given to a resolver's servers. */
  server: string;
  port: number;
  /** Questions received so far, as `qname/qtype` (qname lower-cased, without the trailing dot). */
  queries: string[];
  close(): Promise<void>;
}

function encodeName(labels: Buffer[]): Buffer {
  const parts: Buffer[] = [];
  for (const l of labels) {
    if (l.length === 0) continue;
    parts.push(Buffer.from([l.length]), l);
  }
  parts.push(Buffer.from([0]));
  return Buffer.concat(parts);
}

function nameLabels(name: string | Buffer[]): Buffer[] {
  return typeof name === 'string' ? name.split('.').filter(Boolean).map((l) => Buffer.from(l, 'latin1')) : name;
}

function ipv6Bytes(addr: string): Buffer {
  const [head, tail] = addr.includes('::') ? addr.split('::') as [string, string] : [addr, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  const b = Buffer.alloc(16);
  groups.forEach((g, i) => b.writeUInt16BE(parseInt(g, 16), i * 2));
  return b;
}

function rr(owner: Buffer, type: number, ttl: number, rdata: Buffer): Buffer {
  const fixed = Buffer.alloc(10);
  fixed.writeUInt16BE(type, 0);
  fixed.writeUInt16BE(1, 2);
  fixed.writeUInt32BE(ttl, 4);
  fixed.writeUInt16BE(rdata.length, 8);
  return Buffer.concat([owner, fixed, rdata]);
}

/** Parses the question of a query; undefined for anything it cannot read (then no answer is sent). */
function parseQuestion(msg: Buffer): { id: number; flags: number; qname: string; qtype: number; end: number } | undefined {
  if (msg.length < 12 || msg.readUInt16BE(4) !== 1) return undefined;
  let off = 12;
  const labels: string[] = [];
  for (;;) {
    const len = msg[off];
    if (len === undefined || len > 63) return undefined;
    off++;
    if (len === 0) break;
    labels.push(msg.subarray(off, off + len).toString('latin1'));
    off += len;
  }
  if (off + 4 > msg.length) return undefined;
  return { id: msg.readUInt16BE(0), flags: msg.readUInt16BE(2), qname: labels.join('.').toLowerCase(), qtype: msg.readUInt16BE(off), end: off + 4 };
}

function buildReply(msg: Buffer, q: NonNullable<ReturnType<typeof parseQuestion>>, a: CraftedAnswer): Buffer {
  const ttl = a.ttl ?? 300;
  const owner = Buffer.from([0xc0, 12]); // compression pointer to the question's name
  const answers: Buffer[] = [];
  if (q.qtype === TYPE.PTR) for (const p of a.ptr ?? []) answers.push(rr(owner, TYPE.PTR, ttl, encodeName(nameLabels(p))));
  if (q.qtype === TYPE.A) for (const ip of a.a ?? []) answers.push(rr(owner, TYPE.A, ttl, Buffer.from(ip.split('.').map(Number))));
  if (q.qtype === TYPE.AAAA) for (const ip of a.aaaa ?? []) answers.push(rr(owner, TYPE.AAAA, ttl, ipv6Bytes(ip)));
  const header = Buffer.alloc(12);
  header.writeUInt16BE(q.id, 0);
  // QR, AA, RD copied from the query, RA; RCODE.
  header.writeUInt16BE(0x8400 | (q.flags & 0x0100) | 0x0080 | ((a.rcode ?? 0) & 0xf), 2);
  header.writeUInt16BE(1, 4);
  header.writeUInt16BE(answers.length, 6);
  return Buffer.concat([header, msg.subarray(12, q.end), ...answers]);
}

async function bindUdp(onMessage: (msg: Buffer, rinfo: dgram.RemoteInfo, sock: dgram.Socket) => void): Promise<dgram.Socket> {
  const sock = dgram.createSocket('udp4');
  sock.on('message', (msg, rinfo) => onMessage(msg, rinfo, sock));
  sock.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    sock.once('error', reject);
    sock.bind(0, '127.0.0.1', () => { sock.off('error', reject); resolve(); });
  });
  return sock;
}

function asLoopback(sock: dgram.Socket, queries: string[]): LoopbackDns {
  const port = sock.address().port;
  return {
    server: `127.0.0.1:${port}`, port, queries,
    close: () => new Promise<void>((resolve) => { try { sock.close(() => resolve()); } catch { resolve(); } }),
  };
}

/** A UDP DNS server answering from `zone` (unknown questions: NXDOMAIN). */
export async function startCraftedDns(zone: CraftedZone): Promise<LoopbackDns> {
  const queries: string[] = [];
  const sock = await bindUdp((msg, rinfo, s) => {
    const q = parseQuestion(msg);
    if (!q) return;
    queries.push(`${q.qname}/${q.qtype}`);
    const a = zone(q.qname, q.qtype) ?? { rcode: 3 };
    if (a.drop) return;
    s.send(buildReply(msg, q, a), rinfo.port, rinfo.address);
  });
  return asLoopback(sock, queries);
}

/** A UDP socket that takes every query and never answers. */
export async function startSilentDns(): Promise<LoopbackDns> {
  const queries: string[] = [];
  const sock = await bindUdp((msg) => {
    const q = parseQuestion(msg);
    if (q) queries.push(`${q.qname}/${q.qtype}`);
  });
  return asLoopback(sock, queries);
}

/** A UDP port that was free a moment ago (the daemons bind UDP and TCP on it; a clash is retried). */
async function freeUdpPort(): Promise<number> {
  const s = await bindUdp(() => {});
  const port = s.address().port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** Sends one query for `name`/`qtype` and resolves true when any reply with the same id arrives within `ms`. */
function answers(port: number, name: string, qtype: number, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = dgram.createSocket('udp4');
    const id = Math.floor(Math.random() * 0xffff);
    const header = Buffer.alloc(12);
    header.writeUInt16BE(id, 0);
    header.writeUInt16BE(0x0100, 2);
    header.writeUInt16BE(1, 4);
    const tail = Buffer.alloc(4);
    tail.writeUInt16BE(qtype, 0);
    tail.writeUInt16BE(1, 2);
    const query = Buffer.concat([header, encodeName(nameLabels(name)), tail]);
    const done = (v: boolean): void => { clearTimeout(timer); try { sock.close(); } catch {} resolve(v); };
    const timer = setTimeout(() => done(false), ms);
    sock.on('error', () => {}); // ICMP port unreachable while the daemon is not up yet
    sock.on('message', (msg) => { if (msg.length >= 2 && msg.readUInt16BE(0) === id) done(true); });
    sock.send(query, port, '127.0.0.1');
  });
}

export interface DaemonDns extends LoopbackDns {
  /** What the daemon wrote to stdout and stderr (for failure messages). */
  output(): string;
}

interface DaemonSpec {
  binary: string;
  pkg: string;
  args: (port: number) => string[];
  /** A question the daemon answers once it is serving. */
  probe: { name: string; qtype: number };
  cwd?: string;
  cleanup?: () => Promise<void>;
}

const READY_MS = 10_000;

async function startDaemon(spec: DaemonSpec): Promise<DaemonDns> {
  const bin = await requireBinary(spec.binary, spec.pkg);
  for (let attempt = 1; ; attempt++) {
    const port = await freeUdpPort();
    let out = '';
    let exited: number | string | null | undefined;
    const child: ChildProcess = spawn(bin, spec.args(port), { cwd: spec.cwd, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
    child.stderr!.on('data', (d: Buffer) => { out += d.toString(); });
    // An interrupted or crashed test run SIGKILLs the daemon's process group on its way out.
    const unregister = cleanupOnExit(() => { try { process.kill(-child.pid!, 'SIGKILL'); } catch {} });
    const exit = new Promise<void>((resolve) => child.once('exit', (code, signal) => {
      exited = code ?? signal;
      unregister();
      resolve();
    }));
    child.once('error', (err) => { out += String(err); exited = 'spawn error'; });
    const kill = async (): Promise<void> => {
      if (exited !== undefined) return;
      try { process.kill(-child.pid!, 'SIGTERM'); } catch {}
      const t = setTimeout(() => { try { process.kill(-child.pid!, 'SIGKILL'); } catch {} }, 2000);
      await exit;
      clearTimeout(t);
    };
    const deadline = Date.now() + READY_MS;
    let ready = false;
    while (exited === undefined && Date.now() < deadline) {
      if (await answers(port, spec.probe.name, spec.probe.qtype, 200)) { ready = true; break; }
      await sleep(50);
    }
    if (ready) {
      return {
        server: `127.0.0.1:${port}`, port, queries: [], output: () => out,
        close: async () => { await kill(); await spec.cleanup?.(); },
      };
    }
    await kill();
    if (attempt < 3 && /in use/i.test(out)) continue;
    await spec.cleanup?.();
    throw new Error(`${spec.binary} did not answer on 127.0.0.1:${port} within ${READY_MS} ms (exit ${String(exited)}): ${out.trim()}`);
  }
}

export interface DnsmasqOptions {
  /** Zones answered from local data only (NXDOMAIN for unknown names), e.g. `test`, `2.0.192.in-addr.arpa`. */
  local: string[];
  /** `--host-record=name,addr[,addr]`: A/AAAA for the name and PTR for each address. */
  hostRecords?: string[];
  /** `--ptr-record=owner,target`. */
  ptrRecords?: string[];
  /** `--server=/zone/127.0.0.1#PORT`: zones forwarded (to loopback servers only: this helper never reaches outside). */
  forward?: string[];
  /** `--txt-record=name,text`. */
  txtRecords?: string[];
  /** `--local-ttl`: TTL of the answers. Default 60. */
  ttl?: number;
}

/**
 * dnsmasq 2.90 as an authoritative-only server on 127.0.0.1. `--conf-file=/dev/null`: /etc/dnsmasq.conf is not
 * read; `--pid-file` with no value: no pid file (instances run concurrently); `--no-daemon` keeps it our child,
 * and `--log-facility=-` logs to stderr. The probe question is `postern-probe.<first local zone>` TXT,
 * always served (a --txt-record added here).
 */
export async function startDnsmasq(o: DnsmasqOptions): Promise<DaemonDns> {
  const probe = `postern-probe.${o.local[0] ?? 'test'}`;
  return startDaemon({
    binary: 'dnsmasq', pkg: 'dnsmasq', probe: { name: probe, qtype: TYPE.TXT },
    args: (port) => [
      '--no-daemon', '--conf-file=/dev/null', '--pid-file', '--log-facility=-',
      `--port=${port}`, '--listen-address=127.0.0.1', '--bind-interfaces', '--no-resolv', '--no-hosts', '--no-negcache',
      `--local-ttl=${o.ttl ?? 60}`,
      ...o.local.map((z) => `--local=/${z}/`),
      ...(o.forward ?? []).map((f) => {
        if (!/^\/[^/]+\/127\.0\.0\.1#\d+$/.test(f)) throw new Error(`startDnsmasq: forward only to 127.0.0.1: ${f}`);
        return `--server=${f}`;
      }),
      ...(o.hostRecords ?? []).map((r) => `--host-record=${r}`),
      ...(o.ptrRecords ?? []).map((r) => `--ptr-record=${r}`),
      ...[`${probe},ready`, ...(o.txtRecords ?? [])].map((r) => `--txt-record=${r}`),
    ],
  });
}

export interface RbldnsdZone {
  /** The zone name, e.g. `bl.test`. */
  name: string;
  type: 'ip4set' | 'ip4trie' | 'ip6trie' | 'ip6tset';
  /** The zone file's lines (see rbldnsd(8), e.g. `:127.0.0.2:Listed` then `192.0.2.20`). */
  lines: string[];
}

/**
 * rbldnsd 1.0 (snapshot 20210120) in the foreground (`-n`), bound with `-b 127.0.0.1/PORT`, zone files in a
 * private directory given as `-w` (no chroot). As root it would drop to user rbldns, so it runs as `-u root`
 * when we are root and the files stay private. `-t 60`: TTL of the answers. The probe asks TXT of the
 * zone's own name, which rbldnsd answers (NXDOMAIN or not, an answer is an answer).
 */
export async function startRbldnsd(zones: RbldnsdZone[]): Promise<DaemonDns> {
  if (zones.length === 0) throw new Error('startRbldnsd: no zones');
  const dir = await mkdtemp(path.join(os.tmpdir(), 'postern-rbldnsd-'));
  await chmod(dir, 0o755);
  const specs: string[] = [];
  for (const [i, z] of zones.entries()) {
    const file = `zone${i}.txt`;
    await writeFile(path.join(dir, file), z.lines.join('\n') + '\n', { mode: 0o644 });
    specs.push(`${z.name}:${z.type}:${file}`);
  }
  const asRoot = process.getuid?.() === 0;
  return startDaemon({
    binary: 'rbldnsd', pkg: 'rbldnsd', cwd: dir, probe: { name: `1.0.0.127.${zones[0]!.name}`, qtype: TYPE.A },
    args: (port) => ['-n', ...(asRoot ? ['-u', 'rbldns'] : []), '-b', `127.0.0.1/${port}`, '-w', dir, '-t', '60', ...specs],
    cleanup: () => rm(dir, { recursive: true, force: true }),
  });
}
