// Node.js client of the worldsim daemon, protocol v1 over ZeroMQ (bridge/PROTOCOL.md).
//
//   const { WorldsimClient } = require("worldsim-client");
//   const client = await WorldsimClient.connect("tcp://127.0.0.1:5555", { name: "my-bot" });
//   const session = await client.open({ prompt: "a misty forest", format: "jpeg" });
//   client.sendControls(session, [[1, 0, 0, 0, 0, 0]], [[0.1, 0]]);
//   for await (const { header, payload } of client.frames()) { ... }
//   await client.close();
//
// One DEALER socket; control messages are single-part msgpack maps, frames two-part [header, payload]. Requests are
// matched to replies by seq; a ping goes out whenever the connection has been quiet for welcome's heartbeat_s.
"use strict";

const fs = require("fs");
const path = require("path");
const { EventEmitter } = require("events");
const zmq = require("zeromq");
const { Encoder, Decoder, ExtensionCodec } = require("@msgpack/msgpack");

const PROTOCOL_VERSION = "1.2.0";
const DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555";
const MAX_SEQ = 2 ** 53 - 1; // seq stays a safe integer so that msgpack carries it as an integer, never a float

// Protocol v1 has no ext types: a Date is refused instead of becoming a timestamp extension, and the decoder
// refuses any extension (every ext carries at least one byte of data, over maxExtLength 0).
const NO_EXT = new ExtensionCodec();
NO_EXT.register({
  type: -1,
  encode: (value) => {
    if (value instanceof Date) throw new TypeError("protocol v1 has no timestamps: send a Date as seconds (a number)");
    return null;
  },
  decode: () => {
    throw new TypeError("protocol v1 has no ext types");
  },
});

// Integral JS numbers encode as msgpack integers, others as float64 (forceFloat32 off): integer fields stay integers
// and number fields (t, axes, fps, lookahead) accept integers or floats (PROTOCOL.md §3, value rules). Undefined
// fields are left out, which the daemon treats like nil: absent.
const ENCODER = new Encoder({ extensionCodec: NO_EXT, ignoreUndefined: true, forceFloat32: false });
const DECODER = new Decoder({ extensionCodec: NO_EXT, maxExtLength: 0 });

/** msgpack bytes (a Uint8Array) of a protocol value, encoded exactly as WorldsimClient sends it. */
function encode(value) {
  return ENCODER.encode(value);
}

/** The protocol value in msgpack bytes; throws on truncated input, trailing bytes or ext types. */
function decode(bytes) {
  return DECODER.decode(bytes);
}

class ClientError extends Error {
  constructor(message) {
    super(message);
    this.name = "ClientError";
  }
}

/** An `error` message from the daemon: `code` is one of PROTOCOL.md §10's, `serverMessage` its text, `re` the refused
 * request's seq (when it had one), `session` and `fatal` as sent. */
class ServerError extends ClientError {
  constructor(code, message, { re, session, fatal = false } = {}) {
    super(`${code}: ${message}${session != null ? ` (session ${session})` : ""}`);
    this.name = "ServerError";
    this.code = code;
    this.serverMessage = message;
    this.re = re;
    this.session = session;
    this.fatal = fatal;
  }

  static fromMessage(msg) {
    return new ServerError(String(msg.code), String(msg.message), { re: msg.re, session: msg.session, fatal: Boolean(msg.fatal) });
  }
}

/** The daemon went away (shut down, silent past its idle timeout) or did not answer in time. */
class ConnectionLost extends ClientError {
  constructor(message) {
    super(message);
    this.name = "ConnectionLost";
  }
}

/** {serverKey, publicKey, secretKey} in Z85 from a key directory made by `worldsim keys DIR`: DIR/server.key (the
 * daemon's public key) and DIR/NAME.key_secret (this client's key pair; its public half is in DIR/authorized/). */
function loadKeys(dir, name = "client") {
  const read = (file, field) => {
    const where = path.join(dir, file);
    let text;
    try {
      text = fs.readFileSync(where, "utf8");
    } catch (e) {
      throw new ClientError(`missing key file ${where} (make keys with \`worldsim keys DIR --client ${name}\`): ${e.code}`);
    }
    const m = text.match(new RegExp(`^\\s*${field}\\s*=\\s*"([^"]{40})"\\s*$`, "m"));
    if (m === null) throw new ClientError(`${where} holds no ${field} (a 40-character Z85 key written by \`worldsim keys\`)`);
    return m[1];
  };
  return {
    serverKey: read("server.key", "public-key"),
    publicKey: read(`${name}.key_secret`, "public-key"),
    secretKey: read(`${name}.key_secret`, "secret-key"),
  };
}

