// Records a game for training: its own rendered frames and the controls the player used, in the engine-capture layout
// that `worldsim dataset import CAPTURE OUT` reads (docs/DATASET.md, "Engine captures"):
//
//     CAPTURE/capture.json                  format, version, control schema, fps, engine
//     CAPTURE/episode_000000/frames.jsonl   one JSON line per frame: image, keys, axes, embedding, prompt, index
//     CAPTURE/episode_000000/000000.png     the frames, as the engine encoded them (PNG or JPEG)
//
// No engine references: the engine renders and encodes each frame, this class checks and files it.
using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Text;

namespace Worldsim
{
    /// <summary>Writes one engine capture. Call Begin once, StartEpisode per run of the game (a level, a life, a
    /// restart), AddFrame once per capture step (1/fps of game time: a fixed step, not the render rate), SkipFrame
    /// for a step whose frame is lost, EndEpisode, Dispose. Every image is written before the line naming it and
    /// each line is flushed, so a game that crashes loses at most the frame it was writing. Not thread-safe: call it
    /// from one thread at a time.</summary>
    public sealed class CaptureWriter : IDisposable
    {
        /// <summary>What capture.json declares; worldsim.dataset.capture reads this format and version.</summary>
        public const string Format = "worldsim-capture";
        public const int Version = 1;
        public const string InfoFile = "capture.json";
        public const string LinesFile = "frames.jsonl";
        /// <summary>Episode folders are this prefix and six digits: the importer takes folders in name order.</summary>
        public const string EpisodePrefix = "episode_";

        /// <summary>The capture folder given to Begin (null when none), the current episode's folder (null outside
        /// an episode) and the frames written to it.</summary>
        public string CapturePath { get; private set; }
        public string EpisodePath { get; private set; }
        public int EpisodeFrames { get; private set; }

        string[] keyNames, axisNames;
        int embeddingDim;
        StreamWriter lines;      // the episode's frames.jsonl, opened with its first frame
        int step = -1;           // the episode's last capture step, written or not
        int lastWritten = -1;    // the step of the last line written (-1: none yet)
        string lastPrompt;       // the last prompt written in this episode
        int width, height;       // the episode's frame size (0 before its first frame)

        /// <summary>Starts a capture in `dir` (created if missing). keys and axes: the schema's names in order;
        /// embeddingDim: engine embedding width (0: none); framesPerLatent: the model's temporal stride; fps: capture
        /// steps per second of game time; engine: the game and engine version, kept with every episode. A folder that
        /// already holds a capture of the same schema and fps gets further episodes (its capture.json, engine
        /// included, is kept); another schema or fps is refused with an IOException.</summary>
        public void Begin(string dir, string[] keys, string[] axes, int embeddingDim, int framesPerLatent, double fps,
                          string engine)
        {
            Dispose();
            if (string.IsNullOrEmpty(dir)) throw new ArgumentException("the capture folder is empty", "dir");
            CheckNames(keys, "keys");
            CheckNames(axes, "axes");
            if (embeddingDim < 0)
                throw new ArgumentException("embeddingDim must be 0 or more, got " + embeddingDim, "embeddingDim");
            if (framesPerLatent < 1)
                throw new ArgumentException("framesPerLatent must be 1 or more, got " + framesPerLatent,
                                            "framesPerLatent");
            if (!(fps > 0) || double.IsInfinity(fps))
                throw new ArgumentException("fps must be a positive finite number, got " + Invariant(fps), "fps");

            string info = InfoJson(keys, axes, embeddingDim, framesPerLatent, fps, engine ?? "");
            Directory.CreateDirectory(dir);
            string infoPath = Path.Combine(dir, InfoFile);
            if (File.Exists(infoPath))
            {
                string theirs = File.ReadAllText(infoPath, Encoding.UTF8).Trim();
                if (!SameCapture(theirs, keys, axes, embeddingDim, framesPerLatent, fps))
                    throw new IOException(infoPath + " holds another capture (" + theirs + "); this one is " + info +
                                          ": use another folder");
            }
            else
                File.WriteAllText(infoPath, info + "\n", new UTF8Encoding(false));
            keyNames = (string[])keys.Clone();
            axisNames = (string[])axes.Clone();
            this.embeddingDim = embeddingDim;
            CapturePath = dir;
        }

