/**
 * The POP3 protocol module built from configuration (src/protocols/pop3.ts): `protocol: pop3`
 * picks it, the pop3 settings and the listener shape the greeting and CAPA, and refusals before
 * any session are `-ERR` lines.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseConfig } from '../../src/config/load.js';
import { createLogger } from '../../src/log/logger.js';
import { Pop3Protocol } from '../../src/protocols/pop3.js';
import { protocolModule } from '../../src/protocols/registry.js';
import { stringify } from 'yaml';

const logger = createLogger('silent');

function module(extra: Record<string, unknown> = {}): { m: Pop3Protocol; listeners: ReturnType<typeof parseConfig>['servers'][number]['listen'] } {
  const config = parseConfig(stringify({ protocol: 'pop3', server_name: 'pop.test', listen: ['127.0.0.1:0'], ...extra }));
  const server = config.servers[0]!;
  const m = protocolModule(server, logger, null);
  assert.ok(m instanceof Pop3Protocol);
  return { m, listeners: server.listen };
}

const text = (b: Buffer): string => b.toString('latin1');

describe('POP3 protocol module', () => {
  it('protocol: pop3 gives the POP3 module; nginx\'s plain greeting by default', () => {
    const { m, listeners } = module();
    assert.equal(m.name, 'pop3');
    const s = m.sessions(listeners[0]!)();
    const [greet] = s.start();
    assert.equal(greet?.type === 'reply' && text(greet.data), '+OK POP3 ready\r\n');
    const [capa] = s.receive(Buffer.from('CAPA\r\n'));
    assert.equal(capa?.type === 'reply' && text(capa.data), '+OK Capability list follows\r\nTOP\r\nUSER\r\nUIDL\r\nSASL PLAIN LOGIN\r\n.\r\n');
  });

  it('apop or cram-md5 put nginx\'s timestamp <random.time@server_name> in the greeting, fresh per session', () => {
    const { m, listeners } = module({ pop3: { auth: ['plain', 'apop'], capabilities: ['TOP', 'PIPELINING'] } });
    const make = m.sessions(listeners[0]!);
    const greet = (): string => {
      const [g] = make().start();
      return g?.type === 'reply' ? text(g.data) : '';
    };
    const a = greet();
    assert.match(a, /^\+OK POP3 ready <\d{1,10}\.\d{10}@pop\.test>\r\n$/);
    assert.notEqual(a, greet());
    const [capa] = make().receive(Buffer.from('CAPA\r\n'));
    assert.equal(capa?.type === 'reply' && text(capa.data), '+OK Capability list follows\r\nTOP\r\nPIPELINING\r\nSASL PLAIN LOGIN\r\n.\r\n');
  });

  it('refusals before a session are -ERR lines; POP3 replies carry no code', () => {
    const { m } = module();
    assert.equal(text(m.refusal('PST_TOO_MANY_CONNECTIONS')), '-ERR [SYS/TEMP] Too many connections, try again later\r\n');
    assert.equal(text(m.refusal('PST_BACKEND_UNREACHABLE')), '-ERR internal server error\r\n');
    assert.equal(m.replyCode(Buffer.from('+OK\r\n')), 0);
  });

  it('a pool that does not exist fails the connect with PST_ROUTE_UNKNOWN_POOL', async () => {
    const { m } = module();
    const err = await new Promise((resolve) => m.connect({ addr: '127.0.0.1', port: 1, name: 'x' }, { kind: 'ok', host: '', port: 0, pool: 'nope' }, { helo: '', esmtp: false, mailLine: '', rcptLine: '', mailFrom: '', rcptTo: '', attempt: 1 }, (e) => resolve(e?.code)));
    assert.equal(err, 'PST_ROUTE_UNKNOWN_POOL');
  });
});