/** The control row echoed in a frame header of a session opened with echoControls, with the embedding as a
 * Float32Array; null when the header has none. */
function frameControl(header) {
  const c = header.control;
  if (c == null) return null;
  const out = { ...c };
  if (c.embedding instanceof Uint8Array) {
    const view = new DataView(c.embedding.buffer, c.embedding.byteOffset, c.embedding.byteLength);
    out.embedding = Float32Array.from({ length: c.embedding.byteLength / 4 }, (_, i) => view.getFloat32(4 * i, true));
  }
  return out;
}

const isRowOfNumbers = (v) => (Array.isArray(v) || ArrayBuffer.isView(v)) && typeof v[0] === "number";

/** Rows (arrays of arrays, or one row) checked against a schema width; values must pass ``ok``. */
function checkRows(what, value, width, names, ok, bound) {
  const rows = isRowOfNumbers(value) ? [value] : value;
  if (!Array.isArray(rows) || rows.length === 0) {
    throw new TypeError(`${what}: expected one row or a non-empty list of rows of ${width} numbers`);
  }
  return rows.map((row, r) => {
    if (!Array.isArray(row) && !ArrayBuffer.isView(row)) throw new TypeError(`${what}: row ${r} is not a list of numbers`);
    if (row.length !== width) {
      throw new TypeError(`${what}: row ${r} has ${row.length} values, the schema has ${width}${names ? ` (${names})` : ""}`);
    }
    return Array.from(row, (x, i) => {
      if (typeof x !== "number" || !ok(x)) throw new RangeError(`${what}: row ${r} value ${i} is ${x}, expected ${bound}`);
      return x;
    });
  });
}

/** Embedding rows (n x D numbers) as the protocol's compact bin: float32 little-endian, row-major (PROTOCOL.md §6). */
function embeddingBin(rows) {
  const flat = rows.flatMap((row) => Array.from(row));
  const bytes = new Uint8Array(flat.length * 4);
  const view = new DataView(bytes.buffer);
  flat.forEach((x, i) => view.setFloat32(4 * i, x, true));
  return bytes;
}

const finite = (x) => Number.isFinite(x);

class WorldsimClient extends EventEmitter {
  /**
   * @param {object} [options]
   * @param {string} [options.name] client name sent in hello (at most 128 characters)
   * @param {number} [options.timeoutMs] how long a request waits for its reply (default 30000)
   * @param {number} [options.maxFrames] frames kept for frames() before the oldest is dropped (default 64)
   */
  constructor({ name = `worldsim-client-node/${PROTOCOL_VERSION}`, timeoutMs = 30000, maxFrames = 64 } = {}) {
    super();
    if (typeof name !== "string" || name.length > 128) throw new TypeError("name must be a string of at most 128 characters");
    this.name = name;
    this.timeoutMs = timeoutMs;
    this.maxFrames = maxFrames;
    this.welcome = null;
    this.sessions = new Map(); // id -> the `opened` reply (fps, format, lookahead, epoch)
    this.framesDropped = 0; // frames dropped from a full frames() buffer
    this._seq = 0;
    this._pending = new Map(); // seq -> {resolve, reject, timer}
    this._frames = [];
    this._errors = []; // ServerErrors nobody listened to, raised by frames()
    this._waiters = []; // frames() iterators waiting for a frame, an error or the end
    this._sendChain = Promise.resolve();
    this._sock = null;
    this._timer = null;
    this._done = null; // set once the connection is finished: null (close()) or the error that ended it
    this._finished = false;
    this._lastSent = 0;
    this._lastPing = 0;
    this._unansweredSince = null; // first send since the daemon last said anything
  }

  /** A connected client: `new WorldsimClient(options)` then `connect(endpoint, options)`. */
  static async connect(endpoint = DEFAULT_ENDPOINT, options = {}) {
    const client = new WorldsimClient(options);
    await client.connect(endpoint, options);
    return client;
  }

