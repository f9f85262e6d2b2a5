/**
 * The auth_http requests of Postern's IMAP and POP3 fronts against nginx's own (the reference: nginx-light with
 * libnginx-mod-mail, test/helpers/nginx-imap-pop3.ts), header by header — names, order and values — for the same
 * dialogs from the same client address: IMAP LOGIN (atoms, quoted strings, literals), AUTHENTICATE PLAIN (with
 * and without an initial response), LOGIN and CRAM-MD5, a refused password, a refused password with Auth-Wait and
 * the second attempt (Auth-Login-Attempt 2), LOGIN after STARTTLS; POP3 USER/PASS, APOP, AUTH PLAIN (both ways),
 * LOGIN and CRAM-MD5, a refused password, the Auth-Wait retry, USER/PASS after STLS. Both proxies ask
 * the same auth service (which checks the password, APOP or CRAM-MD5 digest) and log in to the same real
 * Dovecot, and what the client is told is compared too.
 *
 * Values that differ by nature are compared by form only: the salt (nginx: `<random.time@server_name>`) and the
 * digests made with it (APOP, CRAM-MD5). With TLS, nginx is given Postern's protocol range (TLS 1.2 and 1.3), so
 * Auth-SSL-Protocol and Auth-SSL-Cipher must agree exactly (both sides are OpenSSL 3). Headers of the
 * HTTP transport itself (nginx speaks HTTP/1.0 with one connection per request; Postern keeps connections alive)
 * are named in TRANSPORT and left out; any other header on one side only is a difference.
 */
import assert from 'node:assert/strict';
import { createHash, createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AuthStub, type RecordedRequest } from '../helpers/auth-stub.js';
import { DOVECOT_USERS, startDovecot, type DovecotInstance } from '../helpers/dovecot.js';
import { INVALID, mailboxAuth } from '../helpers/imap-pop3-auth.js';
import { LineClient } from '../helpers/imap-pop3-clients.js';
import { startNginxMail, type NginxMail } from '../helpers/nginx-imap-pop3.js';
import { startPostern, type RunningPostern } from '../helpers/postern.js';
import { TLS_FIXTURES } from '../helpers/postfix.js';

const { alice, erin, dora } = DOVECOT_USERS;
const CERTS = [{ cert: path.join(TLS_FIXTURES, 'server.pem'), key: path.join(TLS_FIXTURES, 'server.key') }];
const CA = readFileSync(path.join(TLS_FIXTURES, 'ca.pem'));
/** Both connect from here, so Client-IP must agree. */
const CLIENT = '127.0.0.11';

/** HTTP transport headers (names lower-cased) that say how the request travels, not what it asks. */
const TRANSPORT = new Set(['connection', 'keep-alive', 'content-length', 'transfer-encoding']);
/** Headers whose values differ by nature, each with the form both must have. */
const BY_FORM: Record<string, RegExp> = {
  'auth-salt': /^<\d+\.\d+@proxy\.test>$/,
};
/** Auth-Pass is a digest of the (random) salt for these methods. */
const DIGEST_METHODS = new Set(['apop', 'cram-md5']);

const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');
const plainIr = (user: string, pw: string) => b64(Buffer.concat([Buffer.from(`\0${user}\0`), Buffer.from(pw, 'utf8')]));

/** A dialog up to and including the login's reply (then LOGOUT/QUIT); resolves with the lines the client was sent that matter. */
type Dialog = (c: LineClient) => Promise<string[]>;

async function line(c: LineClient, re = /^.*\r\n/): Promise<string> {
  return (await c.expect(re))[0].replace(/\r\n$/, '');
}

/** IMAP: the login's tagged reply (skipping untagged lines), then LOGOUT. */
async function imapTagged(c: LineClient, tag: string): Promise<string> {
  for (;;) {
    const l = await line(c);
    if (l.startsWith(`${tag} `)) return l;
  }
}

async function imapEnd(c: LineClient, reply: string): Promise<string[]> {
  if (/^\S+ OK /.test(reply)) {
    c.send('z LOGOUT');
    await c.expect(/^z OK .*\r\n/m);
  }
  return [reply];
}

