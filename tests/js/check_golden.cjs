// Checks the browser client's msgpack codec (worldsim/serve/web/msgpack.js) against bridge/golden/messages.json:
// every value encodes to exactly its bytes and decodes back; every gateway message splits into header and payload.
// Usage: node tests/js/check_golden.cjs  (exit status 1 and a list of mismatches on failure)
"use strict";
const fs = require("fs");
const path = require("path");
const assert = require("assert");

const root = path.join(__dirname, "..", "..");
const { msgpackEncode, msgpackDecode, splitMessage } = require(path.join(root, "worldsim/serve/web/msgpack.js"));
const golden = JSON.parse(fs.readFileSync(path.join(root, "bridge/golden/messages.json"), "utf8"));

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
  try { fn(); } catch (e) { failures.push(`${name}: ${e.message}`); }
};
for (const { name, value, msgpack } of golden.messages) {
  const v = fromJson(value);
  check(`${name} encode`, () => assert.strictEqual(hex(msgpackEncode(v)), msgpack));
  check(`${name} decode`, () => assert.deepStrictEqual(msgpackDecode(fromHex(msgpack)), v));
}
for (const { name, header, payload, message } of golden.gateway) {
  check(`${name} split`, () => {
    const [h, p] = splitMessage(fromHex(message).buffer);
    assert.deepStrictEqual(h, fromJson(header));
    assert.strictEqual(hex(p), payload);
  });
}
check("truncated input is refused", () => assert.throws(() => msgpackDecode(fromHex("92 01".replace(" ", "")))));
check("trailing bytes are refused", () => assert.throws(() => msgpackDecode(fromHex("0101"))));
check("non-string map keys are refused", () => assert.throws(() => msgpackDecode(fromHex("810101"))));

if (failures.length) {
  console.error(`${failures.length} golden-vector failures:\n` + failures.join("\n"));
  process.exit(1);
}
console.log(`ok: ${golden.messages.length} messages and ${golden.gateway.length} gateway messages`);