  /**
   * Connect a DEALER to ``endpoint`` and say hello; resolves with the `welcome` (also in ``this.welcome``).
   * CURVE: give serverKey, publicKey and secretKey (Z85 strings, e.g. from loadKeys(dir)) together.
   */
  async connect(endpoint = DEFAULT_ENDPOINT, { serverKey, publicKey, secretKey } = {}) {
    if (this._sock !== null) throw new ClientError("connect() was already called on this client");
    const curve = [serverKey, publicKey, secretKey];
    if (curve.some((k) => k != null) && !curve.every((k) => typeof k === "string" && k.length === 40)) {
      throw new TypeError("CURVE needs serverKey, publicKey and secretKey together, each a 40-character Z85 string");
    }
    const sock = new zmq.Dealer({ linger: 0 });
    if (serverKey != null) Object.assign(sock, { curveServerKey: serverKey, curvePublicKey: publicKey, curveSecretKey: secretKey });
    sock.connect(endpoint);
    this._sock = sock;
    this.endpoint = endpoint;
    this._readLoop();
    try {
      const welcome = await this.request("hello", { protocol: PROTOCOL_VERSION, client: this.name });
      const major = String(welcome.protocol).split(".")[0];
      if (major !== PROTOCOL_VERSION.split(".")[0]) {
        throw new ClientError(`the daemon speaks protocol ${welcome.protocol}, this client ${PROTOCOL_VERSION}: major versions must match`);
      }
      this.welcome = welcome;
    } catch (e) {
      this._finish(null);
      throw e;
    }
    const hb = this.welcome.limits.heartbeat_s * 1000;
    this._timer = setInterval(() => this._heartbeat(), Math.max(10, hb / 2));
    this._timer.unref();
    return this.welcome;
  }

  // ---- requests -----------------------------------------------------------------------------------------------