        /// <summary>Begin with the schema of a daemon's welcome (the model you fine-tune); fps 0: its video
        /// fps.</summary>
        public void Begin(string dir, Welcome welcome, string engine, double fps = 0)
        {
            if (welcome == null) throw new ArgumentNullException("welcome");
            long? perLatent = Fields.OptLong(Fields.Map(welcome.Raw, "control"), "frames_per_latent");
            Begin(dir, welcome.Keys, welcome.Axes, welcome.EmbeddingDim, (int)(perLatent ?? 4),
                  fps > 0 ? fps : welcome.Fps, engine);
        }

        /// <summary>Starts a new episode (ending the current one) in the folder after the highest numbered
        /// one.</summary>
        public void StartEpisode()
        {
            if (CapturePath == null) throw new InvalidOperationException("call Begin() before StartEpisode()");
            EndEpisode();
            int number = 0;
            foreach (string folder in Directory.GetDirectories(CapturePath))
            {
                string name = Path.GetFileName(folder);
                int n;
                if (name.StartsWith(EpisodePrefix, StringComparison.Ordinal) &&
                    int.TryParse(name.Substring(EpisodePrefix.Length), NumberStyles.None, CultureInfo.InvariantCulture,
                                 out n))
                    number = Math.Max(number, n + 1);
            }
            string path = Path.Combine(CapturePath,
                                       EpisodePrefix + number.ToString("D6", CultureInfo.InvariantCulture));
            Directory.CreateDirectory(path);
            EpisodePath = path;
            EpisodeFrames = 0;
            step = lastWritten = -1;
            lastPrompt = null;
            width = height = 0;
        }

        /// <summary>Writes the frame of the next capture step. encodedImage: the game's view at this step, a PNG or
        /// JPEG file's bytes (extension "png" or "jpg"; one size per episode). keys (one per schema key: 0/1 or the
        /// held fraction), axes (one per schema axis, about -1..1 per frame) and embedding (embeddingDim values; null
        /// when the schema has none): the control row that led into this frame; keys and axes null: none did. The
        /// first frame of an episode has none (nothing came before it), so its row is checked but not written.
        /// prompt: the scene's description from this frame on, written when it differs from the last one (null or
        /// "": unchanged). Throws ArgumentException naming the problem; a refused call still counts as a capture step,
        /// so the next frame's line carries its index and the gap shows in the dataset.</summary>
        public void AddFrame(byte[] encodedImage, string extension, float[] keys, float[] axes,
                             float[] embedding = null, string prompt = null)
        {
            if (EpisodePath == null) throw new InvalidOperationException("call StartEpisode() before AddFrame()");
            step++;
            int w, h;
            ImageSize(encodedImage, extension, out w, out h);
            if (width != 0 && (w != width || h != height))
                throw new ArgumentException(string.Format(CultureInfo.InvariantCulture,
                    "frame {0} is {1}x{2}, the episode's frames are {3}x{4} (one size per episode)", step, w, h, width,
                    height));

            string image = step.ToString("D6", CultureInfo.InvariantCulture) + "." + extension;
            var line = new StringBuilder("{\"image\": ");
            Json.Quote(line, image);
            if (step != lastWritten + 1)
                line.Append(", \"index\": ").Append(step.ToString(CultureInfo.InvariantCulture));  // steps were skipped
            bool control = keys != null || axes != null || (embedding != null && embedding.Length > 0);
            if (control)
            {
                Row(keys, "keys", keyNames.Length);
                Row(axes, "axes", axisNames.Length);
                Row(embedding ?? new float[0], "embedding", embeddingDim);
                if (lastWritten >= 0)  // the episode's first frame has no control
                {
                    Numbers(line, "keys", keys);
                    Numbers(line, "axes", axes);
                    if (embeddingDim > 0) Numbers(line, "embedding", embedding);
                }
            }
            bool newPrompt = !string.IsNullOrEmpty(prompt) && prompt != lastPrompt;
            if (newPrompt)
            {
                line.Append(", \"prompt\": ");
                Json.Quote(line, prompt);
            }
            line.Append("}\n");

            File.WriteAllBytes(Path.Combine(EpisodePath, image), encodedImage);
            if (lines == null)
                lines = new StreamWriter(new FileStream(Path.Combine(EpisodePath, LinesFile), FileMode.Create,
                                                        FileAccess.Write, FileShare.Read), new UTF8Encoding(false));
            lines.Write(line.ToString());
            lines.Flush();
            lastWritten = step;
            if (newPrompt) lastPrompt = prompt;
            width = w;
            height = h;
            EpisodeFrames++;
        }

