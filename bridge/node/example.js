// Drives a session for a few seconds: walks forward (the schema's first key) while the mouse sways (its first axis),
// one control row per video frame, and prints the frame rate each second and a summary at the end.
// Usage: node example.js [ENDPOINT] [--seconds N] [--keys DIR [--key-name NAME]] [--jpeg] [--prompt TEXT]
"use strict";
const { WorldsimClient, loadKeys, DEFAULT_ENDPOINT } = require("./client.js");

function parseArgs(argv) {
  const args = { endpoint: DEFAULT_ENDPOINT, seconds: 5, keys: null, keyName: "client", jpeg: false, prompt: "a quiet village street" };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--seconds") args.seconds = Number(value());
    else if (a === "--keys") args.keys = value();
    else if (a === "--key-name") args.keyName = value();
    else if (a === "--prompt") args.prompt = value();
    else if (a === "--jpeg") args.jpeg = true;
    else if (a.startsWith("--")) throw new Error(`unknown option ${a}`);
    else args.endpoint = a;
  }
  if (!(args.seconds > 0)) throw new Error("--seconds must be a positive number");
  return args;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const keys = args.keys ? loadKeys(args.keys, args.keyName) : {};
  const client = await WorldsimClient.connect(args.endpoint, { name: "worldsim-node-example", ...keys });
  const { video, control, model } = client.welcome;
  console.log(`connected to ${client.welcome.server}: ${model.name} model, ${video.width}x${video.height} at ${video.fps} fps, ` +
    `keys [${control.keys.join(" ")}], axes [${control.axes.join(" ")}], embedding ${control.embedding_dim}`);
  const session = await client.open({ prompt: args.prompt, format: args.jpeg ? "jpeg" : "rgb24" });
  client.on("serverError", (e) => console.error(`daemon refused a message: ${e.message}`));

  // One control row per video frame period.
  const start = performance.now();
  const sentAt = new Map(); // input seq -> performance.now() when sent
  let step = 0;
  const drive = setInterval(() => {
    const keyRow = control.keys.map((_, k) => (k === 0 ? 1 : 0));
    const axisRow = control.axes.map((_, a) => (a === 0 ? 0.3 * Math.sin(step / 8) : 0));
    step += 1;
    if (keyRow.length || axisRow.length) {
      sentAt.set(client.sendControls(session, keyRow.length ? [keyRow] : null, axisRow.length ? [axisRow] : null), performance.now());
    }
  }, 1000 / video.fps);
  const stop = setTimeout(() => client.close(), args.seconds * 1000);

  let frames = 0, second = 0, lastIndex = -1, gaps = 0;
  const latencies = [];
  for await (const { header, receivedAt } of client.frames()) {
    frames += 1;
    if (lastIndex >= 0 && header.index > lastIndex + 1) gaps += header.index - lastIndex - 1;
    lastIndex = header.index;
    if (sentAt.has(header.input_seq)) latencies.push(receivedAt - sentAt.get(header.input_seq));
    for (const seq of sentAt.keys()) { // inputs up to this one are applied: forget them
      if (seq > header.input_seq) break;
      sentAt.delete(seq);
    }
    const t = (receivedAt - start) / 1000;
    if (t >= second + 1) {
      second = Math.floor(t);
      console.log(`${t.toFixed(1)} s: ${frames} frames, ${(frames / t).toFixed(1)} fps`);
    }
  }
  clearInterval(drive);
  clearTimeout(stop);
  const elapsed = (performance.now() - start) / 1000;
  latencies.sort((a, b) => a - b);
  const median = latencies.length ? latencies[latencies.length >> 1].toFixed(0) : "n/a";
  console.log(`${frames} frames in ${elapsed.toFixed(1)} s: ${(frames / elapsed).toFixed(1)} fps (daemon target ${video.fps}); ` +
    `${gaps} frames skipped in the index; input-to-frame ${median} ms (median)`);
}

main().catch((e) => {
  console.error(`error: ${e.message}`);
  process.exit(1);
});