  /** Send {type, seq, ...fields}; resolves with the reply (`re` = seq), rejects with ServerError on `error`. */
  async request(type, fields = {}) {
    const seq = this._nextSeq();
    const sent = this._send({ type, seq, ...fields });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(seq);
        reject(new ConnectionLost(`no reply to ${type} (seq ${seq}) from ${this.endpoint} within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this._pending.set(seq, { resolve, reject, timer });
      sent.catch((e) => this._settle(seq, null, e));
    });
  }

  /** Send a message that gets no reply (input, bye); returns its seq. Refusals arrive as ServerErrors (see README). */
  send(type, fields = {}) {
    const seq = this._nextSeq();
    this._send({ type, seq, ...fields }).catch((e) => this._fail(e));
    return seq;
  }

  /**
   * Open a session; resolves with its id. Options: prompt, seed, format ("rgb24" | "jpeg"), jpegQuality, fps
   * (0: unpaced), lookahead (seconds), echoControls, startFrame ({format: "rgb24", shape: [H, W, 3], data} or
   * {format: "jpeg" | "png", data}), packageStart (false: not from the model package's start frame for the prompt).
   */
  async open({ prompt, seed, format, jpegQuality, fps, lookahead, echoControls, startFrame, packageStart } = {}) {
    if (seed !== undefined && !(Number.isSafeInteger(seed) && seed >= 0)) {
      throw new RangeError(`seed must be an integer from 0 to ${Number.MAX_SAFE_INTEGER}, got ${seed}`);
    }
    const reply = await this.request("open", {
      prompt, seed, format, jpeg_quality: jpegQuality, fps, lookahead, echo_controls: echoControls, start_frame: startFrame,
      package_start: packageStart,
    });
    this.sessions.set(reply.session, reply);
    return reply.session;
  }

  /**
   * Queue control samples, one row per video frame: ``keys`` rows of 0/1 (one per schema key), ``axes`` rows of
   * numbers (one per schema axis); either may be null, or one row instead of a list. ``t`` is this client's clock
   * in seconds (default: Unix time), echoed as input_t in frame headers. Returns the input's seq.
   */
  sendControls(session, keys, axes, t) {
    const c = this._schema();
    const controls = {};
    if (keys != null) controls.keys = checkRows("keys", keys, c.keys.length, c.keys.join(" "), (x) => x >= 0 && x <= 1, "0 .. 1");
    if (axes != null) controls.axes = checkRows("axes", axes, c.axes.length, c.axes.join(" "), finite, "a finite number");
    if (controls.keys && controls.axes && controls.keys.length !== controls.axes.length) {
      throw new TypeError(`keys have ${controls.keys.length} rows and axes ${controls.axes.length}: every source needs the same row count`);
    }
    if (!controls.keys && !controls.axes) throw new TypeError("sendControls needs keys or axes");
    return this._input(session, { controls }, t);
  }

  /** Queue engine-embedding samples: rows of embedding_dim finite numbers (or one row), sent as float32 bin. */
  sendEmbedding(session, rows, t) {
    const d = this._schema().embedding_dim;
    if (d === 0) throw new TypeError("the daemon's model takes no embedding (control.embedding_dim is 0)");
    const checked = checkRows("embedding", rows, d, null, (x) => Number.isFinite(x) && Math.abs(x) <= 1e6, "finite, within +-1e6");
    return this._input(session, { controls: { embedding: embeddingBin(checked) } }, t);
  }

  /** Set the held control state (used for every frame no sample covers): {keys, axes, embedding}, one row each. */
  hold(session, { keys, axes, embedding } = {}, t) {
    const c = this._schema();
    const hold = {};
    if (keys != null) hold.keys = checkRows("hold.keys", [keys], c.keys.length, c.keys.join(" "), (x) => x >= 0 && x <= 1, "0 .. 1")[0];
    if (axes != null) hold.axes = checkRows("hold.axes", [axes], c.axes.length, c.axes.join(" "), finite, "a finite number")[0];
    if (embedding != null) {
      hold.embedding = embeddingBin(checkRows("hold.embedding", [embedding], c.embedding_dim, null,
        (x) => Number.isFinite(x) && Math.abs(x) <= 1e6, "finite, within +-1e6"));
    }
    if (Object.keys(hold).length === 0) throw new TypeError("hold needs keys, axes or embedding");
    return this._input(session, { hold }, t);
  }

  /** Switch the prompt at the next chunk boundary; mode "soft" | "recache" | "cut", sink "keep" | "refresh". */
  switchPrompt(session, prompt, mode = "soft", sink) {
    if (typeof prompt !== "string") throw new TypeError("prompt must be a string");
    const modes = this.welcome ? this.welcome.prompt.modes : ["soft", "recache", "cut"];
    if (!modes.includes(mode)) throw new RangeError(`mode must be one of ${modes.join(", ")}, got ${mode}`);
    return this._input(session, { prompt: { text: prompt, mode, sink } });
  }

  /** Resolves with the `ok` reply ({op: "pause", epoch, paused: true}). */
  pause(session) {
    return this.request("pause", { session });
  }

  resume(session) {
    return this.request("resume", { session });
  }

  /** Restart the stream (new epoch); buffered frames of older epochs are dropped. Resolves with the `ok` reply. */
  async reset(session) {
    const reply = await this.request("reset", { session });
    this._frames = this._frames.filter((f) => f.header.session !== session || f.header.epoch >= reply.epoch);
    return reply;
  }

  /** End a session; resolves with the `closed` reply (reason "client", final stats). Its buffered frames go. */
  async closeSession(session) {
    const reply = await this.request("close", { session });
    this.sessions.delete(session);
    this._frames = this._frames.filter((f) => f.header.session !== session);
    return reply;
  }

  /** Statistics of one session, or (without ``session``) of every session of this connection, plus the daemon's. */
  stats(session) {
    return this.request("stats", { session });
  }

  /** Round trip in milliseconds. */
  async ping() {
    const t0 = performance.now();
    await this.request("ping");
    return performance.now() - t0;
  }

  /** Say bye (the daemon frees this connection's sessions at once) and release the socket. */
  async close() {
    if (this._sock === null || this._finished) return;
    if (this.welcome !== null) {
      let timer;
      const bye = this._send({ type: "bye", seq: this._nextSeq() }).catch(() => {});
      await Promise.race([bye, new Promise((r) => { timer = setTimeout(r, 1000); })]);
      clearTimeout(timer);
      if (!this._finished) this._sock.linger = 200; // the bye still goes out after close()
    }
    this._finish(null);
  }

  // ---- frames -------------------------------------------------------------------------------------------------

  /**
   * Frames as they arrive: {header, payload (Buffer), receivedAt (performance.now() ms)}. Ends after close();
   * throws ConnectionLost when the daemon shuts down or goes silent, and a ServerError about an input when no
   * "serverError" listener took it. Without "frame" listeners, frames wait here (at most maxFrames, oldest dropped).
   */
  async *frames() {
    for (;;) {
      if (this._errors.length) throw this._errors.shift();
      if (this._frames.length) {
        yield this._frames.shift();
        continue;
      }
      if (this._finished) {
        if (this._done !== null) throw this._done;
        return;
      }
      await new Promise((resolve) => this._waiters.push(resolve));
    }
  }

  // ---- internals ----------------------------------------------------------------------------------------------

  _schema() {
    if (this.welcome === null) throw new ClientError("not connected: call connect() first");
    return this.welcome.control;
  }

  _input(session, fields, t) {
    t = t ?? Date.now() / 1000;
    if (!Number.isFinite(t)) throw new RangeError(`t must be a finite number of seconds, got ${t}`);
    return this.send("input", { session, ...fields, t });
  }

  _nextSeq() {
    if (this._seq >= MAX_SEQ) this._seq = 0;
    return ++this._seq;
  }

  /** Encode and queue one message (throws at once if the client is closed or msgpack cannot carry a value); sends
   * are serialised, since a zeromq socket takes one send at a time. */
  _send(msg) {
    if (this._finished) throw this._done || new ClientError("the client is closed");
    const data = encode(msg);
    const now = performance.now();
    this._lastSent = now;
    if (msg.type === "ping") this._lastPing = now;
    if (this._unansweredSince === null) this._unansweredSince = now;
    const sent = this._sendChain.then(() => this._sock.send(data));
    this._sendChain = sent.catch(() => {});
    return sent;
  }

  async _readLoop() {
    const sock = this._sock;
    try {
      for await (const parts of sock) {
        try {
          this._dispatch(parts);
        } catch (e) {
          queueMicrotask(() => { throw e; }); // a throwing listener is the application's bug: uncaught, as in Node
        }
      }
    } catch (e) {
      if (!this._finished) this._fail(new ConnectionLost(`the socket failed: ${e.message}`));
    }
  }

  _dispatch(parts) {
    this._unansweredSince = null;
    let msg;
    try {
      msg = decode(parts[0]);
    } catch (e) {
      this._report(new ClientError(`unreadable message from the daemon: ${e.message}`));
      return;
    }
    if (msg === null || typeof msg !== "object" || Array.isArray(msg)) {
      this._report(new ClientError("unexpected message from the daemon: not a map"));
      return;
    }
    if (parts.length === 2 && msg.type === "frame") {
      this._frame({ header: msg, payload: parts[1], receivedAt: performance.now() });
      return;
    }
    if (msg.type === "shutdown") {
      this.emit("shutdown", msg.reason);
      this._fail(new ConnectionLost(`the daemon shut down: ${msg.reason}`));
      return;
    }
    if (msg.re != null && this._pending.has(msg.re)) {
      this._settle(msg.re, msg.type === "error" ? null : msg, msg.type === "error" ? ServerError.fromMessage(msg) : null);
      return;
    }
    if (msg.type === "error") {
      this._report(ServerError.fromMessage(msg));
    } else if (msg.type === "closed") {
      this.sessions.delete(msg.session);
      this._frames = this._frames.filter((f) => f.header.session !== msg.session);
      this.emit("closed", msg);
    } // else: a late reply (its request timed out) or a pong to the heartbeat
  }

  _frame(frame) {
    if (this.listenerCount("frame") > 0) {
      this.emit("frame", frame);
      return;
    }
    if (this._frames.length >= this.maxFrames) {
      this._frames.shift();
      this.framesDropped += 1;
    }
    this._frames.push(frame);
    this._wakeUp();
  }

  /** An error no request was waiting for (a refused input, a failed session, an unreadable message): to
   * "serverError" listeners, else raised by frames(). */
  _report(error) {
    if (this.listenerCount("serverError") > 0) {
      this.emit("serverError", error);
    } else {
      this._errors.push(error);
      this._wakeUp();
    }
  }

  _settle(seq, reply, error) {
    const p = this._pending.get(seq);
    if (p === undefined) return;
    this._pending.delete(seq);
    clearTimeout(p.timer);
    if (error) p.reject(error);
    else p.resolve(reply);
  }

  _wakeUp() {
    const waiters = this._waiters;
    this._waiters = [];
    for (const wake of waiters) wake();
  }

  _heartbeat() {
    const now = performance.now();
    const { heartbeat_s: hb, idle_timeout_s: idle } = this.welcome.limits;
    if (this._unansweredSince !== null && now - this._unansweredSince > idle * 1000) {
      this._fail(new ConnectionLost(`the daemon at ${this.endpoint} has not answered for ${idle} s (its idle timeout)`));
      return;
    }
    // Ping when nothing was sent for a heartbeat, or nothing came back for one (inputs get no reply).
    const quiet = now - this._lastSent >= hb * 1000;
    const waiting = this._unansweredSince !== null && now - this._unansweredSince >= hb * 1000 && now - this._lastPing >= hb * 1000;
    if (quiet || waiting) this.send("ping");
  }

  /** The connection ended with ``error``: pending requests reject, frames() throws it, "lost" is emitted. */
  _fail(error) {
    if (this._finished) return;
    this._finish(error);
    this.emit("lost", error);
  }

  _finish(error) {
    if (this._finished) return;
    this._finished = true;
    this._done = error;
    clearInterval(this._timer);
    for (const seq of [...this._pending.keys()]) this._settle(seq, null, error || new ClientError("the client was closed"));
    if (this._sock !== null) this._sock.close();
    this._wakeUp();
  }
}

module.exports = {
  WorldsimClient, ClientError, ServerError, ConnectionLost, PROTOCOL_VERSION, DEFAULT_ENDPOINT,
  encode, decode, embeddingBin, loadKeys, frameControl,
};
