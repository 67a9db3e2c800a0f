// The Node.js mongodb driver against a farts-edge node: document validation, views,
// $out/$merge, {aggregate: 1} with $documents, and collation on queries and indexes (issue 17, part B).
// usage: NODE_PATH=tests/node/node_modules node tests/node/db_schema_views.js PORT
// Prints one JSON line of observations; tests/test_db_out_merge.py checks them.
const { MongoClient } = require("mongodb");

async function error(fn) {
  try { await fn(); return null; } catch (e) { return { code: e.code, codeName: e.codeName, errInfo: e.errInfo }; }
}

async function main() {
  const [port] = process.argv.slice(2);
  const client = new MongoClient(`mongodb://127.0.0.1:${port}/?serverSelectionTimeoutMS=5000`);
  await client.connect();
  const db = client.db("node_part_b");
  await db.dropDatabase();
  const out = {};
  // Validation
  const people = await db.createCollection("people", { validator: { $jsonSchema: {
    bsonType: "object", required: ["name"], properties: { age: { bsonType: "int", minimum: 0 } } } } });
  await people.insertOne({ _id: 1, name: "ada", age: 36 });
  out.invalid = await error(() => people.insertOne({ _id: 2, age: -1 }));
  out.bypass = (await people.insertOne({ _id: 3 }, { bypassDocumentValidation: true })).acknowledged;
  await db.command({ collMod: "people", validationAction: "warn" });
  out.warned = (await people.insertOne({ _id: 4, age: -5 })).acknowledged;
  // A catastrophic pattern (^(a+)+$ on "a"*40 + "b") in a validator answers at once (RE2)
  const evil = await db.createCollection("evil", { validator: { $jsonSchema: { properties: {
    s: { pattern: "^(a+)+$" } } } } });
  out.evil = await error(() => evil.insertOne({ _id: 1, s: "a".repeat(40) + "b" }));
  out.evilOk = (await evil.insertOne({ _id: 2, s: "aaaa" })).acknowledged;
  out.nestedBackref = await error(() => db.createCollection("refused", { validator: { s: { $regex: "^(a+)+\\1$" } } }));
  // Views
  await db.createCollection("named", { viewOn: "people", pipeline: [{ $match: { name: { $exists: true } } },
    { $project: { name: 1 } }] });
  out.view = await db.collection("named").find({}).toArray();
  out.viewCount = await db.collection("named").countDocuments({});
  out.viewType = (await db.listCollections({ name: "named" }).toArray())[0].type;
  out.viewWrite = await error(() => db.collection("named").insertOne({ name: "x" }));
  // $out, $merge, {aggregate: 1}
  await people.aggregate([{ $match: { _id: { $lte: 3 } } }, { $project: { name: 1 } }, { $out: "copy" }]).toArray();
  out.copy = await db.collection("copy").find({}).sort({ _id: 1 }).toArray();
  await db.aggregate([{ $documents: [{ _id: 1, extra: true }, { _id: 9, extra: false }] },
    { $merge: { into: "copy", whenNotMatched: "discard" } }]).toArray();
  out.merged = await db.collection("copy").find({}).sort({ _id: 1 }).toArray();
  // Collation (case-insensitive, numeric ordering)
  const words = db.collection("words");
  await words.insertMany([{ _id: 1, w: "b" }, { _id: 2, w: "A" }, { _id: 3, w: "a" }, { _id: 4, w: "10" },
    { _id: 5, w: "9" }]);
  const ci = { locale: "en", strength: 2 };
  out.collationFind = (await words.find({ w: "a" }, { collation: ci }).toArray()).map((d) => d._id);
  out.collationSort = (await words.find({}, { collation: { locale: "en", numericOrdering: true } })
    .sort({ w: 1, _id: 1 }).toArray()).map((d) => d.w);
  out.collationCount = await words.countDocuments({ w: "A" }, { collation: ci });
  out.collationDelete = (await words.deleteMany({ w: "B" }, { collation: ci })).deletedCount;
  out.badLocale = await error(() => words.find({}, { collation: { locale: "xx_bogus" } }).toArray());
  // An index with a collation: unique case-insensitively, listed with it, read by queries in it
  const tags = db.collection("tags");
  await tags.insertOne({ _id: 1, t: "red" });
  await tags.createIndex({ t: 1 }, { unique: true, collation: ci });
  try { await tags.insertOne({ _id: 2, t: "RED" }); out.indexDup = null; }
  catch (e) { out.indexDup = { code: e.code, keyValue: e.keyValue, keyPattern: e.keyPattern }; }
  out.indexCollation = (await tags.listIndexes().toArray()).find((i) => i.name === "t_1").collation;
  const plan = await tags.find({ t: "RED" }, { collation: ci }).explain("executionStats");
  out.indexUsed = plan.queryPlanner.winningPlan.inputStage && plan.queryPlanner.winningPlan.inputStage.indexName;
  out.indexFound = (await tags.find({ t: "RED" }, { collation: ci }).toArray()).map((d) => d._id);
  out.indexBinaryScan = (await tags.find({ t: "RED" }).explain("executionStats")).queryPlanner.winningPlan.stage;
  await client.close();
  console.log(JSON.stringify(out));
}

main().catch((e) => { console.error("db_schema_views failed:", e); process.exit(1); });
