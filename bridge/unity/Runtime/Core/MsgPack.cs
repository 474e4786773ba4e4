// msgpack for protocol v1 (bridge/PROTOCOL.md §1, §11): nil, bool, integers, floats, str, bin, arrays and maps with
// string keys; no ext types. Encodes as msgpack-python does (smallest integer form, floats as float64), so messages
// match bridge/golden/messages.json byte for byte. Plain C# 7.2, no reflection: safe under IL2CPP.
using System;
using System.Collections;
using System.Collections.Generic;
using System.Text;

namespace Worldsim
{
    /// <summary>Bytes that are not protocol-v1 msgpack, or a value that cannot be encoded.</summary>
    public sealed class MsgPackException : Exception
    {
        public MsgPackException(string message) : base(message) { }
    }

    /// <summary>
    /// Values: null, bool, long (every decoded integer; ulong above long.MaxValue), double (every decoded float),
    /// string, byte[] (bin), List&lt;object&gt; (array) and Dictionary&lt;string, object&gt; (map, in wire order).
    /// The encoder also takes the other integer and float types, any IList as an array and any IDictionary or
    /// sequence of KeyValuePair&lt;string, object&gt; with string keys as a map.
    /// </summary>
    public static class MsgPack
    {
        /// <summary>Deepest nesting accepted when decoding (msgpack-python's limit too).</summary>
        public const int MaxDepth = 1024;

        static readonly UTF8Encoding Utf8 = new UTF8Encoding(false, true);

        public static byte[] Encode(object value)
        {
            var w = new Writer();
            w.Write(value, 0);
            return w.ToArray();
        }

        /// <summary>Decodes exactly one value filling the whole buffer.</summary>
        public static object Decode(byte[] data)
        {
            if (data == null) throw new ArgumentNullException("data");
            return Decode(data, 0, data.Length);
        }

        /// <summary>Decodes exactly one value filling data[offset .. offset+count).</summary>
        public static object Decode(byte[] data, int offset, int count)
        {
            if (data == null) throw new ArgumentNullException("data");
            if (offset < 0 || count < 0 || offset > data.Length - count)
                throw new ArgumentOutOfRangeException("count", "offset and count lie outside the buffer");
            var r = new Reader(data, offset, offset + count);
            if (count == 0) throw new MsgPackException("msgpack: empty input, expected one value");
            object value = r.Read(0);
            if (r.Pos != r.End)
                throw new MsgPackException(string.Format(
                    "msgpack: {0} trailing byte(s) after the value (it ends at byte {1} of {2})",
                    r.End - r.Pos, r.Pos - offset, count));
            return value;
        }

        /// <summary>Decodes one value that must be a map (every protocol message is one).</summary>
        public static Dictionary<string, object> DecodeMap(byte[] data, int offset, int count)
        {
            object value = Decode(data, offset, count);
            var map = value as Dictionary<string, object>;
            if (map == null) throw new MsgPackException("msgpack: expected a map, got " + Kind(value));
            return map;
        }

        /// <summary>A decoded value's msgpack type, for error messages.</summary>
        public static string Kind(object value)
        {
            if (value == null) return "nil";
            if (value is bool) return "a bool";
            if (value is long || value is ulong) return "an integer";
            if (value is double) return "a float";
            if (value is string) return "a string";
            if (value is byte[]) return "bin data";
            if (value is List<object>) return "an array";
            if (value is Dictionary<string, object>) return "a map";
            return "a " + value.GetType().Name;
        }

        sealed class Writer
        {
            byte[] buf = new byte[256];
            int len;

            public byte[] ToArray()
            {
                var out_ = new byte[len];
                Buffer.BlockCopy(buf, 0, out_, 0, len);
                return out_;
            }

            void Room(int n)
            {
                if (len + n <= buf.Length) return;
                int size = buf.Length;
                while (size < len + n) size *= 2;
                System.Array.Resize(ref buf, size);
            }

            void Byte(int b) { Room(1); buf[len++] = (byte)b; }

            void BigEndian(ulong v, int bytes)
            {
                Room(bytes);
                for (int i = bytes - 1; i >= 0; i--) buf[len++] = (byte)(v >> (8 * i));
            }

            void Raw(byte[] b)
            {
                Room(b.Length);
                Buffer.BlockCopy(b, 0, buf, len, b.Length);
                len += b.Length;
            }

