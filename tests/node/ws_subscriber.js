// A real Node.js WebSocket client (the `ws` package): subscribes to one channel,
// prints "subscribed", then prints N events (one JSON line each) and exits.
// usage: node ws_subscriber.js URL CHANNEL N
const WebSocket = require('ws');
const [url, channel, n] = process.argv.slice(2);
const ws = new WebSocket(url);
let left = Number(n);
const timer = setTimeout(() => { console.error('timeout'); process.exit(2); }, 15000);
ws.on('open', () => ws.send(JSON.stringify({ op: 'subscribe', channel })));
ws.on('message', (data) => {
  const msg = JSON.parse(data.toString());
  if (msg.op === 'subscribed') { console.log('subscribed'); return; }
  if (msg.op) { console.error('unexpected', msg); process.exit(1); }
  console.log(JSON.stringify(msg));
  if (--left === 0) { clearTimeout(timer); ws.close(1000); }
});
ws.on('close', (code) => process.exit(left === 0 && code === 1000 ? 0 : 1));
ws.on('error', (e) => { console.error(String(e)); process.exit(1); });
