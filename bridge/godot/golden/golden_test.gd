extends Node
## Checks msgpack.gd against bridge/golden/messages.json, the vectors every worldsim codec shares:
## each value encodes to exactly its bytes and decodes back to an equal value of the same types,
## each gateway message splits into its header and payload, and malformed input is refused.
## Prints PASS or FAIL per check and quits with status 1 if anything failed. From the repository
## root:
##
##   godot --headless --path bridge/godot res://golden/golden_test.tscn
##
## It reads the repository's own bridge/golden/messages.json (next to this Godot project, resolved
## through the project folder, so the file is never copied); `-- --golden=PATH` reads another one.
## JSON has one number type and Godot parses every number as a float: an integral number stands
## for a msgpack int (the vectors' floats are never integral), as in tests/js/check_golden.cjs.
## {"$bin": "<hex>"} stands for bin data.

const Msgpack := preload("res://addons/worldsim/msgpack.gd")
const Client := preload("res://addons/worldsim/worldsim_client.gd")

var _passed := 0
var _failed := 0


func _ready() -> void:
	var path := _golden_path()
	var golden: Variant = JSON.parse_string(FileAccess.get_file_as_string(path))
	if typeof(golden) != TYPE_DICTIONARY:
		_check("read " + path, false, "missing, unreadable or not a JSON object")
	else:
		_check_golden(golden)
	_check_refusals()
	print("%d passed, %d failed" % [_passed, _failed])
	get_tree().quit(1 if _failed > 0 else 0)


func _golden_path() -> String:
	for arg in OS.get_cmdline_user_args():
		if arg.begins_with("--golden="):
			return arg.trim_prefix("--golden=")
	var project := ProjectSettings.globalize_path("res://")
	return project.path_join("../golden/messages.json").simplify_path()


func _check_golden(golden: Dictionary) -> void:
	var version := str(golden.get("protocol"))
	_check(
		"protocol", version == Client.PROTOCOL_VERSION, "client speaks " + Client.PROTOCOL_VERSION
	)
	for entry in golden["messages"]:
		var value: Variant = _from_json(entry["value"])
		var encoded := Msgpack.encode(value).hex_encode()
		_check(entry["name"] + " encode", encoded == entry["msgpack"], "got " + encoded)
		var decoded := Msgpack.decode(_bytes(entry["msgpack"]))
		var same := decoded.ok() and _same(decoded.value, value)
		_check(
			entry["name"] + " decode", same, decoded.error if not decoded.ok() else "values differ"
		)
	for entry in golden["gateway"]:
		var split := Msgpack.split_message(_bytes(entry["message"]))
		var ok := (
			split.ok()
			and _same(split.value[0], _from_json(entry["header"]))
			and split.value[1].hex_encode() == entry["payload"]
		)
		_check(entry["name"] + " split", ok, split.error if not split.ok() else "parts differ")
	# The client sends embeddings as PackedFloat32Array.to_byte_array(): float32 little-endian.
	var embedding := PackedFloat32Array([0.5, -0.25, 0.125, 0.0, 1.5]).to_byte_array().hex_encode()
	_check("embedding bytes", embedding == "0000003f000080be0000003e000000000000c03f", embedding)


func _check_refusals() -> void:
	var bad := {
		"truncated input": "9201",
		"trailing bytes": "0101",
		"non-string map key": "810101",
		"uint64 beyond 2^63-1": "cf8000000000000000",
		"invalid UTF-8": "a1ff",
		"ext type": "d40100",
		"truncated str8": "d905616263",
	}
	for name in bad:
		var decoded := Msgpack.decode(_bytes(bad[name]))
		_check(name + " is refused", not decoded.ok(), "decoded as %s" % [decoded.value])
	for message in ["0100", "0500000080"]:
		var split := Msgpack.split_message(_bytes(message))
		_check("gateway message %s is refused" % message, not split.ok(), "split")
	var floats := Msgpack.encode(PackedFloat32Array([0.5, -0.25]))
	_check("packed floats encode as an array", floats == Msgpack.encode([0.5, -0.25]), "")
	print("(two engine errors follow on purpose: values msgpack.gd must refuse)")
	_check("a Vector2 is refused", Msgpack.encode({"v": Vector2.ONE}).is_empty(), "encoded")
	_check("an int map key is refused", Msgpack.encode({1: 2}).is_empty(), "encoded")


func _check(what: String, ok: bool, detail: String) -> void:
	if ok:
		_passed += 1
		print("PASS ", what)
	else:
		_failed += 1
		print("FAIL ", what, ": ", detail)


## A golden JSON value as GDScript values: integral numbers to int, {"$bin": hex} to bytes.
func _from_json(value: Variant) -> Variant:
	var out: Variant = value
	if typeof(value) == TYPE_FLOAT and value == floorf(value):
		out = int(value)
	elif typeof(value) == TYPE_ARRAY:
		out = value.map(_from_json)
	elif typeof(value) == TYPE_DICTIONARY and value.size() == 1 and value.has("$bin"):
		out = _bytes(value["$bin"])
	elif typeof(value) == TYPE_DICTIONARY:
		out = {}
		for key in value:
			out[key] = _from_json(value[key])
	return out


func _bytes(hex: String) -> PackedByteArray:
	var out := PackedByteArray()
	out.resize(hex.length() >> 1)
	for i in out.size():
		out[i] = hex.substr(2 * i, 2).hex_to_int()
	return out


## Equal values of equal types, maps in the same key order (1 and 1.0 differ here).
func _same(a: Variant, b: Variant) -> bool:
	if typeof(a) != typeof(b):
		return false
	if typeof(a) == TYPE_ARRAY:
		return a.size() == b.size() and range(a.size()).all(func(i): return _same(a[i], b[i]))
	if typeof(a) == TYPE_DICTIONARY:
		var keys: Array = a.keys()
		return keys == b.keys() and keys.all(func(k): return _same(a[k], b[k]))
	return a == b
