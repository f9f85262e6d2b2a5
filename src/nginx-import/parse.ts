/**
 * nginx configuration syntax, read as nginx's ngx_conf_read_token reads it: directives ending in
 * `;`, blocks in `{}`, `#` comments, "double" and 'single' quoted strings, backslash escapes
 * (`\"`, `\'`, `\\` lose the backslash; `\t`, `\r`, `\n` become control characters; any other
 * keeps it), `${var}` braces that do not open a block. The result is a tree of directives with
 * their file and line. `include` is followed when the file (or a `*` pattern in its last part)
 * exists, relative to the main file's directory as nginx's conf prefix; otherwise it stays in the
 * tree as an `include` directive with `notFollowed` set, for the converter to comment on.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';

export interface Directive {
  name: string;
  /** The arguments after unquoting and unescaping. */
  args: string[];
  /** The tokens (name first) exactly as written, quotes included. */
  raw: string[];
  file: string;
  line: number;
  /** The directives inside `{ … }`, for a block directive. */
  block?: Directive[];
  /** An `include` that was not followed, and why. */
  notFollowed?: string;
  /** For a directive that came from an included file: the include's file and line. */
  includedFrom?: string;
}

export class NginxSyntaxError extends Error {
  constructor(readonly file: string, readonly line: number, readonly reason: string) {
    super(`${file}:${line}: ${reason}`);
    this.name = 'NginxSyntaxError';
  }
}

export interface ParseOptions {
  /** Where relative `include` paths are resolved (nginx's conf prefix): the main file's directory by default. */
  baseDir?: string;
  /** Follow `include` (default true). */
  followIncludes?: boolean;
}

/** Reads and parses one nginx configuration file, following its includes. */
export function parseNginxFile(file: string, opts: ParseOptions = {}): Directive[] {
  const text = readFileSync(file, 'utf8');
  return parseNginx(text, file, { baseDir: path.dirname(path.resolve(file)), ...opts });
}

/** Parses nginx configuration text; `file` names it in errors and in the tree. */
export function parseNginx(text: string, file = '<nginx.conf>', opts: ParseOptions = {}): Directive[] {
  const ctx: Ctx = { baseDir: opts.baseDir ?? process.cwd(), follow: opts.followIncludes ?? true, stack: [file] };
  return parseText(text, file, ctx);
}

interface Ctx {
  baseDir: string;
  follow: boolean;
  /** Files being parsed, outermost first: an include of one of them is a loop. */
  stack: string[];
}

interface Token {
  value: string;
  raw: string;
  line: number;
}

type Stop = ';' | '{' | '}' | 'eof';

const SPACE = new Set([' ', '\t', '\r', '\n']);

/** The tokenizer: yields one directive's tokens and what ended them, as ngx_conf_read_token. */
class Lexer {
  private pos = 0;
  private line = 1;

  constructor(private readonly text: string, private readonly file: string) {}

  fail(reason: string, line = this.line): never {
    throw new NginxSyntaxError(this.file, line, reason);
  }

  /** The tokens up to the next `;`, `{`, `}` or the end of the text. */
  next(): { tokens: Token[]; stop: Stop; line: number } {
    const tokens: Token[] = [];
    const t = this.text;
    for (;;) {
      this.skipSpaceAndComments();
      if (this.pos >= t.length) return { tokens, stop: 'eof', line: this.line };
      const ch = t[this.pos]!;
      if (ch === ';' || ch === '{') {
        if (tokens.length === 0) this.fail(`unexpected "${ch}"`);
        this.pos++;
        return { tokens, stop: ch, line: this.line };
      }
      if (ch === '}') {
        if (tokens.length !== 0) this.fail('unexpected "}"');
        this.pos++;
        return { tokens, stop: '}', line: this.line };
      }
      tokens.push(ch === '"' || ch === "'" ? this.quoted(ch) : this.word());
    }
  }

  private skipSpaceAndComments(): void {
    const t = this.text;
    while (this.pos < t.length) {
      const ch = t[this.pos]!;
      if (ch === '\n') this.line++;
      if (SPACE.has(ch)) this.pos++;
      else if (ch === '#') while (this.pos < t.length && t[this.pos] !== '\n') this.pos++;
      else return;
    }
  }

  private quoted(q: string): Token {
    const t = this.text;
    const start = this.pos;
    const line = this.line;
    this.pos++;
    for (;;) {
      if (this.pos >= t.length) this.fail(`unexpected end of file, expecting ${q === '"' ? "'\"'" : '"\'"'}`, line);
      const ch = t[this.pos]!;
      if (ch === '\n') this.line++;
      if (ch === '\\' && this.pos + 1 < t.length) {
        if (t[this.pos + 1] === '\n') this.line++;
        this.pos += 2;
        continue;
      }
      this.pos++;
      if (ch === q) break;
    }
    // After a closing quote nginx wants a space, ";", "{" (or ")").
    const after = t[this.pos];
    if (after !== undefined && !SPACE.has(after) && after !== ';' && after !== '{' && after !== ')') this.fail(`unexpected "${after}"`);
    if (after === ')') this.pos++;
    return { value: unescape(t.slice(start + 1, this.pos - (after === ')' ? 2 : 1))), raw: t.slice(start, this.pos), line };
  }

