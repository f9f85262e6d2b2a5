/**
 * Property-based fuzzing of transaction-mode proxying (the session machine with a scripted
 * back-end, no sockets). Random client scripts — EHLO, MAIL, RCPT to domains that route to two
 * back-ends, to a refused one and to a failing one, DATA with random bodies, RSET, NOOP, QUIT,
 * junk — all pipelined and cut into random reads; random back-end replies, and a back-end that
 * may die at any command. Invariants:
 * - the same input gives the same client wire and the same back-end bytes under any cutting;
 * - every acceptance of a message the client sees is one the back-end gave (each once), and no
 *   message body reaches the back-ends twice;
 * - a body reaches a back-end only whole and only through a 354 it gave; nothing throws.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Session, type Action, type SessionLimits } from '../../src/session/session.js';
import { reply, routeByDomain, TX_BOOK, TX_LIMITS } from '../helpers/tx-harness.js';
import { b, chunking, split } from './arb.js';

/** No error cap and no HELO needed: junk in the script must not end the session early. */
const LIMITS: SessionLimits = { ...TX_LIMITS, maxErrors: 0, requireHelo: false };
import { runs } from './runs.js';



interface Plan {
  /** Reply codes the back-ends give, drawn in turn (per kind). */
  rcpt: number[];
  data: number[];
  final: number[];
  /** The back-end dies instead of answering its n-th command (counted over all back-ends), or never. */
  dieAt: number | null;
}

/** Shared by every back-end of one run: counts commands and hands out queue ids. */
class World {
  commands = 0;
  ids = 0;
  accepted: string[] = [];
  /** Message markers received by all back-ends together. */
  bodies: string[] = [];
  constructor(readonly plan: Plan) {}
  pick(list: number[], n: number): number {
    return list[n % list.length]!;
  }
}

/** A back-end answering as the plan says; 'dead' once it has died. */
class Backend {
  bytes = '';
  #pending = '';
  #inData = false;
  #n = { rcpt: 0, data: 0, final: 0 };
  dead = false;
  constructor(readonly w: World, readonly name: string) {}

