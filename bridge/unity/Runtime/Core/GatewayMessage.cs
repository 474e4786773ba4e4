// Gateway -> client WebSocket framing (bridge/PROTOCOL.md §14): u32 little-endian N | N bytes msgpack header |
// payload. Control messages have an empty payload; frames carry the JPEG or raw RGB bytes.
using System;
using System.Collections.Generic;

namespace Worldsim
{
    /// <summary>One message from the gateway: its msgpack header map and its payload (empty for control
    /// messages).</summary>
    public sealed class GatewayMessage
    {
        public readonly Dictionary<string, object> Header;
        public readonly byte[] Payload;

        public GatewayMessage(Dictionary<string, object> header, byte[] payload)
        {
            Header = header;
            Payload = payload;
        }

        /// <summary>Splits data[0 .. count) into header and payload (copied); MsgPackException when
        /// malformed.</summary>
        public static GatewayMessage Split(byte[] data, int count)
        {
            if (data == null) throw new ArgumentNullException("data");
            if (count < 0 || count > data.Length) throw new ArgumentOutOfRangeException("count");
            if (count < 4)
                throw new MsgPackException("gateway message: " + count + " byte(s), a message has at least 4 " +
                                           "(the u32 header length)");
            uint n = (uint)(data[0] | data[1] << 8 | data[2] << 16 | data[3] << 24);
            if (n > (uint)(count - 4))
                throw new MsgPackException("gateway message: header length " + n + " exceeds the " + (count - 4) +
                                           " byte(s) that follow it");
            Dictionary<string, object> header;
            try
            {
                header = MsgPack.DecodeMap(data, 4, (int)n);
            }
            catch (MsgPackException e)
            {
                throw new MsgPackException("gateway message header: " + e.Message);
            }
            var payload = new byte[count - 4 - (int)n];
            Buffer.BlockCopy(data, 4 + (int)n, payload, 0, payload.Length);
            return new GatewayMessage(header, payload);
        }

        public static GatewayMessage Split(byte[] data)
        {
            if (data == null) throw new ArgumentNullException("data");
            return Split(data, data.Length);
        }
    }
}
