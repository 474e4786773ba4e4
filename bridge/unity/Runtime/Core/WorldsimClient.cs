// A protocol v1 client over the WebSocket gateway (bridge/PROTOCOL.md §14) on System.Net.WebSockets.ClientWebSocket.
//
// Three background tasks own the socket: a receive loop (frames to a bounded queue, replies to the request that
// waits for them by seq, anything else to a message queue), a send loop (the only writer: ClientWebSocket allows
// one send at a time) and a heartbeat (a ping when nothing was sent or received for heartbeat_s). Engine code polls
// TryDequeueFrame / TryDequeueMessage from its own thread (Unity: Update) and never blocks on the network.
using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Diagnostics;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Threading;
using System.Threading.Tasks;

namespace Worldsim
{
    /// <summary>What `open` asks for (PROTOCOL.md §5).</summary>
    public sealed class OpenOptions
    {
        public string Prompt = "";
        public long Seed;
        /// <summary>"jpeg" (the gateway's default) or "rgb24" (H*W*3 raw bytes per frame).</summary>
        public string Format = "jpeg";
        public int JpegQuality = 85;
        /// <summary>Frames per second; null: the daemon's video fps; 0: unpaced (as fast as it goes).</summary>
        public double? Fps;
        /// <summary>Seconds of extra playout buffered (0-5): smoother under jitter, controls bind later.</summary>
        public double Lookahead;
        /// <summary>Frame headers carry the control row that led into each frame.</summary>
        public bool EchoControls;
        /// <summary>Begin from the model package's start frame for the prompt, if it has one
        /// (welcome.model.starts); false: from the prompt alone.</summary>
        public bool PackageStart = true;
    }

    public sealed class WorldsimClient : IDisposable
    {
        public const string ProtocolVersion = "1.2.0";
        const int MaxOutbox = 1024;  // queued outbound messages; more means the socket stopped draining
        const int MaxInboundBytes = 64 << 20;

        public readonly string Name;
        /// <summary>How long ConnectAsync and each request wait for the gateway / daemon.</summary>
        public TimeSpan RequestTimeout = TimeSpan.FromSeconds(30);
        /// <summary>How long Dispose waits for `bye` and the WebSocket close handshake.</summary>
        public TimeSpan CloseTimeout = TimeSpan.FromSeconds(2);
        /// <summary>Frames kept for the engine; when it reads too slowly the oldest are dropped
        /// (FramesDropped).</summary>
        public int MaxQueuedFrames = 64;

        public Welcome Welcome { get; private set; }
        /// <summary>Why the connection ended (ConnectionLostException, ObjectDisposedException ...); null while
        /// up.</summary>
        public Exception Fault { get { return Volatile.Read(ref fault); } }
        public bool IsConnected { get { return Welcome != null && Fault == null; } }
        /// <summary>The daemon's `shutdown` reason, once it sent one.</summary>
        public string ShutdownReason { get; private set; }
        public long FramesDropped { get { return Interlocked.Read(ref framesDropped); } }
        public long PingsSent { get { return Interlocked.Read(ref pingsSent); } }
        public long PongsReceived { get { return Interlocked.Read(ref pongsReceived); } }

        ClientWebSocket ws;
        readonly CancellationTokenSource cts = new CancellationTokenSource();
        Task receiveTask, sendTask;
        Exception fault;
        bool disposed;
        long seq, framesDropped, pingsSent, pongsReceived;
        readonly Stopwatch clock = Stopwatch.StartNew();
        long lastSentTicks, lastReceivedTicks, lastPingTicks;

        readonly object outboxLock = new object();
        readonly Queue<byte[]> outbox = new Queue<byte[]>();  // null: send the close frame and stop
        readonly SemaphoreSlim outboxReady = new SemaphoreSlim(0);
        bool closeQueued;

        readonly ConcurrentDictionary<long, TaskCompletionSource<Dictionary<string, object>>> pending =
            new ConcurrentDictionary<long, TaskCompletionSource<Dictionary<string, object>>>();
        readonly object framesLock = new object();
        readonly LinkedList<Frame> frames = new LinkedList<Frame>();
        readonly ConcurrentQueue<Dictionary<string, object>> messages =
            new ConcurrentQueue<Dictionary<string, object>>();
        // Owned by the receive loop: frames that must no longer be delivered (replies overtake queued frames, §14).
        readonly Dictionary<long, long> minEpoch = new Dictionary<long, long>();
        readonly HashSet<long> closedSessions = new HashSet<long>();

