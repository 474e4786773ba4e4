class_name WorldsimClient
extends Node
## A client of the worldsim daemon for Godot 4, through its WebSocket gateway (bridge/PROTOCOL.md).
##
## Add the node, call connect_to_url("ws://127.0.0.1:8765/"), wait for welcomed, call open(), then
## send one control row per video frame with send_controls() and show what frame_received gives
## (an ImageTexture updated in place; assign it to a TextureRect once). The node polls its
## WebSocketPeer in _process, says hello, pings whenever it has sent nothing for the daemon's
## heartbeat_s, matches replies to requests by seq, and shows frames at the stream's fps from a
## small buffer (frame k at max(arrival, previous + 1/fps)), which is also how control-to-photon
## is measured (hud_stats()). Leaving the tree says bye and closes the WebSocket.
## Requests return their seq (or -1 when refused here, with an engine error saying why); the
## daemon's answers come as signals: reply_received for every reply, plus the specific ones.

## The handshake succeeded (welcome: the daemon's capabilities, control schema and limits).
signal welcomed(welcome: Dictionary)
## A session opened by open() is running; it becomes the default target of every request.
signal opened(session: int, reply: Dictionary)
## A frame is due on screen: frame is an ImageTexture (or an Image when upload_texture is false).
signal frame_received(header: Dictionary, frame: Variant)
## Any reply to a request (ok, stats, pong, opened, closed, error), with the request's seq.
signal reply_received(seq: int, reply: Dictionary)
## An error from the daemon (error is the whole message: re, session, fatal), or from this client
## (codes "connect_failed", "bad_message", "bad_frame", "version_mismatch", "timeout").
signal error_received(code: String, message: String, error: Dictionary)
## A session ended: reason "client" (the reply to close()) or "failed" (after a fatal error).
signal closed(session: int, reason: String, stats: Dictionary)
## The daemon is stopping; the gateway closes the WebSocket next.
signal shutdown(reason: String)
## The WebSocket closed (code and reason as the peer or the engine gave them).
signal disconnected(code: int, reason: String)

## The protocol this client speaks; the daemon must have the same major version.
const PROTOCOL_VERSION := "1.2.0"
## Requests the daemon answers (input and bye get no reply unless refused).
const ANSWERED := ["hello", "open", "pause", "resume", "reset", "close", "stats", "ping"]
const Msgpack := preload("msgpack.gd")

## Largest message the WebSocket accepts, and its receive buffer: one raw 832x480 rgb24 frame is
## 1,198,080 bytes plus its header, so the 64 KiB engine default only fits small JPEG frames.
## Set before connect_to_url().
@export var inbound_buffer_size := 4 << 20
## Send buffer; an input message is at most welcome.limits.max_message_bytes.
@export var outbound_buffer_size := 1 << 20
## The name sent in hello.
@export var client_name := "godot"
## Show frames one per 1/fps from a buffer (false: emit each frame as it arrives).
@export var playout := true
## Emit frames as an ImageTexture updated in place (false: emit the decoded Image, no GPU upload).
@export var upload_texture := true

## The daemon's welcome (empty until welcomed).
var welcome: Dictionary = {}
## The default session of every request: the last one opened (-1: none).
var session := -1

var _ws: WebSocketPeer = null
var _seq := 0
var _said_hello := false
var _pending := {}  # seq -> {"type", "session"} of requests awaiting a reply
var _streams := {}  # session -> Stream
var _last_sent_us := 0
var _last_ping_us := 0
var _unanswered_since_us := -1  # first send since the daemon last said anything (-1: none)


## One open session: its playout clock, texture and inputs waiting to be seen.
class Stream:
	var fps := 0.0
	var epoch := 0
	var paused := false
	var queue := []  # [header, payload, arrival usec] in arrival order
	var last_shown_us := -1  # -1: the next frame starts an epoch and is shown on arrival
	var texture: ImageTexture = null
	var inputs := []  # [seq, sent usec] of inputs not yet seen in a shown frame
	var latencies_ms := []  # recent control-to-photon values
	var shown_us := []  # when frames were shown, over the last 2 s
	var frame_index := -1