        /// <summary>Counts a capture step whose frame is not recorded (e.g. it was not read back in time): the next
        /// frame's line carries its index, so the gap shows in the dataset.</summary>
        public void SkipFrame()
        {
            if (EpisodePath == null) throw new InvalidOperationException("call StartEpisode() before SkipFrame()");
            step++;
        }

        /// <summary>Ends the current episode; one without frames leaves no folder behind.</summary>
        public void EndEpisode()
        {
            if (lines != null)
            {
                lines.Dispose();
                lines = null;
            }
            else if (EpisodePath != null)
            {
                try
                {
                    Directory.Delete(EpisodePath, false);  // nothing was captured; kept if anything is in it
                }
                catch (IOException)
                {
                }
            }
            EpisodePath = null;
        }

        /// <summary>Ends the episode and the capture; Begin starts another.</summary>
        public void Dispose()
        {
            EndEpisode();
            CapturePath = null;
        }

        // ---- checks -------------------------------------------------------------------------------------------------

        static void CheckNames(string[] names, string part)
        {
            if (names == null) throw new ArgumentNullException(part, "the control schema's " + part + " are missing");
            for (int i = 0; i < names.Length; i++)
                if (string.IsNullOrEmpty(names[i]))
                    throw new ArgumentException("the control schema's " + part + "[" + i + "] is empty", part);
        }

        void Row(float[] values, string part, int schemaWidth)
        {
            if (values == null)
                throw new ArgumentException(string.Format(CultureInfo.InvariantCulture,
                    "frame {0}: {1} is null but other parts of the row are given (keys and axes both null: no " +
                    "control)", step, part), part);
            if (values.Length != schemaWidth)
                throw new ArgumentException(string.Format(CultureInfo.InvariantCulture,
                    "frame {0}: {1} has {2} values, the control schema has {3}", step, part, values.Length,
                    schemaWidth), part);
            for (int i = 0; i < values.Length; i++)
                if (float.IsNaN(values[i]) || float.IsInfinity(values[i]))
                    throw new ArgumentException(string.Format(CultureInfo.InvariantCulture,
                        "frame {0}: {1}[{2}] is {3}: every value must be a finite number", step, part, i,
                        Invariant(values[i])), part);
        }

        /// <summary>The image's size from its header; the extension must name what the bytes are.</summary>
        void ImageSize(byte[] b, string extension, out int w, out int h)
        {
            w = h = 0;
            string problem = b == null || b.Length == 0 ? "no image bytes"
                : extension == "png" ? PngSize(b, out w, out h)
                : extension == "jpg" ? JpegSize(b, out w, out h)
                : "extension must be \"png\" or \"jpg\", got " + (extension == null ? "null" : "\"" + extension + "\"");
            if (problem != null)
                throw new ArgumentException(string.Format(CultureInfo.InvariantCulture, "frame {0}: {1}", step,
                                                          problem), "encodedImage");
        }

        static readonly byte[] PngSignature = { 0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a };

        static string PngSize(byte[] b, out int w, out int h)
        {
            w = h = 0;
            if (b.Length < 24) return "the bytes are not a PNG (too short)";
            for (int i = 0; i < PngSignature.Length; i++)
                if (b[i] != PngSignature[i]) return "the bytes are not a PNG (no PNG signature)";
            if (b[12] != 'I' || b[13] != 'H' || b[14] != 'D' || b[15] != 'R')
                return "the bytes are not a PNG (no IHDR chunk first)";
            w = BigEndian(b, 16);
            h = BigEndian(b, 20);
            return w > 0 && h > 0 ? null : "the PNG is " + w + "x" + h;
        }

        static string JpegSize(byte[] b, out int w, out int h)
        {
            w = h = 0;
            if (b.Length < 4 || b[0] != 0xff || b[1] != 0xd8) return "the bytes are not a JPEG (no SOI marker)";
            int pos = 2;
            while (pos + 4 <= b.Length)
            {
                if (b[pos] != 0xff) return "the bytes are not a JPEG (no marker at byte " + pos + ")";
                int marker = b[pos + 1];
                if (marker == 0xff) { pos++; continue; }  // fill byte
                if (marker == 0x01 || (marker >= 0xd0 && marker <= 0xd7)) { pos += 2; continue; }  // no length
                bool frame = marker >= 0xc0 && marker <= 0xcf && marker != 0xc4 && marker != 0xc8 && marker != 0xcc;
                if (frame)
                {
                    if (pos + 9 > b.Length) return "the JPEG's frame header is cut off";
                    h = b[pos + 5] << 8 | b[pos + 6];
                    w = b[pos + 7] << 8 | b[pos + 8];
                    return w > 0 && h > 0 ? null : "the JPEG is " + w + "x" + h;
                }
                if (marker == 0xda || marker == 0xd9) break;  // scan data or the end before any frame header
                pos += 2 + (b[pos + 2] << 8 | b[pos + 3]);
            }
            return "the bytes are not a JPEG (no frame header)";
        }