        public WorldsimClient(string name = "unity")
        {
            Name = name;
        }

        // ---- connection ---------------------------------------------------------------------------------------------

        /// <summary>Opens the WebSocket (token, if any, as `Authorization: Bearer`), says hello and checks the
        /// daemon's protocol major version. Throws ConnectionLostException, or ServerException if refused.</summary>
        public async Task ConnectAsync(string url, string token = null,
                                       CancellationToken cancel = default(CancellationToken))
        {
            if (ws != null) throw new InvalidOperationException("ConnectAsync was already called on this client");
            ThrowIfDisposed();
            ws = new ClientWebSocket();
            if (!string.IsNullOrEmpty(token)) ws.Options.SetRequestHeader("Authorization", "Bearer " + token);
            try
            {
                using (var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancel, cts.Token))
                {
                    timeout.CancelAfter(RequestTimeout);
                    await ws.ConnectAsync(new Uri(url), timeout.Token).ConfigureAwait(false);
                }
            }
            catch (Exception e) when (e is WebSocketException || e is OperationCanceledException)
            {
                var lost = new ConnectionLostException("could not open a WebSocket to " + url + ": " + e.Message +
                                                       " (" + ConnectHint(e) + ")", e);
                Fail(lost);
                throw lost;
            }
            Touch(ref lastReceivedTicks);
            Touch(ref lastSentTicks);
            receiveTask = Task.Run(ReceiveLoop);
            sendTask = Task.Run(SendLoop);
            Dictionary<string, object> hello = Message("hello");
            hello["protocol"] = ProtocolVersion;
            hello["client"] = Name;
            Welcome welcome;
            try
            {
                welcome = new Welcome(await RequestAsync(hello).ConfigureAwait(false));
                if (Major(welcome.Protocol) != Major(ProtocolVersion))
                    throw new ConnectionLostException("the daemon speaks protocol " + welcome.Protocol + ", this " +
                                                      "client " + ProtocolVersion + ": major versions must match");
            }
            catch (Exception e)
            {
                // Refused (ServerException), timed out or a bad welcome: the connection is of no further use.
                Fail(e);
                QueueClose();
                throw;
            }
            Welcome = welcome;
            _ = Task.Run(HeartbeatLoop);  // ends on Fault or Dispose
        }

        string ConnectHint(Exception e)
        {
            for (Exception x = e; x != null; x = x.InnerException)
                if (x is SocketException)
                    return x.Message + ": is the gateway running there, e.g. `worldsim serve --ws 127.0.0.1:8765`?";
            if (e is OperationCanceledException)
                return "cancelled, or no WebSocket handshake within " + RequestTimeout.TotalSeconds + " s";
            // Mono does not say which HTTP status came instead of 101; a gateway answers 401 to a missing or wrong
            // token.
            return "the server refused the WebSocket upgrade: is the token right, and is this a worldsim gateway?";
        }

        static string Major(string version)
        {
            int dot = version.IndexOf('.');
            return dot < 0 ? version : version.Substring(0, dot);
        }

        /// <summary>Says `bye` (the daemon frees this connection's sessions), closes the WebSocket within
        /// CloseTimeout and stops the background tasks. Pending requests fail with ObjectDisposedException.</summary>
        public void Dispose()
        {
            if (disposed) return;
            disposed = true;
            if (ws == null) return;
            if (Fault == null && ws.State == WebSocketState.Open)
            {
                try
                {
                    Push(MsgPack.Encode(Message("bye")));
                }
                catch (ConnectionLostException)
                {
                    // Already closing: the gateway sends `bye` for us when the WebSocket closes.
                }
            }
            QueueClose();
            Fail(new ObjectDisposedException("WorldsimClient", "the client was disposed"));
            var loops = new List<Task>();
            if (sendTask != null) loops.Add(sendTask);
            if (receiveTask != null) loops.Add(receiveTask);
            try
            {
                Task.WhenAll(loops).Wait(CloseTimeout);
            }
            catch (AggregateException)
            {
                // The loops report their own failures through Fault; here only their end matters.
            }
            cts.Cancel();
            if (ws.State != WebSocketState.Closed) ws.Abort();
            ws.Dispose();
        }

        void ThrowIfDisposed()
        {
            if (disposed) throw new ObjectDisposedException("WorldsimClient");
        }

