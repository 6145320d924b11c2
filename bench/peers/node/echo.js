'use strict';
// Node `ws` echo server for scripts/bench-peers, as websocket-echo-server
// and the ws README write it: every message is sent back with the same
// text/binary flag.
//
// Usage: node echo.js PORT [MAX_MESSAGE_BYTES] [deflate]
//   listens on 127.0.0.1; MAX_MESSAGE_BYTES is ws' maxPayload (default
//   64 MiB); `deflate` turns permessage-deflate on with ws' defaults
//   (otherwise off, the ws server default).

const { WebSocketServer } = require('ws');

const port = Number(process.argv[2]);
const maxPayload = Number(process.argv[3] || 64 * 1024 * 1024);
const deflate = process.argv[4] === 'deflate';
if (!Number.isInteger(port) || !Number.isInteger(maxPayload)) {
  console.error('usage: node echo.js PORT [MAX_MESSAGE_BYTES] [deflate]');
  process.exit(2);
}

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port,
  maxPayload,
  perMessageDeflate: deflate,
});

wss.on('connection', (ws) => {
  ws.on('error', (err) => console.error('ws echo: connection error:', err.message));
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});
wss.on('listening', () => {
  console.error(`ws echo listening on 127.0.0.1:${port} (deflate ${deflate ? 'on' : 'off'})`);
});
