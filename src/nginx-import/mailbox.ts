/**
 * The IMAP and POP3 part of one nginx mail `server {}` (convertServer in ./server.ts does what
 * every protocol has): `imap_capabilities`, `imap_auth`, `imap_client_buffer`,
 * `pop3_capabilities` and `pop3_auth` as the block's `imap` / `pop3` settings and
 * `max_line_length`, and a comment saying that Postern's `xclient` (on by default) tells the
 * back-end the client's address, which nginx never does for IMAP or POP3.
 */
import { asWritten } from './parse.js';
import { notCarried, type Obj, type ProtocolPart } from './server.js';
import { nginxSize } from './values.js';

type Mailbox = 'imap' | 'pop3';

/** nginx's `imap_auth` and `pop3_auth` values (Postern takes each of them). */
const MECHANISMS: Record<Mailbox, string[]> = {
  imap: ['plain', 'login', 'cram-md5', 'external'],
  pop3: ['plain', 'apop', 'cram-md5', 'external'],
};

/** Capabilities Postern adds itself from `auth` and the listener's `starttls`, as nginx adds them. */
const ADDED: Record<Mailbox, { test: (c: string) => boolean; which: string }> = {
  imap: { test: (c) => /^(STARTTLS|LOGINDISABLED|AUTH=.*)$/i.test(c), which: 'STARTTLS, LOGINDISABLED and the AUTH= entries' },
  pop3: { test: (c) => /^(STLS|SASL)( .*)?$/i.test(c), which: 'the STLS and SASL lines' },
};

/** One capability as Postern's schema takes it (src/config/schema-mailbox.ts): printable ASCII words. */
const WORD = /^[A-Za-z0-9][\x21-\x7e]*( [\x21-\x7e]+)*$/;

const XCLIENT: Record<Mailbox, string> = {
  imap: 'IMAP ID ("x-originating-ip" …) before the login',
  pop3: 'POP3 XCLIENT ADDR=… where the back-end\'s greeting offers it',
};

/** The ProtocolPart of an IMAP or a POP3 server. */
export function mailboxPart(protocol: Mailbox): ProtocolPart {
  const label = protocol.toUpperCase();
  const prefix = `${protocol}_`;
  return ({ take, one, notes, self }, s) => {
    s.protocol = protocol;
    const settings: Obj = {};
    const capDs = take(`${prefix}capabilities`);
    if (capDs.length) {
      // Every line adds to the list, as in nginx.
      const caps: string[] = [];
      for (const d of capDs) {
        const added = d.args.filter((c) => WORD.test(c) && ADDED[protocol].test(c));
        const bad = d.args.filter((c) => !WORD.test(c));
        for (const c of d.args) if (!added.includes(c) && !bad.includes(c) && !caps.includes(c)) caps.push(c);
        const why: string[] = [];
        if (added.length) why.push(`${added.join(', ')} (Postern adds ${ADDED[protocol].which} itself, from ${prefix}auth and starttls, as nginx does)`);
        if (bad.length) why.push(`${bad.map((c) => JSON.stringify(c)).join(', ')} (not a ${label} capability)`);
        if (why.length) notes.push(notCarried(d, `${why.join('; ')}; the others are carried over`));
      }
      settings.capabilities = caps;
    }
    const authDs = take(`${prefix}auth`);
    const mechanisms: string[] = [];
    for (const d of authDs) {
      const bad = d.args.filter((m) => !MECHANISMS[protocol].includes(m));
      if (bad.length) notes.push(notCarried(d, `unknown mechanism ${bad.join(', ')} (nginx has ${MECHANISMS[protocol].join(', ')})`));
      for (const m of d.args) if (MECHANISMS[protocol].includes(m) && !mechanisms.includes(m)) mechanisms.push(m);
    }
    if (mechanisms.length) settings.auth = mechanisms;
    if (Object.keys(settings).length) s[protocol] = settings;

    if (protocol === 'imap') {
      // nginx's imap_client_buffer holds one command, its literals included: Postern's max_line_length.
      const buf = one('imap_client_buffer');
      const n = buf ? nginxSize(buf.args[0]!) : null;
      if (buf && n === null) notes.push(notCarried(buf, 'not an nginx size'));
      if (buf && n !== null) {
        s.max_line_length = Math.max(n, 512);
        if (n < 512) notes.push({ d: buf, key: 'max_line_length', text: `nginx: ${asWritten(buf)} — raised to 512, the least Postern takes` });
      }
    }
    if (self) {
      notes.push({
        d: self, key: 'protocol',
        text: `nginx: protocol ${protocol} — nginx never tells ${protocol === 'imap' ? 'an' : 'a'} ${label} back-end the client's address (its xclient is SMTP's); Postern does by default (xclient: true sends ${XCLIENT[protocol]}): set xclient: false for nginx's behaviour`,
      });
    }
  };
}