        void ThrowIfDown()
        {
            ThrowIfDisposed();
            Exception f = Fault;
            if (f != null) throw new ConnectionLostException("the connection is gone: " + f.Message, f);
            if (ws == null) throw new InvalidOperationException("call ConnectAsync first");
        }

        Welcome Schema()
        {
            ThrowIfDown();
            Welcome w = Welcome;
            if (w == null) throw new InvalidOperationException("wait for ConnectAsync to finish first");
            return w;
        }

        void Fail(Exception e)
        {
            if (Interlocked.CompareExchange(ref fault, e, null) != null) return;
            foreach (KeyValuePair<long, TaskCompletionSource<Dictionary<string, object>>> p in pending)
                p.Value.TrySetException(e);
        }

        void Touch(ref long ticks)
        {
            Volatile.Write(ref ticks, clock.ElapsedTicks);
        }

        double SecondsSince(ref long ticks)
        {
            return (double)(clock.ElapsedTicks - Volatile.Read(ref ticks)) / Stopwatch.Frequency;
        }

        // ---- sessions -----------------------------------------------------------------------------------------------

        /// <summary>Opens a session; returns its id.</summary>
        public async Task<long> OpenAsync(OpenOptions options = null)
        {
            options = options ?? new OpenOptions();
            if (options.Format != "jpeg" && options.Format != "rgb24")
                throw new ArgumentException("open: format must be \"jpeg\" or \"rgb24\", got \"" + options.Format +
                                            "\"");
            Dictionary<string, object> msg = Message("open");
            msg["prompt"] = options.Prompt ?? "";
            msg["seed"] = options.Seed;
            msg["format"] = options.Format;
            msg["jpeg_quality"] = options.JpegQuality;
            if (options.Fps.HasValue) msg["fps"] = options.Fps.Value;
            if (options.Lookahead != 0) msg["lookahead"] = options.Lookahead;
            msg["echo_controls"] = options.EchoControls;
            if (!options.PackageStart) msg["package_start"] = false;
            Dictionary<string, object> opened = await RequestAsync(msg).ConfigureAwait(false);
            return Fields.Long(opened, "session");
        }

        /// <summary>Queues per-video-frame control rows (row i is one video frame; every source given has the same
        /// number of rows). Keys are 0/1 (or the fraction of the frame a key was held), axes about [-1, 1] (mouse
        /// deltas per frame), the embedding any finite vector of the schema's width (sent as float32 bin). Widths
        /// are checked against the welcome's schema here; the daemon's refusals arrive via TryDequeueMessage.
        /// Returns the input's seq (frame headers name the newest applied input in `input_seq`).</summary>
        public long SendControls(long session, float[][] keys, float[][] axes = null, float[][] embedding = null)
        {
            Welcome w = Schema();
            int rows = -1;
            var controls = new Dictionary<string, object>();
            if (keys != null) controls["keys"] = Rows("keys", keys, w.Keys.Length, true, ref rows);
            if (axes != null) controls["axes"] = Rows("axes", axes, w.Axes.Length, false, ref rows);
            if (embedding != null)
            {
                Rows("embedding", embedding, w.EmbeddingDim, false, ref rows);  // checks; sent as bin, not lists
                controls["embedding"] = Floats.ToLittleEndian(embedding, w.EmbeddingDim);
            }
            if (rows < 0) throw new ArgumentException("SendControls: give at least one of keys, axes, embedding");
            if (rows > w.MaxSamples)
                throw new ArgumentException("SendControls: " + rows + " rows, the daemon takes at most " +
                                            w.MaxSamples + " per message (max_samples)");
            Dictionary<string, object> msg = Message("input");
            msg["session"] = session;
            msg["controls"] = controls;
            msg["t"] = UnixSeconds();
            return Send(msg);
        }

        /// <summary>Queues engine embedding rows only (one per video frame); keys keep their last sent value.</summary>
        public long SendEmbedding(long session, float[][] embedding)
        {
            if (embedding == null) throw new ArgumentNullException("embedding");
            return SendControls(session, null, null, embedding);
        }

