/**
 * Real IMAP and POP3 clients for the interop tests, each run as its own process with a hard time bound: curl
 * (imap://, imaps://, pop3://, pop3s://, --ssl-reqd for STARTTLS/STLS), Python's imaplib and poplib (a script
 * given its parameters as JSON), `openssl s_client -starttls imap|pop3` driven line by line, and a raw line
 * client (Node socket) for dialogs no client library writes (literals, ID, XCLIENT, PROXY headers).
 *
 * Every client can be bound to another loopback source address (127.0.0.2 …: the whole 127/8 is local on
 * Linux), so a back-end's log can show that it saw the original client, not the proxy.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import tls from 'node:tls';
import path from 'node:path';
import { requireBinary, TLS_FIXTURES } from './postfix.js';

export const TEST_CA = path.join(TLS_FIXTURES, 'ca.pem');

export interface RunResult {
  /** Exit code (null: killed by the time bound). */
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/** Runs `file args`, never longer than `timeoutMs` (SIGKILL), and resolves whatever the exit code. */
export function runBounded(file: string, args: string[], timeoutMs: number, input?: string | Buffer): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(file, args, { encoding: 'buffer', timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : null) : 0;
      resolve({ code, stdout, stderr: stderr.toString('utf8') });
    });
    if (input !== undefined) child.stdin!.end(input);
    else child.stdin!.end();
  });
}

/** curl with a time bound; `args` as on its command line (the URL among them). `-v` output lands in stderr. */
export async function curl(args: string[], timeoutMs = 20_000): Promise<RunResult> {
  const bin = await requireBinary('curl', 'curl');
  return runBounded(bin, ['--silent', '--show-error', '--max-time', String(Math.ceil(timeoutMs / 1000) - 2), '--connect-timeout', '5', ...args], timeoutMs);
}

/** The `user:password` of curl's -u, where curl's own meta characters need none of its escaping: passed as is. */
export function curlUser(user: string, password: string): string[] {
  return ['--user', `${user}:${password}`];
}

const PY_COMMON = String.raw`
import base64, hashlib, json, socket, ssl, sys
p = json.loads(sys.argv[1])
src = p.get('source')
_orig = socket.create_connection
def _cc(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, **kw):
    return _orig(address, timeout, (src, 0) if src else source_address, **kw)
socket.create_connection = _cc
ctx = None
if p.get('tls', 'none') != 'none':
    ctx = ssl.create_default_context(cafile=p['ca'])
out = {}
def done():
    print(json.dumps(out))
    sys.exit(0)
def b64(b):
    return base64.b64encode(b).decode()
`;

/** imaplib: connect (plain, STARTTLS or implicit TLS), log in one way, fetch message 1's BODY[] and log out. */
const PY_IMAP = PY_COMMON + String.raw`
import imaplib
T = 15
try:
    if p['tls'] == 'implicit':
        M = imaplib.IMAP4_SSL(p['host'], p['port'], ssl_context=ctx, timeout=T)
    else:
        M = imaplib.IMAP4(p['host'], p['port'], timeout=T)
    out['greeting'] = M.welcome.decode('latin1')
    if p['tls'] == 'starttls':
        out['starttls'] = M.starttls(ssl_context=ctx)[0]
    out['capabilities'] = list(M.capabilities)
    user, pw = p['user'], p['password'].encode('utf-8')
    mode = p['mode']
    if mode == 'login':
        # imaplib quotes both (escaping \ and "); ASCII only
        r = M.login(user, p['password'])
    elif mode == 'literal':
        # LOGIN user {n} - the password as a synchronising literal (imaplib waits for the + continuation)
        M.literal = pw
        r = M._simple_command('LOGIN', user)
        if r[0] == 'OK':
            M.state = 'AUTH'
    elif mode == 'plain':
        r = M.authenticate('PLAIN', lambda _: b'\0' + user.encode('utf-8') + b'\0' + pw)
    else:
        raise Exception('unknown mode ' + mode)
    out['login'] = [r[0], [x.decode('latin1') if isinstance(x, bytes) else str(x) for x in r[1]]]
    if p.get('fetch'):
        typ, data = M.select('INBOX')
        out['select'] = [typ, data[0].decode('latin1')]
        typ, data = M.fetch('1', '(BODY.PEEK[])')
        out['fetch'] = typ
        out['body'] = b64(data[0][1])
    out['logout'] = M.logout()[0]
except imaplib.IMAP4.error as e:
    out['error'] = str(e)
done()
`;

