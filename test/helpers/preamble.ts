/**
 * The opening dialogue most protocol tests start with: connect, read the greeting, HELO/EHLO,
 * and, to get a routing decision (Postern asks its router at the first RCPT), MAIL and RCPT.
 * Each step is one command and its reply, as a client that does not pipeline sends them.
 * Nothing is asserted here: every reply is returned, and each test checks the ones it is about.
 */
import type { Reply } from '../../src/smtp/reply-reader.js';
import { SmtpClient } from './smtp-client.js';

export interface HelloOptions {
  /** The greeting has already been read from this client (a test that checks it first). */
  greeted?: boolean;
  /** The whole HELO/EHLO line. Default `EHLO c.test`. */
  hello?: string;
}

export interface EnvelopeOptions extends HelloOptions {
  /** The whole MAIL line. Default `MAIL FROM:<a@x.test>`. */
  mail?: string;
  /** The whole RCPT line. Default `RCPT TO:<u@y.test>`. */
  rcpt?: string;
}

export interface Greeted {
  c: SmtpClient;
  /** Absent with `greeted: true`. */
  greeting?: Reply;
}

export interface Hello extends Greeted {
  /** The whole reply to HELO/EHLO (`ehlo.lines` holds the EHLO keywords). */
  ehlo: Reply;
}

export interface AtRcpt extends Hello {
  /** The replies to MAIL and RCPT as `code text` (the last line's text). */
  mail: string;
  rcpt: string;
}

/** A new plain connection to `target` (a port), or the client given (say, one that connected with TLS). */
async function client(target: number | SmtpClient): Promise<SmtpClient> {
  return typeof target === 'number' ? SmtpClient.connect(target) : target;
}

/** Connects and reads the greeting. */
export async function greeted(target: number | SmtpClient): Promise<Required<Greeted>> {
  const c = await client(target);
  return { c, greeting: await c.reply() };
}

/** The greeting (unless `greeted`), then HELO/EHLO. */
export async function hello(target: number | SmtpClient, o: HelloOptions = {}): Promise<Hello> {
  const c = await client(target);
  const greeting = o.greeted ? undefined : await c.reply();
  c.send(o.hello ?? 'EHLO c.test');
  const ehlo = await c.reply();
  return greeting ? { c, greeting, ehlo } : { c, ehlo };
}

/** {@link hello}, then MAIL and RCPT: the RCPT reply is where a route was found or refused. */
export async function toRcpt(target: number | SmtpClient, o: EnvelopeOptions = {}): Promise<AtRcpt> {
  const opened = await hello(target, o);
  const mail = await opened.c.cmd(o.mail ?? 'MAIL FROM:<a@x.test>');
  const rcpt = await opened.c.cmd(o.rcpt ?? 'RCPT TO:<u@y.test>');
  return { ...opened, mail, rcpt };
}
