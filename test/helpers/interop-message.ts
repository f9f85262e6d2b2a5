/**
 * One test message for the real-client interop tests (Exim, Postfix as a client), and how to find the
 * client's part of it again in what a server stored.
 */

/**
 * A message with what a relay most easily damages: 8-bit bytes, a lone "." line and lines that start with
 * dots (dot-stuffing), a 990-byte line (under the 998 limit, so no client folds or refuses it), tabs and a
 * trailing space. CRLF line ends; `id` makes it findable and goes into Message-ID.
 */
export function interopMessage(id: string, to: string[]): Buffer {
  const lines = [
    `Message-ID: <${id}@x.test>`,
    'Date: Wed, 25 Nov 2026 07:00:00 +0000',
    'From: Alice <a@x.test>',
    `To: ${to.map((a) => `<${a}>`).join(', ')}`,
    `Subject: interop ${id}`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=iso-8859-1',
    'Content-Transfer-Encoding: 8bit',
    '',
    'J\xfcrgen says gr\xfc\xdfe.',
    '.',
    '.a line that starts with a dot',
    '..two dots',
    'x'.repeat(990),
    '\tindented\t with tabs ',
    'last line',
  ];
  return Buffer.from(lines.join('\r\n') + '\r\n', 'latin1');
}

/**
 * The part of `stored` that the submitting client wrote: from its Message-ID header to the end, with line ends
 * made CRLF (a Maildir file and an smtp-sink dump store LF). Clients and servers prepend trace headers
 * (Received, Return-Path, Delivered-To, smtp-sink's X-* lines), so those are cut off; anything they changed
 * or added after Message-ID shows up as a difference. Throws when Message-ID is not there at all.
 */
export function clientPart(stored: Buffer, id: string): string {
  const text = stored.toString('latin1');
  const at = text.indexOf(`Message-ID: <${id}@x.test>`);
  if (at < 0) throw new Error(`no "Message-ID: <${id}@x.test>" in:\n${text}`);
  return text.slice(at).replace(/\r?\n/g, '\r\n');
}