func _init() -> void:
	# Keep polling and pinging while the game is paused: a silent client is dropped after
	# idle_timeout_s. A process_mode set in the inspector still wins (it is applied after _init).
	process_mode = Node.PROCESS_MODE_ALWAYS


func _process(_delta: float) -> void:
	if _ws == null:
		return
	_ws.poll()
	var state := _ws.get_ready_state()
	if state == WebSocketPeer.STATE_CLOSED:
		_finish(_ws.get_close_code(), _ws.get_close_reason())
		return
	if state == WebSocketPeer.STATE_OPEN:
		if not _said_hello:
			_said_hello = true
			_request("hello", {"protocol": PROTOCOL_VERSION, "client": client_name})
		while _ws != null and _ws.get_available_packet_count() > 0:
			_receive(_ws.get_packet())
		if _ws != null:
			_keep_alive()
	_play(Time.get_ticks_usec())


func _exit_tree() -> void:
	disconnect_from_daemon()


## Connects to a gateway ("ws://127.0.0.1:8765/"; wss:// with TLS); token: the gateway's token, if
## it has one. The handshake follows in _process; welcomed (or error_received) tells the outcome.
func connect_to_url(url: String, token := "") -> Error:
	if _ws != null:
		disconnect_from_daemon()
	_ws = WebSocketPeer.new()
	_ws.inbound_buffer_size = inbound_buffer_size
	_ws.outbound_buffer_size = outbound_buffer_size
	var full := url
	if not token.is_empty():
		full += ("&" if "?" in url else "?") + "token=" + token.uri_encode()
	var err := _ws.connect_to_url(full)
	if err != OK:
		_ws = null
		error_received.emit(
			"connect_failed", "cannot connect to %s: %s" % [url, error_string(err)], {}
		)
		return err
	_ws.set_no_delay(true)  # control rows are small and latency-bound
	_seq = 0
	_said_hello = false
	_last_sent_us = Time.get_ticks_usec()
	_last_ping_us = _last_sent_us
	_unanswered_since_us = _last_sent_us  # the welcome is awaited like a reply
	return OK


## True once the daemon's welcome has arrived on the open connection.
func is_welcomed() -> bool:
	return _ws != null and not welcome.is_empty()


## Opens a session. format: "jpeg" or "rgb24"; fps < 0: the daemon's rate, 0: unpaced.
## options: further open fields (jpeg_quality, lookahead, echo_controls, start_frame,
## package_start).
func open(prompt := "", seed_value := 0, format := "jpeg", fps := -1.0, options := {}) -> int:
	var fields := {"prompt": prompt, "seed": seed_value, "format": format}
	if fps >= 0.0:
		fields["fps"] = fps
	fields.merge(options, true)
	return _request("open", fields)


## Sends one control row: the controls for the next video frame. keys: one value per schema key
## (bool, 0/1 or the held fraction), axes: one float per schema axis (mouse deltas normalised to
## about [-1, 1]), embedding: embedding_dim floats (empty: not sent). Call it once per frame period.
func send_controls(
	keys: Array, axes := [], embedding := PackedFloat32Array(), session_id := -1
) -> int:
	var row := _control_row(keys, axes, embedding)
	if row.is_empty():
		return -1
	var controls := {}  # n = 1 row per source: lists of rows, the embedding as n x D float32 bin
	for source in row:
		controls[source] = row[source] if source == "embedding" else [row[source]]
	return _send_input({"controls": controls}, session_id)


## Sends one row of the engine embedding alone (keys take their held state, axes zero).
func send_embedding(values: PackedFloat32Array, session_id := -1) -> int:
	return send_controls([], [], values, session_id)


## Sets the held state: the controls used for every frame no row covers.
func send_hold(keys: Array, axes := [], embedding := PackedFloat32Array(), session_id := -1) -> int:
	var hold := _control_row(keys, axes, embedding)
	if hold.is_empty():
		return -1
	return _send_input({"hold": hold}, session_id)


