// Live check of client.js against a running daemon (driven by tests/test_bridge_node.py), one JSON line per step.
//   node test/live.js ENDPOINT             handshake, session with echoed controls, embedding, prompt switch,
//                                          frames, refused requests, heartbeats across a quiet spell, bye, close,
//                                          then waits for the daemon's shutdown. After the "holding" line it waits
//                                          for a line on stdin, so that the test can inspect the daemon meanwhile.
//   node test/live.js ENDPOINT --keys DIR  CURVE: a session with the keys of `worldsim keys DIR`, then a refused key.
// Exit status 0 when every step held; otherwise a {"event": "fail"} line and status 1.
"use strict";
const readline = require("readline");
const zmq = require("zeromq");
const { WorldsimClient, ConnectionLost, ServerError, loadKeys, frameControl } = require("../client.js");

const out = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }));
const expect = (ok, message) => {
  if (!ok) throw new Error(message);
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The first frame (of any session) for which ``pred`` holds, within ``ms``; counts every frame in ``seen``. */
async function frameWhere(frames, pred, what, seen, ms = 20000) {
  const deadline = performance.now() + ms;
  for (;;) {
    const left = deadline - performance.now();
    expect(left > 0, `no frame ${what} within ${ms} ms`);
    const step = await Promise.race([frames.next(), sleep(left).then(() => null)]);
    expect(step !== null && !step.done, `no frame ${what} within ${ms} ms`);
    seen.push(step.value);
    if (pred(step.value.header)) return step.value;
  }
}

/** The ServerError a request is refused with (fails if it succeeds). */
async function refusal(promise) {
  try {
    await promise;
  } catch (e) {
    expect(e instanceof ServerError, `expected a ServerError, got ${e}`);
    return e;
  }
  throw new Error("the request was not refused");
}

const waitLine = () => new Promise((resolve) => {
  const rl = readline.createInterface({ input: process.stdin });
  rl.once("line", (line) => {
    rl.close();
    resolve(line);
  });
});

async function plain(endpoint) {
  const client = await WorldsimClient.connect(endpoint, { name: "node-live-test", timeoutMs: 10000 });
  const { video, control, limits } = client.welcome;
  out("welcome", { protocol: client.welcome.protocol, video, control, heartbeat_s: limits.heartbeat_s });
  const mismatch = await refusal(client.request("hello", { protocol: "2.0.0", client: "future" }));
  out("refused", { what: "hello 2.0.0", code: mismatch.code, re: mismatch.re });

  const session = await client.open({ prompt: "a harbour at dawn", seed: 7, fps: 0, echoControls: true });
  out("opened", { session, reply: client.sessions.get(session) });
  const frames = client.frames();
  const seen = [];
  await frameWhere(frames, (h) => h.index >= video.first_chunk_frames - 1, "ending the first chunk", seen);

  // One chunk's worth of identical rows: the chunk that takes them echoes exactly this row (no resampling).
  const n = video.frames_per_chunk;
  const keys = control.keys.map((_, k) => (k === 0 || k === control.keys.length - 1 ? 1 : 0));
  const axes = control.axes.map((_, a) => (a === 0 ? 0.25 : -0.5));
  const cseq = client.sendControls(session, Array(n).fill(keys), Array(n).fill(axes), 12.5);
  let f = await frameWhere(frames, (h) => h.input_seq === cseq, `made with input ${cseq}`, seen);
  let echo = frameControl(f.header);
  out("controls_echo", { seq: cseq, input_t: f.header.input_t, keys: echo.keys, axes: echo.axes });

  const row = [0.5, -0.25, 0.125, 0, 1.5].slice(0, control.embedding_dim);
  const eseq = client.sendEmbedding(session, Array(n).fill(row));
  f = await frameWhere(frames, (h) => h.input_seq === eseq, `made with input ${eseq}`, seen);
  echo = frameControl(f.header);
  out("embedding_echo", { seq: eseq, embedding: Array.from(echo.embedding), keys: echo.keys });

  const pseq = client.switchPrompt(session, "the same harbour in a storm", "recache");
  await frameWhere(frames, (h) => h.prompt_seq === pseq, `with prompt ${pseq}`, seen);
  out("prompt_switched", { seq: pseq });

  while (seen.length < 30) await frameWhere(frames, () => true, "", seen);
  const sizes = seen.map((x) => [x.header.format, x.header.shape, x.payload.length]);
  const rightSize = (x) => x.header.format === "rgb24" && x.payload.length === video.height * video.width * 3 &&
    x.header.shape.join() === [video.height, video.width, 3].join();
  out("frames", { count: seen.length, right_size: seen.filter(rightSize).length, sessions: [...new Set(seen.map((x) => x.header.session))], first: sizes[0] });

  // Refusals: a request (its promise rejects), an input (no reply: a "serverError" event), and local validation.
  const unknown = await refusal(client.closeSession(999));
  out("refused", { what: "close 999", code: unknown.code, re: unknown.re });
  const badField = await refusal(client.request("open", { jpeg_quality: 0 }));
  out("refused", { what: "open jpeg_quality 0", code: badField.code, re: badField.re });
  const inputError = new Promise((resolve) => client.once("serverError", resolve));
  const bseq = client.send("input", { session, controls: { keys: [[1, 0]] } });
  const bad = await Promise.race([inputError, sleep(10000).then(() => null)]);
  expect(bad !== null, "no error for a refused input within 10 s");
  out("refused", { what: "input of 2 keys", code: bad.code, re: bad.re, seq: bseq });
  try {
    client.sendControls(session, [[1, 0]]);
    throw new Error("a row of 2 keys passed local validation");
  } catch (e) {
    expect(e instanceof TypeError, `expected a TypeError, got ${e}`);
    out("invalid", { what: "sendControls 2 keys", name: e.name, message: e.message });
  }

  // Quiet for longer than the idle timeout: only the automatic pings keep the connection.
  await client.pause(session);
  await sleep(limits.idle_timeout_s * 1000 + 1000);
  const stats = (await client.stats(session)).sessions[String(session)];
  out("after_quiet", { quiet_s: limits.idle_timeout_s + 1, inputs: stats.inputs, prompt_switches: stats.prompt_switches });
  await client.resume(session);

  // A second connection says bye: the daemon frees it and its session at once.
  const other = await WorldsimClient.connect(endpoint, { name: "node-live-bye", timeoutMs: 10000 });
  await other.open({ fps: 0 });
  await other.close();
  out("bye_sent");

  out("holding", { session });
  await waitLine();
  const closed = await client.closeSession(session);
  out("closed", { session: closed.session, reason: closed.reason, frames_sent: closed.stats.frames_sent });

  // The daemon stops next: "shutdown" is emitted and frames() ends with ConnectionLost.
  const shutdown = new Promise((resolve) => client.once("shutdown", resolve));
  try {
    for (;;) {
      const step = await frames.next();
      expect(!step.done, "frames() ended without an error at shutdown");
    }
  } catch (e) {
    expect(e instanceof ConnectionLost, `expected ConnectionLost, got ${e}`);
    out("shutdown", { reason: await shutdown, error: e.name });
  }
}

async function curve(endpoint, dir) {
  const keys = loadKeys(dir);
  const client = await WorldsimClient.connect(endpoint, { name: "node-live-curve", timeoutMs: 10000, ...keys });
  const session = await client.open({ fps: 0, format: "jpeg" });
  const frames = client.frames();
  const seen = [];
  while (seen.length < 5) await frameWhere(frames, () => true, "", seen);
  const jpegs = seen.filter((x) => x.header.format === "jpeg" && x.payload[0] === 0xff && x.payload[1] === 0xd8);
  out("curve_frames", { session, count: seen.length, jpeg: jpegs.length });
  await client.close();

  const stranger = zmq.curveKeyPair(); // not in DIR/authorized: the handshake never completes
  try {
    await WorldsimClient.connect(endpoint, { name: "node-live-stranger", timeoutMs: 1500, serverKey: keys.serverKey, ...stranger });
    throw new Error("a client with an unauthorised key got a welcome");
  } catch (e) {
    expect(e instanceof ConnectionLost, `expected ConnectionLost, got ${e}`);
    out("curve_refused", { error: e.name });
  }
}

async function main() {
  const [endpoint, flag, dir] = process.argv.slice(2);
  expect(endpoint !== undefined && (flag === undefined || (flag === "--keys" && dir)), "usage: node test/live.js ENDPOINT [--keys DIR]");
  if (flag === "--keys") await curve(endpoint, dir);
  else await plain(endpoint);
  out("done");
}

main().then(() => process.exit(0), (e) => {
  out("fail", { message: e.stack || String(e) });
  process.exit(1);
});
