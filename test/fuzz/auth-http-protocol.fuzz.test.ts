/**
 * nginx's auth_http protocol: Auth-User/Auth-Pass escaping, the request headers built from any
 * credentials, and reading any answer header record.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { buildAuthHeaders, escapeAuthValue, parseAuthAnswer } from '../../src/auth/auth-http-protocol.js';
import type { RouteRequest } from '../../src/auth/router.js';
import type { Envelope } from '../../src/session/session.js';
import { cramChallenge, type Credentials } from '../../src/smtp/sasl.js';
import type { TlsInfo } from '../../src/tls/client-cert.js';
import { latin1, lineSafe, printable } from './arb.js';
import { runs } from './runs.js';

/** Percent-decoding of %XX (either case), everything else taken as one latin1 byte. */
function unescape(s: string): string {
  return s.replace(/%([0-9A-Fa-f]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
}

describe('fuzz: escapeAuthValue', () => {
  it('never outputs bytes 0x00–0x20, uses "%" only as %XX, and decodes back to the input', () => {
    fc.assert(
      fc.property(latin1(120), (v) => {
        const e = escapeAuthValue(v);
        assert.doesNotMatch(e, /[\x00-\x20]/);
        assert.doesNotMatch(e, /%(?![0-9A-F]{2})/);
        assert.equal(unescape(e), v);
      }),
      { numRuns: runs(1000) },
    );
  });
});

const credentials: fc.Arbitrary<Credentials> = fc.record(
  {
    method: fc.constantFrom('plain' as const, 'cram-md5' as const, 'external' as const, 'xoauth2' as const, 'oauthbearer' as const),
    user: latin1(40),
    pass: latin1(40),
    // The salt is Postern's own challenge, `<random.time@server_name>`, not client input.
    salt: fc.tuple(fc.nat(), fc.nat(), printable(20)).map(([r, t, name]) => cramChallenge(r, t, name)),
  },
  { requiredKeys: ['method', 'user', 'pass'] },
);

/** Envelope strings come from command lines that passed hasForbiddenByte: printable latin1, TAB allowed. */
const envelope: fc.Arbitrary<Envelope> = fc.record(
  {
    helo: lineSafe(30),
    esmtp: fc.boolean(),
    mailLine: lineSafe(60),
    rcptLine: lineSafe(60),
    mailFrom: lineSafe(30),
    rcptTo: lineSafe(30),
    attempt: fc.integer({ min: 1, max: 1000 }),
    auth: credentials,
  },
  { requiredKeys: ['helo', 'esmtp', 'mailLine', 'rcptLine', 'mailFrom', 'rcptTo', 'attempt'] },
);

const tlsInfo: fc.Arbitrary<TlsInfo> = fc.record(
  {
    protocol: fc.constantFrom('TLSv1.2', 'TLSv1.3', ''),
    cipher: printable(30),
    verify: fc.constantFrom('SUCCESS', 'NONE', 'FAILED:certificate has expired'),
    subject: printable(60),
    issuer: printable(60),
    serial: fc.stringMatching(/^[0-9A-F]{0,40}$/),
    fingerprint: fc.stringMatching(/^[0-9a-f]{40}$/),
    cert: latin1(80).map(escapeAuthValue),
  },
  { requiredKeys: ['protocol', 'cipher'] },
);

const request: fc.Arbitrary<RouteRequest> = fc.record(
  {
    envelope,
    clientAddr: fc.oneof(fc.ipV4(), fc.ipV6()),
    clientPort: fc.integer({ min: 1, max: 65535 }),
    clientHost: fc.oneof(fc.constantFrom('[UNAVAILABLE]', '[TEMPUNAVAIL]'), fc.domain()),
    tls: tlsInfo,
  },
  { requiredKeys: ['envelope', 'clientAddr', 'clientPort', 'clientHost'] },
);

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

describe('fuzz: buildAuthHeaders', () => {
  it('no header value holds CR, LF or NUL, whatever bytes the credentials carry', () => {
    fc.assert(
      fc.property(
        request,
        fc.boolean(),
        fc.dictionary(fc.stringMatching(/^X-[A-Za-z0-9-]{1,12}$/), printable(20), { maxKeys: 3 }),
        (req, envelopeForAuth, extra) => {
          const h = buildAuthHeaders(req, { host: 'auth.example', extra, envelopeForAuth });
          assert.equal(h.length % 2, 0);
          for (let i = 0; i < h.length; i += 2) {
            assert.match(h[i]!, TOKEN, `header name ${JSON.stringify(h[i])}`);
            assert.doesNotMatch(h[i + 1]!, /[\r\n\0]/, `${h[i]}: ${JSON.stringify(h[i + 1])}`);
          }
          const get = (name: string): string | undefined => h[h.indexOf(name) + 1];
          const a = req.envelope.auth;
          if (a) {
            // Credentials reach the auth service escaped, and unescape to the client's bytes.
            assert.equal(unescape(get('Auth-User')!), a.user);
            assert.equal(unescape(get('Auth-Pass')!), a.pass);
          }
        },
      ),
      { numRuns: runs(1000) },
    );
  });
});

const HEADER_NAMES = [
  'auth-status', 'auth-wait', 'auth-error-code', 'auth-server', 'auth-port', 'auth-user', 'auth-pass',
  'x-postern-backend-tls', 'x-postern-backend-tls-name', 'x-postern-backend-auth', 'other',
];

/** Plausible, borderline and hostile values for each answer header. */
const headerValue: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(
    'OK', 'WAIT', 'ok', ' OK ', 'Invalid login', 'Temporary\r\nInjected: yes', 'bad\0text', '',
    '127.0.0.1', '[::1]', '::1', 'mx.example', 'mx example', 'mx.example\r\n', '[]', '[',
    '25', '0', '65535', '65536', '99999', '-1', '2.5e1', ' 25 ', '025',
    '451 4.3.0', '535 5.7.8', '250 2.0.0', '5555', '451 4.3.0 extra',
    'off', 'opportunistic', 'required', 'implicit', 'OPPORTUNISTIC', 'plain', 'login', 'LOGIN', 'maybe',
    '3', '1000000', '12x',
  ),
  latin1(30),
  fc.string({ maxLength: 20 }),
);

const headerRecord = fc.dictionary(
  fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...HEADER_NAMES) }, { weight: 1, arbitrary: fc.string({ maxLength: 10 }) }),
  fc.oneof(
    { weight: 6, arbitrary: headerValue },
    { weight: 1, arbitrary: fc.array(headerValue, { maxLength: 3 }) },
    { weight: 1, arbitrary: fc.constant(undefined) },
  ),
  { maxKeys: 8 },
);