## Switches the prompt at the next chunk. mode: "soft", "recache" or "cut"; sink: "keep" or
## "refresh" (recache only).
func switch_prompt(prompt: String, mode := "soft", sink := "keep", session_id := -1) -> int:
	return _send_input({"prompt": {"text": prompt, "mode": mode, "sink": sink}}, session_id)


## Stops generating (frames already made still arrive); answered by reply_received ("ok").
func pause(session_id := -1) -> int:
	return _session_request("pause", session_id)


func resume(session_id := -1) -> int:
	return _session_request("resume", session_id)


## Restarts the stream (same prompt and seed, a new epoch); frames of the old epoch are dropped.
func reset(session_id := -1) -> int:
	return _session_request("reset", session_id)


## Closes a session; closed carries its final stats.
func close(session_id := -1) -> int:
	return _session_request("close", session_id)


## Asks for statistics of one session, or (session_id < 0) of every session of this connection.
func stats(session_id := -1) -> int:
	return _request("stats", {"session": session_id} if session_id >= 0 else {})


func ping() -> int:
	return _request("ping", {})


## Sends any protocol message (a Dictionary with "type"); seq is set here. Returns it, or -1.
func send_message(msg: Dictionary) -> int:
	if _ws == null or _ws.get_ready_state() != WebSocketPeer.STATE_OPEN:
		push_error("worldsim: not connected (call connect_to_url and wait for welcomed)")
		return -1
	_seq += 1
	msg["seq"] = _seq
	var raw := Msgpack.encode(msg)
	if raw.is_empty():
		return -1
	var err := _ws.send(raw)
	if err != OK:
		push_error("worldsim: sending %s failed: %s" % [msg.get("type"), error_string(err)])
		return -1
	var now := Time.get_ticks_usec()
	_last_sent_us = now
	if _unanswered_since_us < 0:
		_unanswered_since_us = now
	if msg.get("type") == "ping":
		_last_ping_us = now
	return _seq


## Says bye (the daemon frees this connection's sessions at once) and closes the WebSocket.
func disconnect_from_daemon() -> void:
	if _ws == null:
		return
	if _ws.get_ready_state() == WebSocketPeer.STATE_OPEN:
		send_message({"type": "bye"})
		_ws.close(1000, "bye")
	_finish(1000, "bye")


## What a HUD shows for a session: fps (frames shown per second over the last 2 s), stream_fps,
## control_to_photon_ms (median of recent inputs, -1 until one was seen), frame_index, queued
## (frames waiting for their playout time) and paused. Empty if the session is not open.
func hud_stats(session_id := -1) -> Dictionary:
	var stream: Stream = _streams.get(session_id if session_id >= 0 else session)
	if stream == null:
		return {}
	var now := Time.get_ticks_usec()
	var recent := stream.shown_us.filter(func(t): return now - t <= 2000000)
	var sorted := stream.latencies_ms.duplicate()
	sorted.sort()
	return {
		"fps": recent.size() / 2.0,
		"stream_fps": stream.fps,
		"control_to_photon_ms": sorted[int(sorted.size() / 2.0)] if not sorted.is_empty() else -1.0,
		"frame_index": stream.frame_index,
		"queued": stream.queue.size(),
		"paused": stream.paused,
	}


func _request(kind: String, fields: Dictionary) -> int:
	var msg := {"type": kind, "seq": 0}
	msg.merge(fields)
	var seq := send_message(msg)
	if seq >= 0 and kind in ANSWERED:
		_pending[seq] = {"type": kind, "session": fields.get("session", -1)}
	return seq


func _session_request(kind: String, session_id: int) -> int:
	var target := _target(session_id)
	return _request(kind, {"session": target}) if target >= 0 else -1


func _send_input(fields: Dictionary, session_id: int) -> int:
	var target := _target(session_id)
	if target < 0:
		return -1
	var body := {"session": target}
	body.merge(fields)
	body["t"] = Time.get_unix_time_from_system()
	var seq := _request("input", body)
	var stream: Stream = _streams.get(target)
	if seq >= 0 and stream != null and fields.has("controls"):
		stream.inputs.append([seq, Time.get_ticks_usec()])
		if stream.inputs.size() > 4096:
			stream.inputs.pop_front()
	return seq


