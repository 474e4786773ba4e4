// Protocol v1 types for engine code: the welcome's schema and limits, frames, and the errors the client raises
// (bridge/PROTOCOL.md §4, §7, §10).
using System;
using System.Collections.Generic;

namespace Worldsim
{
    /// <summary>An `error` from the daemon. Code is one of PROTOCOL.md §10's codes; Re is the refused message's
    /// seq.</summary>
    public sealed class ServerException : Exception
    {
        public readonly string Code;
        public readonly string ServerMessage;
        public readonly long? Re;
        public readonly long? Session;
        public readonly bool Fatal;

        public ServerException(Dictionary<string, object> error)
            : base(Describe(error))
        {
            Code = Fields.OptString(error, "code") ?? "";
            ServerMessage = Fields.OptString(error, "message") ?? "";
            Re = Fields.OptLong(error, "re");
            Session = Fields.OptLong(error, "session");
            Fatal = Fields.OptBool(error, "fatal");
        }

        static string Describe(Dictionary<string, object> e)
        {
            long? session = Fields.OptLong(e, "session");
            return Fields.OptString(e, "code") + ": " + Fields.OptString(e, "message") +
                   (session.HasValue ? " (session " + session.Value + ")" : "");
        }
    }

    /// <summary>The connection is gone: closed, the daemon shut down or went silent, or the handshake failed.</summary>
    public sealed class ConnectionLostException : Exception
    {
        public ConnectionLostException(string message, Exception inner = null) : base(message, inner) { }
    }

    /// <summary>Typed reads of decoded message fields, with errors that name the field.</summary>
    public static class Fields
    {
        static object Get(Dictionary<string, object> map, string key)
        {
            object v;
            if (!map.TryGetValue(key, out v) || v == null)
                throw new MsgPackException("message field \"" + key + "\" is missing");
            return v;
        }

        static MsgPackException Wrong(string key, string expected, object v)
        {
            return new MsgPackException("message field \"" + key + "\": expected " + expected + ", got " +
                                        MsgPack.Kind(v));
        }

        public static long Long(Dictionary<string, object> map, string key)
        {
            object v = Get(map, key);
            if (v is long) return (long)v;
            throw Wrong(key, "an integer", v);
        }

        public static double Double(Dictionary<string, object> map, string key)
        {
            object v = Get(map, key);
            if (v is double) return (double)v;
            if (v is long) return (long)v;
            throw Wrong(key, "a number", v);
        }

        public static string String(Dictionary<string, object> map, string key)
        {
            object v = Get(map, key);
            var s = v as string;
            if (s == null) throw Wrong(key, "a string", v);
            return s;
        }

        public static Dictionary<string, object> Map(Dictionary<string, object> map, string key)
        {
            object v = Get(map, key);
            var m = v as Dictionary<string, object>;
            if (m == null) throw Wrong(key, "a map", v);
            return m;
        }

        public static List<object> List(Dictionary<string, object> map, string key)
        {
            object v = Get(map, key);
            var l = v as List<object>;
            if (l == null) throw Wrong(key, "an array", v);
            return l;
        }

        public static string[] Strings(Dictionary<string, object> map, string key)
        {
            List<object> items = List(map, key);
            var out_ = new string[items.Count];
            for (int i = 0; i < out_.Length; i++)
            {
                out_[i] = items[i] as string;
                if (out_[i] == null) throw Wrong(key + "[" + i + "]", "a string", items[i]);
            }
            return out_;
        }

        public static long? OptLong(Dictionary<string, object> map, string key)
        {
            object v;
            return map.TryGetValue(key, out v) && v is long ? (long)v : (long?)null;
        }

        public static string OptString(Dictionary<string, object> map, string key)
        {
            object v;
            return map.TryGetValue(key, out v) ? v as string : null;
        }

        public static bool OptBool(Dictionary<string, object> map, string key)
        {
            object v;
            return map.TryGetValue(key, out v) && v is bool && (bool)v;
        }
    }

    /// <summary>The daemon's `welcome`: video geometry, the control schema and the limits a client must
    /// respect.</summary>
    public sealed class Welcome
    {
        public readonly Dictionary<string, object> Raw;
        public readonly string Protocol;
        public readonly string Server;
        public readonly int Width, Height;
        public readonly double Fps;
        /// <summary>The control schema: ordered key names, ordered axis names, engine embedding width (0:
        /// none).</summary>
        public readonly string[] Keys, Axes;
        public readonly int EmbeddingDim;
        public readonly string[] Formats;
        public readonly double HeartbeatS, IdleTimeoutS;
        public readonly int MaxSamples, MaxMessageBytes, MaxPromptChars;

