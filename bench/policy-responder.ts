/**
 * The benchmark's Postfix policy server (SMTPD_POLICY_README), run as its own process so that its
 * CPU is measured apart from Postern's: it reads `name=value` lines up to the empty line, answers
 * `action=DUNNO` and an empty line, and keeps the connection open for the next request, as
 * postgrey or policyd-spf do. Several requests in one read are answered in order.
 *
 * `node --import tsx bench/policy-responder.ts <port>`. It counts the requests it answered (and
 * any line without `=`, which a real server would take as a protocol error): a line `count` on
 * stdin is answered on stdout with `requests=<n> malformed=<n>`, so the bench can check that
 * Postern asked once per recipient.
 */
import net from 'node:net';

const port = Number(process.argv[2]);
let requests = 0;
let malformed = 0;

const server = net.createServer({ noDelay: true }, (socket) => {
  // Bytes of the request block read so far (latin1: one character per byte), from its first line.
  let pending = '';
  socket.on('data', (chunk: Buffer) => {
    pending += chunk.toString('latin1');
    let reply = '';
    let end: number;
    while ((end = pending.indexOf('\n\n')) !== -1) {
      const block = pending.slice(0, end);
      pending = pending.slice(end + 2);
      for (const line of block.split('\n')) if (!line.includes('=')) malformed++;
      requests++;
      reply += 'action=DUNNO\n\n';
    }
    if (reply) socket.write(reply);
  });
  socket.on('error', () => socket.destroy());
});
server.listen({ port, host: '127.0.0.1', backlog: 1024 });

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (d: string) => {
  input += d;
  let nl: number;
  while ((nl = input.indexOf('\n')) !== -1) {
    const cmd = input.slice(0, nl).trim();
    input = input.slice(nl + 1);
    if (cmd === 'count') process.stdout.write(`requests=${requests} malformed=${malformed}\n`);
  }
});
// The bench went away: so does the responder.
process.stdin.on('end', () => process.exit(0));
