// Streams one worldsim session into a Texture2D: connects on enable, plays frames out at the session's fps (frame k
// at max(arrival, previous + 1/fps), PROTOCOL.md §7), disposes the client on disable, destroy and domain reload.
using System;
using System.Collections.Generic;
using System.Threading.Tasks;
using UnityEngine;
#if UNITY_EDITOR
using UnityEditor;
#endif

namespace Worldsim.Unity
{
    [DisallowMultipleComponent]
    [AddComponentMenu("Worldsim/Worldsim Stream")]
    public sealed class WorldsimStream : MonoBehaviour
    {
        [Tooltip("ws://HOST:PORT/ of `worldsim serve --ws` or `worldsim gateway` (wss:// with TLS)")]
        public string url = "ws://127.0.0.1:8765/";
        [Tooltip("The gateway's token (DIR/ws.token of `worldsim keys DIR`); empty if it has none")]
        public string token = "";
        [TextArea] public string prompt = "a quiet forest path at dawn";
        public long seed;
        [Tooltip("Raw rgb24 frames (W*H*3 bytes each) instead of JPEG: no decoding, much more bandwidth")]
        public bool rawFrames;
        [Range(1, 100)] public int jpegQuality = 85;
        [Tooltip("Frames per second; 0: the daemon's video fps")]
        public float fps;
        [Tooltip("Frame headers carry the control row that led into each frame (for recording)")]
        public bool echoControls;

        public WorldsimClient Client { get; private set; }
        /// <summary>The open session's id, -1 until `opened`.</summary>
        public long Session { get; private set; } = -1;
        public bool IsStreaming { get { return Session >= 0 && Client != null && Client.IsConnected; } }
        /// <summary>Seconds per video frame of the open session.</summary>
        public float FramePeriod { get; private set; } = 1f / 16;
        /// <summary>The frame shown last (JPEG: decoded by LoadImage; rgb24: raw rows, top row first).</summary>
        public Texture2D Texture { get; private set; }
        /// <summary>The uvRect to show Texture with (RawImage.uvRect). Raw frames keep the wire's row order (top row
        /// first, where Unity expects the bottom row), so they are flipped by this rect rather than on the
        /// CPU.</summary>
        public Rect UvRect { get { return rawFrames ? new Rect(0, 1, 1, -1) : new Rect(0, 0, 1, 1); } }
        public Frame LastFrame { get; private set; }

        public event Action<Welcome> Connected;
        public event Action<Frame> FrameShown;
        /// <summary>Control messages nobody waited for: errors about inputs, `closed` after a failure,
        /// `shutdown`.</summary>
        public event Action<Dictionary<string, object>> MessageReceived;

        struct Pending
        {
            public Frame Frame;
            public double Arrived;
        }

        readonly Queue<Pending> playout = new Queue<Pending>();
        double lastShown;
        bool shownAny, faultLogged;

        void OnEnable()
        {
#if UNITY_EDITOR
            AssemblyReloadEvents.beforeAssemblyReload += Shutdown;
#endif
            Connect();
        }

        void OnDisable()
        {
#if UNITY_EDITOR
            AssemblyReloadEvents.beforeAssemblyReload -= Shutdown;
#endif
            Shutdown();
        }

        void OnDestroy()
        {
            Shutdown();
            if (Texture != null) Destroy(Texture);
        }

        async void Connect()
        {
            var client = new WorldsimClient("unity " + Application.unityVersion);
            Client = client;
            faultLogged = false;
            try
            {
                await client.ConnectAsync(url, token);
                if (Client != client) return;  // disabled meanwhile
                if (Connected != null) Connected(client.Welcome);
                var options = new OpenOptions
                {
                    Prompt = prompt, Seed = seed, Format = rawFrames ? "rgb24" : "jpeg", JpegQuality = jpegQuality,
                    EchoControls = echoControls
                };
                if (fps > 0) options.Fps = fps;
                long session = await client.OpenAsync(options);
                if (Client != client) return;
                FramePeriod = 1f / (fps > 0 ? fps : (float)client.Welcome.Fps);
                Session = session;
            }
            catch (Exception e)
            {
                if (Client == client) Debug.LogError("worldsim: " + e.Message, this);
            }
        }

        /// <summary>Says bye and closes the connection (at most the client's CloseTimeout). Safe to call
        /// twice.</summary>
        public void Shutdown()
        {
            WorldsimClient client = Client;
            Client = null;
            Session = -1;
            playout.Clear();
            shownAny = false;
            if (client != null) client.Dispose();
        }

        /// <summary>Switches the prompt at the next chunk ("soft", "recache" or "cut").</summary>
        public void SwitchPrompt(string text, string mode = "recache")
        {
            if (IsStreaming) Client.SwitchPrompt(Session, text, mode);
        }

        public async Task SetPausedAsync(bool paused)
        {
            if (!IsStreaming) return;
            if (paused) await Client.PauseAsync(Session);
            else await Client.ResumeAsync(Session);
        }

        /// <summary>Restarts the stream; frames already waiting for playout are dropped.</summary>
        public async Task ResetAsync()
        {
            if (!IsStreaming) return;
            await Client.ResetAsync(Session);
            playout.Clear();
            shownAny = false;
        }

        void Update()
        {
            WorldsimClient client = Client;
            if (client == null) return;
            Dictionary<string, object> message;
            while (client.TryDequeueMessage(out message))
            {
                if (Fields.OptString(message, "type") == "error")
                    Debug.LogWarning("worldsim: " + new ServerException(message).Message, this);
                if (MessageReceived != null) MessageReceived(message);
            }
            if (client.Fault != null && !faultLogged && !(client.Fault is ObjectDisposedException))
            {
                faultLogged = true;
                Debug.LogError("worldsim: " + client.Fault.Message, this);
            }

            double now = Time.unscaledTimeAsDouble;
            Frame frame;
            while (client.TryDequeueFrame(out frame))
                if (frame.Session == Session) playout.Enqueue(new Pending { Frame = frame, Arrived = now });
            Frame show = null;
            while (playout.Count > 0)
            {
                Pending next = playout.Peek();
                double due = shownAny ? Math.Max(next.Arrived, lastShown + FramePeriod) : next.Arrived;
                if (now < due) break;
                playout.Dequeue();
                lastShown = due;
                shownAny = true;
                show = next.Frame;  // several due in one Update: only the newest is decoded
            }
            if (show != null) Upload(show);
        }

        void Upload(Frame frame)
        {
            if (frame.Format == "jpeg")
            {
                if (Texture == null) Texture = new Texture2D(2, 2, TextureFormat.RGB24, false);
                if (!Texture.LoadImage(frame.Payload))  // resizes the texture to the JPEG's size
                {
                    Debug.LogWarning("worldsim: frame " + frame.Index + " is not a decodable JPEG", this);
                    return;
                }
            }
            else
            {
                if (Texture == null || Texture.width != frame.Width || Texture.height != frame.Height ||
                    Texture.format != TextureFormat.RGB24)
                {
                    if (Texture != null) Destroy(Texture);
                    Texture = new Texture2D(frame.Width, frame.Height, TextureFormat.RGB24, false);
                }
                Texture.LoadRawTextureData(frame.Payload);
                Texture.Apply(false);
            }
            Texture.wrapMode = TextureWrapMode.Clamp;
            LastFrame = frame;
            if (FrameShown != null) FrameShown(frame);
        }
    }
}