        static int BigEndian(byte[] b, int at)
        {
            return b[at] << 24 | b[at + 1] << 16 | b[at + 2] << 8 | b[at + 3];
        }

        // ---- JSON, written by hand: invariant culture, ASCII only (readers need not guess the encoding) -------------

        static string InfoJson(string[] keys, string[] axes, int embeddingDim, int framesPerLatent, double fps,
                               string engine)
        {
            var sb = new StringBuilder("{\"format\": ");
            Json.Quote(sb, Format);
            sb.Append(", \"version\": ").Append(Version.ToString(CultureInfo.InvariantCulture));
            sb.Append(", \"control\": {\"keys\": ");
            Names(sb, keys);
            sb.Append(", \"axes\": ");
            Names(sb, axes);
            sb.Append(", \"embedding_dim\": ").Append(embeddingDim.ToString(CultureInfo.InvariantCulture));
            sb.Append(", \"frames_per_latent\": ").Append(framesPerLatent.ToString(CultureInfo.InvariantCulture));
            sb.Append("}, \"fps\": ").Append(Invariant(fps)).Append(", \"engine\": ");
            Json.Quote(sb, engine);
            return sb.Append('}').ToString();
        }

        static void Names(StringBuilder sb, string[] names)
        {
            sb.Append('[');
            for (int i = 0; i < names.Length; i++)
            {
                if (i > 0) sb.Append(", ");
                Json.Quote(sb, names[i]);
            }
            sb.Append(']');
        }

        static void Numbers(StringBuilder sb, string field, float[] values)
        {
            sb.Append(", \"").Append(field).Append("\": [");
            for (int i = 0; i < values.Length; i++)
            {
                if (i > 0) sb.Append(", ");
                sb.Append(Invariant(values[i]));
            }
            sb.Append(']');
        }

        /// <summary>The shortest text that reads back as the same number ("R"), e.g. 0.1, 1E-07.</summary>
        static string Invariant(float v)
        {
            return v.ToString("R", CultureInfo.InvariantCulture);
        }

        static string Invariant(double v)
        {
            return v.ToString("R", CultureInfo.InvariantCulture);
        }

        /// <summary>Whether an existing capture.json declares this format, schema and fps (the importer's defaults
        /// for fields it leaves out).</summary>
        static bool SameCapture(string text, string[] keys, string[] axes, int embeddingDim, int framesPerLatent,
                                double fps)
        {
            Dictionary<string, object> info, control;
            try
            {
                info = Json.Parse(text) as Dictionary<string, object>;
            }
            catch (FormatException)
            {
                return false;
            }
            object v;
            if (info == null || !info.TryGetValue("control", out v)) return false;
            control = v as Dictionary<string, object>;
            if (control == null) return false;
            return Equals(Get(info, "format"), Format) && SameNumber(Get(info, "version"), Version) &&
                   SameNames(Get(control, "keys"), keys) && SameNames(Get(control, "axes"), axes) &&
                   SameNumber(Get(control, "embedding_dim") ?? 0L, embeddingDim) &&
                   SameNumber(Get(control, "frames_per_latent") ?? 4L, framesPerLatent) &&
                   SameNumber(Get(info, "fps"), fps);
        }

        static object Get(Dictionary<string, object> map, string key)
        {
            object v;
            return map.TryGetValue(key, out v) ? v : null;
        }

        /// <summary>Whether a parsed JSON number (long or double, as written) equals the number, as Python's 1 ==
        /// 1.0.</summary>
        static bool SameNumber(object found, double number)
        {
            return found is long ? (long)found == number : found is double && (double)found == number;
        }

        static bool SameNames(object found, string[] names)
        {
            var list = found as List<object>;
            if (list == null || list.Count != names.Length) return false;
            for (int i = 0; i < names.Length; i++)
                if (!Equals(list[i], names[i])) return false;
            return true;
        }
    }
}