        /// <summary>Switches the prompt at the next chunk. mode: "soft", "recache" or "cut"; sink: "keep" or "refresh".
        /// Returns the input's seq (frames made with the new prompt have `prompt_seq` equal to it).</summary>
        public long SwitchPrompt(long session, string text, string mode = "soft", string sink = "keep")
        {
            Welcome w = Schema();
            if (text == null) throw new ArgumentNullException("text");
            if (mode != "soft" && mode != "recache" && mode != "cut")
                throw new ArgumentException("SwitchPrompt: mode must be soft, recache or cut, got \"" + mode + "\"");
            if (sink != "keep" && sink != "refresh")
                throw new ArgumentException("SwitchPrompt: sink must be keep or refresh, got \"" + sink + "\"");
            if (text.Length > w.MaxPromptChars)
                throw new ArgumentException("SwitchPrompt: the prompt has " + text.Length + " characters, the daemon " +
                                            "takes at most " + w.MaxPromptChars);
            Dictionary<string, object> msg = Message("input");
            msg["session"] = session;
            msg["prompt"] = new Dictionary<string, object> { { "text", text }, { "mode", mode }, { "sink", sink } };
            msg["t"] = UnixSeconds();
            return Send(msg);
        }

        /// <summary>Stops generating (frames already made still arrive). Returns the `ok` reply.</summary>
        public Task<Dictionary<string, object>> PauseAsync(long session) { return SessionOp("pause", session); }

        public Task<Dictionary<string, object>> ResumeAsync(long session) { return SessionOp("resume", session); }

        /// <summary>Restarts the stream (reply `epoch` is the new one); queued frames of older epochs are
        /// discarded.</summary>
        public Task<Dictionary<string, object>> ResetAsync(long session) { return SessionOp("reset", session); }

        /// <summary>Closes a session; returns its final stats. Its queued frames are discarded.</summary>
        public async Task<Dictionary<string, object>> CloseSessionAsync(long session)
        {
            Dictionary<string, object> closed = await SessionOp("close", session).ConfigureAwait(false);
            return Fields.Map(closed, "stats");
        }

        /// <summary>The `stats` reply: {sessions: {"id": {...}}, daemon: {...}} for one session or all of
        /// them.</summary>
        public Task<Dictionary<string, object>> StatsAsync(long? session = null)
        {
            Dictionary<string, object> msg = Message("stats");
            if (session.HasValue) msg["session"] = session.Value;
            return RequestAsync(msg);
        }

        /// <summary>Round trip to the daemon in seconds.</summary>
        public async Task<double> PingAsync()
        {
            long start = clock.ElapsedTicks;
            await RequestAsync(Message("ping")).ConfigureAwait(false);
            return (double)(clock.ElapsedTicks - start) / Stopwatch.Frequency;
        }

        Task<Dictionary<string, object>> SessionOp(string type, long session)
        {
            Dictionary<string, object> msg = Message(type);
            msg["session"] = session;
            return RequestAsync(msg);
        }

        // ---- what arrived -------------------------------------------------------------------------------------------

        /// <summary>The oldest received frame, without waiting. Safe from any thread.</summary>
        public bool TryDequeueFrame(out Frame frame)
        {
            lock (framesLock)
            {
                frame = frames.First == null ? null : frames.First.Value;
                if (frame != null) frames.RemoveFirst();
                return frame != null;
            }
        }

        public int QueuedFrames
        {
            get { lock (framesLock) return frames.Count; }
        }

        /// <summary>Control messages nobody waits for: `error`s about inputs (with `re` = the input's seq), a
        /// `session_failed` error and the `closed` after it, `shutdown`. Safe from any thread.</summary>
        public bool TryDequeueMessage(out Dictionary<string, object> message)
        {
            return messages.TryDequeue(out message);
        }

        // ---- plumbing -----------------------------------------------------------------------------------------------

        static double UnixSeconds()
        {
            return (DateTime.UtcNow - new DateTime(1970, 1, 1, 0, 0, 0, DateTimeKind.Utc)).TotalSeconds;
        }

        Dictionary<string, object> Message(string type)
        {
            return new Dictionary<string, object> { { "type", type }, { "seq", Interlocked.Increment(ref seq) } };
        }

        static List<object> Rows(string name, float[][] rows, int width, bool isKeys, ref int count)
        {
            if (width == 0)
                throw new ArgumentException("SendControls: the daemon's control schema has no " + name);
            if (count >= 0 && rows.Length != count)
                throw new ArgumentException("SendControls: " + name + " has " + rows.Length + " rows, the other " +
                                            "sources " + count + " (every source needs one row per video frame)");
            if (rows.Length == 0) throw new ArgumentException("SendControls: " + name + " has no rows");
            count = rows.Length;
            var out_ = new List<object>(rows.Length);
            for (int r = 0; r < rows.Length; r++)
            {
                float[] row = rows[r];
                if (row == null || row.Length != width)
                    throw new ArgumentException("SendControls: " + name + " row " + r + " has " +
                                                (row == null ? 0 : row.Length) + " values, the schema has " + width);
                var values = new List<object>(width);
                foreach (float v in row)
                {
                    if (float.IsNaN(v) || float.IsInfinity(v))
                        throw new ArgumentException("SendControls: " + name + " row " + r + " has a non-finite value");
                    if (isKeys && (v < 0 || v > 1))
                        throw new ArgumentException("SendControls: key values are 0 .. 1, got " + v);
                    // Whole key states go as integers (1 byte each); fractions and axes as float64.
                    values.Add(isKeys && (v == 0 || v == 1) ? (object)(long)v : (double)v);
                }
                out_.Add(values);
            }
            return out_;
        }