/** poplib: connect (plain, STLS or implicit TLS), log in one way, RETR 1 (dot-unstuffed by poplib) and QUIT. */
const PY_POP3 = PY_COMMON + String.raw`
import poplib
T = 15
try:
    if p['tls'] == 'implicit':
        P = poplib.POP3_SSL(p['host'], p['port'], context=ctx, timeout=T)
    else:
        P = poplib.POP3(p['host'], p['port'], timeout=T)
    out['greeting'] = P.getwelcome().decode('latin1')
    if p['tls'] == 'starttls':
        out['stls'] = P.stls(context=ctx).decode('latin1')
    out['capa'] = {k: v for k, v in P.capa().items()}
    user, pw = p['user'], p['password']
    mode = p['mode']
    if mode == 'user':
        out['user'] = P.user(user).decode('latin1')
        r = P.pass_(pw)
    elif mode == 'apop':
        r = P.apop(user, pw)
    elif mode == 'plain':
        r = P._shortcmd('AUTH PLAIN ' + b64(b'\0' + user.encode('utf-8') + b'\0' + pw.encode('utf-8')))
    else:
        raise Exception('unknown mode ' + mode)
    out['login'] = r.decode('latin1')
    if p.get('fetch'):
        out['stat'] = list(P.stat())
        resp, lines, octets = P.retr(1)
        out['body'] = b64(b''.join(l + b'\r\n' for l in lines))
        out['octets'] = octets
    out['quit'] = P.quit().decode('latin1')
except poplib.error_proto as e:
    out['error'] = (e.args[0].decode('latin1') if isinstance(e.args[0], bytes) else str(e.args[0]))
done()
`;

export interface PyClientParams {
  host?: string;
  port: number;
  source?: string;
  tls?: 'none' | 'starttls' | 'implicit';
  user: string;
  password: string;
  fetch?: boolean;
}

export interface PyImapResult {
  greeting: string;
  capabilities: string[];
  starttls?: string;
  login?: [string, string[]];
  select?: [string, string];
  fetch?: string;
  /** Base64 of message 1's BODY[]. */
  body?: string;
  logout?: string;
  /** imaplib's exception text (a NO or BAD to the login, say). */
  error?: string;
}

export interface PyPop3Result {
  greeting: string;
  stls?: string;
  capa: Record<string, string[]>;
  user?: string;
  login?: string;
  stat?: [number, number];
  body?: string;
  octets?: number;
  quit?: string;
  error?: string;
}

async function python<T>(script: string, params: object, timeoutMs: number): Promise<T> {
  const bin = await requireBinary('python3', 'python3');
  const r = await runBounded(bin, ['-c', script, JSON.stringify(params)], timeoutMs);
  if (r.code !== 0) throw new Error(`python3 exited ${r.code}: ${r.stderr}${r.stdout.toString('utf8')}`);
  return JSON.parse(r.stdout.toString('utf8')) as T;
}

export function pyImap(params: PyClientParams & { mode: 'login' | 'literal' | 'plain' }, timeoutMs = 30_000): Promise<PyImapResult> {
  return python<PyImapResult>(PY_IMAP, { host: '127.0.0.1', tls: 'none', ca: TEST_CA, ...params }, timeoutMs);
}

export function pyPop3(params: PyClientParams & { mode: 'user' | 'apop' | 'plain' }, timeoutMs = 30_000): Promise<PyPop3Result> {
  return python<PyPop3Result>(PY_POP3, { host: '127.0.0.1', tls: 'none', ca: TEST_CA, ...params }, timeoutMs);
}

/**
 * A line-oriented session over a child's stdin/stdout or a socket: `expect(re)` waits (bounded) until the text
 * received so far, from where the last expect stopped, matches; `send(line)` writes it with CRLF.
 */
abstract class Expecter {
  protected buf = Buffer.alloc(0);
  protected pos = 0;
  protected ended = false;
  #waiters = new Set<() => void>();

  protected feed(chunk: Buffer): void {
    this.buf = Buffer.concat([this.buf, chunk]);
    this.#wake();
  }

  protected end(): void {
    this.ended = true;
    this.#wake();
  }

  #wake(): void {
    for (const w of this.#waiters) w();
  }

  /** Everything received so far. */
  get received(): Buffer {
    return this.buf;
  }

  /** Resolves with the match once the unread text matches `re`; consumes up to the end of the match. */
  async expect(re: RegExp, timeoutMs = 10_000): Promise<RegExpExecArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const text = this.buf.subarray(this.pos).toString('latin1');
      const m = re.exec(text);
      if (m) {
        this.pos += Buffer.byteLength(text.slice(0, m.index + m[0].length), 'latin1');
        return m;
      }
      if (this.ended) throw new Error(`ended before ${re}; unread: ${JSON.stringify(text)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${re}; unread: ${JSON.stringify(text)}`);
      await new Promise<void>((resolve) => {
        const w = () => {
          clearTimeout(t);
          this.#waiters.delete(w);
          resolve();
        };
        const t = setTimeout(w, left);
        this.#waiters.add(w);
      });
    }
  }

  /** Resolves once the peer has closed (true), or false after `timeoutMs`. */
  async closed(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return this.ended;
  }

  abstract write(data: string | Buffer): void;

  send(line: string | Buffer): void {
    this.write(Buffer.concat([typeof line === 'string' ? Buffer.from(line, 'utf8') : line, Buffer.from('\r\n')]));
  }
}

/** A raw TCP (optionally TLS) line client. */
export class LineClient extends Expecter {
  #sock: net.Socket;

  private constructor(sock: net.Socket) {
    super();
    this.#sock = sock;
    sock.on('data', (c: Buffer) => this.feed(c));
    sock.on('close', () => this.end());
    sock.on('error', () => this.end());
  }