const imapDialogs: Record<string, Dialog> = {
  'LOGIN with atoms': async (c) => {
    c.send(`a1 LOGIN ${alice.user} ${alice.password}`);
    return imapEnd(c, await imapTagged(c, 'a1'));
  },
  'LOGIN with quoted strings and escapes': async (c) => {
    const q = (s: string) => `"${s.replace(/[\\"]/g, (m) => `\\${m}`)}"`;
    c.send(`a1 LOGIN ${q(erin.user)} ${q(erin.password)}`);
    return imapEnd(c, await imapTagged(c, 'a1'));
  },
  'LOGIN with {n} literals (UTF-8 password)': async (c) => {
    const pw = Buffer.from(dora.password, 'utf8');
    c.write(`a1 LOGIN {${dora.user.length}}\r\n`);
    const cont1 = await line(c);
    c.write(`${dora.user} {${pw.length}}\r\n`);
    const cont2 = await line(c);
    c.write(Buffer.concat([pw, Buffer.from('\r\n')]));
    return [cont1, cont2, ...(await imapEnd(c, await imapTagged(c, 'a1')))];
  },
  'AUTHENTICATE PLAIN with a continuation': async (c) => {
    c.send('a1 AUTHENTICATE PLAIN');
    const cont = await line(c);
    c.send(plainIr(dora.user, dora.password));
    return [cont, ...(await imapEnd(c, await imapTagged(c, 'a1')))];
  },
  'AUTHENTICATE PLAIN with an initial response': async (c) => {
    c.send(`a1 AUTHENTICATE PLAIN ${plainIr(alice.user, alice.password)}`);
    return imapEnd(c, await imapTagged(c, 'a1'));
  },
  'AUTHENTICATE LOGIN': async (c) => {
    c.send('a1 AUTHENTICATE LOGIN');
    const u = await line(c);
    c.send(b64(erin.user));
    const pw = await line(c);
    c.send(b64(erin.password));
    return [u, pw, ...(await imapEnd(c, await imapTagged(c, 'a1')))];
  },
  'AUTHENTICATE CRAM-MD5': async (c) => {
    c.send('a1 AUTHENTICATE CRAM-MD5');
    const cont = await line(c);
    const salt = Buffer.from(cont.slice(2), 'base64').toString('latin1');
    c.send(b64(`${alice.user} ${createHmac('md5', alice.password).update(salt).digest('hex')}`));
    return [cont.replace(/^\+ \S+$/, '+ <salt>'), ...(await imapEnd(c, await imapTagged(c, 'a1')))];
  },
  'LOGIN with a wrong password': async (c) => {
    c.send(`a1 LOGIN ${alice.user} wrong`);
    const reply = await imapTagged(c, 'a1');
    assert.equal(reply, `a1 NO ${INVALID}`);
    return imapEnd(c, reply);
  },
};

async function popEnd(c: LineClient, reply: string): Promise<string[]> {
  if (reply.startsWith('+OK')) {
    c.send('QUIT');
    await c.expect(/^\+OK.*\r\n/m);
  }
  return [reply];
}

/** The APOP salt of a POP3 greeting. */
const saltOf = (greeting: string) => /<[^>]+>/.exec(greeting)?.[0] ?? '';

const pop3Dialogs: Record<string, (c: LineClient, greeting: string) => Promise<string[]>> = {
  'USER/PASS': async (c) => {
    c.send(`USER ${dora.user}`);
    const u = await line(c);
    c.send(`PASS ${dora.password}`);
    return [u, ...(await popEnd(c, await line(c)))];
  },
  'APOP': async (c, greeting) => {
    c.send(`APOP ${erin.user} ${createHash('md5').update(saltOf(greeting) + erin.password).digest('hex')}`);
    return popEnd(c, await line(c));
  },
  'AUTH PLAIN with an initial response': async (c) => {
    c.send(`AUTH PLAIN ${plainIr(dora.user, dora.password)}`);
    return popEnd(c, await line(c));
  },
  'AUTH PLAIN with a continuation': async (c) => {
    c.send('AUTH PLAIN');
    const cont = await line(c);
    c.send(plainIr(alice.user, alice.password));
    return [cont, ...(await popEnd(c, await line(c)))];
  },
  'AUTH LOGIN': async (c) => {
    c.send('AUTH LOGIN');
    const u = await line(c);
    c.send(b64(erin.user));
    const pw = await line(c);
    c.send(b64(erin.password));
    return [u, pw, ...(await popEnd(c, await line(c)))];
  },
  'AUTH CRAM-MD5': async (c) => {
    c.send('AUTH CRAM-MD5');
    const cont = await line(c);
    const salt = Buffer.from(cont.slice(2), 'base64').toString('latin1');
    c.send(b64(`${alice.user} ${createHmac('md5', alice.password).update(salt).digest('hex')}`));
    return [cont.replace(/^\+ \S+$/, '+ <salt>'), ...(await popEnd(c, await line(c)))];
  },
  'PASS with a wrong password': async (c) => {
    c.send(`USER ${alice.user}`);
    const u = await line(c);
    c.send('PASS wrong');
    const reply = await line(c);
    assert.equal(reply, `-ERR ${INVALID}`);
    return [u, ...(await popEnd(c, reply))];
  },
};

