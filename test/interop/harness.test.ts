import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { requireBinary, startPostfix, type PostfixInstance } from '../helpers/postfix.js';
import { startSmtpSink, type SmtpSinkInstance } from '../helpers/smtp-sink.js';

const run = promisify(execFile);

async function swaks(port: number, body: string): Promise<string> {
  const bin = await requireBinary('swaks', 'swaks');
  const { stdout } = await run(
    bin,
    ['--server', '127.0.0.1', '--port', String(port), '--to', 'u@y.test', '--from', 'a@x.test', '--helo', 'my.client.test', '--body', body],
    { timeout: 20_000 },
  );
  return stdout;
}

async function waitForFiles(list: () => Promise<string[]>, n: number, timeoutMs: number): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const files = await list();
    if (files.length >= n || Date.now() >= deadline) return files;
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('Postfix helper', () => {
  let pf: PostfixInstance;
  before(async () => {
    pf = await startPostfix();
  });
  after(async () => {
    await pf?.stop();
  });

  it('delivers a message sent with swaks into the Maildir', async () => {
    const body = `postfix-body-${process.pid}-${Date.now()}`;
    const out = await swaks(pf.port, body);
    assert.match(out, /250 2\.0\.0 Ok: queued/);
    const [file, ...rest] = await pf.waitForMessages(1, 15_000);
    assert.equal(rest.length, 0);
    assert.ok(file);
    assert.ok(file.startsWith(pf.mailDir));
    const msg = await readFile(file, 'utf8');
    assert.ok(msg.includes(body), msg);
    assert.match(msg, /Received: from my\.client\.test \(localhost \[127\.0\.0\.1\]\)\s+by backend\.test/);
    assert.match(pf.log(), /status=sent/);
  });

  it('advertises XCLIENT, 8BITMIME and SMTPUTF8 to loopback clients', async () => {
    const out = await swaks(pf.port, 'ehlo check');
    for (const kw of ['XCLIENT', '8BITMIME', 'SMTPUTF8']) assert.match(out, new RegExp(`<-  250[ -]${kw}\\b`));
    assert.doesNotMatch(out, /STARTTLS/);
  });
});

describe('smtp-sink helper', () => {
  let sink: SmtpSinkInstance;
  before(async () => {
    sink = await startSmtpSink({ dumpDir: true });
  });
  after(async () => {
    await sink?.stop();
  });

  it('dumps each message sent with swaks to its own file', async () => {
    assert.ok(sink.dumpDir);
    const bodies = ['sink-one', 'sink-two'].map((b) => `${b}-${process.pid}-${Date.now()}`);
    for (const body of bodies) await swaks(sink.port, body);
    const files = await waitForFiles(() => sink.files(), 2, 10_000);
    assert.equal(files.length, 2);
    const dumps = await Promise.all(files.map((f) => readFile(f, 'utf8')));
    for (const body of bodies) assert.equal(dumps.filter((d) => d.includes(body)).length, 1, dumps.join('\n---\n'));
    assert.ok(dumps.every((d) => d.includes('X-Helo-Args: my.client.test')));
  });
});
