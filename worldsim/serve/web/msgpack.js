// msgpack for worldsim protocol v1 in the browser and in Node: the subset the protocol uses (nil, bool, int,
// float64, str, bin, array, map with string keys), encoded exactly as Python's msgpack packs it (smallest integer
// form, float64, str8 for strings of 32-255 bytes), so bridge/golden/messages.json holds one byte string per message.
// Also the gateway's framing: u32 little-endian header length | msgpack header | payload (bridge/PROTOCOL.md §14).
"use strict";

const utf8Encoder = new TextEncoder(), utf8Decoder = new TextDecoder("utf-8", { fatal: true });

function msgpackEncode(value) {
  const out = [];
  const bytes = (...b) => { for (const x of b) out.push(x); };
  const bigEndian = (n, width) => {  // n: a non-negative integer below 2^(8 * width), width <= 8
    for (let i = width - 1; i >= 0; i--) out.push(Number((BigInt(n) >> BigInt(8 * i)) & 255n));
  };
  const put = (v) => {
    if (v === null || v === undefined) bytes(0xc0);
    else if (v === false) bytes(0xc2);
    else if (v === true) bytes(0xc3);
    else if (typeof v === "number" && Number.isSafeInteger(v)) {
      if (v >= 0) {
        if (v < 0x80) bytes(v);
        else if (v < 0x100) bytes(0xcc, v);
        else if (v < 0x10000) { bytes(0xcd); bigEndian(v, 2); }
        else if (v < 0x100000000) { bytes(0xce); bigEndian(v, 4); }
        else { bytes(0xcf); bigEndian(v, 8); }
      } else if (v >= -32) bytes(v & 0xff);
      else if (v >= -0x80) bytes(0xd0, v & 0xff);
      else if (v >= -0x8000) { bytes(0xd1); bigEndian(v & 0xffff, 2); }
      else if (v >= -0x80000000) { bytes(0xd2); bigEndian(v >>> 0, 4); }
      else { bytes(0xd3); bigEndian(BigInt.asUintN(64, BigInt(v)), 8); }
    } else if (typeof v === "number") {
      const f = new DataView(new ArrayBuffer(8));
      f.setFloat64(0, v);
      bytes(0xcb);
      for (let i = 0; i < 8; i++) out.push(f.getUint8(i));
    } else if (typeof v === "string") {
      const s = utf8Encoder.encode(v);
      if (s.length < 32) bytes(0xa0 | s.length);
      else if (s.length < 0x100) bytes(0xd9, s.length);
      else if (s.length < 0x10000) { bytes(0xda); bigEndian(s.length, 2); }
      else { bytes(0xdb); bigEndian(s.length, 4); }
      for (const c of s) out.push(c);
    } else if (v instanceof Uint8Array) {
      if (v.length < 0x100) bytes(0xc4, v.length);
      else if (v.length < 0x10000) { bytes(0xc5); bigEndian(v.length, 2); }
      else { bytes(0xc6); bigEndian(v.length, 4); }
      for (const c of v) out.push(c);
    } else if (Array.isArray(v)) {
      if (v.length < 16) bytes(0x90 | v.length);
      else if (v.length < 0x10000) { bytes(0xdc); bigEndian(v.length, 2); }
      else { bytes(0xdd); bigEndian(v.length, 4); }
      v.forEach(put);
    } else if (typeof v === "object") {
      const keys = Object.keys(v).filter((k) => v[k] !== undefined);
      if (keys.length < 16) bytes(0x80 | keys.length);
      else if (keys.length < 0x10000) { bytes(0xde); bigEndian(keys.length, 2); }
      else { bytes(0xdf); bigEndian(keys.length, 4); }
      for (const k of keys) { put(k); put(v[k]); }
    } else {
      throw new TypeError(`msgpack: cannot encode a ${typeof v}`);
    }
  };
  put(value);
  return Uint8Array.from(out);
}

function msgpackDecode(data) {
  const buf = data instanceof Uint8Array ? data : new Uint8Array(data);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let pos = 0;
  const need = (n) => { if (pos + n > buf.length) throw new RangeError("msgpack: truncated input"); };
  const uint = (n) => {
    need(n);
    let v = 0n;
    for (let i = 0; i < n; i++) v = (v << 8n) | BigInt(buf[pos++]);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError("msgpack: integer beyond 2^53");
    return Number(v);
  };
  const fixed = (n, read) => { need(n); const v = read(pos); pos += n; return v; };
  const str = (n) => { need(n); const s = utf8Decoder.decode(buf.subarray(pos, pos + n)); pos += n; return s; };
  const bin = (n) => { need(n); const b = buf.slice(pos, pos + n); pos += n; return b; };
  const arr = (n) => { const a = []; for (let i = 0; i < n; i++) a.push(get()); return a; };
  const map = (n) => {
    const m = {};
    for (let i = 0; i < n; i++) {
      const k = get();
      if (typeof k !== "string") throw new TypeError("msgpack: map keys must be strings");
      m[k] = get();
    }
    return m;
  };
  const get = () => {
    need(1);
    const b = buf[pos++];
    if (b < 0x80) return b;
    if (b >= 0xe0) return b - 0x100;
    if ((b & 0xf0) === 0x80) return map(b & 0x0f);
    if ((b & 0xf0) === 0x90) return arr(b & 0x0f);
    if ((b & 0xe0) === 0xa0) return str(b & 0x1f);
    switch (b) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return bin(uint(1));
      case 0xc5: return bin(uint(2));
      case 0xc6: return bin(uint(4));
      case 0xca: return fixed(4, (p) => view.getFloat32(p));
      case 0xcb: return fixed(8, (p) => view.getFloat64(p));
      case 0xcc: return uint(1);
      case 0xcd: return uint(2);
      case 0xce: return uint(4);
      case 0xcf: return uint(8);
      case 0xd0: return fixed(1, (p) => view.getInt8(p));
      case 0xd1: return fixed(2, (p) => view.getInt16(p));
      case 0xd2: return fixed(4, (p) => view.getInt32(p));
      case 0xd3: {
        const v = fixed(8, (p) => view.getBigInt64(p));
        if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
          throw new RangeError("msgpack: integer beyond 2^53");
        }
        return Number(v);
      }
      case 0xd9: return str(uint(1));
      case 0xda: return str(uint(2));
      case 0xdb: return str(uint(4));
      case 0xdc: return arr(uint(2));
      case 0xdd: return arr(uint(4));
      case 0xde: return map(uint(2));
      case 0xdf: return map(uint(4));
    }
    throw new TypeError(`msgpack: unsupported type byte 0x${b.toString(16)}`);
  };
  const value = get();
  if (pos !== buf.length) throw new RangeError(`msgpack: ${buf.length - pos} bytes after the value`);
  return value;
}

// A gateway -> client WebSocket message: [header object, payload Uint8Array (empty for control messages)].
function splitMessage(data) {
  const buf = data instanceof Uint8Array ? data : new Uint8Array(data);
  if (buf.length < 4) throw new RangeError("gateway message shorter than its 4-byte length");
  const n = new DataView(buf.buffer, buf.byteOffset, 4).getUint32(0, true);
  if (n > buf.length - 4) throw new RangeError("gateway header length exceeds the message");
  return [msgpackDecode(buf.subarray(4, 4 + n)), buf.subarray(4 + n)];
}

if (typeof module === "object" && module.exports) module.exports = { msgpackEncode, msgpackDecode, splitMessage };
