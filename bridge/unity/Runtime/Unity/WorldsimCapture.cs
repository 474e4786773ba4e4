// Records the game for training (docs/DATASET.md, "Engine captures"): at a fixed step of game time it renders the
// game's camera into a texture of the capture size, reads it back without stalling the main thread
// (AsyncGPUReadback), encodes it on a worker (ImageConversion.EncodeArrayToPNG/JPG, thread-safe) and files it with the
// step's control row through a CaptureWriter.
using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.IO;
using System.Threading;
using System.Threading.Tasks;
using UnityEngine;
using UnityEngine.Experimental.Rendering;
using UnityEngine.Rendering;

namespace Worldsim.Unity
{
    [DisallowMultipleComponent]
    [AddComponentMenu("Worldsim/Worldsim Capture")]
    [DefaultExecutionOrder(10000)]  // LateUpdate after the game's scripts: a step's frame shows all of that frame
    public sealed class WorldsimCapture : MonoBehaviour
    {
        [Tooltip("The game's camera (never the worldsim stream); the main camera if empty")]
        public Camera source;
        [Tooltip("The capture folder; empty: worldsim-capture in Application.persistentDataPath")]
        public string folder = "";
        [Tooltip("Frame size: the model's, or its aspect ratio (`worldsim dataset import --size` resizes)")]
        public int width = 416, height = 240;
        [Tooltip("Capture steps per second of game time: the model's fps")]
        public float fps = 16;
        [Tooltip("Rendered frames per capture step: the game runs at fps x this frames per second of game time")]
        [Range(1, 8)] public int framesPerStep = 4;
        [Tooltip("The control schema the model learns (e.g. the daemon's welcome.control)")]
        public string[] keys = { "W", "A", "S", "D", "Space", "Shift" };
        public string[] axes = { "mouse_dx", "mouse_dy" };
        public int embeddingDim;
        public int framesPerLatent = 4;
        [Tooltip("JPEG files (smaller, lossy) instead of PNG (lossless)")]
        public bool jpeg;
        [Range(1, 100)] public int jpegQuality = 90;
        [Tooltip("The scene's description; written from the step where it changes")]
        public string prompt = "";
        [Tooltip("Steps waiting for readback or encoding; a step beyond this is skipped (a gap in the dataset)")]
        public int maxQueuedSteps = 16;

        /// <summary>Fills the control row the game used during the step that just ended (arrays sized by the schema:
        /// keys 0/1, axes about -1..1 per step, the embedding); returns false when no control led into the frame. Null:
        /// frames only, no controls.</summary>
        public delegate bool RowSource(float[] keys, float[] axes, float[] embedding);
        public RowSource Row;

        enum Kind { Frame, Skip, NewEpisode }

        sealed class Step
        {
            public Kind Kind;
            public AsyncGPUReadbackRequest Request;
            public float[] Keys, Axes, Embedding;
            public string Prompt;
        }

        CaptureWriter writer;
        Camera view;
        RenderTexture target;
        readonly Queue<Step> readbacks = new Queue<Step>();    // in step order, on the main thread
        Task writes = Task.CompletedTask;                      // the writer's calls, one after another on a worker
        int queuedWrites;
        readonly ConcurrentQueue<Exception> errors = new ConcurrentQueue<Exception>();
        readonly ConcurrentQueue<byte[]> buffers = new ConcurrentQueue<byte[]>();  // pixel buffers to reuse
        int frameInStep;
        bool warnedFull;
        float savedCaptureDeltaTime;
        int savedFrameRate, savedVSync;

        void OnEnable()
        {
            view = source != null ? source : Camera.main;
            if (!SystemInfo.supportsAsyncGPUReadback || view == null || !(fps > 0) || width < 1 || height < 1)
            {
                Debug.LogError("worldsim capture: needs AsyncGPUReadback (not on WebGL or OpenGL ES 2), a camera, " +
                               "fps > 0 and a size; not recording", this);
                enabled = false;
                return;
            }
            string dir = string.IsNullOrEmpty(folder)
                ? Path.Combine(Application.persistentDataPath, "worldsim-capture") : folder;
            writer = new CaptureWriter();
            try
            {
                writer.Begin(dir, keys, axes, embeddingDim, framesPerLatent, fps,
                             Application.productName + " " + Application.version + " (Unity " +
                             Application.unityVersion + ")");
                writer.StartEpisode();
            }
            catch (Exception e)
            {
                Debug.LogError("worldsim capture: " + e.Message, this);
                writer.Dispose();
                writer = null;
                enabled = false;
                return;
            }
            Debug.Log("worldsim capture: recording into " + dir, this);
            target = new RenderTexture(width, height, 24, RenderTextureFormat.ARGB32, RenderTextureReadWrite.sRGB);
            // Game time advances exactly 1/(fps x framesPerStep) per rendered frame, and the frame rate is held there:
            // every capture step is 1/fps of game time and has its own rendered frame. A machine too slow for that
            // rate slows the game down instead of dropping steps.
            savedCaptureDeltaTime = Time.captureDeltaTime;
            savedFrameRate = Application.targetFrameRate;
            savedVSync = QualitySettings.vSyncCount;
            Time.captureDeltaTime = 1f / (fps * framesPerStep);
            Application.targetFrameRate = Mathf.RoundToInt(fps * framesPerStep);
            QualitySettings.vSyncCount = 0;  // else the display's refresh rate sets the frame rate
            frameInStep = framesPerStep - 1;  // the episode's first frame is the next one drawn
        }

