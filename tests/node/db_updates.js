// The Node.js mongodb driver on the update language: pipeline updates, arrayFilters, let and
// MongoDB's refusals. usage: NODE_PATH=tests/node/node_modules node tests/node/db_updates.js PORT
// Prints one JSON line of observations; tests/test_db_update_pipeline.py checks them.
const { MongoClient } = require("mongodb");

async function failure(promise) {
  try { await promise; return null; } catch (e) { return { code: e.code, codeName: e.codeName }; }
}

async function main() {
  const [port] = process.argv.slice(2);
  const client = new MongoClient(`mongodb://127.0.0.1:${port}/?serverSelectionTimeoutMS=5000`);
  await client.connect();
  const out = {};
  const db = client.db("nodeupdates");
  const col = db.collection("items");
  await col.drop().catch(() => {});
  await col.insertMany([{ _id: 1, qty: 2, price: 5, grades: [80, 95] }, { _id: 2, qty: 3, price: 7, grades: [99] }]);
  await col.updateMany({}, [{ $set: { total: { $multiply: ["$qty", "$price"] } } }, { $unset: "price" }]);
  out.pipeline = await col.find({}, { projection: { total: 1 } }).sort({ _id: 1 }).toArray();
  await col.updateMany({}, { $inc: { "grades.$[g]": 1 } }, { arrayFilters: [{ g: { $gte: 90 } }] });
  out.arrayFilters = (await col.find({}).sort({ _id: 1 }).toArray()).map((d) => d.grades);
  const fam = await col.findOneAndUpdate({ $expr: { $eq: ["$qty", "$$want"] } },
    [{ $set: { dotted: { $literal: "$x" } } }], { let: { want: 3 }, returnDocument: "after" });
  out.fam = fam && fam.value !== undefined ? fam.value : fam;
  out.letFind = (await col.find({ $expr: { $gt: ["$total", "$$min"] } }, { let: { min: 15 } }).toArray()).map((d) => d._id);
  out.letAggregate = (await col.aggregate([{ $match: { $expr: { $eq: ["$_id", "$$one"] } } }, { $project: { v: "$$one" } }],
    { let: { one: 1 } }).toArray());
  const bulk = await col.bulkWrite([
    { updateOne: { filter: { _id: 1 }, update: { $set: { "grades.$[low]": 0 } }, arrayFilters: [{ low: { $lt: 90 } }] } },
    { updateMany: { filter: {}, update: [{ $set: { seen: true } }] } }]);
  out.bulk = { modified: bulk.modifiedCount, grades: (await col.findOne({ _id: 1 })).grades };
  await col.createIndex({ total: 1 }, { unique: true });
  try { await col.findOneAndUpdate({ _id: 1 }, { $set: { total: 21 } }); out.famDup = null; }
  catch (e) { out.famDup = { code: e.code, keyPattern: e.keyPattern, keyValue: e.keyValue }; }
  out.letDelete = (await col.deleteMany({ $expr: { $gt: ["$total", "$$min"] } }, { let: { min: 15 } })).deletedCount;
  out.unknown = await failure(db.command({ find: "items", bogusField: 1 }));
  out.sortInUpdate = await failure(db.command({ update: "items", updates: [{ q: {}, u: { $set: { a: 1 } }, sort: { _id: 1 } }] }));
  out.badHint = await failure(col.find({}).hint("nope").toArray());
  out.dollarId = await failure(col.insertOne({ _id: { $a: 1 } }));
  out.badStage = await failure(col.updateOne({ _id: 1 }, [{ $match: {} }]));
  await client.close();
  console.log(JSON.stringify(out));
}

main().catch((e) => { console.error(e); process.exit(1); });
