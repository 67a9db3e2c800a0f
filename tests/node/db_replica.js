// The Node.js mongodb driver against two replicating farts-edge nodes, readPreference in the URI.
// usage: NODE_PATH=tests/node/node_modules node tests/node/db_replica.js WRITE_PORT READ_PORT
// Prints one JSON line of observations; tests/test_db_replication_cluster.py checks them.
const { MongoClient } = require("mongodb");

function client(port, pref) {
  const url = `mongodb://127.0.0.1:${port}/?serverSelectionTimeoutMS=5000` + (pref ? `&readPreference=${pref}` : "");
  const c = new MongoClient(url, { monitorCommands: true });
  c.prefs = [];
  c.on("commandStarted", (e) => {
    if (e.commandName === "find") c.prefs.push(e.command.$readPreference ? e.command.$readPreference.mode : null);
  });
  return c;
}

async function main() {
  const [writePort, readPort] = process.argv.slice(2);
  const writer = client(writePort, "nearest");
  const reader = client(readPort, "nearest");
  await writer.connect();
  await reader.connect();
  const out = {};
  const w = writer.db("nodeapp").collection("repl");
  const r = reader.db("nodeapp").collection("repl");
  await w.insertOne({ _id: "n", hits: 1 });
  await w.updateOne({ _id: "n" }, { $inc: { hits: 2 } });
  // Bounded polling: the write reaches the reader's node within the deadline.
  const deadline = Date.now() + 20000;
  let doc = null;
  while (Date.now() < deadline) {
    doc = await r.findOne({ _id: "n" });
    if (doc && doc.hits === 3) break;
    await new Promise((res) => setTimeout(res, 50));
  }
  out.seen = doc;
  out.prefs = [...new Set(reader.prefs)];
  // Writes on the reader's node come back to the writer's too.
  await r.updateOne({ _id: "n" }, { $inc: { hits: 10 } });
  const until = Date.now() + 20000;
  while (Date.now() < until) {
    doc = await w.findOne({ _id: "n" });
    if (doc && doc.hits === 13) break;
    await new Promise((res) => setTimeout(res, 50));
  }
  out.back = doc;
  await writer.close();
  await reader.close();
  console.log(JSON.stringify(out));
}

main().catch((e) => { console.error(e); process.exit(1); });
