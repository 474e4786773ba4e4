extends Control
## Sample: a worldsim stream in a TextureRect, steered with the keyboard and mouse.
##
## Start a daemon with its gateway (`worldsim serve --ws 127.0.0.1:8765`) and run this scene. Click
## the picture to capture the mouse (its motion drives the mouse_dx/mouse_dy axes); Esc frees it.
## Keys of the daemon's control schema are matched by name to Godot's physical keycodes (the arrow
## keys drive W/A/S/D when the schema has no arrows of its own), and one control row is sent per
## video frame period. The prompt box switches prompts in the chosen mode. Command-line overrides,
## after "--": --url=ws://HOST:PORT/ --token=T --prompt=TEXT --seed=N --format=rgb24. This
## scene shows the model's stream: to record a game for training, capture the game's own view
## (capture_sample.tscn).

const Client := preload("res://addons/worldsim/worldsim_client.gd")
## Schema key names Godot spells differently (OS.find_keycode_from_string knows the rest).
const KEY_ALIASES := {
	"control": "Ctrl",
	"return": "Enter",
	"esc": "Escape",
	"arrowup": "Up",
	"arrowdown": "Down",
	"arrowleft": "Left",
	"arrowright": "Right",
}
const ARROWS := {"W": KEY_UP, "A": KEY_LEFT, "S": KEY_DOWN, "D": KEY_RIGHT}
## The axes mouse motion drives, as in the browser and pygame clients.
const X_AXES := ["mouse_dx", "mouse_x", "yaw"]
const Y_AXES := ["mouse_dy", "mouse_y", "pitch"]

@export var url := "ws://127.0.0.1:8765/"
@export var token := ""
@export var prompt := "a quiet forest path at dawn"
@export var seed_value := 0
@export_enum("jpeg", "rgb24") var format := "jpeg"
## Axis units per pixel of mouse motion (rows are clipped to [-1, 1]).
@export var sensitivity := 0.02

var _key_codes := []  # per schema key: the physical keycodes that press it
var _tapped := {}  # physical keycodes pressed since the last row (short taps count too)
var _mouse := Vector2.ZERO  # mouse motion since the last row, in pixels
var _since_row := 0.0
var _paused := false
var _status := "connecting"

@onready var _client: Client = $Client
@onready var _stream: TextureRect = $Stream
@onready var _hud: Label = $Hud
@onready var _prompt_box: LineEdit = $Bar/Prompt
@onready var _mode: OptionButton = $Bar/Mode


func _ready() -> void:
	_read_command_line()
	for mode in ["soft", "recache", "cut"]:
		_mode.add_item(mode)
	_mode.select(1)
	_client.welcomed.connect(_on_welcomed)
	_client.opened.connect(func(session, _reply): _status = "session %d" % session)
	_client.frame_received.connect(func(_header, texture): _stream.texture = texture)
	_client.reply_received.connect(_on_reply)
	_client.error_received.connect(func(code, message, _e): _status = "%s: %s" % [code, message])
	_client.shutdown.connect(func(reason): _status = "the daemon stopped: " + reason)
	_client.disconnected.connect(
		func(code, reason): _status = "disconnected (%d %s)" % [code, reason]
	)
	_prompt_box.text_submitted.connect(_on_prompt_submitted)
	$Bar/Pause.pressed.connect(_on_pause_pressed)
	$Bar/Reset.pressed.connect(func(): _client.reset())
	_stream.gui_input.connect(_on_stream_input)
	_client.connect_to_url(url, token)


func _process(delta: float) -> void:
	var hud := _client.hud_stats()
	_update_hud(hud)
	if hud.is_empty() or _paused:
		return
	var fps: float = hud["stream_fps"]
	if fps <= 0.0:  # an unpaced session: sample at the video's nominal rate
		fps = _client.welcome["video"]["fps"]
	_since_row += delta
	if _since_row < 1.0 / fps:
		return
	_since_row = fmod(_since_row, 1.0 / fps)
	_send_row()


func _input(event: InputEvent) -> void:
	var motion := event as InputEventMouseMotion
	if motion != null and Input.mouse_mode == Input.MOUSE_MODE_CAPTURED:
		_mouse += motion.relative


