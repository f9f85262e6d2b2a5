/**
 * The error catalogue and the reference documents stay in step: every code in `ERRORS` is in
 * docs/errors.md with its exact reply, close flag and log level (and no code is documented that
 * does not exist); every warning in `WARNINGS` is in its "Warnings" table with its log level (the
 * same both ways); every reply is a well-formed SMTP reply (RFC 5321 §4.2, RFC 3463); and every
 * key of the configuration schema is documented in docs/configuration.md.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { configSchema } from '../../src/config/schema.js';
import { ERRORS, WARNINGS, type ErrorCode, type WarningCode } from '../../src/errors.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const ERRORS_MD = readFileSync(path.join(ROOT, 'docs/errors.md'), 'utf8');
const CONFIG_MD = readFileSync(path.join(ROOT, 'docs/configuration.md'), 'utf8');

const CODES = Object.keys(ERRORS) as ErrorCode[];
const CODE_TOKEN = /\bPST_[A-Z0-9_]*[A-Z0-9]\b/g;

function isCode(s: string): s is ErrorCode {
  return Object.hasOwn(ERRORS, s);
}

const WARNING_CODES = Object.keys(WARNINGS) as WarningCode[];
const WARNING_TOKEN = /\bPSW_[A-Z0-9_]*[A-Z0-9]\b/g;

function isWarning(s: string): s is WarningCode {
  return Object.hasOwn(WARNINGS, s);
}

/** Rows of the catalogue table in errors.md: `| \`PST_X\` | reply | closes | level | when |`. */
function catalogueRows(): Map<string, string[]> {
  const rows = new Map<string, string[]>();
  for (const line of ERRORS_MD.split('\n')) {
    if (!line.startsWith('| `PST_')) continue;
    const cells = line.split('|').slice(1, -1).map((c) => c.trim());
    assert.equal(cells.length, 5, `catalogue row should have 5 cells: ${line}`);
    const code = cells[0]!.replace(/`/g, '');
    assert.ok(!rows.has(code), `${code} has more than one row in the catalogue table`);
    rows.set(code, cells);
  }
  return rows;
}

describe('docs/errors.md documents exactly the codes of ERRORS', () => {
  it('every code in ERRORS has a row in the catalogue table', () => {
    const rows = catalogueRows();
    const missing = CODES.filter((c) => !rows.has(c));
    assert.deepEqual(missing, [], `undocumented codes: ${missing.join(', ')}`);
  });

  it('no code is documented that does not exist (errors.md and configuration.md)', () => {
    for (const [name, text] of [['errors.md', ERRORS_MD], ['configuration.md', CONFIG_MD]] as const) {
      const unknown = [...new Set(text.match(CODE_TOKEN) ?? [])].filter((t) => !isCode(t));
      assert.deepEqual(unknown, [], `${name} names codes that are not in ERRORS: ${unknown.join(', ')}`);
    }
    const rowsWithoutCode = [...catalogueRows().keys()].filter((c) => !isCode(c));
    assert.deepEqual(rowsWithoutCode, []);
  });

  it('each row shows the exact reply, the close flag and the log level of the catalogue', () => {
    const rows = catalogueRows();
    for (const code of CODES) {
      const spec = ERRORS[code];
      const row = rows.get(code);
      assert.ok(row, `${code}: no row in the catalogue table`);
      const [, reply, closes, level] = row;
      if (spec.reply === null) assert.equal(reply, 'none', `${code}: reply`);
      else assert.equal(reply, `\`${spec.reply}\``, `${code}: reply`);
      assert.match(closes!, spec.close ? /^yes\b/ : /^no\b/, `${code}: closes`);
      assert.equal(level!.replace(/`/g, ''), spec.level, `${code}: level`);
    }
  });
});

/** Rows of the warnings table in errors.md: `| \`PSW_X\` | level | when |`. */
function warningRows(): Map<string, string[]> {
  const rows = new Map<string, string[]>();
  for (const line of ERRORS_MD.split('\n')) {
    if (!line.startsWith('| `PSW_')) continue;
    const cells = line.split('|').slice(1, -1).map((c) => c.trim());
    assert.equal(cells.length, 3, `warning row should have 3 cells: ${line}`);
    const code = cells[0]!.replace(/`/g, '');
    assert.ok(!rows.has(code), `${code} has more than one row in the warnings table`);
    rows.set(code, cells);
  }
  return rows;
}

describe('docs/errors.md documents exactly the codes of WARNINGS', () => {
  it('every code in WARNINGS has a row in the warnings table, with its log level', () => {
    const rows = warningRows();
    const missing = WARNING_CODES.filter((c) => !rows.has(c));
    assert.deepEqual(missing, [], `undocumented warnings: ${missing.join(', ')}`);
    for (const code of WARNING_CODES) {
      const [, level, when] = rows.get(code)!;
      assert.equal(level!.replace(/`/g, ''), WARNINGS[code].level, `${code}: level`);
      assert.ok(when!.length > 0, `${code}: says when`);
    }
  });

  it('no warning is documented that does not exist (errors.md and configuration.md)', () => {
    for (const [name, text] of [['errors.md', ERRORS_MD], ['configuration.md', CONFIG_MD]] as const) {
      const unknown = [...new Set(text.match(WARNING_TOKEN) ?? [])].filter((t) => !isWarning(t));
      assert.deepEqual(unknown, [], `${name} names warnings that are not in WARNINGS: ${unknown.join(', ')}`);
    }
    const rowsWithoutCode = [...warningRows().keys()].filter((c) => !isWarning(c));
    assert.deepEqual(rowsWithoutCode, []);
  });

  it('warning codes begin with PSW_ and error codes with PST_, so the two never mix', () => {
    for (const code of WARNING_CODES) assert.ok(code.startsWith('PSW_') && !isCode(code), `${code}: warnings begin with PSW_`);
    for (const code of CODES) assert.ok(code.startsWith('PST_'), `${code}: errors begin with PST_`);
  });
});