        long Send(Dictionary<string, object> msg)
        {
            ThrowIfDown();
            byte[] data = MsgPack.Encode(msg);
            if (Welcome != null && data.Length > Welcome.MaxMessageBytes)
                throw new ArgumentException("a " + msg["type"] + " message of " + data.Length + " bytes exceeds the " +
                                            "daemon's max_message_bytes (" + Welcome.MaxMessageBytes + ")");
            Push(data);
            return (long)msg["seq"];
        }

        void Push(byte[] data)
        {
            lock (outboxLock)
            {
                if (closeQueued) throw new ConnectionLostException("the connection is closing");
                if (outbox.Count >= MaxOutbox)
                    throw new ConnectionLostException(MaxOutbox + " messages wait to be sent: the WebSocket is not " +
                                                      "draining");
                outbox.Enqueue(data);
            }
            outboxReady.Release();
        }

        void QueueClose()
        {
            lock (outboxLock)
            {
                if (closeQueued) return;
                closeQueued = true;
                outbox.Enqueue(null);
            }
            outboxReady.Release();
        }

        async Task<Dictionary<string, object>> RequestAsync(Dictionary<string, object> msg)
        {
            var reply = new TaskCompletionSource<Dictionary<string, object>>(
                TaskCreationOptions.RunContinuationsAsynchronously);
            var s = (long)msg["seq"];
            pending[s] = reply;
            try
            {
                Send(msg);
                Task done = await Task.WhenAny(reply.Task, Task.Delay(RequestTimeout, cts.Token)).ConfigureAwait(false);
                if (done != reply.Task)
                {
                    ThrowIfDown();
                    throw new ConnectionLostException("no reply to " + msg["type"] + " (seq " + s + ") within " +
                                                      RequestTimeout.TotalSeconds + " s");
                }
            }
            finally
            {
                TaskCompletionSource<Dictionary<string, object>> gone;
                pending.TryRemove(s, out gone);
            }
            Dictionary<string, object> answer = await reply.Task.ConfigureAwait(false);
            if (Fields.OptString(answer, "type") == "error") throw new ServerException(answer);
            return answer;
        }

