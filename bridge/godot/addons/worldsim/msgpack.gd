class_name WorldsimMsgpack
extends RefCounted
## msgpack for worldsim protocol v1 in GDScript 4, and the gateway's framing (PROTOCOL.md §14).
##
## The subset the protocol uses: nil, bool, int, float (always float64), String (str),
## PackedByteArray (bin), Array and Dictionary with String keys. Encoding picks the smallest form,
## exactly as Python's msgpack packs it, so every message has one byte string (the vectors in
## bridge/golden/messages.json). Decoding is strict: truncated input, trailing bytes, non-string
## map keys, invalid UTF-8, ext types and integers beyond GDScript's signed 64 bits are errors that
## name the problem and its byte offset. Packed int/float/string arrays encode as msgpack arrays.


## What decode() and split_message() return: the value, or a non-empty error.
class Decoded:
	var value: Variant = null
	var error := ""

	func ok() -> bool:
		return error.is_empty()


## Reads one msgpack value from a StreamPeerBuffer (big-endian), remembering the first error.
class Reader:
	## Nesting limit, for GDScript's call stack (protocol messages nest less than 8 deep).
	const MAX_DEPTH := 256
	## Bytes after the type byte of float32/64, uint8-64 and int8-64.
	const NUMBER_WIDTHS := {
		0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8
	}

	var buf := StreamPeerBuffer.new()
	var error := ""

	func _init(data: PackedByteArray) -> void:
		buf.big_endian = true
		buf.data_array = data

	func fail(problem: String, at: int) -> void:
		if error.is_empty():
			error = "msgpack: %s at byte %d" % [problem, at]

	func has(n: int) -> bool:
		if buf.get_available_bytes() < n:
			fail(
				"truncated input (%d more bytes needed)" % (n - buf.get_available_bytes()),
				buf.get_position()
			)
			return false
		return true

	func length(width: int) -> int:
		if not has(width):
			return 0
		if width == 1:
			return buf.get_u8()
		if width == 2:
			return buf.get_u16()
		return buf.get_u32()

	func read(depth: int) -> Variant:
		var at := buf.get_position()
		if depth > MAX_DEPTH:
			fail("nesting deeper than %d" % MAX_DEPTH, at)
			return null
		if not has(1):
			return null
		var b := buf.get_u8()
		var value: Variant = null
		if b < 0x80:
			value = b
		elif b >= 0xE0:
			value = b - 0x100
		elif (b & 0xF0) == 0x80:
			value = read_map(b & 0x0F, depth)
		elif (b & 0xF0) == 0x90:
			value = read_array(b & 0x0F, depth)
		elif (b & 0xE0) == 0xA0:
			value = read_str(b & 0x1F)
		else:
			value = read_tagged(b, at, depth)
		return value

	func read_tagged(b: int, at: int, depth: int) -> Variant:
		var value: Variant = null
		match b:
			0xC0:
				value = null
			0xC2:
				value = false
			0xC3:
				value = true
			0xC4, 0xC5, 0xC6:
				value = read_bytes(length(1 << (b - 0xC4)))
			0xCA, 0xCB, 0xCC, 0xCD, 0xCE, 0xCF, 0xD0, 0xD1, 0xD2, 0xD3:
				value = read_number(b, at)
			0xD9, 0xDA, 0xDB:
				value = read_str(length(1 << (b - 0xD9)))
			0xDC, 0xDD:
				value = read_array(length(2 << (b - 0xDC)), depth)
			0xDE, 0xDF:
				value = read_map(length(2 << (b - 0xDE)), depth)
			_:
				fail(
					"unsupported type byte 0x%02x (ext types are not used by the protocol)" % b, at
				)
		return value

	func read_number(b: int, at: int) -> Variant:
		if not has(NUMBER_WIDTHS[b]):
			return null
		var value: Variant = null
		match b:
			0xCA:
				value = buf.get_float()
			0xCB:
				value = buf.get_double()
			0xCC:
				value = buf.get_u8()
			0xCD:
				value = buf.get_u16()
			0xCE:
				value = buf.get_u32()
			0xCF:
				value = buf.get_u64()
				if value < 0:
					fail("uint64 beyond 2^63-1 (GDScript ints are signed 64-bit)", at)
			0xD0:
				value = buf.get_8()
			0xD1:
				value = buf.get_16()
			0xD2:
				value = buf.get_32()
			0xD3:
				value = buf.get_64()
		return value

	func read_bytes(n: int) -> PackedByteArray:
		if n == 0 or not has(n):
			return PackedByteArray()
		return buf.get_data(n)[1]

	func read_str(n: int) -> Variant:
		var at := buf.get_position()
		var raw := read_bytes(n)
		if not error.is_empty():
			return null
		var text := raw.get_string_from_utf8()
		if text.to_utf8_buffer() != raw:
			fail("string is not valid UTF-8 (or holds a NUL character)", at)
			return null
		return text

	func read_array(n: int, depth: int) -> Array:
		var out := []
		for _i in n:
			var item: Variant = read(depth + 1)
			if not error.is_empty():
				break
			out.append(item)
		return out

	func read_map(n: int, depth: int) -> Dictionary:
		var out := {}
		for _i in n:
			var at := buf.get_position()
			var key: Variant = read(depth + 1)
			if error.is_empty() and typeof(key) != TYPE_STRING:
				fail("map keys must be strings, got %s" % type_string(typeof(key)), at)
			var item: Variant = read(depth + 1) if error.is_empty() else null
			if not error.is_empty():
				break
			out[key] = item
		return out