describe('ERRORS replies are valid SMTP replies', () => {
  // The longest host name DNS allows (RFC 1035 §2.3.4), to check the line length in the worst case.
  const longHost = `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(61)}`;

  /** Reply code (RFC 5321 §4.2), then an enhanced status code class.subject.detail (RFC 3463 §2), then text. */
  const REPLY = /^([45])([0-5])(\d) ([245])\.(\d{1,3})\.(\d{1,3}) ([\x20-\x7e]+)$/;

  for (const code of CODES) {
    const spec = ERRORS[code];
    it(code, () => {
      if (spec.reply === null) {
        // Relay phase: nothing may be injected into the stream, so the connection must close.
        assert.equal(spec.close, true, `${code} sends no reply, so it must close the connection`);
        return;
      }
      assert.ok((spec.reply.match(/\{host\}/g) ?? []).length <= 1, `${code}: {host} is replaced once only`);
      for (const host of ['mx1.example.com', longHost]) {
        const line = spec.reply.replace('{host}', host);
        const m = REPLY.exec(line);
        assert.ok(m, `${code}: not "<4xx|5xx> <class>.<subject>.<detail> <text>": ${JSON.stringify(line)}`);
        const [, replyClass, , , enhancedClass, subject] = m;
        assert.equal(enhancedClass, replyClass, `${code}: enhanced status class must match the reply code (RFC 3463 §2)`);
        assert.ok(Number(subject) <= 7, `${code}: RFC 3463 defines subjects 0 to 7 only`);
        assert.ok(Buffer.byteLength(`${line}\r\n`) <= 512, `${code}: a reply line is at most 512 octets (RFC 5321 §4.5.3.1.5)`);
      }
    });
  }

  /**
   * nginx's client-certificate replies (`421 4.7.1 No required SSL certificate`, `421 4.7.1 SSL
   * certificate error`) are kept word for word, without the host, so that clients and monitoring
   * written against nginx see the same strings (the errors.ts rule: nginx's text where it has one).
   * They are the only 421 replies allowed to leave out the host; they must still close.
   */
  const NGINX_421_WITHOUT_HOST: ReadonlyMap<string, string> = new Map([
    ['PST_TLS_CLIENT_CERT_MISSING', '421 4.7.1 No required SSL certificate'],
    ['PST_TLS_CLIENT_CERT_INVALID', '421 4.7.1 SSL certificate error'],
  ]);

  it('421 replies close the connection and name the host (RFC 5321 §3.8, §4.2)', () => {
    const replies421 = CODES.filter((c) => ERRORS[c].reply?.startsWith('421 '));
    assert.ok(replies421.length > 0);
    for (const [code, reply] of NGINX_421_WITHOUT_HOST) {
      assert.ok(isCode(code), `${code}: exempted but not in ERRORS`);
      assert.equal(ERRORS[code].reply, reply, `${code}: exempted only because it is nginx's exact reply`);
    }
    for (const code of replies421) {
      assert.equal(ERRORS[code].close, true, `${code}: a 421 reply announces that the connection is closing`);
      if (NGINX_421_WITHOUT_HOST.has(code)) continue;
      assert.ok(ERRORS[code].reply!.includes('{host}'), `${code}: a 421 reply names the host`);
    }
  });

  it('{host} appears only in 421 replies', () => {
    for (const code of CODES) {
      const r = ERRORS[code].reply;
      if (r?.includes('{host}')) assert.ok(r.startsWith('421 '), `${code}: {host} in a reply that is not 421`);
    }
  });
});

