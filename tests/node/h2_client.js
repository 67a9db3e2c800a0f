// Node's own http2 client against the edge: GET each path on ONE connection, all at
// once; prints one JSON line per answer: {path, status, version, length, sha256}.
// Usage: node h2_client.js https://localhost:PORT CA_FILE /path1 /path2 ...
"use strict";
const http2 = require("http2");
const fs = require("fs");
const crypto = require("crypto");

const [origin, caFile, ...paths] = process.argv.slice(2);
const session = http2.connect(origin, { ca: fs.readFileSync(caFile) });
session.on("error", (err) => { console.error("session error:", err.message); process.exit(2); });
let left = paths.length;
// Requests go once the server's SETTINGS are in (its stream limit): nghttp2 under
// Node then queues those over the limit instead of having them refused.
session.once("remoteSettings", () => { for (const path of paths) get(path); });
function get(path) {
  const req = session.request({ ":path": path });
  const hash = crypto.createHash("sha256");
  let status = 0, length = 0;
  req.on("response", (headers) => { status = headers[":status"]; });
  req.on("data", (chunk) => { hash.update(chunk); length += chunk.length; });
  req.on("end", () => {
    console.log(JSON.stringify({ path, status, version: session.alpnProtocol, length, sha256: hash.digest("hex") }));
    if (--left === 0) session.close();
  });
  req.on("error", (err) => { console.error(path, "error:", err.message); process.exit(3); });
  req.end();
}