            public void Write(object v, int depth)
            {
                if (depth > MaxDepth) throw new MsgPackException("msgpack: value nested deeper than " + MaxDepth);
                if (v == null) { Byte(0xc0); return; }
                if (v is bool) { Byte((bool)v ? 0xc3 : 0xc2); return; }
                if (v is string) { Str((string)v); return; }
                if (v is byte[]) { Bin((byte[])v); return; }
                if (v is long) { Int((long)v); return; }
                if (v is int) { Int((int)v); return; }
                if (v is short) { Int((short)v); return; }
                if (v is sbyte) { Int((sbyte)v); return; }
                if (v is byte) { Int((byte)v); return; }
                if (v is ushort) { Int((ushort)v); return; }
                if (v is uint) { Int((uint)v); return; }
                if (v is ulong) { UInt((ulong)v); return; }
                if (v is double) { Float((double)v); return; }
                if (v is float) { Float((float)v); return; }
                if (v is IDictionary) { Map((IDictionary)v, depth); return; }
                var pairs = v as IEnumerable<KeyValuePair<string, object>>;
                if (pairs != null) { Map(pairs, depth); return; }
                if (v is IList) { Array((IList)v, depth); return; }
                throw new MsgPackException("msgpack: cannot encode a " + v.GetType().FullName + " (protocol v1 " +
                                           "values are null, bool, integers, floats, strings, byte[], lists and " +
                                           "maps with string keys)");
            }

            void Int(long v)
            {
                if (v >= 0) { UInt((ulong)v); return; }
                if (v >= -32) Byte((int)(v & 0xff));
                else if (v >= sbyte.MinValue) { Byte(0xd0); BigEndian((ulong)v, 1); }
                else if (v >= short.MinValue) { Byte(0xd1); BigEndian((ulong)v, 2); }
                else if (v >= int.MinValue) { Byte(0xd2); BigEndian((ulong)v, 4); }
                else { Byte(0xd3); BigEndian((ulong)v, 8); }
            }

            void UInt(ulong v)
            {
                if (v < 0x80) Byte((int)v);
                else if (v <= byte.MaxValue) { Byte(0xcc); BigEndian(v, 1); }
                else if (v <= ushort.MaxValue) { Byte(0xcd); BigEndian(v, 2); }
                else if (v <= uint.MaxValue) { Byte(0xce); BigEndian(v, 4); }
                else { Byte(0xcf); BigEndian(v, 8); }
            }

            void Float(double v)
            {
                Byte(0xcb);
                BigEndian((ulong)BitConverter.DoubleToInt64Bits(v), 8);
            }

            void Str(string s)
            {
                byte[] b = Utf8.GetBytes(s);
                if (b.Length < 32) Byte(0xa0 | b.Length);
                else if (b.Length <= byte.MaxValue) { Byte(0xd9); BigEndian((ulong)b.Length, 1); }
                else if (b.Length <= ushort.MaxValue) { Byte(0xda); BigEndian((ulong)b.Length, 2); }
                else { Byte(0xdb); BigEndian((ulong)b.Length, 4); }
                Raw(b);
            }

            void Bin(byte[] b)
            {
                if (b.Length <= byte.MaxValue) { Byte(0xc4); BigEndian((ulong)b.Length, 1); }
                else if (b.Length <= ushort.MaxValue) { Byte(0xc5); BigEndian((ulong)b.Length, 2); }
                else { Byte(0xc6); BigEndian((ulong)b.Length, 4); }
                Raw(b);
            }

            void Array(IList items, int depth)
            {
                Header(items.Count, 0x90, 0xdc, 0xdd);
                foreach (object item in items) Write(item, depth + 1);
            }

            void Map(IDictionary map, int depth)
            {
                Header(map.Count, 0x80, 0xde, 0xdf);
                foreach (DictionaryEntry e in map)
                {
                    var key = e.Key as string;
                    if (key == null)
                        throw new MsgPackException("msgpack: map key " + e.Key + " is a " + e.Key.GetType().Name +
                                                   ", protocol v1 maps have string keys");
                    Str(key);
                    Write(e.Value, depth + 1);
                }
            }

            void Map(IEnumerable<KeyValuePair<string, object>> pairs, int depth)
            {
                var list = new List<KeyValuePair<string, object>>(pairs);
                Header(list.Count, 0x80, 0xde, 0xdf);
                foreach (var e in list)
                {
                    if (e.Key == null) throw new MsgPackException("msgpack: a map key is null");
                    Str(e.Key);
                    Write(e.Value, depth + 1);
                }
            }

            void Header(int count, int fix, int of16, int of32)
            {
                if (count < 16) Byte(fix | count);
                else if (count <= ushort.MaxValue) { Byte(of16); BigEndian((ulong)count, 2); }
                else { Byte(of32); BigEndian((ulong)count, 4); }
            }
        }

        sealed class Reader
        {
            readonly byte[] data;
            public int Pos;
            public readonly int End;
            readonly int start;

            public Reader(byte[] data, int start, int end)
            {
                this.data = data;
                this.start = Pos = start;
                End = end;
            }

            MsgPackException Truncated(string what, long need)
            {
                return new MsgPackException(string.Format(
                    "msgpack: truncated input: {0} at byte {1} needs {2} more byte(s), {3} left",
                    what, Pos - start, need, End - Pos));
            }

