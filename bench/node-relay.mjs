// The floor of Node.js with public APIs, for `npm run bench` (target `node-relay`): accept, connect
// to the sink, pipe both ways with backpressure, close — no SMTP, no auth, no logging, TCP_NODELAY
// on both sockets. What any proxy written on Node's net streams costs at least per session.
import net from 'node:net';

const [port, sinkPort] = process.argv.slice(2).map(Number);
net.createServer({ noDelay: true }, (client) => {
  const sink = net.connect({ port: sinkPort, host: '127.0.0.1', noDelay: true });
  client.on('error', () => sink.destroy());
  sink.on('error', () => client.destroy());
  client.pipe(sink);
  sink.pipe(client);
}).listen({ port, host: '127.0.0.1', backlog: 4096 });