        async Task SendLoop()
        {
            try
            {
                while (true)
                {
                    await outboxReady.WaitAsync(cts.Token).ConfigureAwait(false);
                    byte[] data;
                    lock (outboxLock) data = outbox.Dequeue();
                    if (data == null)
                    {
                        if (ws.State == WebSocketState.Open || ws.State == WebSocketState.CloseReceived)
                            await ws.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "bye", cts.Token)
                                .ConfigureAwait(false);
                        return;
                    }
                    await ws.SendAsync(new ArraySegment<byte>(data), WebSocketMessageType.Binary, true, cts.Token)
                        .ConfigureAwait(false);
                    Touch(ref lastSentTicks);
                }
            }
            catch (Exception e) when (!(e is OperationCanceledException && cts.IsCancellationRequested))
            {
                Fail(new ConnectionLostException("sending to the gateway failed: " + e.Message, e));
            }
            catch (OperationCanceledException)
            {
                // Dispose: nothing more to send.
            }
        }

        async Task ReceiveLoop()
        {
            var buffer = new byte[64 << 10];
            try
            {
                while (true)
                {
                    int length = 0;
                    WebSocketReceiveResult r;
                    do
                    {
                        if (length == buffer.Length)
                        {
                            if (buffer.Length >= MaxInboundBytes)
                                throw new MsgPackException("a gateway message is larger than " + MaxInboundBytes +
                                                           " bytes");
                            Array.Resize(ref buffer, buffer.Length * 2);
                        }
                        r = await ws.ReceiveAsync(new ArraySegment<byte>(buffer, length, buffer.Length - length),
                                                  cts.Token).ConfigureAwait(false);
                        if (r.MessageType == WebSocketMessageType.Close)
                        {
                            Fail(new ConnectionLostException("the gateway closed the WebSocket (" + r.CloseStatus +
                                                             " " + r.CloseStatusDescription + ")"));
                            QueueClose();
                            return;
                        }
                        length += r.Count;
                    } while (!r.EndOfMessage);
                    if (r.MessageType != WebSocketMessageType.Binary)
                        throw new MsgPackException("the gateway sent a text message; protocol v1 messages are binary");
                    Touch(ref lastReceivedTicks);
                    Handle(GatewayMessage.Split(buffer, length));
                }
            }
            catch (Exception e) when (!(e is OperationCanceledException && cts.IsCancellationRequested))
            {
                Fail(e is MsgPackException
                    ? new ConnectionLostException("the gateway sent a malformed message: " + e.Message, e)
                    : new ConnectionLostException("receiving from the gateway failed: " + e.Message, e));
                QueueClose();
            }
            catch (OperationCanceledException)
            {
                // Dispose.
            }
        }

        void Handle(GatewayMessage m)
        {
            Dictionary<string, object> h = m.Header;
            string type = Fields.OptString(h, "type");
            if (type == "frame")
            {
                var frame = new Frame(h, m.Payload);
                long min;
                if (closedSessions.Contains(frame.Session) ||
                    (minEpoch.TryGetValue(frame.Session, out min) && frame.Epoch < min))
                    return;
                lock (framesLock)
                {
                    if (frames.Count >= MaxQueuedFrames)
                    {
                        frames.RemoveFirst();
                        Interlocked.Increment(ref framesDropped);
                    }
                    frames.AddLast(frame);
                }
                return;
            }
            long? session = Fields.OptLong(h, "session");
            if (type == "ok" && Fields.OptString(h, "op") == "reset" && session.HasValue)
            {
                long epoch = Fields.Long(h, "epoch");
                minEpoch[session.Value] = epoch;
                Discard(f => f.Session == session.Value && f.Epoch < epoch);
            }
            else if (type == "closed" && session.HasValue)
            {
                closedSessions.Add(session.Value);
                Discard(f => f.Session == session.Value);
            }
            else if (type == "shutdown")
            {
                // The connection is finished (§9); the gateway closes the WebSocket next.
                ShutdownReason = Fields.OptString(h, "reason") ?? "daemon stopped";
                Fail(new ConnectionLostException("the daemon shut down: " + ShutdownReason));
            }
            long? re = Fields.OptLong(h, "re");
            TaskCompletionSource<Dictionary<string, object>> waiting;
            if (re.HasValue && pending.TryGetValue(re.Value, out waiting))
            {
                waiting.TrySetResult(h);
                return;
            }
            if (type == "pong")
            {
                Interlocked.Increment(ref pongsReceived);
                return;
            }
            messages.Enqueue(h);
        }

        void Discard(Predicate<Frame> stale)
        {
            lock (framesLock)
            {
                LinkedListNode<Frame> node = frames.First;
                while (node != null)
                {
                    LinkedListNode<Frame> next = node.Next;
                    if (stale(node.Value)) frames.Remove(node);
                    node = next;
                }
            }
        }

        async Task HeartbeatLoop()
        {
            double beat = Welcome.HeartbeatS, idle = Welcome.IdleTimeoutS;
            TimeSpan step = TimeSpan.FromSeconds(Math.Max(0.05, beat / 4));
            try
            {
                while (Fault == null)
                {
                    await Task.Delay(step, cts.Token).ConfigureAwait(false);
                    if (SecondsSince(ref lastReceivedTicks) > idle)
                    {
                        Fail(new ConnectionLostException("the daemon has not answered for " + idle + " s (its idle " +
                                                         "timeout)"));
                        QueueClose();
                        return;
                    }
                    bool quiet = SecondsSince(ref lastSentTicks) >= beat || SecondsSince(ref lastReceivedTicks) >= beat;
                    if (quiet && SecondsSince(ref lastPingTicks) >= beat)
                    {
                        Touch(ref lastPingTicks);
                        Push(MsgPack.Encode(Message("ping")));
                        Interlocked.Increment(ref pingsSent);
                    }
                }
            }
            catch (OperationCanceledException)
            {
                // Dispose.
            }
            catch (ConnectionLostException)
            {
                // Closing: Push refuses, and Fault already says why.
            }
        }
    }
}
