/** nginx's value escaping for the auth_http request, shared by the request builder and the TLS facts. */

/**
 * nginx's escaping of Auth-User / Auth-Pass (ngx_escape_uri with NGX_ESCAPE_MAIL_AUTH): only
 * bytes 0x00–0x20 and `%` become `%XX` (upper-case hex); everything else, UTF-8 included, is raw.
 */
export function escapeAuthValue(value: string): string {
  const buf = Buffer.from(value, 'latin1');
  let out = '';
  for (let i = 0; i < buf.length; i++) {
    const b = buf[i]!;
    if (b <= 0x20 || b === 0x25) out += `%${b < 16 ? '0' : ''}${b.toString(16).toUpperCase()}`;
    else out += String.fromCharCode(b);
  }
  return out;
}