        void OnDisable()
        {
            if (writer == null) return;
            Drain(true);
            Write(w => w.Dispose());
            if (!writes.Wait(TimeSpan.FromSeconds(10)))
                Debug.LogWarning("worldsim capture: frames still being written after 10 s", this);
            LogErrors();
            writer = null;
            Time.captureDeltaTime = savedCaptureDeltaTime;
            Application.targetFrameRate = savedFrameRate;
            QualitySettings.vSyncCount = savedVSync;
            Destroy(target);
        }

        /// <summary>Ends the episode and starts the next one with the next step (a restart, the next
        /// level).</summary>
        public void NewEpisode()
        {
            if (writer == null) return;
            readbacks.Enqueue(new Step { Kind = Kind.NewEpisode });
            frameInStep = framesPerStep - 1;
        }

        void LateUpdate()
        {
            Drain(false);
            LogErrors();
            if (++frameInStep < framesPerStep) return;
            frameInStep = 0;

            var step = new Step
            {
                Kind = Kind.Frame, Keys = new float[keys.Length], Axes = new float[axes.Length],
                Embedding = new float[embeddingDim], Prompt = prompt
            };
            if (Row == null || !Row(step.Keys, step.Axes, step.Embedding))
                step.Keys = step.Axes = step.Embedding = null;
            if (readbacks.Count + Volatile.Read(ref queuedWrites) >= maxQueuedSteps)
            {
                if (!warnedFull) Debug.LogWarning("worldsim capture: encoding falls behind; skipping steps", this);
                warnedFull = true;
                readbacks.Enqueue(new Step { Kind = Kind.Skip });
                return;
            }
            // Rendered apart from the screen: the capture size, and no Screen Space - Overlay UI.
            RenderTexture screen = view.targetTexture;
            view.targetTexture = target;
            view.Render();
            view.targetTexture = screen;
            step.Request = AsyncGPUReadback.Request(target, 0, TextureFormat.RGBA32);
            readbacks.Enqueue(step);
        }

        /// <summary>Hands finished steps to the writer in step order; all of them (waiting for the GPU) when
        /// `all`.</summary>
        void Drain(bool all)
        {
            while (readbacks.Count > 0)
            {
                Step step = readbacks.Peek();
                if (step.Kind == Kind.Frame && !step.Request.done)
                {
                    if (!all) return;
                    step.Request.WaitForCompletion();
                }
                readbacks.Dequeue();
                if (step.Kind == Kind.NewEpisode) Write(w => w.StartEpisode());
                else if (step.Kind == Kind.Skip || step.Request.hasError) Write(w => w.SkipFrame());
                else Write(Encoder(step));
            }
        }

        Action<CaptureWriter> Encoder(Step step)
        {
            int w = target.width, h = target.height;
            byte[] pixels;
            if (!buffers.TryDequeue(out pixels) || pixels.Length != w * h * 4) pixels = new byte[w * h * 4];
            step.Request.GetData<byte>().CopyTo(pixels);  // rows bottom first, as Texture2D data and the encoders
            bool asJpeg = jpeg;
            int quality = jpegQuality;
            return into =>
            {
                byte[] image = asJpeg
                    ? ImageConversion.EncodeArrayToJPG(pixels, GraphicsFormat.R8G8B8A8_UNorm, (uint)w, (uint)h, 0,
                                                       quality)
                    : ImageConversion.EncodeArrayToPNG(pixels, GraphicsFormat.R8G8B8A8_UNorm, (uint)w, (uint)h);
                buffers.Enqueue(pixels);
                into.AddFrame(image, asJpeg ? "jpg" : "png", step.Keys, step.Axes, step.Embedding, step.Prompt);
            };
        }

        /// <summary>Runs a writer call after the ones queued before it, on a worker thread.</summary>
        void Write(Action<CaptureWriter> call)
        {
            CaptureWriter w = writer;
            Interlocked.Increment(ref queuedWrites);
            writes = writes.ContinueWith(_ =>
            {
                try
                {
                    call(w);
                }
                catch (Exception e)
                {
                    errors.Enqueue(e);
                }
                finally
                {
                    Interlocked.Decrement(ref queuedWrites);
                }
            }, TaskScheduler.Default);
        }

        void LogErrors()
        {
            Exception e;
            while (errors.TryDequeue(out e)) Debug.LogError("worldsim capture: " + e.Message, this);
        }
    }
}
