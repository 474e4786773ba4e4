// Checks the Unity client's engine-free core (bridge/unity/Runtime/Core) under Mono, for tests/test_bridge_unity.py:
//
//   mono ConsoleTest.exe golden bridge/golden/messages.json
//       every golden value encodes to its exact bytes and decodes back; gateway messages split; bad input refused
//   mono ConsoleTest.exe live ws://127.0.0.1:PORT/ --token T --prompt P --seed N --keys 1,0,.. --axes .. --embedding ..
//                        --frames N --dump DIR
//       a whole session through the gateway (see Live below), then waits for the daemon to shut down
//   mono ConsoleTest.exe capture DIR --jpegs A.jpg,B.jpg
//       writes an engine capture into DIR with CaptureWriter as a game would (see Capture below)
//
// Prints one JSON line per check: {"check": NAME, "ok": true|false, ...}; exits 1 if any check failed.
using System;
using System.Collections;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using Worldsim;

static class ConsoleTest
{
    static int failures;

    static int Main(string[] args)
    {
        try
        {
            if (args.Length == 2 && args[0] == "golden") Golden(args[1]);
            else if (args.Length >= 2 && args[0] == "live") Live(args).GetAwaiter().GetResult();
            else if (args.Length >= 2 && args[0] == "capture") Capture(args);
            else
            {
                Console.Error.WriteLine("usage: ConsoleTest.exe golden MESSAGES.json | " +
                                        "live WS_URL [--option value ...] | capture DIR --jpegs A.jpg,B.jpg");
                return 2;
            }
        }
        catch (Exception e)
        {
            Report("unexpected_exception", false, "error", e.GetType().Name, "message", e.ToString());
        }
        Console.Out.Flush();
        // Environment.Exit rather than returning: Mono 6.8 sometimes hangs for good after Main returns, waiting in its
        // shutdown for a thread-pool thread that is already gone (seen about once in 20 runs on a loaded machine).
        Environment.Exit(failures == 0 ? 0 : 1);
        return 1;
    }

    // ---- output -----------------------------------------------------------------------------------------------------

    static void Report(string check, bool ok, params object[] fields)
    {
        var line = new Dictionary<string, object> { { "check", check }, { "ok", ok } };
        for (int i = 0; i + 1 < fields.Length; i += 2) line[(string)fields[i]] = fields[i + 1];
        if (!ok) failures++;
        var sb = new StringBuilder();
        WriteJson(sb, line);
        Console.WriteLine(sb.ToString());
    }

    /// <summary>A check line's value as JSON: maps and lists nested, bin data as hex, strings ASCII-only.</summary>
    static void WriteJson(StringBuilder sb, object v)
    {
        if (v == null) { sb.Append("null"); return; }
        if (v is bool) { sb.Append((bool)v ? "true" : "false"); return; }
        if (v is string) { Json.Quote(sb, (string)v); return; }
        if (v is double)
        {
            double d = (double)v;
            sb.Append(double.IsNaN(d) || double.IsInfinity(d) ? "null" : d.ToString("R", CultureInfo.InvariantCulture));
            return;
        }
        if (v is long || v is ulong || v is int)
        {
            sb.Append(Convert.ToString(v, CultureInfo.InvariantCulture));
            return;
        }
        var bytes = v as byte[];
        if (bytes != null) { Json.Quote(sb, Hex(bytes)); return; }
        var map = v as IDictionary;
        if (map != null)
        {
            sb.Append('{');
            bool first = true;
            foreach (DictionaryEntry e in map)
            {
                if (!first) sb.Append(", ");
                first = false;
                Json.Quote(sb, e.Key.ToString());
                sb.Append(": ");
                WriteJson(sb, e.Value);
            }
            sb.Append('}');
            return;
        }
        var list = v as IList;
        if (list != null)
        {
            sb.Append('[');
            for (int i = 0; i < list.Count; i++)
            {
                if (i > 0) sb.Append(", ");
                WriteJson(sb, list[i]);
            }
            sb.Append(']');
            return;
        }
        Json.Quote(sb, v.ToString());
    }

    static string Hex(byte[] b)
    {
        var sb = new StringBuilder(b.Length * 2);
        foreach (byte x in b) sb.Append(x.ToString("x2"));
        return sb.ToString();
    }

    static byte[] FromHex(string h)
    {
        var b = new byte[h.Length / 2];
        for (int i = 0; i < b.Length; i++) b[i] = byte.Parse(h.Substring(2 * i, 2), NumberStyles.HexNumber);
        return b;
    }

    // ---- golden vectors ---------------------------------------------------------------------------------------------

    /// <summary>JSON as the golden file means it: {"$bin": hex} is bin data, integers are integers.</summary>
    static object FromJson(object v)
    {
        var map = v as Dictionary<string, object>;
        if (map != null)
        {
            if (map.Count == 1 && map.ContainsKey("$bin")) return FromHex((string)map["$bin"]);
            var out_ = new Dictionary<string, object>();
            foreach (var e in map) out_[e.Key] = FromJson(e.Value);
            return out_;
        }
        var list = v as List<object>;
        if (list != null) return list.ConvertAll(FromJson);
        return v;
    }