            void Need(string what, long n)
            {
                if (n > End - Pos) throw Truncated(what, n);
            }

            ulong BigEndian(string what, int bytes)
            {
                Need(what, bytes);
                ulong v = 0;
                for (int i = 0; i < bytes; i++) v = (v << 8) | data[Pos++];
                return v;
            }

            int Length(string what, int bytes)
            {
                ulong n = BigEndian(what + " length", bytes);
                if (n > int.MaxValue) throw Truncated(what, (long)n);
                return (int)n;
            }

            public object Read(int depth)
            {
                if (depth > MaxDepth)
                    throw new MsgPackException("msgpack: nested deeper than " + MaxDepth + " at byte " + (Pos - start));
                Need("a value", 1);
                int at = Pos;
                int b = data[Pos++];
                if (b <= 0x7f) return (long)b;
                if (b >= 0xe0) return (long)(sbyte)b;
                if (b >= 0xa0 && b <= 0xbf) return Str(b & 0x1f);
                if (b >= 0x90 && b <= 0x9f) return Array(b & 0x0f, depth);
                if (b >= 0x80 && b <= 0x8f) return Map(b & 0x0f, depth);
                switch (b)
                {
                    case 0xc0: return null;
                    case 0xc2: return false;
                    case 0xc3: return true;
                    case 0xc4: return Bin(Length("bin8", 1));
                    case 0xc5: return Bin(Length("bin16", 2));
                    case 0xc6: return Bin(Length("bin32", 4));
                    case 0xca:
                    {
                        var bits = (int)BigEndian("float32", 4);
                        return (double)BitConverter.ToSingle(BitConverter.GetBytes(bits), 0);
                    }
                    case 0xcb: return BitConverter.Int64BitsToDouble((long)BigEndian("float64", 8));
                    case 0xcc: return (long)BigEndian("uint8", 1);
                    case 0xcd: return (long)BigEndian("uint16", 2);
                    case 0xce: return (long)BigEndian("uint32", 4);
                    case 0xcf:
                    {
                        ulong v = BigEndian("uint64", 8);
                        return v <= long.MaxValue ? (object)(long)v : v;
                    }
                    case 0xd0: return (long)(sbyte)BigEndian("int8", 1);
                    case 0xd1: return (long)(short)BigEndian("int16", 2);
                    case 0xd2: return (long)(int)BigEndian("int32", 4);
                    case 0xd3: return (long)BigEndian("int64", 8);
                    case 0xd9: return Str(Length("str8", 1));
                    case 0xda: return Str(Length("str16", 2));
                    case 0xdb: return Str(Length("str32", 4));
                    case 0xdc: return Array(Length("array16", 2), depth);
                    case 0xdd: return Array(Length("array32", 4), depth);
                    case 0xde: return Map(Length("map16", 2), depth);
                    case 0xdf: return Map(Length("map32", 4), depth);
                }
                if (b == 0xc1) throw new MsgPackException("msgpack: byte 0xc1 (never used) at byte " + (at - start));
                throw new MsgPackException(string.Format(
                    "msgpack: ext type 0x{0:x2} at byte {1} (protocol v1 has no ext types)", b, at - start));
            }

            string Str(int n)
            {
                Need("a string of " + n + " bytes", n);
                try
                {
                    string s = Utf8.GetString(data, Pos, n);
                    Pos += n;
                    return s;
                }
                catch (ArgumentException)
                {
                    throw new MsgPackException("msgpack: the string at byte " + (Pos - start) + " is not valid UTF-8");
                }
            }

            byte[] Bin(int n)
            {
                Need("bin data of " + n + " bytes", n);
                var b = new byte[n];
                Buffer.BlockCopy(data, Pos, b, 0, n);
                Pos += n;
                return b;
            }

            List<object> Array(int n, int depth)
            {
                // Every element takes at least one byte: a bogus count fails here, before allocating.
                Need("an array of " + n + " items", n);
                var items = new List<object>(n);
                for (int i = 0; i < n; i++) items.Add(Read(depth + 1));
                return items;
            }

            Dictionary<string, object> Map(int n, int depth)
            {
                Need("a map of " + n + " entries", 2L * n);
                var map = new Dictionary<string, object>(n);
                for (int i = 0; i < n; i++)
                {
                    int at = Pos;
                    object k = Read(depth + 1);
                    var key = k as string;
                    if (key == null)
                        throw new MsgPackException("msgpack: the map key at byte " + (at - start) + " is " + Kind(k) +
                                                   ", not a string (protocol v1 maps have string keys)");
                    if (map.ContainsKey(key))
                        throw new MsgPackException("msgpack: duplicate map key \"" + key + "\" at byte " +
                                                   (at - start));
                    map.Add(key, Read(depth + 1));
                }
                return map;
            }
        }
    }
}