        public Welcome(Dictionary<string, object> msg)
        {
            Raw = msg;
            Protocol = Fields.String(msg, "protocol");
            Server = Fields.OptString(msg, "server") ?? "";
            Dictionary<string, object> video = Fields.Map(msg, "video");
            Width = (int)Fields.Long(video, "width");
            Height = (int)Fields.Long(video, "height");
            Fps = Fields.Double(video, "fps");
            Dictionary<string, object> control = Fields.Map(msg, "control");
            Keys = Fields.Strings(control, "keys");
            Axes = Fields.Strings(control, "axes");
            EmbeddingDim = (int)Fields.Long(control, "embedding_dim");
            Formats = Fields.Strings(msg, "formats");
            Dictionary<string, object> limits = Fields.Map(msg, "limits");
            HeartbeatS = Fields.Double(limits, "heartbeat_s");
            IdleTimeoutS = Fields.Double(limits, "idle_timeout_s");
            MaxSamples = (int)Fields.Long(limits, "max_samples");
            MaxMessageBytes = (int)Fields.Long(limits, "max_message_bytes");
            MaxPromptChars = (int)Fields.Long(limits, "max_prompt_chars");
        }
    }

    /// <summary>One video frame: its header (PROTOCOL.md §7) and payload (a baseline JPEG, or H*W*3 RGB bytes with
    /// the top row first).</summary>
    public sealed class Frame
    {
        public readonly Dictionary<string, object> Header;
        public readonly byte[] Payload;
        public readonly long Session, Epoch, Chunk, Index, InputSeq, PromptSeq;
        public readonly string Format;
        public readonly int Width, Height;

        public Frame(Dictionary<string, object> header, byte[] payload)
        {
            Header = header;
            Payload = payload;
            Session = Fields.Long(header, "session");
            Epoch = Fields.Long(header, "epoch");
            Chunk = Fields.Long(header, "chunk");
            Index = Fields.Long(header, "index");
            InputSeq = Fields.Long(header, "input_seq");
            PromptSeq = Fields.Long(header, "prompt_seq");
            Format = Fields.String(header, "format");
            List<object> shape = Fields.List(header, "shape");
            if (shape.Count != 3 || !(shape[0] is long) || !(shape[1] is long))
                throw new MsgPackException("frame header \"shape\" must be [H, W, 3]");
            Height = (int)(long)shape[0];
            Width = (int)(long)shape[1];
            if (Format == "rgb24" && payload.Length != Width * Height * 3)
                throw new MsgPackException(string.Format("rgb24 frame of {0}x{1} has {2} bytes, expected {3}",
                                                         Width, Height, payload.Length, Width * Height * 3));
        }

        /// <summary>With `echo_controls`: the control row that led into this frame (keys, axes, embedding), else null.
        /// </summary>
        public Dictionary<string, object> Control
        {
            get
            {
                object v;
                return Header.TryGetValue("control", out v) ? v as Dictionary<string, object> : null;
            }
        }

        /// <summary>The echoed embedding as floats (sent as float32 little-endian bin), or null.</summary>
        public float[] ControlEmbedding
        {
            get
            {
                Dictionary<string, object> c = Control;
                object v;
                var raw = c != null && c.TryGetValue("embedding", out v) ? v as byte[] : null;
                return raw == null ? null : Floats.FromLittleEndian(raw);
            }
        }
    }

    /// <summary>float32 little-endian packing, as the protocol sends embeddings in `bin`.</summary>
    public static class Floats
    {
        public static byte[] ToLittleEndian(float[][] rows, int width)
        {
            var out_ = new byte[rows.Length * width * 4];
            int at = 0;
            foreach (float[] row in rows)
                foreach (float f in row)
                {
                    byte[] b = BitConverter.GetBytes(f);
                    if (!BitConverter.IsLittleEndian) Array.Reverse(b);
                    Buffer.BlockCopy(b, 0, out_, at, 4);
                    at += 4;
                }
            return out_;
        }

        public static float[] FromLittleEndian(byte[] raw)
        {
            if (raw.Length % 4 != 0)
                throw new MsgPackException("float32 data of " + raw.Length + " bytes is not a whole number of floats");
            var out_ = new float[raw.Length / 4];
            var b = new byte[4];
            for (int i = 0; i < out_.Length; i++)
            {
                Buffer.BlockCopy(raw, 4 * i, b, 0, 4);
                if (!BitConverter.IsLittleEndian) Array.Reverse(b);
                out_[i] = BitConverter.ToSingle(b, 0);
            }
            return out_;
        }
    }
}