  static connect(port: number, opts: { host?: string; localAddress?: string; tls?: boolean; preamble?: Buffer; timeoutMs?: number } = {}): Promise<LineClient> {
    return new Promise((resolve, reject) => {
      const host = opts.host ?? '127.0.0.1';
      const base = { port, host, ...(opts.localAddress && { localAddress: opts.localAddress }) };
      const t = setTimeout(() => reject(new Error(`connect to ${host}:${port} timed out`)), opts.timeoutMs ?? 5000);
      const sock = opts.tls ? tls.connect({ ...base, ca: undefined, rejectUnauthorized: false }) : net.connect(base);
      sock.once(opts.tls ? 'secureConnect' : 'connect', () => {
        clearTimeout(t);
        if (opts.preamble) sock.write(opts.preamble);
        resolve(new LineClient(sock));
      });
      sock.once('error', (err) => {
        clearTimeout(t);
        reject(err);
      });
    });
  }

  /** STARTTLS/STLS done (the server said OK): a new client over TLS on this socket; this one is spent. */
  startTls(opts: { ca: Buffer; servername: string; timeoutMs?: number }): Promise<LineClient> {
    const raw = this.#sock;
    raw.removeAllListeners('data');
    raw.removeAllListeners('close');
    raw.removeAllListeners('error');
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('TLS handshake timed out')), opts.timeoutMs ?? 5000);
      const sock = tls.connect({ socket: raw, ca: opts.ca, servername: opts.servername });
      sock.once('secureConnect', () => {
        clearTimeout(t);
        resolve(new LineClient(sock));
      });
      sock.once('error', (err) => {
        clearTimeout(t);
        reject(err);
      });
    });
  }

  get localPort(): number {
    return this.#sock.localPort ?? 0;
  }

  write(data: string | Buffer): void {
    this.#sock.write(data);
  }

  close(): void {
    this.#sock.destroy();
  }
}

/**
 * `openssl s_client -starttls imap|pop3` against `port`, verifying the server against the test CA (a failed
 * verification ends the handshake), stdin/stdout as the session after the handshake. `-quiet` prints only
 * the server's bytes after the STARTTLS exchange; `-crlf` is not used (send() writes CRLF itself).
 */
export class OpensslClient extends Expecter {
  #child: ChildProcess;
  #stderr = '';
  #timer: NodeJS.Timeout;

  private constructor(child: ChildProcess, timeoutMs: number) {
    super();
    this.#child = child;
    child.stdout!.on('data', (c: Buffer) => this.feed(c));
    child.stderr!.on('data', (c: Buffer) => (this.#stderr += c.toString('utf8')));
    child.on('exit', () => this.end());
    this.#timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  }

  static async start(port: number, proto: 'imap' | 'pop3', timeoutMs = 30_000, extra: string[] = []): Promise<OpensslClient> {
    const bin = await requireBinary('openssl', 'openssl');
    const child = spawn(bin, ['s_client', '-connect', `127.0.0.1:${port}`, '-starttls', proto, '-CAfile', TEST_CA, '-verify_return_error', '-verify_ip', '127.0.0.1', '-quiet', '-ign_eof', ...extra], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    return new OpensslClient(child, timeoutMs);
  }

  get stderr(): string {
    return this.#stderr;
  }

  write(data: string | Buffer): void {
    this.#child.stdin!.write(data);
  }

  async stop(): Promise<void> {
    clearTimeout(this.#timer);
    if (!this.ended) {
      this.#child.stdin!.end();
      this.#child.kill('SIGTERM');
    }
    await this.closed(5000);
    if (!this.ended) this.#child.kill('SIGKILL');
  }
}

/**
 * A test message as Dovecot serves it (CRLF line ends, stored as is): 8-bit bytes, a lone "." line and lines
 * starting with dots (POP3 dot-stuffing), long lines, and `size` bytes of body in all, so the relay carries
 * it in many chunks. `id` goes into Message-ID and Subject.
 */
export function mailboxMessage(id: string, size = 64 * 1024): Buffer {
  const head = [
    `Message-ID: <${id}@x.test>`,
    'Date: Wed, 02 Dec 2026 07:00:00 +0000',
    'From: Alice <a@x.test>',
    'To: <alice@y.test>',
    `Subject: mailbox ${id}`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=utf-8',
    'Content-Transfer-Encoding: 8bit',
    '',
    'J\u00fcrgen says gr\u00fc\u00dfe \u20ac.',
    '.',
    '.a line that starts with a dot',
    '..two dots',
    '\tindented\t with tabs ',
  ].join('\r\n') + '\r\n';
  const lines: string[] = [];
  let n = Buffer.byteLength(head);
  for (let i = 0; n < size; i++) {
    const line = `${String(i).padStart(6, '0')} ${'abcdefghijklmnopqrstuvwxyz0123456789'.repeat(2)} ${i % 7 === 0 ? '.' : ''}`;
    lines.push(line);
    n += Buffer.byteLength(line) + 2;
  }
  return Buffer.from(head + lines.join('\r\n') + '\r\nlast line\r\n', 'utf8');
}