/** Strips ZodDefault / ZodPrefault / ZodOptional wrappers. */
function unwrap(schema: z.ZodType): z.ZodType {
  let s = schema;
  while (s instanceof z.ZodDefault || s instanceof z.ZodPrefault || s instanceof z.ZodOptional) s = s.unwrap() as z.ZodType;
  return s;
}

function objectKeys(schema: z.ZodType, what: string): string[] {
  const s = unwrap(schema);
  assert.ok(s instanceof z.ZodObject, `${what} should be an object schema`);
  return Object.keys(s.shape);
}

/** The object members of a (possibly wrapped) union, e.g. `route`'s `{static}` and `{auth_http}`. */
function unionObjects(schema: z.ZodType, what: string): z.ZodObject[] {
  const s = unwrap(schema);
  assert.ok(s instanceof z.ZodUnion, `${what} should be a union schema`);
  return (s.options as readonly z.ZodType[]).map(unwrap).filter((o): o is z.ZodObject => o instanceof z.ZodObject);
}

const HEADINGS = CONFIG_MD.split('\n').filter((l) => /^#{1,6} /.test(l));

/** Documented: `key` or `section.key` in backticks, or the key as a word in a heading. */
function documented(key: string, section?: string): boolean {
  if (CONFIG_MD.includes(`\`${key}\``)) return true;
  if (section && CONFIG_MD.includes(`\`${section}.${key}\``)) return true;
  const word = new RegExp(`(^|[^A-Za-z0-9_])${key.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}($|[^A-Za-z0-9_])`);
  return HEADINGS.some((h) => word.test(h));
}

describe('docs/configuration.md documents every configuration key', () => {
  const shape = configSchema.shape;

  function check(keys: string[], section?: string): void {
    assert.ok(keys.length > 0, `no keys found for ${section ?? 'the top level'}`);
    const missing = keys.filter((k) => !documented(k, section));
    assert.deepEqual(missing, [], `undocumented keys${section ? ` in ${section}` : ''}: ${missing.join(', ')}`);
  }

  it('top level', () => check(Object.keys(shape)));
  it('timeouts', () => check(objectKeys(shape.timeouts, 'timeouts'), 'timeouts'));
  it('log', () => check(objectKeys(shape.log, 'log'), 'log'));

  it('route and route.auth_http', () => {
    const options = unionObjects(shape.route, 'route');
    check(options.flatMap((o) => Object.keys(o.shape)), 'route');
    const authHttp = options.find((o) => 'auth_http' in o.shape);
    assert.ok(authHttp, 'route has an auth_http alternative');
    check(objectKeys(authHttp.shape.auth_http as z.ZodType, 'route.auth_http'), 'route.auth_http');
  });

  it('the long form of a listen entry', () => {
    const listen = unwrap(shape.listen);
    assert.ok(listen instanceof z.ZodArray);
    check(unionObjects(listen.element as z.ZodType, 'listen entry').flatMap((o) => Object.keys(o.shape)), 'listen');
  });
});