  private word(): Token {
    const t = this.text;
    const start = this.pos;
    const line = this.line;
    let variable = false;
    while (this.pos < t.length) {
      const ch = t[this.pos]!;
      if (ch === '{' && variable) {
        // `${name}`: this brace opens no block (and "}" never ends a word).
        this.pos++;
        variable = false;
        continue;
      }
      variable = false;
      if (ch === '\\') {
        if (t[this.pos + 1] === '\n') this.line++;
        this.pos += 2;
        continue;
      }
      if (ch === '$') variable = true;
      else if (SPACE.has(ch) || ch === ';' || ch === '{') break;
      this.pos++;
    }
    const raw = t.slice(start, Math.min(this.pos, t.length));
    return { value: unescape(raw), raw, line };
  }
}

/** nginx's escape handling, applied to quoted strings and bare words alike. */
function unescape(s: string): string {
  return s.replace(/\\(.)/gs, (all, c: string) => {
    if (c === '"' || c === "'" || c === '\\') return c;
    if (c === 't') return '\t';
    if (c === 'r') return '\r';
    if (c === 'n') return '\n';
    return all;
  });
}

function parseText(text: string, file: string, ctx: Ctx): Directive[] {
  const lexer = new Lexer(text, file);
  const parseBlock = (depth: number, openLine: number): Directive[] => {
    const out: Directive[] = [];
    for (;;) {
      const { tokens, stop, line } = lexer.next();
      if (stop === 'eof') {
        if (tokens.length > 0) lexer.fail('unexpected end of file, expecting ";" or "}"', line);
        if (depth > 0) lexer.fail(`unexpected end of file, expecting "}" (the block opened at line ${openLine})`, line);
        return out;
      }
      if (stop === '}') {
        if (depth === 0) lexer.fail('unexpected "}"', line);
        return out;
      }
      const [head, ...rest] = tokens;
      const d: Directive = { name: head!.value, args: rest.map((x) => x.value), raw: tokens.map((x) => x.raw), file, line: head!.line };
      if (stop === '{') {
        d.block = parseBlock(depth + 1, head!.line);
        out.push(d);
      } else if (d.name === 'include' && ctx.follow) {
        out.push(...include(d, ctx));
      } else {
        out.push(d);
      }
    }
  };
  return parseBlock(0, 1);
}

/** The directives of the included files, or the include itself marked as not followed. */
function include(d: Directive, ctx: Ctx): Directive[] {
  if (d.args.length !== 1) throw new NginxSyntaxError(d.file, d.line, 'invalid number of arguments in "include" directive');
  const target = path.resolve(ctx.baseDir, d.args[0]!);
  const files = matchFiles(target);
  if (files === null) return [{ ...d, notFollowed: `no such file (${target})` }];
  const out: Directive[] = [];
  for (const f of files) {
    if (ctx.stack.includes(f)) throw new NginxSyntaxError(d.file, d.line, `include loop: ${f} includes itself`);
    ctx.stack.push(f);
    try {
      for (const inc of parseText(readFileSync(f, 'utf8'), f, ctx)) out.push(markIncluded(inc, `${d.file}:${d.line}`));
    } finally {
      ctx.stack.pop();
    }
  }
  return out;
}

function markIncluded(d: Directive, from: string): Directive {
  return { ...d, includedFrom: d.includedFrom ?? from, block: d.block?.map((b) => markIncluded(b, from)) };
}

/** The file, or the files a `*`/`?` pattern in the last part matches (sorted, as glob(3)); null when none. */
function matchFiles(target: string): string[] | null {
  const base = path.basename(target);
  const dir = path.dirname(target);
  if (!/[*?[]/.test(base)) return existsSync(target) && statSync(target).isFile() ? [target] : null;
  if (/[*?[]/.test(dir) || !existsSync(dir)) return null;
  const re = new RegExp(`^${base.replace(/[.+^${}()|\\]/g, '\\$&').replaceAll('*', '.*').replaceAll('?', '.')}$`);
  // A pattern that matches nothing is not an error in nginx, so an empty list is "followed".
  return readdirSync(dir).filter((n) => re.test(n) && !n.startsWith('.')).sort().map((n) => path.join(dir, n)).filter((f) => statSync(f).isFile());
}

/** The directive as written, for comments: `listen 25 ssl;`, or `http { … }` for a block. */
export function asWritten(d: Directive): string {
  return d.block ? `${d.raw.join(' ')} { … }` : `${d.raw.join(' ')};`;
}

/** Where a directive is, for comments: `line 12`, or `mail.conf:3` in an included file. */
export function at(d: Directive): string {
  return d.includedFrom ? `${path.basename(d.file)}:${d.line}` : `line ${d.line}`;
}

/** The nginx variables (`$name`, `${name}`) in a directive's arguments. */
export function variablesOf(d: Directive): string[] {
  const found = new Set<string>();
  for (const a of d.args) for (const m of a.matchAll(/\$(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)/g)) found.add(`$${m[1]}`);
  return [...found];
}