/** Differences between nginx's request and Postern's, as readable lines ([] when they agree). */
function differences(ngx: RecordedRequest, pst: RecordedRequest): string[] {
  const out: string[] = [];
  if (ngx.method !== pst.method || ngx.url !== pst.url) out.push(`request line: nginx ${ngx.method} ${ngx.url}, Postern ${pst.method} ${pst.url}`);
  const keep = (r: RecordedRequest) => r.headers.filter(([n]) => !TRANSPORT.has(n.toLowerCase()));
  const a = keep(ngx);
  const b = keep(pst);
  const names = (l: [string, string][]) => l.map(([n]) => n).join(', ');
  if (names(a) !== names(b)) out.push(`header names/order:\n  nginx:   ${names(a)}\n  Postern: ${names(b)}`);
  const method = ngx.get('Auth-Method') ?? '';
  for (const [name, value] of a) {
    const other = b.find(([n]) => n === name)?.[1];
    if (other === undefined) continue;
    const key = name.toLowerCase();
    const form = BY_FORM[key] ?? (key === 'auth-pass' && DIGEST_METHODS.has(method) ? /^[0-9a-f]{32}$/ : undefined);
    if (form) {
      if (!form.test(value) || !form.test(other)) out.push(`${name} (by form ${form}): nginx ${JSON.stringify(value)}, Postern ${JSON.stringify(other)}`);
    } else if (value !== other) out.push(`${name}: nginx ${JSON.stringify(value)}, Postern ${JSON.stringify(other)}`);
  }
  return out;
}