func _unhandled_input(event: InputEvent) -> void:
	var key := event as InputEventKey
	if key == null or not key.pressed or key.echo:
		return
	if key.keycode == KEY_ESCAPE:
		Input.mouse_mode = Input.MOUSE_MODE_VISIBLE
	else:
		_tapped[key.physical_keycode] = true


func _read_command_line() -> void:
	var options := SampleCommandLine.options()
	for option in options:
		var value: String = options[option]
		match option:
			"url":
				url = value
			"token":
				token = value
			"prompt":
				prompt = value
			"seed":
				seed_value = value.to_int()
			"format":
				format = value
			_:
				push_warning("unknown argument --%s" % option)


func _on_welcomed(welcome: Dictionary) -> void:
	var names: Array = welcome["control"]["keys"]
	var own_arrows := names.any(func(n): return n.to_lower() in ["up", "down", "left", "right"])
	_key_codes = []
	for key_name in names:
		var codes := _codes_for(key_name)
		if not own_arrows and ARROWS.has(key_name.to_upper()):
			codes.append(ARROWS[key_name.to_upper()])
		if codes.is_empty():
			push_warning("no Godot key for the schema key %s: it is never pressed" % key_name)
		_key_codes.append(codes)
	_status = "opening"
	_client.open(prompt, seed_value, format)


## The physical keycodes a schema key name stands for ("W", "Space", "Shift", "Up", "Ctrl", ...).
func _codes_for(key_name: String) -> Array:
	var godot_name: String = KEY_ALIASES.get(key_name.to_lower(), key_name)
	var code := OS.find_keycode_from_string(godot_name)
	return [] if code == KEY_NONE else [code]


## One control row for the next video frame: keys held now or tapped since the last row, and the
## mouse motion since then on the schema's axes.
func _send_row() -> void:
	var control: Dictionary = _client.welcome["control"]
	var typing := _prompt_box.has_focus()
	var keys := []
	for codes in _key_codes:
		var down: bool = codes.any(
			func(c): return Input.is_physical_key_pressed(c) or _tapped.has(c)
		)
		keys.append(1 if down and not typing else 0)
	var axes := []
	for axis_name in control["axes"]:
		var pixels := _mouse.x if axis_name in X_AXES else _mouse.y if axis_name in Y_AXES else 0.0
		axes.append(clampf(pixels * sensitivity, -1.0, 1.0))
	_tapped.clear()
	_mouse = Vector2.ZERO
	if not keys.is_empty() or not axes.is_empty():
		_client.send_controls(keys, axes)


func _on_pause_pressed() -> void:
	if _paused:
		_client.resume()
	else:
		_client.pause()


func _on_reply(_seq: int, reply: Dictionary) -> void:
	if reply.get("type") == "ok":
		_paused = reply.get("paused", false)


func _on_prompt_submitted(text: String) -> void:
	if not text.strip_edges().is_empty() and _client.session >= 0:
		_client.switch_prompt(text.strip_edges(), _mode.get_item_text(_mode.selected))
	_prompt_box.clear()
	_prompt_box.release_focus()


func _on_stream_input(event: InputEvent) -> void:
	var click := event as InputEventMouseButton
	if click != null and click.pressed:
		_prompt_box.release_focus()
		Input.mouse_mode = Input.MOUSE_MODE_CAPTURED


func _update_hud(hud: Dictionary) -> void:
	if hud.is_empty():
		_hud.text = _status
		return
	var latency: float = hud["control_to_photon_ms"]
	var captured := Input.mouse_mode == Input.MOUSE_MODE_CAPTURED
	_hud.text = (
		"%s  frame %d%s\nFPS %.1f / %.1f   control-to-photon %s\n%s"
		% [
			_status,
			hud["frame_index"],
			"  PAUSED" if _paused else "",
			hud["fps"],
			hud["stream_fps"],
			"%.0f ms" % latency if latency >= 0.0 else "-",
			"mouse captured (Esc frees it)" if captured else "click the picture to steer",
		]
	)
