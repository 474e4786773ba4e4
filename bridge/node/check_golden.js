// Checks that msgpack as client.js configures it encodes every golden vector of bridge/golden/messages.json to
// exactly its bytes and decodes the bytes back to the value, and that embeddingBin() makes the golden embedding.
// Usage: node check_golden.js [path/to/messages.json]  (exit status 1 and a list of mismatches on failure)
//
// JSON numbers map to JS numbers: integral ones encode as msgpack integers, the rest as float64, which is what the
// Python generator wrote (its floats are never integral). The `gateway` entries are §14's WebSocket framing, which
// this ZeroMQ client does not use; their headers are the `pong` and `frame_header` messages checked here.
"use strict";
const fs = require("fs");
const path = require("path");
const assert = require("assert");
const { encode, decode, embeddingBin } = require("./client.js");

const file = process.argv[2] || path.join(__dirname, "..", "golden", "messages.json");
const golden = JSON.parse(fs.readFileSync(file, "utf8"));

const hex = (bytes) => Buffer.from(bytes).toString("hex");
const fromHex = (h) => Uint8Array.from(Buffer.from(h, "hex"));
const fromJson = (v) => {
  if (Array.isArray(v)) return v.map(fromJson);
  if (v && typeof v === "object") {
    if (Object.keys(v).length === 1 && "$bin" in v) return fromHex(v.$bin);
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, fromJson(x)]));
  }
  return v;
};

const failures = [];
const check = (name, fn) => {
  try {
    fn();
  } catch (e) {
    failures.push(`${name}: ${e.message}`);
  }
};
const byName = Object.fromEntries(golden.messages.map((m) => [m.name, m]));
for (const { name, value, msgpack } of golden.messages) {
  const v = fromJson(value);
  check(`${name} encode`, () => assert.strictEqual(hex(encode(v)), msgpack));
  check(`${name} decode`, () => assert.deepStrictEqual(decode(fromHex(msgpack)), v));
}
check("embeddingBin makes the golden embedding", () => {
  const want = byName.input_embedding;
  const msg = { type: "input", seq: 5, session: 1, controls: { embedding: embeddingBin([[0.5, -0.25, 0.125, 0, 1.5]]) } };
  assert.strictEqual(hex(encode(msg)), want.msgpack);
});
check("undefined fields are left out", () => {
  const msg = { type: "stats", seq: 11, session: undefined };
  assert.strictEqual(hex(encode(msg)), byName.stats.msgpack);
});
check("truncated input is refused", () => assert.throws(() => decode(fromHex("9201"))));
check("trailing bytes are refused", () => assert.throws(() => decode(fromHex("0101"))));
check("ext types are refused", () => assert.throws(() => decode(fromHex("d6ff00000000"))));
check("a Date is refused, not sent as a timestamp", () => assert.throws(() => encode({ t: new Date() }), /timestamps/));

if (failures.length) {
  console.error(`${failures.length} golden-vector failures:\n` + failures.join("\n"));
  process.exit(1);
}
console.log(`ok: ${golden.messages.length} messages encode to their golden bytes and decode back`);