func _target(session_id: int) -> int:
	var target := session_id if session_id >= 0 else session
	if target < 0:
		push_error("worldsim: no session (open one and wait for opened)")
	return target


## {"keys": [...], "axes": [...], "embedding": bin} with the sources given, checked against the
## welcome's control schema; {} (and an engine error) if a width is wrong.
func _control_row(keys: Array, axes: Array, embedding: PackedFloat32Array) -> Dictionary:
	var schema: Dictionary = welcome.get("control", {})
	var row := {}
	if not keys.is_empty():
		row["keys"] = keys.map(func(k): return (1 if k else 0) if typeof(k) == TYPE_BOOL else k)
	if not axes.is_empty():
		row["axes"] = axes.map(func(a): return float(a))
	if not embedding.is_empty():
		row["embedding"] = embedding.to_byte_array()  # float32 little-endian, as the protocol wants
	var widths := {
		"keys": schema.get("keys", []).size(),
		"axes": schema.get("axes", []).size(),
		"embedding": int(schema.get("embedding_dim", 0)),
	}
	for source in row:
		var given: int = embedding.size() if source == "embedding" else row[source].size()
		if not schema.is_empty() and given != widths[source]:
			var problem := "worldsim: %s has %d values, the daemon's control schema has %d"
			push_error(problem % [source, given, widths[source]])
			return {}
	if row.is_empty():
		push_error("worldsim: no controls given")
	return row


func _receive(data: PackedByteArray) -> void:
	var now := Time.get_ticks_usec()
	_unanswered_since_us = -1
	if _ws.was_string_packet():
		error_received.emit("bad_message", "the gateway sent a text message", {})
		return
	var split := Msgpack.split_message(data)
	if not split.ok():
		error_received.emit("bad_message", split.error, {})
		return
	var msg: Dictionary = split.value[0]
	if msg.get("type") == "frame":
		var stream: Stream = _streams.get(msg.get("session", -1))
		if stream != null and int(msg.get("epoch", 0)) >= stream.epoch:
			stream.queue.append([msg, split.value[1], now])
		return
	var re: Variant = msg.get("re")
	var request: Dictionary = _pending.get(re, {}) if typeof(re) == TYPE_INT else {}
	_pending.erase(re)
	_on_control_message(msg, request)
	if typeof(re) == TYPE_INT:
		reply_received.emit(re, msg)


func _on_control_message(msg: Dictionary, request: Dictionary) -> void:
	match msg.get("type"):
		"welcome":
			_on_welcome(msg)
		"opened":
			var started := Stream.new()
			started.fps = float(msg.get("fps", 0.0))
			started.epoch = int(msg.get("epoch", 0))
			session = int(msg.get("session"))
			_streams[session] = started
			opened.emit(session, msg)
		"ok":
			var stream: Stream = _streams.get(msg.get("session", -1))
			if stream != null:
				stream.paused = bool(msg.get("paused", false))
				if int(msg.get("epoch", 0)) != stream.epoch:
					stream.epoch = int(msg.get("epoch", 0))
					stream.queue = stream.queue.filter(
						func(f): return f[0].get("epoch", 0) >= stream.epoch
					)
					stream.last_shown_us = -1
		"closed":
			var ended := int(msg.get("session", request.get("session", -1)))
			_streams.erase(ended)
			if session == ended:
				session = -1
			closed.emit(ended, str(msg.get("reason", "")), msg.get("stats", {}))
		"error":
			error_received.emit(str(msg.get("code")), str(msg.get("message")), msg)
		"shutdown":
			shutdown.emit(str(msg.get("reason", "")))


func _on_welcome(msg: Dictionary) -> void:
	var theirs := str(msg.get("protocol", "")).get_slice(".", 0)
	if theirs != PROTOCOL_VERSION.get_slice(".", 0):
		error_received.emit(
			"version_mismatch",
			(
				"the daemon speaks protocol %s, this client %s"
				% [msg.get("protocol"), PROTOCOL_VERSION]
			),
			msg
		)
		disconnect_from_daemon()
		return
	welcome = msg
	welcomed.emit(msg)