## The msgpack bytes of value. If value holds something the protocol cannot carry (a Vector2, an
## Object, a non-string map key, ...): an engine error naming it, and an empty array (never valid
## msgpack).
static func encode(value: Variant) -> PackedByteArray:
	var out := StreamPeerBuffer.new()
	out.big_endian = true
	var problem := _put(out, value, "value")
	if not problem.is_empty():
		push_error("msgpack: " + problem)
		return PackedByteArray()
	return out.data_array


## Decodes exactly one value filling all of data.
static func decode(data: PackedByteArray) -> Decoded:
	var result := Decoded.new()
	var reader := Reader.new(data)
	var value: Variant = reader.read(0)
	if reader.error.is_empty() and reader.buf.get_available_bytes() > 0:
		reader.fail(
			"%d trailing bytes after the value" % reader.buf.get_available_bytes(),
			reader.buf.get_position()
		)
	result.error = reader.error
	result.value = value if reader.error.is_empty() else null
	return result


## A gateway -> client WebSocket message (u32 little-endian N | N bytes msgpack header | payload):
## value = [header Dictionary, payload PackedByteArray (empty for control messages)].
static func split_message(data: PackedByteArray) -> Decoded:
	var result := Decoded.new()
	if data.size() < 4:
		result.error = "gateway message of %d bytes, shorter than its 4-byte length" % data.size()
		return result
	var n := data[0] | (data[1] << 8) | (data[2] << 16) | (data[3] << 24)
	if n > data.size() - 4:
		result.error = "gateway header length %d exceeds the message (%d bytes)" % [n, data.size()]
		return result
	var header := decode(data.slice(4, 4 + n))
	if not header.ok():
		result.error = "gateway header: " + header.error
	elif typeof(header.value) != TYPE_DICTIONARY:
		result.error = "gateway header is a %s, not a map" % type_string(typeof(header.value))
	else:
		result.value = [header.value, data.slice(4 + n)]
	return result


