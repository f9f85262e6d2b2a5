/**
 * The inbound PROXY protocol (nginx `listen … proxy_protocol` with `set_real_ip_from`): before
 * anything else on such a listener, the peer must be a trusted load balancer and its header must
 * arrive whole within timeouts.proxy_protocol. The header's source is then the client for
 * everything that follows — limits, checks, Client-IP, XCLIENT ADDR, policy, the access log.
 * A LOCAL header (a load balancer's health check) or v1 UNKNOWN means "no client behind": the
 * connection counts as the peer's own. An untrusted peer, a malformed header or a late one: the
 * connection is closed without a reply, as nginx, Postfix and HAProxy do (a reply would be
 * plaintext SMTP on a connection whose first bytes are not SMTP).
 */
import { BlockList, isIP, type Socket } from 'node:net';
import type { ProxiedFrom } from '../domain.js';
import { ProxyHeaderReader } from '../proxy/reader.js';
import { parseNetwork } from '../config/rules-check.js';
import { unmapIPv4 } from './socket-events.js';

/** Where a connection comes from once its header (if any) is read. */
export interface Origin {
  addr: string;
  port: number;
  serverAddr: string;
  serverPort: number;
  proxy?: ProxiedFrom;
}

export type ProxyOutcome = { origin: Origin } | { error: 'PST_PROXY_UNTRUSTED' | 'PST_PROXY_INVALID' | 'PST_PROXY_TIMEOUT'; detail: string };

/** set_real_ip_from as a BlockList (networks were checked by check-config). */
export function trustedPeers(networks: readonly string[]): BlockList {
  const list = new BlockList();
  for (const n of networks) {
    const p = parseNetwork(n);
    if (typeof p !== 'string') list.addSubnet(p.address, p.prefix, p.family);
  }
  return list;
}

/** The socket's own endpoints, for connections without a header. */
export function directOrigin(socket: Socket): Origin {
  return { addr: unmapIPv4(socket.remoteAddress ?? ''), port: socket.remotePort ?? 0, serverAddr: unmapIPv4(socket.localAddress ?? ''), serverPort: socket.localPort ?? 0 };
}

/**
 * Reads the header off `socket` (paused and with its bytes after the header put back when it
 * calls `done`), or refuses the connection. `done` is called once.
 */
export function readProxyHeader(socket: Socket, trusted: BlockList, timeoutMs: number, done: (o: ProxyOutcome) => void): void {
  const direct = directOrigin(socket);
  const family = isIP(direct.addr) === 6 ? 'ipv6' : 'ipv4';
  if (!trusted.check(direct.addr, family)) return done({ error: 'PST_PROXY_UNTRUSTED', detail: `${direct.addr} is not in set_real_ip_from` });
  const reader = new ProxyHeaderReader();
  let settled = false;
  const finish = (o: ProxyOutcome, rest?: Buffer): void => {
    if (settled) return;
    settled = true;
    clearTimeout(timer);
    socket.removeListener('data', onData);
    socket.removeListener('end', onEnd);
    socket.removeListener('close', onEnd);
    socket.pause();
    // Only now, paused and without our listener: unshift on a flowing socket emits 'data' at once,
    // which would feed the bytes after the header back to this reader (it throws once done).
    if (rest && rest.length > 0) socket.unshift(rest);
    done(o);
  };
  const timer = setTimeout(() => finish({ error: 'PST_PROXY_TIMEOUT', detail: `no whole header within ${timeoutMs} ms (${reader.buffered.length} bytes)` }), timeoutMs);
  const onEnd = (): void => finish({ error: 'PST_PROXY_INVALID', detail: `closed after ${reader.buffered.length} bytes of a header` });
  const onData = (chunk: Buffer): void => {
    const r = reader.push(chunk);
    if (r.kind === 'more') return;
    if (r.kind === 'error') return finish({ error: 'PST_PROXY_INVALID', detail: `${r.reason}: ${escaped(reader.buffered)}` });
    const h = r.header;
    if (h.command === 'local' || !h.source || !h.destination || h.family === 'unix') return finish({ origin: direct }, r.rest);
    const t = h.tlvs;
    const proxy: ProxiedFrom = {
      peer: direct.addr,
      version: h.version,
      addr: unmapIPv4(h.source.address),
      port: h.source.port,
      serverAddr: unmapIPv4(h.destination.address),
      serverPort: h.destination.port,
      ...(t.authority !== undefined ? { authority: t.authority } : {}),
      ...(t.ssl ? { ssl: { verified: t.ssl.verified, ...(t.ssl.version ? { version: t.ssl.version } : {}), ...(t.ssl.cipher ? { cipher: t.ssl.cipher } : {}), ...(t.ssl.cn ? { cn: t.ssl.cn } : {}) } } : {}),
    };
    finish({ origin: { addr: proxy.addr, port: proxy.port, serverAddr: proxy.serverAddr, serverPort: proxy.serverPort, proxy } }, r.rest);
  };
  socket.on('data', onData);
  // 'end' for a FIN (the listener allows half-open connections), 'close' for a reset or destroy().
  socket.on('end', onEnd);
  socket.on('close', onEnd);
}

/** The first bytes of a refused header, for the log: printable ASCII, the rest escaped. */
function escaped(b: Buffer): string {
  // eslint-disable-next-line no-control-regex
  return b.subarray(0, 64).toString('latin1').replace(/[^\x20-\x7e]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/** The access record's `proxy`: which load balancer the client came through, and what it said of TLS. */
export function proxyRecord(p: ProxiedFrom): Record<string, unknown> {
  return { peer: p.peer, version: p.version, ...(p.authority !== undefined ? { authority: p.authority } : {}), ...(p.ssl ? { ssl: p.ssl.version ?? true, ...(p.ssl.cn && p.ssl.verified ? { cn: p.ssl.cn } : {}) } : {}) };
}
