'use strict';
// Node `ws` chat server for the broadcast row of scripts/bench-peers, in
// the wire format of `ferrows serve chat`: a text message `hello` from any
// client goes to every open client, sender included, as `msg:hello`. The
// fan-out is the ws README's broadcast loop over `wss.clients`. Unlike
// `ferrows serve chat`, it sends no join/leave notices and no tick (the
// benchmark does not measure them; `serve chat` runs with --tick 0).
//
// Usage: node chat.js PORT [MAX_MESSAGE_BYTES]

const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.argv[2]);
const maxPayload = Number(process.argv[3] || 64 * 1024);
if (!Number.isInteger(port) || !Number.isInteger(maxPayload)) {
  console.error('usage: node chat.js PORT [MAX_MESSAGE_BYTES]');
  process.exit(2);
}

const wss = new WebSocketServer({ host: '127.0.0.1', port, maxPayload });

wss.on('connection', (ws) => {
  ws.on('error', (err) => console.error('ws chat: connection error:', err.message));
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    const out = 'msg:' + data.toString();
    wss.clients.forEach((client) => {
      if (client.readyState === WebSocket.OPEN) client.send(out);
    });
  });
});
wss.on('listening', () => console.error(`ws chat listening on 127.0.0.1:${port}`));