## Pings when nothing was sent for heartbeat_s, or nothing came back for heartbeat_s since a
## send; gives up when the daemon has answered nothing for idle_timeout_s.
func _keep_alive() -> void:
	var limits: Dictionary = welcome.get("limits", {})
	var heartbeat_us := int(float(limits.get("heartbeat_s", 2.0)) * 1e6)
	var timeout_us := int(float(limits.get("idle_timeout_s", 10.0)) * 1e6)
	var now := Time.get_ticks_usec()
	if _unanswered_since_us >= 0 and now - _unanswered_since_us > timeout_us:
		error_received.emit(
			"timeout", "the daemon has not answered for %.0f s" % (timeout_us / 1e6), {}
		)
		disconnect_from_daemon()
		return
	if not welcome.is_empty():
		var quiet := now - _last_sent_us >= heartbeat_us
		var waiting := _unanswered_since_us >= 0 and now - _unanswered_since_us >= heartbeat_us
		if quiet or (waiting and now - _last_ping_us >= heartbeat_us):
			ping()


## Shows every frame whose playout time has come (all of them at once when playout is off).
func _play(now: int) -> void:
	for id in _streams.keys():  # a copy: handlers of frame_received may close sessions
		var stream: Stream = _streams.get(id)
		if stream == null:
			continue
		var period := int(1e6 / stream.fps) if playout and stream.fps > 0.0 else 0
		while _streams.get(id) == stream and not stream.queue.is_empty():
			var arrived: int = stream.queue[0][2]
			var due := arrived
			if stream.last_shown_us >= 0:
				due = maxi(arrived, stream.last_shown_us + period)
			if now < due:
				break
			var item: Array = stream.queue.pop_front()
			stream.last_shown_us = due
			_show(stream, item[0], item[1], now)


func _show(stream: Stream, header: Dictionary, payload: PackedByteArray, now: int) -> void:
	var image := _decode(header, payload)
	if image == null:
		return
	stream.frame_index = int(header.get("index", -1))
	stream.shown_us.append(now)
	while now - stream.shown_us[0] > 2000000:
		stream.shown_us.pop_front()
	var input_seq := int(header.get("input_seq", -1))
	while not stream.inputs.is_empty() and stream.inputs[0][0] <= input_seq:
		stream.latencies_ms.append((now - stream.inputs.pop_front()[1]) / 1000.0)
	if stream.latencies_ms.size() > 64:
		stream.latencies_ms = stream.latencies_ms.slice(-64)
	if not upload_texture:
		frame_received.emit(header, image)
		return
	if stream.texture == null:
		stream.texture = ImageTexture.create_from_image(image)
	elif (
		stream.texture.get_width() == image.get_width()
		and stream.texture.get_height() == image.get_height()
		and stream.texture.get_format() == image.get_format()
	):
		stream.texture.update(image)  # same size: reuse the GPU texture
	else:
		stream.texture.set_image(image)
	frame_received.emit(header, stream.texture)


## The frame as an Image (RGB8), or null and error_received("bad_frame") if the payload is unusable.
func _decode(header: Dictionary, payload: PackedByteArray) -> Image:
	var fmt := str(header.get("format", ""))
	var shape: Array = header.get("shape", [])
	var image: Image = null
	if fmt == "jpeg":
		image = Image.new()
		if image.load_jpg_from_buffer(payload) != OK:
			image = null
	elif fmt == "rgb24" and shape.size() == 3 and payload.size() == shape[0] * shape[1] * 3:
		image = Image.create_from_data(shape[1], shape[0], false, Image.FORMAT_RGB8, payload)
	if image == null:
		var problem := "frame %s: unreadable %s payload of %d bytes (shape %s)"
		error_received.emit(
			"bad_frame", problem % [header.get("index"), fmt, payload.size(), shape], header
		)
	return image


## Forgets the connection (its sessions end with it) and reports the close once.
func _finish(code: int, reason: String) -> void:
	var was_connected := _ws != null
	_ws = null
	welcome = {}
	session = -1
	_pending.clear()
	_streams.clear()
	if was_connected:
		disconnected.emit(code, reason)
