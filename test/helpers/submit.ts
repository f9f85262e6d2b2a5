/**
 * Submitting a message over SMTP the plain way (no pipelining, no TLS, no AUTH), e.g. to a Postfix started
 * with `relayTo` (test/helpers/postfix.ts), which then relays it as an SMTP client.
 */
import net from 'node:net';

/**
 * Hands a message to an SMTP server (a Postfix started with `relayTo`) in one plain, unpipelined transaction,
 * as a submitting client would; resolves with the queue ID from "250 2.0.0 Ok: queued as <id>" (Postfix), or
 * the whole final reply for another server. Any reply out of sequence rejects with the dialogue so far.
 * The message may use LF or CRLF line ends; it is sent with CRLF and dot-stuffed.
 */
export async function submitMessage(
  port: number,
  msg: { from: string; to: string[]; message: Buffer | string; helo?: string },
  timeoutMs = 20_000,
): Promise<string> {
  const body = Buffer.from(
    (Buffer.isBuffer(msg.message) ? msg.message.toString('latin1') : msg.message)
      .replace(/\r?\n/g, '\r\n')
      .replace(/(^|\r\n)\./g, '$1..')
      .replace(/(?<!\r\n)$/, '\r\n'),
    'latin1',
  );
  const sock = net.connect(port, '127.0.0.1');
  let transcript = '';
  let buf = '';
  let wake: (() => void) | undefined;
  let closed = false;
  sock.setTimeout(timeoutMs, () => sock.destroy(new Error(`submitMessage: no progress for ${timeoutMs} ms`)));
  sock.on('data', (d: Buffer) => {
    buf += d.toString('latin1');
    transcript += d.toString('latin1');
    wake?.();
  });
  let failure: Error | undefined;
  sock.on('error', (err) => {
    failure = err;
    wake?.();
  });
  sock.on('close', () => {
    closed = true;
    wake?.();
  });
  /** The next complete reply (last line "ddd "); throws unless its code starts with `expect`. */
  const reply = async (expect: string): Promise<string> => {
    for (;;) {
      const m = /^(?:\d{3}-[^\n]*\n)*\d{3}(?: [^\n]*)?\n/.exec(buf);
      if (m) {
        buf = buf.slice(m[0].length);
        if (!m[0].startsWith(expect)) throw new Error(`submitMessage: expected ${expect}xx; dialogue:\n${transcript}`);
        return m[0].trimEnd();
      }
      if (failure || closed) throw new Error(`submitMessage: ${failure?.message ?? 'connection closed'}; dialogue:\n${transcript}`);
      await new Promise<void>((r) => (wake = r));
    }
  };
  const send = (line: string | Buffer) => {
    transcript += typeof line === 'string' ? line : '(message)\r\n';
    sock.write(line);
  };
  try {
    await reply('2');
    send(`EHLO ${msg.helo ?? 'submit.test'}\r\n`);
    await reply('2');
    send(`MAIL FROM:<${msg.from}>\r\n`);
    await reply('2');
    for (const rcpt of msg.to) {
      send(`RCPT TO:<${rcpt}>\r\n`);
      await reply('2');
    }
    send('DATA\r\n');
    await reply('3');
    send(Buffer.concat([body, Buffer.from('.\r\n')]));
    const done = await reply('2');
    send('QUIT\r\n');
    return /queued as (\S+)/.exec(done)?.[1] ?? done;
  } finally {
    sock.end();
    sock.destroy();
  }
}
