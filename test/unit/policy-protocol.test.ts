/**
 * Postfix policy delegation, pure part: the request block (order, defaults, no line injection), every
 * action's verdict and reply text (as Postfix 3.7's check_table_result formats it), and the reply reader
 * under every cutting of the bytes.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  defaultVerdict, parsePolicyReply, policyAction, policyRequest, PolicyReplyReader, replyTarget,
  POLICY_ATTRIBUTE_NAMES, type PolicyAttributes, type ReplyTarget,
} from '../../src/checks/policy/protocol.js';
import { describeCut, splits } from '../helpers/split.js';

const RCPT: ReplyTarget = { stage: 'recipient', name: 'b@y.test' };

function lines(buf: Buffer): string[] {
  return buf.toString('utf8').split('\n');
}

describe('policyRequest', () => {
  it('sends request=smtpd_access_policy, every Postfix 3.7 attribute in order, then an empty line', () => {
    const buf = policyRequest({ protocol_state: 'RCPT', protocol_name: 'ESMTP', client_address: '192.0.2.7', client_port: 40000, recipient: 'b@y.test', sender: 'a@x.test', instance: '1.2' });
    const l = lines(buf);
    assert.equal(l[0], 'request=smtpd_access_policy');
    assert.deepEqual(l.slice(1, 1 + POLICY_ATTRIBUTE_NAMES.length).map((x) => x.slice(0, x.indexOf('='))), [...POLICY_ATTRIBUTE_NAMES]);
    assert.deepEqual(l.slice(-2), ['', ''], 'ends with an empty line');
    assert.ok(buf.toString().endsWith('\n\n'));
    assert.ok(!buf.toString().slice(0, -2).includes('\n\n'), 'exactly one empty line');
    const m = new Map(l.filter((x) => x.includes('=')).map((x) => [x.slice(0, x.indexOf('=')), x.slice(x.indexOf('=') + 1)]));
    assert.equal(m.get('protocol_state'), 'RCPT');
    assert.equal(m.get('client_port'), '40000');
    assert.equal(m.get('recipient_count'), '0');
    assert.equal(m.get('size'), '0');
    assert.equal(m.get('encryption_keysize'), '0');
    assert.equal(m.get('helo_name'), '');
    assert.equal(m.get('sasl_username'), '');
    for (const name of ['request', 'protocol_state', 'protocol_name', 'helo_name', 'queue_id', 'sender', 'recipient', 'recipient_count',
      'client_address', 'client_name', 'reverse_client_name', 'instance', 'sasl_method', 'sasl_username', 'sasl_sender', 'size',
      'ccert_subject', 'ccert_issuer', 'ccert_fingerprint', 'ccert_pubkey_fingerprint', 'encryption_protocol', 'encryption_cipher',
      'encryption_keysize', 'etrn_domain', 'stress', 'server_address', 'server_port', 'policy_context', 'compatibility_level',
      'mail_version', 'client_port']) assert.ok(m.has(name), name);
  });

  it('keeps UTF-8 values as UTF-8', () => {
    const buf = policyRequest({ sender: 'jörg@exämple.test' });
    assert.ok(buf.includes(Buffer.from('sender=jörg@exämple.test\n', 'utf8')));
  });

  it('lets no value add a line, end the block early or carry a NUL', () => {
    const evil = 'x@y.test\nrecipient=root@evil\n\naction=OK\r\nz\0w\r';
    const attrs: PolicyAttributes = {};
    for (const name of POLICY_ATTRIBUTE_NAMES) if (!['recipient_count', 'size', 'encryption_keysize'].includes(name)) (attrs as Record<string, string>)[name] = evil;
    const buf = policyRequest(attrs);
    const s = buf.toString('utf8');
    assert.ok(!s.includes('\r') && !s.includes('\0'));
    const l = lines(buf);
    assert.equal(l.length, 1 + POLICY_ATTRIBUTE_NAMES.length + 2, 'one line per attribute, no more');
    assert.equal(s.indexOf('\n\n'), s.length - 2, 'the only empty line is the terminator');
    for (const x of l.slice(1, -2)) assert.match(x, /^[a-z_]+=/);
    assert.equal(l.filter((x) => x.startsWith('recipient=')).length, 1);
    assert.equal(l.find((x) => x.startsWith('recipient=')), 'recipient=x@y.test recipient=root@evil  action=OK  z w ');
  });
});

describe('policy actions → Postfix replies', () => {
  const cases: [string, ReplyTarget, Record<string, unknown>][] = [
    ['OK', RCPT, { kind: 'ok', action: 'OK' }],
    ['ok whatever', RCPT, { kind: 'ok', action: 'OK' }],
    ['RELAY', RCPT, { kind: 'ok', action: 'RELAY' }],
    ['1730000000', RCPT, { kind: 'ok', action: '1730000000' }],
    // All-numeric is OK in Postfix, even a lone 5NN without text.
    ['550', RCPT, { kind: 'ok', action: '550' }],
    ['DUNNO', RCPT, { kind: 'dunno', action: 'DUNNO' }],
    ['dunno ignored text', RCPT, { kind: 'dunno', action: 'DUNNO' }],
    ['REJECT', RCPT, { kind: 'reject', reply: '554 5.7.1 <b@y.test>: Recipient address rejected: Access denied', code: 554, dsn: '5.7.1', text: 'Access denied' }],
    ['REJECT go away', RCPT, { kind: 'reject', reply: '554 5.7.1 <b@y.test>: Recipient address rejected: go away' }],
    ['reject 5.7.26 DMARC', RCPT, { kind: 'reject', reply: '554 5.7.26 <b@y.test>: Recipient address rejected: DMARC', dsn: '5.7.26' }],
    ['REJECT 4.7.1 odd', RCPT, { kind: 'reject', reply: '554 5.7.1 <b@y.test>: Recipient address rejected: odd' }],
    ['REJECT 5.1.1 no such user', RCPT, { kind: 'reject', reply: '554 5.1.1 <b@y.test>: Recipient address rejected: no such user' }],
    ['REJECT 5.1.1 unknown', { stage: 'sender', name: 'a@x.test' }, { kind: 'reject', reply: '554 5.1.7 <a@x.test>: Sender address rejected: unknown' }],
    ['REJECT 5.1.1 unknown', { stage: 'client', name: 'unknown[192.0.2.7]' }, { kind: 'reject', reply: '554 5.0.0 <unknown[192.0.2.7]>: Client host rejected: unknown' }],
    ['REJECT', { stage: 'sender', name: '' }, { kind: 'reject', reply: '554 5.7.1 <>: Sender address rejected: Access denied' }],
    ['REJECT bad helo', { stage: 'helo', name: 'mx.x.test' }, { kind: 'reject', reply: '554 5.7.1 <mx.x.test>: Helo command rejected: bad helo' }],
    ['REJECT', { stage: 'etrn', name: 'x.test' }, { kind: 'reject', reply: '554 5.7.1 <x.test>: Etrn command rejected: Access denied' }],
    ['REJECT', { stage: 'data', name: 'DATA' }, { kind: 'reject', reply: '554 5.7.1 <DATA>: Data command rejected: Access denied' }],
    ['REJECT', { stage: 'eod', name: 'END-OF-MESSAGE' }, { kind: 'reject', reply: '554 5.7.1 <END-OF-MESSAGE>: End-of-data rejected: Access denied' }],
    ['DEFER', RCPT, { kind: 'defer', reply: '450 4.7.1 <b@y.test>: Recipient address rejected: Access denied', code: 450 }],
    ['DEFER try later', RCPT, { kind: 'defer', reply: '450 4.7.1 <b@y.test>: Recipient address rejected: try later' }],
    ['DEFER 5.7.1 class fixed', RCPT, { kind: 'defer', reply: '450 4.7.1 <b@y.test>: Recipient address rejected: class fixed' }],
    ['DEFER_IF_PERMIT', RCPT, { kind: 'defer_if_permit', reply: '450 4.7.1 <b@y.test>: Recipient address rejected: Service unavailable' }],
    ['DEFER_IF_PERMIT Greylisted, see http://postgrey.schweikert.ch/help/y.test.html', RCPT,
      { kind: 'defer_if_permit', reply: '450 4.7.1 <b@y.test>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/y.test.html' }],
    ['defer_if_permit 4.7.24 SPF temperror', RCPT, { kind: 'defer_if_permit', reply: '450 4.7.24 <b@y.test>: Recipient address rejected: SPF temperror' }],
    ['DEFER_IF_REJECT', RCPT, { kind: 'defer_if_reject', reply: '450 4.7.1 <b@y.test>: Recipient address rejected: Service unavailable' }],
    ['550 5.7.23 SPF fail', RCPT, { kind: 'reject', reply: '550 5.7.23 <b@y.test>: Recipient address rejected: SPF fail', code: 550, dsn: '5.7.23' }],
    ['550 no enhanced code', RCPT, { kind: 'reject', reply: '550 5.7.1 <b@y.test>: Recipient address rejected: no enhanced code' }],
    ['550 5.7.23', RCPT, { kind: 'reject', reply: '550 5.7.23 <b@y.test>: Recipient address rejected: Access denied' }],
    ['421 4.3.2 busy', RCPT, { kind: 'defer', reply: '421 4.3.2 <b@y.test>: Recipient address rejected: busy', code: 421 }],
    ['451 5.3.0 mismatch', RCPT, { kind: 'defer', reply: '451 4.3.0 <b@y.test>: Recipient address rejected: mismatch' }],
    ['451 4.3.5 Server configuration problem', RCPT, { kind: 'defer', reply: '451 4.3.5 <b@y.test>: Recipient address rejected: Server configuration problem' }],
    ['PREPEND X-Greylist: delayed 3 seconds', RCPT, { kind: 'prepend', header: 'X-Greylist: delayed 3 seconds' }],
    ['prepend Received-SPF: Pass (mailfrom) identity=mailfrom; ', RCPT, { kind: 'prepend', header: 'Received-SPF: Pass (mailfrom) identity=mailfrom;' }],
    ['PREPEND not a header', RCPT, { kind: 'dunno', action: 'PREPEND' }],
    ['PREPEND', RCPT, { kind: 'dunno', action: 'PREPEND' }],
    ['HOLD', RCPT, { kind: 'unsupported', action: 'HOLD', text: '' }],
    ['FILTER smtp:[127.0.0.1]:10025', RCPT, { kind: 'unsupported', action: 'FILTER', text: 'smtp:[127.0.0.1]:10025' }],
    ['REDIRECT x@y.test', RCPT, { kind: 'unsupported', action: 'REDIRECT' }],
    ['DISCARD spam', RCPT, { kind: 'unsupported', action: 'DISCARD', text: 'spam' }],
    ['BCC archive@y.test', RCPT, { kind: 'unsupported', action: 'BCC' }],
    ['WARN look', RCPT, { kind: 'unsupported', action: 'WARN' }],
    ['INFO note', RCPT, { kind: 'unsupported', action: 'INFO' }],
    ['HANGUP', RCPT, { kind: 'unsupported', action: 'HANGUP' }],
    ['reject_unknown_client_hostname', RCPT, { kind: 'invalid' }],
    ['', RCPT, { kind: 'invalid' }],
    ['   ', RCPT, { kind: 'invalid' }],
    ['600 out of range', RCPT, { kind: 'invalid' }],
    ['250 fine', RCPT, { kind: 'invalid' }],
  ];
  for (const [action, target, want] of cases) {
    it(`${JSON.stringify(action)} at ${target.stage}`, () => {
      const v = policyAction(action, target) as unknown as Record<string, unknown>;
      for (const [k, val] of Object.entries(want)) assert.deepEqual(v[k], val, `${k} of ${JSON.stringify(v)}`);
      // The same through a whole reply block, LF and CRLF.
      assert.deepEqual(parsePolicyReply(Buffer.from(`action=${action}\n\n`), target), v);
      assert.deepEqual(parsePolicyReply(Buffer.from(`action=${action}\r\n`), target), v);
    });
  }

  it('sanitises the text: printable ASCII only, 510 characters at most', () => {
    const v = policyAction('REJECT bad\x01\x7fstuff\tü ' + 'x'.repeat(1000), RCPT);
    assert.equal(v.kind, 'reject');
    if (v.kind !== 'reject') return;
    assert.match(v.reply, /^554 5\.7\.1 <b@y\.test>: Recipient address rejected: bad  stuff  /);
    assert.ok(v.reply.length <= 510);
    assert.match(v.reply, /^[\x20-\x7e]+$/);
    const w = policyAction('REJECT ok', { stage: 'recipient', name: 'evil\r\n250 ok' });
    assert.ok(w.kind === 'reject' && /^[\x20-\x7e]+$/.test(w.reply));
  });

  it('replyTarget names what Postfix names at each protocol_state', () => {
    const a: PolicyAttributes = { client_name: 'mx.x.test', client_address: '192.0.2.7', helo_name: 'h.x.test', sender: 'a@x.test', recipient: 'b@y.test', etrn_domain: 'e.test' };
    assert.deepEqual(replyTarget({ ...a, protocol_state: 'RCPT' }), { stage: 'recipient', name: 'b@y.test' });
    assert.deepEqual(replyTarget({ ...a, protocol_state: 'VRFY' }), { stage: 'recipient', name: 'b@y.test' });
    assert.deepEqual(replyTarget({ ...a, protocol_state: 'MAIL' }), { stage: 'sender', name: 'a@x.test' });
    assert.deepEqual(replyTarget({ ...a, protocol_state: 'EHLO' }), { stage: 'helo', name: 'h.x.test' });
    assert.deepEqual(replyTarget({ ...a, protocol_state: 'CONNECT' }), { stage: 'client', name: 'mx.x.test[192.0.2.7]' });
    assert.deepEqual(replyTarget({ protocol_state: 'CONNECT', client_address: '192.0.2.7' }), { stage: 'client', name: 'unknown[192.0.2.7]' });
    assert.deepEqual(replyTarget({ ...a, protocol_state: 'ETRN' }), { stage: 'etrn', name: 'e.test' });
    assert.deepEqual(replyTarget({ ...a, protocol_state: 'DATA' }), { stage: 'data', name: 'DATA' });
    assert.deepEqual(replyTarget({ ...a, protocol_state: 'END-OF-MESSAGE' }), { stage: 'eod', name: 'END-OF-MESSAGE' });
  });

  it('the default verdicts', () => {
    const fb = { reason: 'timeout' as const, detail: 'x' };
    assert.deepEqual(defaultVerdict('defer', RCPT, fb), {
      kind: 'defer', action: '451', code: 451, dsn: '4.3.5', text: 'Server configuration problem',
      reply: '451 4.3.5 <b@y.test>: Recipient address rejected: Server configuration problem', fallback: fb,
    });
    assert.deepEqual(defaultVerdict('dunno', RCPT, fb), { kind: 'dunno', action: 'DUNNO', fallback: fb });
  });
});

describe('parsePolicyReply', () => {
  it('takes the first action and ignores other attributes', () => {
    assert.equal(parsePolicyReply(Buffer.from('foo=bar\naction=REJECT\naction=OK\n\n')).kind, 'reject');
  });
  it('garbage is invalid', () => {
    for (const g of ['\n', 'HTTP/1.1 200 OK\n\n', 'action\n\n', '=OK\n\n', 'foo=bar\n\n', 'action=FROB\n\n']) {
      assert.equal(parsePolicyReply(Buffer.from(g)).kind, 'invalid', JSON.stringify(g));
    }
    assert.equal(parsePolicyReply(Buffer.from([0x61, 0x63, 0x74, 0x69, 0x6f, 0x6e, 0x3d, 0xff, 0x0a])).kind, 'invalid', 'not UTF-8');
  });
  it('ignores anything after the empty line', () => {
    assert.equal(parsePolicyReply(Buffer.from('action=OK\n\naction=REJECT\n\n')).kind, 'ok');
  });
});

describe('PolicyReplyReader', () => {
  function feed(chunks: Buffer[], max = 1024) {
    const r = new PolicyReplyReader(max);
    for (const c of chunks) r.feed(c);
    return { block: r.block?.toString('latin1') ?? null, extra: r.extra, error: r.error };
  }

  const inputs: [string, { block: string | null; extra: boolean; error: string | null }][] = [
    ['action=DEFER_IF_PERMIT Greylisted, see http://postgrey.schweikert.ch/help/y.test.html\n\n', { block: 'action=DEFER_IF_PERMIT Greylisted, see http://postgrey.schweikert.ch/help/y.test.html\n', extra: false, error: null }],
    ['action=OK\r\n\r\n', { block: 'action=OK\r\n', extra: false, error: null }],
    ['foo=1\naction=OK\n\n', { block: 'foo=1\naction=OK\n', extra: false, error: null }],
    ['\n', { block: '', extra: false, error: null }],
    ['action=OK\n', { block: null, extra: false, error: null }],
    ['action=OK\n\nextra', { block: 'action=OK\n', extra: true, error: null }],
    ['action=OK\n\naction=OK\n\n', { block: 'action=OK\n', extra: true, error: null }],
    ['action=O\rK\n\r\n', { block: 'action=O\rK\n', extra: false, error: null }],
  ];
  for (const [text, want] of inputs) {
    it(`${JSON.stringify(text)} the same however it is cut`, () => {
      for (const chunks of splits(Buffer.from(text, 'latin1'))) assert.deepEqual(feed(chunks), want, describeCut(chunks));
    });
  }

  it('refuses a reply larger than its bound, however it is cut, and stays refused', () => {
    const big = Buffer.from(`action=REJECT ${'x'.repeat(300)}\n\n`);
    for (const chunks of splits(big)) {
      const out = feed(chunks, 200);
      assert.equal(out.block, null, describeCut(chunks));
      assert.match(out.error ?? '', /exceeds 200 bytes/);
    }
    // Endless bytes without a newline are bounded as well.
    const r = new PolicyReplyReader(1000);
    for (let i = 0; i < 100; i++) r.feed(Buffer.alloc(100, 0x41));
    assert.ok(r.error && !r.block);
    // Exactly at the bound is fine.
    const exact = Buffer.from('action=OK\n\n');
    assert.equal(feed([exact], exact.length).block, 'action=OK\n');
    assert.ok(feed([exact], exact.length - 1).error);
  });
});