/** Records aimed at the "ok" path: server and port present, with borderline values and Postern's own headers. */
const okishRecord = fc
  .tuple(
    fc.record(
      {
        'auth-status': fc.constantFrom('OK', ' OK', 'OK\r\n'),
        'auth-server': fc.oneof(fc.ipV4(), fc.ipV6(), fc.ipV6().map((a) => `[${a}]`), fc.domain(), headerValue),
        'auth-port': fc.oneof(fc.integer({ min: -5, max: 70000 }).map(String), fc.stringMatching(/^\s?\d{0,7}\s?$/), headerValue),
        'auth-user': latin1(20),
        'auth-pass': latin1(20),
        'x-postern-backend-tls': headerValue,
        'x-postern-backend-tls-name': fc.oneof(fc.domain(), headerValue),
        'x-postern-backend-auth': headerValue,
      },
      { requiredKeys: ['auth-server', 'auth-port'] },
    ),
    headerRecord,
  )
  .map(([ok, rest]) => ({ ...rest, ...ok }));

describe('fuzz: parseAuthAnswer', () => {
  it('never throws; "ok" has a valid port and server, "fail" a one-line SMTP reply', () => {
    fc.assert(
      fc.property(fc.oneof(headerRecord, okishRecord), (h) => {
        const a = parseAuthAnswer(h);
        switch (a.status) {
          case 'ok':
            assert.ok(Number.isInteger(a.port) && a.port >= 1 && a.port <= 65535, `port ${a.port}`);
            assert.match(a.server, /^[A-Za-z0-9.:-]+$/);
            if (a.tls?.name !== undefined) assert.match(a.tls.name, /^[A-Za-z0-9.-]+$/);
            break;
          case 'fail':
            assert.doesNotMatch(a.reply, /[\r\n]/);
            assert.match(a.reply, /^[45]\d\d(?: [45]\.\d{1,3}\.\d{1,3})? [\x20-\x7e]+$/, `reply ${JSON.stringify(a.reply)}`);
            assert.ok(Number.isFinite(a.waitMs) && a.waitMs >= 0);
            break;
          case 'wait':
            assert.ok(Number.isFinite(a.waitMs) && a.waitMs >= 0);
            break;
          case 'invalid':
            assert.equal(typeof a.reason, 'string');
            break;
        }
      }),
      { numRuns: runs(2000) },
    );
  });
});
