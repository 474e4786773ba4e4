// Just enough JSON for the engine-free core and its console test: a strict RFC 8259 reader (CaptureWriter reads its
// capture.json back with it) and ASCII-only string literals for the JSON this code writes by hand.
using System;
using System.Collections.Generic;
using System.Globalization;
using System.Text;

namespace Worldsim
{
    /// <summary>
    /// Parse gives null, bool, long (a number without fraction or exponent), double (any other number), string,
    /// List&lt;object&gt; (array) and Dictionary&lt;string, object&gt; (object, keys in text order). Anything that is
    /// not exactly one JSON value (trailing text, a bad escape or number, an unterminated string, a duplicate key, an
    /// integer outside 64 bits) is a FormatException naming the problem and its character offset.
    /// </summary>
    internal static class Json
    {
        /// <summary>Deepest nesting accepted, as MsgPack.MaxDepth.</summary>
        public const int MaxDepth = 1024;

        public static object Parse(string text)
        {
            if (text == null) throw new ArgumentNullException("text");
            var r = new Reader(text);
            object value = r.Value(0);
            r.Space();
            if (r.Pos != text.Length) throw r.Error("trailing text after the value", r.Pos);
            return value;
        }

        /// <summary>Appends s as a JSON string, everything outside printable ASCII escaped (readers need not guess the
        /// encoding).</summary>
        public static void Quote(StringBuilder sb, string s)
        {
            sb.Append('"');
            foreach (char c in s)
            {
                if (c == '"' || c == '\\') sb.Append('\\').Append(c);
                else if (c < 0x20 || c > 0x7e)
                    sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                else sb.Append(c);
            }
            sb.Append('"');
        }

        sealed class Reader
        {
            const string Escapes = "\"\\/bfnrt", Escaped = "\"\\/\b\f\n\r\t";
            readonly string s;
            public int Pos;

            public Reader(string text)
            {
                s = text;
            }

            public FormatException Error(string problem, int at)
            {
                return new FormatException("JSON: " + problem + " at character " + at);
            }

            public void Space()
            {
                while (Pos < s.Length && (s[Pos] == ' ' || s[Pos] == '\t' || s[Pos] == '\n' || s[Pos] == '\r')) Pos++;
            }

            /// <summary>The next character after white space; the end of the text is an error.</summary>
            char Next()
            {
                Space();
                if (Pos == s.Length) throw Error("unexpected end of the text", Pos);
                return s[Pos];
            }

            void Expect(char c)
            {
                if (Next() != c) throw Error("expected '" + c + "', got '" + s[Pos] + "'", Pos);
                Pos++;
            }

            public object Value(int depth)
            {
                char c = Next();
                if (depth > MaxDepth) throw Error("value nested deeper than " + MaxDepth, Pos);
                if (c == '{') return Object(depth);
                if (c == '[') return Array(depth);
                if (c == '"') return String();
                if (c == '-' || (c >= '0' && c <= '9')) return Number();
                if (Word("true")) return true;
                if (Word("false")) return false;
                if (Word("null")) return null;
                throw Error("unexpected '" + c + "', expected a value", Pos);
            }

            Dictionary<string, object> Object(int depth)
            {
                var map = new Dictionary<string, object>();
                Pos++;
                if (Next() == '}') { Pos++; return map; }
                while (true)
                {
                    if (Next() != '"') throw Error("expected a string key, got '" + s[Pos] + "'", Pos);
                    int at = Pos;
                    string key = String();
                    if (map.ContainsKey(key)) throw Error("duplicate key \"" + key + "\"", at);
                    Expect(':');
                    map.Add(key, Value(depth + 1));
                    if (Next() == '}') { Pos++; return map; }
                    Expect(',');
                }
            }

            List<object> Array(int depth)
            {
                var list = new List<object>();
                Pos++;
                if (Next() == ']') { Pos++; return list; }
                while (true)
                {
                    list.Add(Value(depth + 1));
                    if (Next() == ']') { Pos++; return list; }
                    Expect(',');
                }
            }

            string String()
            {
                int start = Pos++;
                var sb = new StringBuilder();
                while (true)
                {
                    if (Pos >= s.Length) throw Error("unterminated string", start);
                    char c = s[Pos];
                    if (c == '"') { Pos++; return sb.ToString(); }
                    if (c < 0x20) throw Error("unescaped control character in a string", Pos);
                    if (c != '\\') { sb.Append(c); Pos++; continue; }
                    if (Pos + 1 >= s.Length) throw Error("unterminated string", start);
                    char e = s[Pos + 1];
                    int simple = Escapes.IndexOf(e);
                    if (simple >= 0)
                    {
                        sb.Append(Escaped[simple]);
                        Pos += 2;
                        continue;
                    }
                    if (e != 'u') throw Error("bad escape \\" + e, Pos);
                    int code = 0;
                    for (int i = Pos + 2; i < Pos + 6; i++)
                    {
                        int digit = i < s.Length ? "0123456789abcdef".IndexOf(char.ToLowerInvariant(s[i])) : -1;
                        if (digit < 0) throw Error("bad \\u escape (four hex digits expected)", Pos);
                        code = code * 16 + digit;
                    }
                    sb.Append((char)code);
                    Pos += 6;
                }
            }

            object Number()
            {
                int start = Pos;
                if (s[Pos] == '-') Pos++;
                int first = Pos, digits = Digits();
                if (digits == 0 || (digits > 1 && s[first] == '0'))
                    throw Error(digits == 0 ? "a digit expected in a number" : "leading zero in a number", first);
                bool integer = true;
                if (Pos < s.Length && s[Pos] == '.')
                {
                    Pos++;
                    integer = false;
                    if (Digits() == 0) throw Error("a digit expected after the decimal point", Pos);
                }
                if (Pos < s.Length && (s[Pos] == 'e' || s[Pos] == 'E'))
                {
                    Pos++;
                    integer = false;
                    if (Pos < s.Length && (s[Pos] == '+' || s[Pos] == '-')) Pos++;
                    if (Digits() == 0) throw Error("a digit expected in the exponent", Pos);
                }
                string text = s.Substring(start, Pos - start);
                if (integer)
                {
                    long l;
                    if (long.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out l))
                        return l;
                    throw Error("integer " + text + " does not fit in 64 bits", start);
                }
                double d;
                if (double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out d) &&
                    !double.IsInfinity(d))
                    return d;
                throw Error("number " + text + " is out of the float64 range", start);
            }

            int Digits()
            {
                int from = Pos;
                while (Pos < s.Length && s[Pos] >= '0' && s[Pos] <= '9') Pos++;
                return Pos - from;
            }

            bool Word(string word)
            {
                if (string.CompareOrdinal(s, Pos, word, 0, word.Length) != 0) return false;
                Pos += word.Length;
                return true;
            }
        }
    }
}
