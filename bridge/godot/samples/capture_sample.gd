extends Control
## Sample: record a game for training with WorldsimCaptureWriter (no daemon involved).
##
## The game is a toy in the SubViewport Game/View: a triangle on a meadow with rocks and a pond.
## W/S walk forward and back, A/D sideways, Shift runs, the mouse turns (click to capture it, Esc
## frees it), R restarts in a new episode. What is recorded is that SubViewport, the game's own
## view: not the window (the HUD is outside it), and not a worldsim stream. Every TICKS_PER_STEP
## physics ticks are one capture step (1 / capture_fps of game time); the controls the game used
## during the step's ticks are its row, and the frame drawn right after the step is its image.
## Command line, after "--": --capture=DIR (default user://capture) --fps=N.

const CaptureWriter := preload("res://addons/worldsim/capture_writer.gd")
## The control schema recorded: names in order, as a model's welcome.control lists them. A model
## trained on the capture learns these; map your game's inputs onto the model's own schema when
## you fine-tune one.
const CONTROL := {
	"keys": ["W", "A", "S", "D", "Shift"],
	"axes": ["mouse_dx"],
	"embedding_dim": 0,
	"frames_per_latent": 4,
}
const KEYS := [KEY_W, KEY_A, KEY_S, KEY_D, KEY_SHIFT]  # physical keys, in CONTROL's order
## Physics ticks per capture step: the game runs at capture_fps * TICKS_PER_STEP ticks/s.
const TICKS_PER_STEP := 3
const WALK_SPEED := 120.0  # pixels per second (twice that running)
const TURN_PER_PIXEL := 0.004  # radians per pixel of mouse motion

@export var capture_dir := "user://capture"
@export var capture_fps := 16
@export var prompt := "top-down view of a small grey figure walking across a meadow with rocks"
## mouse_dx per pixel of mouse motion within one capture step (clipped to [-1, 1]).
@export var sensitivity := 0.02

var _writer := CaptureWriter.new()
var _tick := 0
var _used := []  # per schema key: whether the game used it in this step's ticks
var _turn_pixels := 0.0  # mouse motion since the last tick
var _step_pixels := 0.0  # mouse motion in this step's ticks
var _drawing := []  # [keys, axes] of the step whose frame is being drawn ([]: none)

@onready var _view: SubViewport = $Game/View
@onready var _player: Polygon2D = $Game/View/Player
@onready var _hud: Label = $Hud


func _ready() -> void:
	_read_command_line()
	var engine := "worldsim capture sample (Godot %s)" % Engine.get_version_info()["string"]
	if _writer.begin(capture_dir, CONTROL, capture_fps, engine) != OK:
		_hud.text = "cannot record to %s (see the errors)" % capture_dir
		set_physics_process(false)
		set_process_input(false)
		return
	# A fixed step of game time per capture step, and at most one physics tick per drawn frame:
	# each step's frame is drawn right after it, and a slow machine slows the game down instead
	# of running several ticks between two drawn frames.
	Engine.physics_ticks_per_second = capture_fps * TICKS_PER_STEP
	Engine.max_physics_steps_per_frame = 1
	_used.resize(KEYS.size())
	_used.fill(false)
	_writer.start_episode()
	RenderingServer.frame_post_draw.connect(_on_frame_drawn)
	print("recording to ", ProjectSettings.globalize_path(capture_dir))


func _exit_tree() -> void:
	_writer.close()


## One tick of the toy game, and of the capture: the keys it used join the step's row.
func _physics_process(delta: float) -> void:
	var pressed := KEYS.map(func(code): return Input.is_physical_key_pressed(code))
	_player.rotation += _turn_pixels * TURN_PER_PIXEL
	var walk := Vector2(int(pressed[3]) - int(pressed[1]), int(pressed[2]) - int(pressed[0]))
	var speed := WALK_SPEED * (2.0 if pressed[4] else 1.0)
	_player.position += walk.limit_length(1.0).rotated(_player.rotation) * speed * delta
	for i in KEYS.size():
		_used[i] = _used[i] or pressed[i]
	_step_pixels += _turn_pixels
	_turn_pixels = 0.0
	_tick += 1
	if _tick % TICKS_PER_STEP != 0:
		return
	if not _drawing.is_empty():
		_writer.skip_frame()  # the previous step's frame was never drawn (window hidden?)
	var keys := _used.map(func(used): return 1 if used else 0)
	_drawing = [keys, [clampf(_step_pixels * sensitivity, -1.0, 1.0)]]
	_used.fill(false)
	_step_pixels = 0.0


## The frame drawn after a capture step shows what the step's controls did: record the pair.
func _on_frame_drawn() -> void:
	if _drawing.is_empty():
		return
	var image := _view.get_texture().get_image()
	_writer.add_frame(image, _drawing[0], _drawing[1], PackedFloat32Array(), prompt)
	_drawing = []
	_hud.text = (
		"recording %s: %d frames\nWASD walk, Shift run, mouse turns (click; Esc frees it), R restarts"
		% [ProjectSettings.globalize_path(_writer.episode_path), _writer.episode_frames]
	)


func _input(event: InputEvent) -> void:
	var motion := event as InputEventMouseMotion
	if motion != null and Input.mouse_mode == Input.MOUSE_MODE_CAPTURED:
		_turn_pixels += motion.relative.x
	var click := event as InputEventMouseButton
	if click != null and click.pressed:
		Input.mouse_mode = Input.MOUSE_MODE_CAPTURED
	var key := event as InputEventKey
	if key != null and key.pressed and not key.echo:
		if key.keycode == KEY_ESCAPE:
			Input.mouse_mode = Input.MOUSE_MODE_VISIBLE
		elif key.physical_keycode == KEY_R:
			_restart()


## Back to the start in a new episode: a restart is a new run, not a jump within one.
func _restart() -> void:
	_player.position = Vector2.ZERO
	_player.rotation = 0.0
	_used.fill(false)
	_step_pixels = 0.0
	_drawing = []
	_writer.start_episode()


func _read_command_line() -> void:
	var options := SampleCommandLine.options()
	for option in options:
		var value: String = options[option]
		match option:
			"capture":
				capture_dir = value
			"fps":
				capture_fps = value.to_int()
			_:
				push_warning("unknown argument --%s" % option)
