/**
 * Server-side TLS material: certificates loaded from files, chosen by SNI (nginx mail has no SNI),
 * rebuilt on reload without a restart. Session tickets use one key for the process lifetime, so
 * resumption survives a certificate reload. Encrypted keys are decrypted with the passwords of
 * `tls.password_file` (nginx's `ssl_password_file`: one a line, each tried in turn).
 */
import { createPrivateKey, randomBytes, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import tls, { TLSSocket, type SecureContext } from 'node:tls';
import type { TlsConfig } from '../config/schema.js';

export class TlsLoadError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join('; '));
    this.name = 'TlsLoadError';
  }
}

/** The CA bundle for back-end certificates (`backend_tls.ca`). */
export function readBackendCa(file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new TlsLoadError([`backend_tls.ca: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`]);
  }
}

interface Named {
  /** Lower-case DNS names, wildcards as `*.example.com`. */
  names: string[];
  context: SecureContext;
}

export class TlsContexts {
  #default: SecureContext;
  #named: Named[];
  readonly #cfg: TlsConfig;
  readonly #ticketKeys = randomBytes(48);

  constructor(cfg: TlsConfig) {
    this.#cfg = cfg;
    const built = this.#build();
    this.#default = built.default;
    this.#named = built.named;
  }

  get defaultContext(): SecureContext {
    return this.#default;
  }

  /** Whether clients are asked for a certificate (verify_client not off). */
  get requestCert(): boolean {
    return this.#cfg.verify_client !== 'off';
  }

  /**
   * The server side of a TLS handshake over a client's TCP socket (implicit TLS, or after a
   * STARTTLS reply): the certificate chosen by SNI; a client certificate asked for when
   * verify_client is on, and judged after the handshake (src/tls/client-cert.ts), with nginx's
   * replies rather than a handshake failure.
   */
  serverSocket(plain: Socket): TLSSocket {
    return new TLSSocket(plain, {
      isServer: true,
      secureContext: this.#default,
      SNICallback: (name, cb) => cb(null, this.contextFor(name)),
      requestCert: this.requestCert,
      rejectUnauthorized: false,
    });
  }

  /** Re-reads every file; on any error the current contexts stay in use and the error is thrown. */
  reload(): void {
    const built = this.#build();
    this.#default = built.default;
    this.#named = built.named;
  }

  /** The context for an SNI name (exact name first, then a matching wildcard), else the default. */
  contextFor(servername: string | undefined): SecureContext {
    if (!servername) return this.#default;
    const name = servername.toLowerCase();
    const wildcard = `*${name.slice(name.indexOf('.'))}`;
    let wild: SecureContext | undefined;
    for (const n of this.#named) {
      if (n.names.includes(name)) return n.context;
      if (!wild && n.names.includes(wildcard)) wild = n.context;
    }
    return wild ?? this.#default;
  }

  #build(): { default: SecureContext; named: Named[] } {
    const cfg = this.#cfg;
    const problems: string[] = [];
    const read = (file: string, key: string): Buffer | null => {
      try {
        return readFileSync(file);
      } catch (err) {
        problems.push(`${key}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
        return null;
      }
    };
    const ca = cfg.client_ca ? read(cfg.client_ca, 'tls.client_ca') : null;
    const passwords = cfg.password_file ? readPasswords(cfg.password_file, problems) : [];
    const named: Named[] = [];
    cfg.certificates.forEach((c, i) => {
      const cert = read(c.cert, `tls.certificates.${i}.cert`);
      const key = read(c.key, `tls.certificates.${i}.key`);
      if (!cert || !key) return;
      const passphrase = passphraseFor(key, passwords, cfg.password_file, `tls.certificates.${i}.key`);
      if (typeof passphrase === 'object') return void (passphrase.problem && problems.push(passphrase.problem));
      try {
        const context = tls.createSecureContext({
          cert,
          key,
          ...(passphrase !== undefined ? { passphrase } : {}),
          ...(ca ? { ca } : {}),
          minVersion: cfg.min_version,
          ...(cfg.ciphers ? { ciphers: cfg.ciphers } : {}),
          sessionTimeout: Math.round(cfg.session_timeout / 1000),
          ticketKeys: this.#ticketKeys,
        });
        named.push({ names: certificateNames(cert), context });
      } catch (err) {
        problems.push(`tls.certificates.${i}: ${(err as Error).message}`);
      }
    });
    if (problems.length > 0) throw new TlsLoadError(problems);
    if (named.length === 0) throw new TlsLoadError(['tls.certificates: no certificate configured']);
    return { default: named[0]!.context, named };
  }
}

/**
 * `tls.password_file` as nginx reads `ssl_password_file`: one password a line (a CR before the LF
 * is dropped), empty lines skipped.
 */
function readPasswords(file: string, problems: string[]): string[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    problems.push(`tls.password_file: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    return [];
  }
  const passwords = text.split('\n').map((l) => l.replace(/\r$/, '')).filter((l) => l !== '');
  if (passwords.length === 0) problems.push(`tls.password_file: ${file} has no password (one a line)`);
  return passwords;
}

/**
 * The password that decrypts `key` (undefined for a key that is not encrypted, or not a key at
 * all: createSecureContext then says what is wrong with it), or the problem, named by `at` (null:
 * the password file's own problem says it).
 */
function passphraseFor(key: Buffer, passwords: string[], file: string | undefined, at: string): string | undefined | { problem: string | null } {
  if (!encrypted(key)) return undefined;
  if (file === undefined) return { problem: `${at}: the key is encrypted: set tls.password_file` };
  // An unreadable or empty password file is reported once, as tls.password_file's problem.
  if (passwords.length === 0) return { problem: null };
  for (const passphrase of passwords) {
    try {
      createPrivateKey({ key, format: 'pem', passphrase });
      return passphrase;
    } catch {
      // The next password.
    }
  }
  return { problem: `${at}: no password in tls.password_file decrypts it` };
}

/** PKCS#8 `ENCRYPTED PRIVATE KEY`, or a traditional PEM key with `Proc-Type: 4,ENCRYPTED`. */
function encrypted(key: Buffer): boolean {
  return /-----BEGIN ENCRYPTED PRIVATE KEY-----|^Proc-Type:[ \t]*4,ENCRYPTED/m.test(key.toString('latin1'));
}

/** DNS names a certificate answers for: its subjectAltName DNS entries, else its CN. */
export function certificateNames(pem: Buffer): string[] {
  const x = new X509Certificate(pem);
  const sans = (x.subjectAltName ?? '')
    .split(/,\s*/)
    .filter((s) => s.startsWith('DNS:'))
    .map((s) => s.slice(4).toLowerCase());
  if (sans.length > 0) return sans;
  const cn = /(?:^|\n)CN=([^\n]+)/.exec(x.subject)?.[1];
  return cn ? [cn.toLowerCase()] : [];
}
