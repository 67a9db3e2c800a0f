// The official Node.js mongodb driver against a farts-edge node's MongoDB endpoint.
// usage: NODE_PATH=tests/node/node_modules node tests/node/db_smoke.js PORT [USER PASSWORD]
// Prints one JSON line of observations; tests/test_db_node.py checks them.
const { MongoClient, ReadPreference } = require("mongodb");

async function main() {
  const [port, user, password] = process.argv.slice(2);
  const auth = user ? `${encodeURIComponent(user)}:${encodeURIComponent(password)}@` : "";
  const url = `mongodb://${auth}127.0.0.1:${port}/?authMechanism=${user ? "SCRAM-SHA-256" : "DEFAULT"}` +
    "&compressors=zlib&serverSelectionTimeoutMS=5000";
  const client = new MongoClient(url, { monitorCommands: true });
  const started = {};
  client.on("commandStarted", (e) => { started[e.commandName] = (started[e.commandName] || 0) + 1; });
  await client.connect();
  const out = {};
  const db = client.db("nodeapp");
  const col = db.collection("items");
  await col.drop().catch(() => {});
  out.ping = (await db.command({ ping: 1 })).ok;
  const docs = [];
  for (let i = 0; i < 300; i++) docs.push({ _id: i, group: i % 7, name: `n${i}`, tags: i % 2 ? ["odd"] : [] });
  out.inserted = (await col.insertMany(docs)).insertedCount;
  out.one = await col.findOne({ _id: 42 });
  // Many batches: 300 documents 25 at a time (getMore until the cursor is exhausted).
  let seen = 0, ordered = true, last = -1;
  const cursor = col.find({}, { batchSize: 25 }).sort({ _id: 1 });
  for await (const d of cursor) { seen++; ordered = ordered && d._id > last; last = d._id; }
  out.cursor = { seen, ordered, getMores: started.getMore || 0 };
  out.count = await col.countDocuments({ group: 3 });
  out.estimated = await col.estimatedDocumentCount();
  out.indexName = await col.createIndex({ name: 1 }, { unique: true });
  await col.createIndex({ group: 1, _id: -1 });
  out.indexes = (await col.listIndexes().toArray()).map((i) => i.name);
  const plan = await col.find({ group: 5 }).explain("executionStats");
  out.explain = { docs: plan.executionStats.totalDocsExamined, n: plan.executionStats.nReturned,
                  stage: plan.queryPlanner.winningPlan.inputStage && plan.queryPlanner.winningPlan.inputStage.stage };
  try { await col.insertOne({ name: "n5" }); out.dup = null; }
  catch (e) { out.dup = { code: e.code, keyValue: e.keyValue }; }
  out.update = (await col.updateOne({ _id: 1 }, { $inc: { hits: 2 }, $addToSet: { tags: "seen" } })).modifiedCount;
  out.updateMany = (await col.updateMany({ group: 0 }, { $set: { zero: true } })).modifiedCount;
  out.upsert = (await col.updateOne({ _id: 1000 }, { $setOnInsert: { fresh: true } }, { upsert: true })).upsertedId;
  out.replaced = (await col.replaceOne({ _id: 2 }, { name: "two" })).modifiedCount;
  out.fam = await col.findOneAndUpdate({ _id: 3 }, { $set: { k: 1 } }, { returnDocument: "after" });
  out.deleted = (await col.deleteMany({ group: 6 })).deletedCount;
  out.deletedOne = (await col.deleteOne({ _id: 1000 })).deletedCount;
  out.agg = await col.aggregate([{ $match: { group: { $lt: 3 } } },
    { $group: { _id: "$group", n: { $sum: 1 }, maxId: { $max: "$_id" } } }, { $sort: { _id: 1 } }]).toArray();
  out.distinct = (await col.distinct("group")).length;
  out.projected = await col.find({ _id: { $in: [10, 11] } }, { projection: { name: 1, _id: 0 } }).sort({ _id: -1 }).toArray();
  out.paged = (await col.find({}).sort({ name: 1 }).skip(5).limit(3).toArray()).map((d) => d.name);
  out.secondaryRead = (await col.find({ _id: 4 }, { readPreference: ReadPreference.SECONDARY_PREFERRED,
    }).toArray()).length;
  out.collections = (await db.listCollections().toArray()).map((c) => c.name);
  out.databases = (await client.db().admin().listDatabases()).databases.map((d) => d.name);
  try { await col.find({ x: { $where: "1" } }).toArray(); out.badOp = null; }
  catch (e) { out.badOp = { code: e.code, message: e.message }; }
  // Every update operator, through the Node driver's encoding.
  await col.updateOne({ _id: 5 }, { $push: { l: { $each: [3, 1, 2] } }, $unset: { tags: "" }, $min: { group: -1 },
    $max: { top: 7 }, $currentDate: { at: true } });
  await col.updateOne({ _id: 5 }, { $pull: { l: 1 } });
  const five = await col.findOne({ _id: 5 });
  out.operators = { l: five.l, tags: five.tags === undefined, group: five.group, top: five.top,
                    at: five.at instanceof Date };
  out.aggOps = await col.aggregate([{ $match: { _id: { $lt: 40 } } }, { $unwind: "$tags" },
    { $group: { _id: null, n: { $count: {} }, avg: { $avg: "$_id" }, lo: { $min: "$_id" }, first: { $first: "$_id" },
                last: { $last: "$_id" } } }, { $project: { _id: 0 } }]).toArray();
  out.aggCount = await col.aggregate([{ $match: { group: 1 } }, { $skip: 2 }, { $limit: 5 }, { $count: "n" }]).toArray();
  const early = col.find({}, { batchSize: 5 });
  await early.next();
  await early.close();
  out.killCursors = started.killCursors || 0;
  out.buildInfo = (await client.db("admin").command({ buildInfo: 1 })).versionArray[0];
  out.serverStatus = (await client.db("admin").command({ serverStatus: 1 })).storageEngine.name;
  out.getParameter = (await client.db("admin").command({ getParameter: 1, featureCompatibilityVersion: 1 }))
    .featureCompatibilityVersion.version;
  await db.createCollection("made");
  try { await db.createCollection("made"); out.createTwice = null; }
  catch (e) { out.createTwice = e.code; }
  out.dropIndex = (await col.dropIndex("name_1")).ok;
  out.dropped = await col.drop();
  out.dropDatabase = await db.dropDatabase();
  out.afterDropDatabase = (await client.db().admin().listDatabases()).databases.map((d) => d.name);
  await client.close();
  out.endSessions = started.endSessions || 0;
  console.log(JSON.stringify(out));
}

main().catch((e) => { console.error("db_smoke failed:", e); process.exit(1); });