## Writes value; returns "" or what could not be encoded and where ("value.controls.keys[0]").
static func _put(out: StreamPeerBuffer, value: Variant, path: String) -> String:
	match typeof(value):
		TYPE_NIL:
			out.put_u8(0xC0)
		TYPE_BOOL:
			out.put_u8(0xC3 if value else 0xC2)
		TYPE_INT:
			_put_int(out, value)
		TYPE_FLOAT:
			out.put_u8(0xCB)
			out.put_double(value)
		TYPE_STRING, TYPE_STRING_NAME:
			_put_str(out, String(value))
		TYPE_PACKED_BYTE_ARRAY:
			_put_length(out, value.size(), [0xC4, 0xC5, 0xC6], 0)
			out.put_data(value)
		TYPE_DICTIONARY:
			return _put_map(out, value, path)
		TYPE_ARRAY, TYPE_PACKED_INT32_ARRAY, TYPE_PACKED_INT64_ARRAY:
			return _put_array(out, value, path)
		TYPE_PACKED_FLOAT32_ARRAY, TYPE_PACKED_FLOAT64_ARRAY, TYPE_PACKED_STRING_ARRAY:
			return _put_array(out, value, path)
		_:
			return "cannot encode a %s at %s" % [type_string(typeof(value)), path]
	return ""


static func _put_array(out: StreamPeerBuffer, value: Variant, path: String) -> String:
	_put_length(out, value.size(), [0xDC, 0xDC, 0xDD], 0x90)
	for i in value.size():
		var problem := _put(out, value[i], "%s[%d]" % [path, i])
		if not problem.is_empty():
			return problem
	return ""


static func _put_map(out: StreamPeerBuffer, value: Dictionary, path: String) -> String:
	_put_length(out, value.size(), [0xDE, 0xDE, 0xDF], 0x80)
	for key in value:
		if typeof(key) != TYPE_STRING and typeof(key) != TYPE_STRING_NAME:
			return "map key %s at %s is a %s, not a String" % [key, path, type_string(typeof(key))]
		_put_str(out, String(key))
		var problem := _put(out, value[key], "%s.%s" % [path, key])
		if not problem.is_empty():
			return problem
	return ""


static func _put_int(out: StreamPeerBuffer, v: int) -> void:
	if v >= 0:
		if v < 0x80:
			out.put_u8(v)
		elif v < 0x100:
			out.put_u8(0xCC)
			out.put_u8(v)
		elif v < 0x10000:
			out.put_u8(0xCD)
			out.put_u16(v)
		elif v < 0x100000000:
			out.put_u8(0xCE)
			out.put_u32(v)
		else:
			out.put_u8(0xCF)
			out.put_u64(v)
	elif v >= -32:
		out.put_8(v)
	elif v >= -0x80:
		out.put_u8(0xD0)
		out.put_8(v)
	elif v >= -0x8000:
		out.put_u8(0xD1)
		out.put_16(v)
	elif v >= -0x80000000:
		out.put_u8(0xD2)
		out.put_32(v)
	else:
		out.put_u8(0xD3)
		out.put_64(v)


static func _put_str(out: StreamPeerBuffer, text: String) -> void:
	var raw := text.to_utf8_buffer()
	if raw.size() < 32:
		out.put_u8(0xA0 | raw.size())
	else:
		_put_length(out, raw.size(), [0xD9, 0xDA, 0xDB], 0)
	out.put_data(raw)


## The header of a container of n items: fix form (fix_tag | n, when fix_tag is set and n < 16),
## else tags[0] with a u8 length (bin/str only: tags[0] differs from tags[1]), tags[1] with u16,
## tags[2] with u32.
static func _put_length(out: StreamPeerBuffer, n: int, tags: Array, fix_tag: int) -> void:
	if fix_tag != 0 and n < 16:
		out.put_u8(fix_tag | n)
	elif tags[0] != tags[1] and n < 0x100:
		out.put_u8(tags[0])
		out.put_u8(n)
	elif n < 0x10000:
		out.put_u8(tags[1])
		out.put_u16(n)
	else:
		out.put_u8(tags[2])
		out.put_u32(n)
