'use strict';
// Socket.IO 4.8 chat server for scripts/bench-scaleout, with the message
// semantics of `ferrows serve chat`: every `msg` event (a string) is
// re-emitted to the whole room, sender included. Several processes form
// one room through Redis, with one of the two official adapters:
//
//   pubsub   @socket.io/redis-adapter (Redis Pub/Sub)
//   streams  @socket.io/redis-streams-adapter (Redis Streams)
//   none     no adapter (one process alone)
//
// WebSocket transport only (clients connect straight to
// /socket.io/?EIO=4&transport=websocket), no per-message deflate.
// Clients join the room `chat` on connect; no join/leave notices.
//
// Usage: node socketio-chat.js PORT ADAPTER [REDIS_URL]   (PORT 0: a free one)

const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.argv[2]);
const adapter = process.argv[3] || 'none';
const redisUrl = process.argv[4] || 'redis://127.0.0.1:6379';
if (!Number.isInteger(port) || !['pubsub', 'streams', 'none'].includes(adapter)) {
  console.error('usage: node socketio-chat.js PORT pubsub|streams|none [REDIS_URL]');
  process.exit(2);
}

async function main() {
  const httpServer = http.createServer();
  const io = new Server(httpServer, {
    transports: ['websocket'],
    perMessageDeflate: false,
    serveClient: false,
    maxHttpBufferSize: 64 * 1024,
  });
  if (adapter !== 'none') {
    const { createClient } = require('redis');
    const onError = (err) => console.error(`socket.io chat: redis: ${err.message}`);
    if (adapter === 'pubsub') {
      const { createAdapter } = require('@socket.io/redis-adapter');
      const pub = createClient({ url: redisUrl });
      const sub = pub.duplicate();
      pub.on('error', onError);
      sub.on('error', onError);
      await Promise.all([pub.connect(), sub.connect()]);
      io.adapter(createAdapter(pub, sub));
    } else {
      const { createAdapter } = require('@socket.io/redis-streams-adapter');
      const client = createClient({ url: redisUrl });
      client.on('error', onError);
      await client.connect();
      io.adapter(createAdapter(client));
    }
  }
  io.on('connection', (socket) => {
    socket.join('chat');
    socket.on('msg', (text) => {
      if (typeof text === 'string') io.to('chat').emit('msg', text);
    });
  });
  httpServer.listen(port, '127.0.0.1', () => {
    const bound = httpServer.address().port;
    console.error(`socket.io chat (${adapter}) listening on 127.0.0.1:${bound}`);
  });
}

main().catch((err) => {
  console.error(`socket.io chat: ${err.stack || err}`);
  process.exit(1);
});