  write(data: Buffer): string | 'dead' {
    if (this.dead) return '';
    this.bytes += data.toString('latin1');
    this.#pending += data.toString('latin1');
    let out = '';
    for (;;) {
      if (this.#inData) {
        const end = this.#pending.startsWith('.\r\n') ? 0 : this.#pending.indexOf('\r\n.\r\n');
        if (end === -1) return out;
        const body = this.#pending.slice(0, end);
        this.#pending = this.#pending.slice(end === 0 ? 3 : end + 5);
        this.#inData = false;
        if (this.#dies()) return 'dead';
        const code = this.w.pick(this.w.plan.final, this.#n.final++);
        for (const m of body.match(/<m\d+>/g) ?? []) this.w.bodies.push(m);
        if (code === 250) {
          const id = `Q${++this.w.ids}`;
          this.w.accepted.push(id);
          out += `250 2.0.0 queued as ${id}\r\n`;
        } else out += `${code} 4.3.0 not now\r\n`;
        continue;
      }
      const lf = this.#pending.indexOf('\r\n');
      if (lf === -1) return out;
      const verb = this.#pending.slice(0, 4).toUpperCase();
      this.#pending = this.#pending.slice(lf + 2);
      if (this.#dies()) return 'dead';
      if (verb === 'DATA') {
        const code = this.w.pick(this.w.plan.data, this.#n.data++);
        this.#inData = code === 354;
        out += code === 354 ? '354 go\r\n' : '554 5.5.1 no\r\n';
      } else if (verb === 'RCPT') out += `${this.w.pick(this.w.plan.rcpt, this.#n.rcpt++)} 2.1.5 rcpt\r\n`;
      else out += '250 2.0.0 Ok\r\n';
    }
  }

  #dies(): boolean {
    if (this.w.plan.dieAt !== null && ++this.w.commands === this.w.plan.dieAt) {
      this.dead = true;
      return true;
    }
    return false;
  }
}


function run(chunks: Buffer[], plan: Plan): { wire: string; backends: string[]; world: World } {
  const world = new World(plan);
  const s = new Session(TX_BOOK, LIMITS);
  let wire = '';
  const backends: Backend[] = [];
  let current: Backend | null = null;
  const queue: Action[][] = [s.start()];
  const apply = (actions: Action[]): void => {
    for (const a of actions) {
      if (a.type === 'reply') wire += a.data.toString('latin1');
      else if (a.type === 'error') wire += (a.reply ?? s.errorReply(a.code)).toString('latin1');
      else if (a.type === 'route') queue.push(s.routed(routeByDomain(a.envelope.rcptTo)));
      else if (a.type === 'connect') {
        current = new Backend(world, a.target.host);
        backends.push(current);
        // The replay is connect.ts's; its RCPT reply arrives here.
        queue.push(s.backendReady({ reply: reply(`${world.pick(plan.rcpt, 0)} 2.1.5 rcpt\r\n`), pipelining: true }));
      } else if (a.type === 'backend-write') {
        const r = current!.write(a.data);
        if (r === 'dead') queue.push(s.backendLost('PST_BACKEND_CLOSED', 'died'));
        else if (r) queue.push(s.backendData(b(r)));
      } else if (a.type === 'backend-close') current = null;
    }
  };
  const drain = (): void => {
    while (queue.length) apply(queue.shift()!);
  };
  drain();
  for (const c of chunks) {
    queue.push(s.receive(c));
    drain();
  }
  return { wire, backends: backends.map((x) => `${x.name}:${x.bytes}`), world };
}

const bodyLine = fc.constantFrom('Subject: x', '', '..dot', 'a.b', 'bare\nlf', '\xe9\xff 8bit', '. ', '..');
const domain = fc.constantFrom('a.test', 'a.test', 'b.test', 'b.test', 'unknown.test', 'down.test');
let marker = 0;
const command = fc.oneof(
  { weight: 2, arbitrary: fc.constant('EHLO c.test\r\n') },
  { weight: 4, arbitrary: fc.constant('MAIL FROM:<s@x.test>\r\n') },
  { weight: 6, arbitrary: domain.map((d) => `RCPT TO:<r@${d}>\r\n`) },
  { weight: 4, arbitrary: fc.array(bodyLine, { maxLength: 5 }).map((lines) => `DATA\r\n${lines.map((l) => `${l}\r\n`).join('')}<m${++marker}>\r\n.\r\n`) },
  { weight: 1, arbitrary: fc.constantFrom('RSET\r\n', 'NOOP\r\n', 'QUIT\r\n', 'junk\r\n') },
);
const plan: fc.Arbitrary<Plan> = fc.record({
  rcpt: fc.array(fc.constantFrom(250, 250, 250, 450, 550), { minLength: 1, maxLength: 4 }),
  data: fc.array(fc.constantFrom(354, 354, 354, 554), { minLength: 1, maxLength: 3 }),
  final: fc.array(fc.constantFrom(250, 250, 451), { minLength: 1, maxLength: 3 }),
  dieAt: fc.option(fc.integer({ min: 1, max: 30 }), { nil: null }),
});

describe('fuzz: transaction-mode proxying', () => {
  it('same result under any cutting; every acceptance is the back-end\'s, once; no body twice', () => {
    fc.assert(
      fc.property(fc.array(command, { minLength: 1, maxLength: 14 }), plan, chunking, (cmds, p, cut) => {
        const input = b(cmds.join(''));
        const whole = run([input], p);
        const cutRun = run(split(input, cut), p);
        assert.equal(cutRun.wire, whole.wire, 'client wire depends on the cutting');
        assert.deepEqual(cutRun.backends, whole.backends, 'back-end bytes depend on the cutting');
        const seen = whole.wire.match(/queued as Q\d+/g)?.map((x) => x.slice(10)) ?? [];
        assert.deepEqual(seen, whole.world.accepted, 'the client saw exactly the back-ends\' acceptances, each once, in order');
        assert.equal(new Set(whole.world.bodies).size, whole.world.bodies.length, 'a message body reached the back-ends twice');
        // Postern's own 2xx never follows a body: every "250 2.0.0 queued" is a back-end's.
        for (const line of whole.wire.split('\r\n')) if (/^250 2\.0\.0 (?!Ok$|OK$|queued as Q\d+$)/.test(line)) assert.fail(`unexpected 250: ${line}`);
      }),
      { numRuns: runs(300) },
    );
  });
});
