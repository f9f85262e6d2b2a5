/**
 * A back-end that looks like Postfix, for the unit tests of the replay and the reply reader.
 * The greeting is Postfix's default `smtpd_banner` (`$myhostname ESMTP $mail_name`). The EHLO
 * reply has Postfix's keywords in Postfix's order, XCLIENT included as it is offered to a host in
 * `smtpd_authorized_xclient_hosts` (Postfix's XCLIENT_README), and no STARTTLS. It is shorter
 * than what Postfix 3.7 says: that also offers the XCLIENT attributes DESTADDR and DESTPORT, and
 * SMTPUTF8 and CHUNKING at the end.
 */

export const POSTFIX_GREETING = '220 mx.backend.example ESMTP Postfix\r\n';

export const POSTFIX_EHLO =
  '250-mx.backend.example\r\n' +
  '250-PIPELINING\r\n' +
  '250-SIZE 10240000\r\n' +
  '250-VRFY\r\n' +
  '250-ETRN\r\n' +
  '250-XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN\r\n' +
  '250-ENHANCEDSTATUSCODES\r\n' +
  '250-8BITMIME\r\n' +
  '250 DSN\r\n';

/** The lines of {@link POSTFIX_EHLO} as a reply reader returns them: no code, no separator, no CRLF. */
export const POSTFIX_EHLO_LINES: readonly string[] = [
  'mx.backend.example', 'PIPELINING', 'SIZE 10240000', 'VRFY', 'ETRN',
  'XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN', 'ENHANCEDSTATUSCODES', '8BITMIME', 'DSN',
];