    /// <summary>Same value and same types (long vs double), maps in the same key order.</summary>
    static bool Same(object a, object b)
    {
        if (a == null || b == null) return a == null && b == null;
        if (a.GetType() != b.GetType()) return false;
        var ab = a as byte[];
        if (ab != null) return Hex(ab) == Hex((byte[])b);
        var al = a as List<object>;
        if (al != null)
        {
            var bl = (List<object>)b;
            if (al.Count != bl.Count) return false;
            for (int i = 0; i < al.Count; i++) if (!Same(al[i], bl[i])) return false;
            return true;
        }
        var am = a as Dictionary<string, object>;
        if (am != null)
        {
            var bm = (Dictionary<string, object>)b;
            if (am.Count != bm.Count) return false;
            using (var ea = am.GetEnumerator())
            using (var eb = bm.GetEnumerator())
                while (ea.MoveNext() && eb.MoveNext())
                    if (ea.Current.Key != eb.Current.Key || !Same(ea.Current.Value, eb.Current.Value)) return false;
            return true;
        }
        return a.Equals(b);
    }

    static void Golden(string path)
    {
        var golden = (Dictionary<string, object>)Json.Parse(File.ReadAllText(path, Encoding.UTF8));
        foreach (Dictionary<string, object> entry in (List<object>)golden["messages"])
        {
            var name = (string)entry["name"];
            object value = FromJson(entry["value"]);
            var expected = (string)entry["msgpack"];
            string got = Hex(MsgPack.Encode(value));
            Report("encode", got == expected, "name", name, "got", got == expected ? null : got);
            object back = MsgPack.Decode(FromHex(expected));
            Report("decode", Same(back, value), "name", name);
        }
        foreach (Dictionary<string, object> entry in (List<object>)golden["gateway"])
        {
            var name = (string)entry["name"];
            GatewayMessage m = GatewayMessage.Split(FromHex((string)entry["message"]));
            bool ok = Same(m.Header, FromJson(entry["header"])) && Hex(m.Payload) == (string)entry["payload"];
            Report("split", ok, "name", name);
        }

        // Integer extremes outside the golden file, as msgpack-python packs them.
        Expect("uint64 max", ulong.MaxValue, "cfffffffffffffffff");
        Expect("int64 min", long.MinValue, "d38000000000000000");
        Expect("int32 from an int", -70000, "d2fffeee90");
        Expect("float32 widened to float64", 0.5f, "cb3fe0000000000000");
        object decoded = MsgPack.Decode(FromHex("cfffffffffffffffff"));
        Report("decode_uint64_max", decoded is ulong && (ulong)decoded == ulong.MaxValue);
        decoded = MsgPack.Decode(FromHex("ca3f000000"));
        Report("decode_float32", decoded is double && (double)decoded == 0.5);

        Refused("truncated array", "9201", "truncated");
        Refused("trailing bytes", "0101", "trailing");
        Refused("non-string map key", "810101", "not a string");
        Refused("empty input", "", "empty");
        Refused("str8 longer than the input", "d905616263", "truncated");
        Refused("array32 claiming 2^31-1 items", "dd7fffffff", "truncated");
        Refused("bin32 claiming 4 GiB", "c6ffffffff00", "truncated");
        Refused("map missing its value", "81a161", "truncated");
        Refused("ext type", "d40100", "ext type");
        Refused("reserved byte 0xc1", "c1", "never used");
        Refused("invalid UTF-8", "a1ff", "UTF-8");
        Refused("duplicate map key", "82a16101a16102", "duplicate");
        Refused("nesting past 1024", Repeat("91", 1025) + "c0", "nested deeper");
        SplitRefused("shorter than the length prefix", "0100", "at least 4");
        SplitRefused("header length past the end", "0900000080", "exceeds");
        SplitRefused("header that is not a map", "0100000001", "expected a map");
        SplitRefused("undecodable header", "01000000c1", "never used");
        EncodeRefused("a DateTime", DateTime.UtcNow, "cannot encode");
        EncodeRefused("an integer map key", new Hashtable { { 1, 2 } }, "string keys");

        // Core's JSON reader, which read the golden file above: integers are long, numbers with a fraction or an
        // exponent double; anything but one JSON value is refused, naming the problem and where.
        const string Text = " [0, -7, 9223372036854775807, 1.0, -2.5e-3, 1E2,\r\n" +
                            "\t\"\\u00fc\\n\\/\\\"\", true, null, {}]\n";
        object parsed = Json.Parse(Text);
        var want = new List<object> { 0L, -7L, long.MaxValue, 1.0, -2.5e-3, 100.0, "\u00fc\n/\"", true, null,
                                      new Dictionary<string, object>() };
        Report("json_parsed", Same(parsed, want), "parsed", parsed);
        parsed = Json.Parse(Repeat("[", 1024) + "0" + Repeat("]", 1024));
        Report("json_nesting", parsed is List<object>);
        JsonRefused("trailing text", "{} x", "trailing text after the value at character 3");
        JsonRefused("unterminated string", "[\"ab", "unterminated string at character 1");
        JsonRefused("bad escape", "\"a\\x\"", "bad escape \\x at character 2");
        JsonRefused("short \\u escape", "\"\\u12\"", "bad \\u escape (four hex digits expected) at character 1");
        JsonRefused("raw control character", "\"a\tb\"", "unescaped control character in a string at character 2");
        JsonRefused("leading zero", "[01]", "leading zero in a number at character 1");
        JsonRefused("fraction without digits", "1.", "a digit expected after the decimal point at character 2");
        JsonRefused("integer past int64", "9223372036854775808", "does not fit in 64 bits at character 0");
        JsonRefused("float past float64", "1e400", "out of the float64 range at character 0");
        JsonRefused("duplicate key", "{\"a\": 1, \"a\": 2}", "duplicate key \"a\" at character 9");
        JsonRefused("trailing comma", "[1,]", "unexpected ']', expected a value at character 3");
        JsonRefused("missing colon", "{\"a\" 1}", "expected ':', got '1' at character 5");
        JsonRefused("only white space", " ", "unexpected end of the text at character 1");
        JsonRefused("nesting past 1024", Repeat("[", 1025) + "0" + Repeat("]", 1025),
                    "nested deeper than 1024 at character 1025");
    }