describe('auth_http requests for IMAP and POP3: Postern against nginx, header by header', { timeout: 180_000 }, () => {
  let d: DovecotInstance;
  let stub: AuthStub;
  let ngx: NginxMail;
  let p: RunningPostern;
  let pst: { imap: number; imapTls: number; pop3: number; pop3Tls: number };
  let wait: number | undefined;

  before(async () => {
    d = await startDovecot();
    stub = await AuthStub.start(mailboxAuth({ port: (req) => (req.get('Auth-Protocol') === 'pop3' ? d.ports.pop3 : d.ports.imap), wait: () => wait }));
    ngx = await startNginxMail({ authUrl: stub.url, tls: true });
    const common = { route: { auth_http: { url: stub.url } }, tls: { certificates: CERTS } };
    p = await startPostern({
      servers: [
        { ...common, protocol: 'imap', imap: { auth: ['plain', 'login', 'cram-md5'] }, listen: ['127.0.0.1:0', { address: '127.0.0.1:0', starttls: 'on' }] },
        { ...common, protocol: 'pop3', pop3: { auth: ['plain', 'apop', 'cram-md5'] }, listen: ['127.0.0.1:0', { address: '127.0.0.1:0', starttls: 'on' }] },
      ],
    });
    const [a, b, c, e] = p.server.addresses;
    pst = { imap: a!.port, imapTls: b!.port, pop3: c!.port, pop3Tls: e!.port };
  });
  after(async () => {
    await p?.stop();
    await ngx?.stop();
    await stub?.stop();
    await d?.stop();
  });

  /** Runs `dialog` on `port`; the client's lines and the auth requests it caused. */
  async function run(port: number, dialog: (c: LineClient, greeting: string) => Promise<string[]>, opening?: (sock: LineClient) => Promise<LineClient>): Promise<{ lines: string[]; requests: RecordedRequest[] }> {
    const n = stub.requests.length;
    let c = await LineClient.connect(port, { localAddress: CLIENT });
    try {
      const greeting = await line(c);
      if (opening) c = await opening(c);
      const lines = await dialog(c, greeting);
      return { lines, requests: stub.requests.slice(n) };
    } finally {
      c.close();
    }
  }

  async function compare(name: string, ngxPort: number, pstPort: number, dialog: (c: LineClient, greeting: string) => Promise<string[]>, opening?: (c: LineClient) => Promise<LineClient>): Promise<RecordedRequest> {
    const a = await run(ngxPort, dialog, opening);
    const b = await run(pstPort, dialog, opening);
    assert.equal(b.requests.length, a.requests.length, `${name}: as many auth requests as nginx made`);
    assert.ok(a.requests.length >= 1);
    for (const [i, req] of a.requests.entries()) {
      const diff = differences(req, b.requests[i]!);
      assert.deepEqual(diff, [], `${name}, request ${i + 1}:\n${diff.join('\n')}\n  nginx:   ${JSON.stringify(req.headers)}\n  Postern: ${JSON.stringify(b.requests[i]!.headers)}`);
    }
    assert.deepEqual(b.lines, a.lines, `${name}: what the client was told`);
    return a.requests.at(-1)!;
  }

  for (const [name, dialog] of Object.entries(imapDialogs)) {
    it(`IMAP ${name}`, async () => {
      const req = await compare(`IMAP ${name}`, ngx.ports.imap, pst.imap, dialog);
      assert.equal(req.get('Auth-Protocol'), 'imap');
      assert.equal(req.get('Client-IP'), CLIENT);
      if (name.includes('wrong')) assert.equal(req.get('Auth-Pass'), 'wrong');
    });
  }

  for (const [name, dialog] of Object.entries(pop3Dialogs)) {
    it(`POP3 ${name}`, async () => {
      const req = await compare(`POP3 ${name}`, ngx.ports.pop3, pst.pop3, dialog);
      assert.equal(req.get('Auth-Protocol'), 'pop3');
      assert.equal(req.get('Client-IP'), CLIENT);
    });
  }

  it('IMAP a wrong password, Auth-Wait, then the right one: Auth-Login-Attempt 1 and 2', async () => {
    wait = 1;
    try {
      const req = await compare('IMAP retry', ngx.ports.imap, pst.imap, async (c) => {
        c.send(`a1 LOGIN ${alice.user} wrong`);
        const first = await imapTagged(c, 'a1');
        c.send(`a2 LOGIN ${alice.user} ${alice.password}`);
        return [first, ...(await imapEnd(c, await imapTagged(c, 'a2')))];
      });
      assert.equal(req.get('Auth-Login-Attempt'), '2');
    } finally {
      wait = undefined;
    }
  });

  it('POP3 a wrong password, Auth-Wait, then the right one: Auth-Login-Attempt 1 and 2', async () => {
    wait = 1;
    try {
      const req = await compare('POP3 retry', ngx.ports.pop3, pst.pop3, async (c) => {
        c.send(`USER ${alice.user}`);
        const u = await line(c);
        c.send('PASS wrong');
        const first = await line(c);
        c.send(`USER ${alice.user}`);
        const u2 = await line(c);
        c.send(`PASS ${alice.password}`);
        return [u, first, u2, ...(await popEnd(c, await line(c)))];
      });
      assert.equal(req.get('Auth-Login-Attempt'), '2');
    } finally {
      wait = undefined;
    }
  });

  /** STARTTLS/STLS on a LineClient's socket: a new client over TLS (the certificate checked against the test CA). */
  function upgrade(command: string, ok: RegExp): (c: LineClient) => Promise<LineClient> {
    return async (c) => {
      c.send(command);
      await c.expect(ok);
      return c.startTls({ ca: CA, servername: 'proxy.test' });
    };
  }

  it('IMAP LOGIN after STARTTLS: the Auth-SSL headers', async () => {
    const req = await compare('IMAP STARTTLS', ngx.ports.imapStarttls!, pst.imapTls, imapDialogs['LOGIN with atoms']!, upgrade('s1 STARTTLS', /^s1 OK .*\r\n/m));
    assert.equal(req.get('Auth-SSL'), 'on');
  });

  it('POP3 USER/PASS after STLS: the Auth-SSL headers', async () => {
    const req = await compare('POP3 STLS', ngx.ports.pop3Starttls!, pst.pop3Tls, pop3Dialogs['USER/PASS']!, upgrade('STLS', /^\+OK.*\r\n/m));
    assert.equal(req.get('Auth-SSL'), 'on');
  });

  it('the refusals are nginx\'s and never reach Dovecot', () => {
    assert.match(d.log(), /Login: user=<alice>/);
    assert.doesNotMatch(d.log(), /Password mismatch/, 'the auth service refused the wrong passwords itself');
  });
});