    static string Repeat(string s, int n)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < n; i++) sb.Append(s);
        return sb.ToString();
    }

    static void Expect(string name, object value, string hex)
    {
        string got = Hex(MsgPack.Encode(value));
        Report("encode_extra", got == hex, "name", name, "got", got);
    }

    static void Refused(string name, string hex, string mentions)
    {
        try
        {
            object v = MsgPack.Decode(FromHex(hex));
            Report("refused", false, "name", name, "error", "decoded to " + v);
        }
        catch (MsgPackException e)
        {
            Report("refused", e.Message.Contains(mentions), "name", name, "error", e.Message);
        }
    }

    static void SplitRefused(string name, string hex, string mentions)
    {
        try
        {
            GatewayMessage.Split(FromHex(hex));
            Report("split_refused", false, "name", name, "error", "split");
        }
        catch (MsgPackException e)
        {
            Report("split_refused", e.Message.Contains(mentions), "name", name, "error", e.Message);
        }
    }

    static void EncodeRefused(string name, object value, string mentions)
    {
        try
        {
            MsgPack.Encode(value);
            Report("encode_refused", false, "name", name, "error", "encoded");
        }
        catch (MsgPackException e)
        {
            Report("encode_refused", e.Message.Contains(mentions), "name", name, "error", e.Message);
        }
    }

    static void JsonRefused(string name, string text, string mentions)
    {
        try
        {
            object v = Json.Parse(text);
            Report("json_refused", false, "name", name, "error", "parsed to " + v);
        }
        catch (FormatException e)
        {
            Report("json_refused", e.Message.Contains(mentions), "name", name, "error", e.Message);
        }
    }

    // ---- live session -----------------------------------------------------------------------------------------------

    static Dictionary<string, string> Options(string[] args)
    {
        var o = new Dictionary<string, string>();
        for (int i = 2; i < args.Length; i += 2)
        {
            if (!args[i].StartsWith("--") || i + 1 >= args.Length)
                throw new ArgumentException("options are --name value pairs, got " + args[i]);
            o[args[i].Substring(2)] = args[i + 1];
        }
        return o;
    }

    static float[] Floats(string csv)
    {
        return Array.ConvertAll(csv.Split(','), s => float.Parse(s, CultureInfo.InvariantCulture));
    }

    static float[][] Rows(float[] row, int n)
    {
        var rows = new float[n][];
        for (int i = 0; i < n; i++) rows[i] = row;
        return rows;
    }

    static List<object> AsList(float[] values)
    {
        var l = new List<object>();
        foreach (float f in values) l.Add((double)f);
        return l;
    }

    /// <summary>Polls like a game loop would (Unity: Update) until `enough` says stop or `seconds` pass.</summary>
    static async Task<List<Frame>> Frames(WorldsimClient c, Func<List<Frame>, bool> enough, double seconds)
    {
        var got = new List<Frame>();
        DateTime until = DateTime.UtcNow.AddSeconds(seconds);
        while (!enough(got) && DateTime.UtcNow < until && c.Fault == null)
        {
            Frame f;
            if (c.TryDequeueFrame(out f)) got.Add(f);
            else await Task.Delay(5);
        }
        return got;
    }

    static async Task<Dictionary<string, object>> NextMessage(WorldsimClient c, double seconds)
    {
        DateTime until = DateTime.UtcNow.AddSeconds(seconds);
        Dictionary<string, object> m;
        while (!c.TryDequeueMessage(out m) && DateTime.UtcNow < until) await Task.Delay(5);
        return m;
    }

    /// <summary>A baseline JPEG of the given size: SOI, an SOF0 with these dimensions and 3 components, EOI. Null if
    /// it is one, else what is wrong.</summary>
    static string JpegProblem(byte[] b, int width, int height)
    {
        int n = b.Length;
        if (n < 4 || b[0] != 0xff || b[1] != 0xd8) return "no SOI marker";
        if (b[n - 2] != 0xff || b[n - 1] != 0xd9) return "no EOI marker at the end";
        int pos = 2;
        while (pos + 4 <= n)
        {
            if (b[pos] != 0xff) return "expected a marker at byte " + pos;
            int marker = b[pos + 1];
            if (marker == 0xff) { pos++; continue; }
            int length = b[pos + 2] << 8 | b[pos + 3];
            if (marker == 0xc0)
            {
                if (pos + 9 >= n) return "truncated SOF0";
                int h = b[pos + 5] << 8 | b[pos + 6], w = b[pos + 7] << 8 | b[pos + 8], components = b[pos + 9];
                if (w != width || h != height || components != 3)
                    return string.Format("SOF0 says {0}x{1}x{2}, expected {3}x{4}x3", w, h, components, width, height);
                return null;
            }
            if (marker >= 0xc1 && marker <= 0xcf && marker != 0xc4 && marker != 0xc8 && marker != 0xcc)
                return string.Format("SOF marker 0x{0:x2}: not a baseline JPEG", marker);
            if (marker == 0xda) return "scan data before any SOF0";
            pos += 2 + length;
        }
        return "no SOF0 marker";
    }

    static void LocalRefusal(string name, Action call, string mentions)
    {
        try
        {
            call();
            Report("local_refusal", false, "name", name, "error", "sent");
        }
        catch (ArgumentException e)
        {
            Report("local_refusal", e.Message.Contains(mentions), "name", name, "error", e.Message);
        }
    }

    static async Task Live(string[] args)
    {
        string url = args[1];
        Dictionary<string, string> o = Options(args);
        string token = o.ContainsKey("token") ? o["token"] : null;
        string prompt = o["prompt"], dump = o["dump"];
        long seed = long.Parse(o["seed"]);
        float[] keys = Floats(o["keys"]), axes = Floats(o["axes"]), embedding = Floats(o["embedding"]);
        int want = int.Parse(o["frames"]);

        if (token != null)
        {
            var anonymous = new WorldsimClient("unity-console-anonymous");
            try
            {
                await anonymous.ConnectAsync(url);
                Report("token_required", false, "error", "connected without the token");
            }
            catch (ConnectionLostException e)
            {
                Report("token_required", true, "error", e.Message);
            }
            finally
            {
                anonymous.Dispose();
            }
        }

        var c = new WorldsimClient("unity-console-test");
        await c.ConnectAsync(url, token);
        Welcome w = c.Welcome;
        Report("handshake", w.Protocol == WorldsimClient.ProtocolVersion && w.Keys.Length == keys.Length &&
                            w.Axes.Length == axes.Length && w.EmbeddingDim == embedding.Length,
               "protocol", w.Protocol, "keys", new List<object>(w.Keys), "axes", new List<object>(w.Axes),
               "embedding_dim", (long)w.EmbeddingDim, "width", (long)w.Width, "height", (long)w.Height,
               "heartbeat_s", w.HeartbeatS);

        // Controls that cannot be right are refused before sending, naming the problem.
        LocalRefusal("keys row too wide", () => c.SendControls(1, new[] { new float[keys.Length + 1] }),
                     "the schema has " + keys.Length);
        LocalRefusal("row counts differ", () => c.SendControls(1, Rows(keys, 2), Rows(axes, 3)), "one row per");
        LocalRefusal("more rows than max_samples", () => c.SendControls(1, Rows(keys, w.MaxSamples + 1)),
                     "max_samples");
        LocalRefusal("key value above 1", () => c.SendControls(1, Rows(Array.ConvertAll(keys, k => 2f), 1)),
                     "key values are 0 .. 1");
        LocalRefusal("unknown prompt mode", () => c.SwitchPrompt(1, "x", "fade"), "soft, recache or cut");

        // A JPEG session: controls, an embedding and a prompt switch, then frames made with all of them.
        long jpeg = await c.OpenAsync(new OpenOptions { Prompt = prompt, Seed = seed, Fps = 0, EchoControls = true });
        Report("open", jpeg > 0, "session", jpeg, "format", "jpeg");
        long controlsSeq = c.SendControls(jpeg, Rows(keys, 4), Rows(axes, 4));
        long embeddingSeq = c.SendEmbedding(jpeg, Rows(embedding, 2));
        long promptSeq = c.SwitchPrompt(jpeg, "a snowy mountain village", "recache");
        Report("inputs_sent", controlsSeq < embeddingSeq && embeddingSeq < promptSeq, "controls_seq", controlsSeq,
               "embedding_seq", embeddingSeq, "prompt_seq", promptSeq);
        // Until a whole chunk made after every input was applied: its control rows all come from the held state.
        long appliedIn = long.MaxValue;
        List<Frame> frames = await Frames(c, got =>
        {
            Frame f = got.Count > 0 ? got[got.Count - 1] : null;
            if (f != null && f.InputSeq >= promptSeq) appliedIn = Math.Min(appliedIn, f.Chunk);
            return got.Count >= want && f.Chunk > appliedIn;
        }, 60);
        string problem = null;
        long lastIndex = -1;
        foreach (Frame f in frames)
        {
            problem = problem ?? (f.Session != jpeg || f.Format != "jpeg" ? "a frame of another session or format" :
                                  f.Width != w.Width || f.Height != w.Height ? "shape differs from the welcome" :
                                  f.Index <= lastIndex ? "frame indices do not increase" :
                                  JpegProblem(f.Payload, w.Width, w.Height));
            lastIndex = f.Index;
        }
        Frame last = frames.Count > 0 ? frames[frames.Count - 1] : null;
        if (last != null) File.WriteAllBytes(Path.Combine(dump, "last.jpg"), last.Payload);
        Report("frames_jpeg", problem == null && frames.Count >= want && last.PromptSeq == promptSeq,
               "count", (long)frames.Count, "problem", problem, "first_index", frames.Count > 0 ? frames[0].Index : -1,
               "last_prompt_seq", last == null ? -1 : last.PromptSeq,
               "last_input_seq", last == null ? -1 : last.InputSeq,
               "inputs_applied_in_chunk", appliedIn, "last_chunk", last == null ? -1 : last.Chunk);
        Dictionary<string, object> echo = last == null ? null : last.Control;
        Report("echoed_controls", echo != null, "keys", echo == null ? null : echo["keys"],
               "embedding", echo == null ? null : AsList(last.ControlEmbedding));
        Dictionary<string, object> stray;
        Report("no_stray_errors", !c.TryDequeueMessage(out stray), "message", stray);

        // The daemon's refusals: a fire-and-forget input for a session that is not ours, and a request for one.
        long badSeq = c.SendControls(999999, Rows(keys, 1));
        Dictionary<string, object> err = await NextMessage(c, 10);
        Report("error_for_input", err != null && (string)err["type"] == "error" &&
                                  (string)err["code"] == "unknown_session" && (long)err["re"] == badSeq,
               "message", err);
        try
        {
            await c.CloseSessionAsync(999999);
            Report("error_for_request", false, "error", "closing an unknown session succeeded");
        }
        catch (ServerException e)
        {
            Report("error_for_request", e.Code == "unknown_session" && e.Re.HasValue, "code", e.Code,
                   "message", e.ServerMessage, "re", e.Re);
        }

        // Paused and silent for 4 heartbeats: the client pings on its own and the connection stays up.
        Dictionary<string, object> paused = await c.PauseAsync(jpeg);
        Frame after;
        long pingsBefore = c.PingsSent, pongsBefore = c.PongsReceived;
        await Task.Delay(TimeSpan.FromSeconds(4 * w.HeartbeatS));
        double rtt = await c.PingAsync();
        Report("heartbeat", (bool)paused["paused"] && c.PingsSent - pingsBefore >= 2 &&
                            c.PongsReceived - pongsBefore >= 1 && c.IsConnected,
               "pings", c.PingsSent - pingsBefore, "pongs", c.PongsReceived - pongsBefore, "rtt_ms", rtt * 1000);
        while (c.TryDequeueFrame(out after)) { }
        Dictionary<string, object> resumed = await c.ResumeAsync(jpeg);
        DateTime wait = DateTime.UtcNow.AddSeconds(30);
        while (c.QueuedFrames == 0 && DateTime.UtcNow < wait) await Task.Delay(5);  // frames wait unread
        int queued = c.QueuedFrames;
        Dictionary<string, object> stats = await c.CloseSessionAsync(jpeg);
        bool noneAfter = !c.TryDequeueFrame(out after);
        Report("close", !(bool)resumed["paused"] && queued > 0 && noneAfter && (long)stats["inputs"] >= 3 &&
                        (long)stats["prompt_switches"] >= 1,
               "stats", stats, "queued_before", (long)queued, "frames_left", noneAfter ? 0L : 1L + c.QueuedFrames);

        // An rgb24 session: raw frames of H*W*3 bytes; a reset starts epoch 1 and no older frame follows it.
        long raw = await c.OpenAsync(new OpenOptions { Prompt = prompt, Seed = seed, Format = "rgb24", Fps = 0 });
        List<Frame> rgb = await Frames(c, got => got.Count >= 9, 60);
        problem = rgb.Count < 9 ? "only " + rgb.Count + " frames" : null;
        foreach (Frame f in rgb)
            problem = problem ?? (f.Format != "rgb24" || f.Session != raw ? "a frame of another session or format" :
                                  f.Payload.Length != w.Width * w.Height * 3
                                      ? "payload of " + f.Payload.Length + " bytes" :
                                  f.Epoch != 0 ? "epoch " + f.Epoch : null);
        if (rgb.Count > 0 && rgb[0].Index == 0) File.WriteAllBytes(Path.Combine(dump, "first.rgb"), rgb[0].Payload);
        Report("frames_rgb24", problem == null && rgb[0].Index == 0, "count", (long)rgb.Count, "problem", problem);
        wait = DateTime.UtcNow.AddSeconds(30);
        while (c.QueuedFrames == 0 && DateTime.UtcNow < wait) await Task.Delay(5);  // epoch-0 frames wait unread
        queued = c.QueuedFrames;
        Dictionary<string, object> reset = await c.ResetAsync(raw);
        List<Frame> fresh = await Frames(c, got => got.Count >= 3, 60);
        bool allNew = fresh.Count == 3 && fresh.TrueForAll(f => f.Epoch == (long)reset["epoch"]);
        Report("reset", queued > 0 && (long)reset["epoch"] == 1 && allNew && fresh[0].Index == 0,
               "epoch", reset["epoch"], "queued_before", (long)queued, "frames", (long)fresh.Count,
               "first_index", fresh.Count > 0 ? fresh[0].Index : -1);
        await c.CloseSessionAsync(raw);
        Dictionary<string, object> all = await c.StatsAsync();
        Report("stats", ((Dictionary<string, object>)all["sessions"]).Count == 0, "daemon", all["daemon"]);

        var watch = System.Diagnostics.Stopwatch.StartNew();
        c.Dispose();
        long disposeMs = watch.ElapsedMilliseconds;
        bool refused = false;
        try
        {
            c.SendControls(raw, Rows(keys, 1));
        }
        catch (ObjectDisposedException)
        {
            refused = true;
        }
        Report("disposed",
               disposeMs < c.CloseTimeout.TotalMilliseconds && refused && c.Fault is ObjectDisposedException,
               "dispose_ms", disposeMs, "frames_dropped", c.FramesDropped);

        // A second connection stays until the test stops the daemon: the client reports the shutdown.
        var d = new WorldsimClient("unity-console-shutdown");
        await d.ConnectAsync(url, token);
        Report("ready_for_shutdown", d.IsConnected);
        DateTime until = DateTime.UtcNow.AddSeconds(30);
        while (d.Fault == null && DateTime.UtcNow < until) await Task.Delay(10);
        Report("shutdown", d.Fault is ConnectionLostException && d.ShutdownReason != null,
               "reason", d.ShutdownReason, "error", d.Fault == null ? null : d.Fault.Message);
        d.Dispose();
        Report("done", true);
    }

    // ---- capture writer ---------------------------------------------------------------------------------------------

    static readonly string[] CaptureKeys = { "W", "A", "S", "D" }, CaptureAxes = { "mouse_dx", "mouse_dy" };
    const int CaptureWidth = 24, CaptureHeight = 16, CaptureEmbedding = 3;
    const string CaptureEngine = "unity-console-test \"Mono\" C:\\games \u00fc";
    const string Courtyard = "a castle courtyard", Cellar = "a \"dark\" cellar \u2014 na\u00efve";

    /// <summary>Writes a capture into dir as a game would; tests/test_bridge_unity.py imports it and checks every
    /// frame. Episode 0: PNG frames made here, a row on the first frame (dropped), a skipped step, refused calls
    /// (each a gap), prompt changes, a frame without control. Episode 1: the given JPEG files and an RGBA PNG.
    /// Episode 2 captures nothing (no folder left). A second writer appends an episode; other schemas and fps are
    /// refused. Runs in a culture whose decimal separator is a comma, which must not reach the JSON.</summary>
    static void Capture(string[] args)
    {
        string dir = args[1];
        byte[][] jpegs = Array.ConvertAll(Options(args)["jpegs"].Split(','), File.ReadAllBytes);
        Thread.CurrentThread.CurrentCulture = new CultureInfo("de-DE");
        Report("capture_culture", (0.5f).ToString() == "0,5");

        var w = new CaptureWriter();
        CaptureRefused<InvalidOperationException>("episode before begin", w.StartEpisode, "call Begin()");
        CaptureRefused<ArgumentException>("fps NaN", () => w.Begin(dir, CaptureKeys, CaptureAxes, 3, 4, double.NaN,
                                                                   CaptureEngine), "fps must be a positive");
        CaptureRefused<ArgumentException>("negative embedding width",
                                          () => w.Begin(dir, CaptureKeys, CaptureAxes, -1, 4, 16, CaptureEngine),
                                          "embeddingDim must be 0 or more");
        Report("capture_nothing_yet", !Directory.Exists(dir));
        w.Begin(dir, CaptureKeys, CaptureAxes, CaptureEmbedding, 4, 16, CaptureEngine);
        CaptureRefused<InvalidOperationException>("frame before an episode",
                                                  () => w.AddFrame(Png(0, 0, 3), "png", null, null), "StartEpisode()");
        w.StartEpisode();
        string first = w.EpisodePath;
        Report("capture_episode", Path.GetFileName(first) == "episode_000000", "path", first);
        w.AddFrame(Png(0, 0, 3), "png", F(1, 0, 0, 0), F(0.5f, -0.5f), F(1, 2, 3), Courtyard);  // step 0
        Report("capture_flushed", LinesOnDisk(first) == 1, "lines", LinesOnDisk(first));
        w.AddFrame(Png(0, 1, 3), "png", F(1, 0, 0, 1), F(0.1f, -0.03f), F(0.25f, -1e-7f, 3e9f), Courtyard);
        w.SkipFrame();  // step 2
        CaptureRefused<ArgumentException>("keys width", () => w.AddFrame(Png(0, 3, 3), "png", F(1, 0, 0), F(0, 0),
                                          F(0, 0, 0)), "frame 3: keys has 3 values, the control schema has 4");
        CaptureRefused<ArgumentException>("NaN axis", () => w.AddFrame(Png(0, 4, 3), "png", F(0, 0, 0, 0),
                                          F(0, float.NaN), F(0, 0, 0)), "frame 4: axes[1] is NaN");
        CaptureRefused<ArgumentException>("infinite embedding", () => w.AddFrame(Png(0, 5, 3), "png", F(0, 0, 0, 0),
                                          F(0, 0), F(float.PositiveInfinity, 0, 0)), "frame 5: embedding[0] is");
        CaptureRefused<ArgumentException>("frame size", () => w.AddFrame(Png(0, 6, 3, 12, 8), "png", null, null),
                                          "frame 6 is 12x8, the episode's frames are 24x16");
        CaptureRefused<ArgumentException>("PNG bytes as jpg", () => w.AddFrame(Png(0, 7, 3), "jpg", null, null),
                                          "frame 7: the bytes are not a JPEG");
        CaptureRefused<ArgumentException>("embedding without keys and axes", () => w.AddFrame(Png(0, 8, 3), "png",
                                          null, null, F(1, 2, 3)), "frame 8: keys is null");
        CaptureRefused<ArgumentException>("unknown extension", () => w.AddFrame(Png(0, 9, 3), "bmp", null, null),
                                          "frame 9: extension must be \"png\" or \"jpg\", got \"bmp\"");
        CaptureRefused<ArgumentException>("missing embedding", () => w.AddFrame(Png(0, 10, 3), "png", F(0, 0, 0, 0),
                                          F(0, 0)), "frame 10: embedding has 0 values, the control schema has 3");
        w.AddFrame(Png(0, 11, 3), "png", F(0, 1, 0, 0), F(0, 0), F(0, 0, 0), Cellar);
        Report("capture_flushed", LinesOnDisk(first) == 3, "lines", LinesOnDisk(first));
        w.AddFrame(Png(0, 12, 3), "png", null, null);  // no control led into it
        w.AddFrame(Png(0, 13, 3), "png", F(0, 0, 1, 0), F(1, -1), F(1, 1, 1), Courtyard);
        Report("capture_episode_frames", w.EpisodeFrames == 5, "frames", w.EpisodeFrames);

        w.StartEpisode();  // ends episode 0
        Report("capture_episode", Path.GetFileName(w.EpisodePath) == "episode_000001", "path", w.EpisodePath);
        w.AddFrame(jpegs[0], "jpg", null, null);
        w.AddFrame(Png(1, 1, 4), "png", F(1, 1, 1, 1), F(0.25f, 0.75f), F(0, 0, 0));
        CaptureRefused<ArgumentException>("JPEG bytes as png", () => w.AddFrame(jpegs[1], "png", null, null),
                                          "frame 2: the bytes are not a PNG");
        w.AddFrame(jpegs[1], "jpg", F(0, 0, 0, 0), F(0, 0), F(-1, -2, -3));
        w.EndEpisode();
        w.StartEpisode();
        string empty = w.EpisodePath;
        w.EndEpisode();
        Report("capture_empty_episode", Path.GetFileName(empty) == "episode_000002" && !Directory.Exists(empty));
        w.Dispose();
        CaptureRefused<InvalidOperationException>("episode after dispose", w.StartEpisode, "call Begin()");

        var again = new CaptureWriter();  // the same schema and fps: further episodes, capture.json kept
        again.Begin(dir, CaptureKeys, CaptureAxes, CaptureEmbedding, 4, 16, "another engine");
        again.StartEpisode();
        Report("capture_appended", Path.GetFileName(again.EpisodePath) == "episode_000002", "path", again.EpisodePath);
        again.AddFrame(Png(2, 0, 3), "png", null, null, null, "a harbour");
        again.AddFrame(Png(2, 1, 3), "png", F(0, 0, 0, 1), F(-0.5f, 0.5f), F(0.5f, 0.5f, 0.5f));
        again.Dispose();

        var fromWelcome = new CaptureWriter();  // a welcome of the same schema at 16 fps is the same capture
        fromWelcome.Begin(dir, CaptureWelcome(4), "x");
        Report("capture_welcome", fromWelcome.CapturePath == dir);
        fromWelcome.Dispose();
        CaptureRefused<IOException>("another frames_per_latent",
                                    () => new CaptureWriter().Begin(dir, CaptureWelcome(2), "x"),
                                    "holds another capture");
        CaptureRefused<IOException>("another fps", () => new CaptureWriter().Begin(dir, CaptureKeys, CaptureAxes, 3, 4,
                                    30, CaptureEngine), "holds another capture");
        CaptureRefused<IOException>("another schema", () => new CaptureWriter().Begin(dir, new[] { "W", "A", "S" },
                                    CaptureAxes, 3, 4, 16, CaptureEngine), "use another folder");
        Report("capture_done", true);
    }

    static float[] F(params float[] values)
    {
        return values;
    }

    static void CaptureRefused<T>(string name, Action call, string mentions) where T : Exception
    {
        try
        {
            call();
            Report("capture_refused", false, "name", name, "error", "accepted");
        }
        catch (T e)
        {
            Report("capture_refused", e.Message.Contains(mentions), "name", name, "error", e.Message);
        }
    }

    /// <summary>Lines of the episode's frames.jsonl on disk, read while the writer still has it open.</summary>
    static int LinesOnDisk(string episode)
    {
        using (var f = new FileStream(Path.Combine(episode, CaptureWriter.LinesFile), FileMode.Open, FileAccess.Read,
                                      FileShare.ReadWrite))
        using (var r = new StreamReader(f))
            return r.ReadToEnd().Split('\n').Length - 1;
    }

    static Welcome CaptureWelcome(long framesPerLatent)
    {
        Func<string[], List<object>> names = a => new List<object>(a);
        return new Welcome(new Dictionary<string, object>
        {
            { "protocol", "1.1.0" },
            { "video", new Dictionary<string, object> { { "width", 24L }, { "height", 16L }, { "fps", 16.0 } } },
            { "control", new Dictionary<string, object> {
                { "keys", names(CaptureKeys) }, { "axes", names(CaptureAxes) },
                { "embedding_dim", (long)CaptureEmbedding }, { "frames_per_latent", framesPerLatent } } },
            { "formats", new List<object> { "jpeg" } },
            { "limits", new Dictionary<string, object> {
                { "heartbeat_s", 5.0 }, { "idle_timeout_s", 30.0 }, { "max_samples", 4L },
                { "max_message_bytes", 1L << 20 }, { "max_prompt_chars", 1000L } } },
        });
    }

    /// <summary>The test pattern (x*17 + y*29 + frame*41 + episode*67 + channel*85) mod 256 as a PNG (RGB, or RGBA
    /// with 4 channels), written without a compressor: zlib "stored" blocks with the adler32 and crc32 the formats
    /// require.</summary>
    static byte[] Png(int episode, int frame, int channels, int width = CaptureWidth, int height = CaptureHeight)
    {
        var raw = new MemoryStream();
        for (int y = 0; y < height; y++)
        {
            raw.WriteByte(0);  // row filter: none
            for (int x = 0; x < width; x++)
                for (int c = 0; c < channels; c++)
                    raw.WriteByte((byte)(x * 17 + y * 29 + frame * 41 + episode * 67 + c * 85));
        }
        byte[] data = raw.ToArray();
        var zlib = new MemoryStream();
        zlib.WriteByte(0x78);  // deflate, 32 KiB window; with the next byte a multiple of 31
        zlib.WriteByte(0x01);
        for (int at = 0; at < data.Length; at += 65535)
        {
            int n = Math.Min(65535, data.Length - at);
            zlib.WriteByte((byte)(at + n == data.Length ? 1 : 0));  // final block?, type 0 (stored)
            zlib.WriteByte((byte)n);
            zlib.WriteByte((byte)(n >> 8));
            zlib.WriteByte((byte)~n);
            zlib.WriteByte((byte)(~n >> 8));
            zlib.Write(data, at, n);
        }
        BigEndian(zlib, Adler32(data));

        var header = new MemoryStream();
        BigEndian(header, (uint)width);
        BigEndian(header, (uint)height);
        header.Write(new byte[] { 8, (byte)(channels == 4 ? 6 : 2), 0, 0, 0 }, 0, 5);  // 8 bits, RGB(A), no interlace
        var png = new MemoryStream();
        png.Write(new byte[] { 0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a }, 0, 8);
        Chunk(png, "IHDR", header.ToArray());
        Chunk(png, "IDAT", zlib.ToArray());
        Chunk(png, "IEND", new byte[0]);
        return png.ToArray();
    }

    static void Chunk(Stream png, string type, byte[] data)
    {
        byte[] typed = new byte[4 + data.Length];
        Encoding.ASCII.GetBytes(type, 0, 4, typed, 0);
        Buffer.BlockCopy(data, 0, typed, 4, data.Length);
        BigEndian(png, (uint)data.Length);
        png.Write(typed, 0, typed.Length);
        BigEndian(png, Crc32(typed));
    }

    static void BigEndian(Stream s, uint v)
    {
        s.Write(new[] { (byte)(v >> 24), (byte)(v >> 16), (byte)(v >> 8), (byte)v }, 0, 4);
    }

    static uint Adler32(byte[] data)
    {
        uint a = 1, b = 0;
        foreach (byte x in data)
        {
            a = (a + x) % 65521;
            b = (b + a) % 65521;
        }
        return b << 16 | a;
    }

    static uint Crc32(byte[] data)
    {
        uint crc = 0xffffffff;
        foreach (byte x in data)
        {
            crc ^= x;
            for (int k = 0; k < 8; k++) crc = (crc & 1) != 0 ? 0xedb88320 ^ (crc >> 1) : crc >> 1;
        }
        return ~crc;
    }
}
