class_name WorldsimCaptureWriter
extends RefCounted
## Records a game for training: its own rendered frames and the controls the player used, in the
## engine-capture layout that `worldsim dataset import CAPTURE OUT` reads (docs/DATASET.md,
## "Engine captures"):
##
##     CAPTURE/capture.json                 format, version, control schema, fps, engine
##     CAPTURE/episode_000000/frames.jsonl  one JSON line per frame: image, keys, axes, ...
##     CAPTURE/episode_000000/000000.png    the frames
##
## Call begin() once, start_episode() per run of the game (a level, a life, a restart), add_frame()
## once per capture step (1 / fps of game time: a fixed step, not the render rate), end_episode(),
## close(). A frame's control row is what the player did between the previous frame and this one.
## Every image is saved before the line naming it, and each line is flushed as it is written, so a
## game that crashes loses at most the frame it was writing. Problems are pushed as engine errors
## (push_error) and returned.

## What capture.json declares: the importer (worldsim.dataset.capture) reads this format/version.
const FORMAT := "worldsim-capture"
const VERSION := 1
const INFO_FILE := "capture.json"
const LINES_FILE := "frames.jsonl"
## Episode folders (imported in name order, hence the zero padding) and frame files (the capture
## step's number in the episode, then the extension).
const EPISODE_NAME := "episode_%06d"
const IMAGE_NAME := "%06d.%s"

## Save frames as JPEG (smaller, lossy) instead of PNG (lossless).
var jpeg := false
## JPEG quality, 0.01 to 1 (Image.save_jpg).
var jpeg_quality := 0.9
## The capture folder given to begin() ("" when none), the current episode's folder ("" outside
## an episode) and the frames written to it. Read them; the writer sets them.
var path := ""
var episode_path := ""
var episode_frames := 0

var _control := {}  # the schema in capture.json
var _lines: FileAccess = null  # the episode's frames.jsonl, opened with its first frame
var _step := -1  # the episode's last capture step, written or not
var _last_written := -1  # the step of the last line written (-1: none yet)
var _prompt := ""  # the last prompt written in this episode
var _size := Vector2i.ZERO  # the episode's frame size


## Starts a capture in dir_path (a user:// path or an absolute folder; created if missing).
## control_schema: {keys: [names], axes: [names], embedding_dim, frames_per_latent}, the schema
## the model should learn (the daemon's welcome.control of a model you fine-tune); fps: capture
## steps per second of game time; engine: the game and engine version, kept with every episode.
## A folder already holding a capture of the same schema and fps gets further episodes (its
## capture.json, engine included, is kept).
func begin(dir_path: String, control_schema: Dictionary, fps: float, engine: String) -> Error:
	close()
	var control := _checked_schema(control_schema)
	if control.is_empty():
		return ERR_INVALID_PARAMETER
	if not fps > 0.0:
		return _fail(ERR_INVALID_PARAMETER, "fps must be a positive number, got %s" % fps)
	var err := DirAccess.make_dir_recursive_absolute(dir_path)
	if err != OK:
		return _fail(err, "cannot create %s: %s" % [dir_path, error_string(err)])
	var info := _info(control, fps, engine)
	var info_path := dir_path.path_join(INFO_FILE)
	if FileAccess.file_exists(info_path):
		err = _check_existing(info_path, info)
	else:
		var file := FileAccess.open(info_path, FileAccess.WRITE)
		if file == null:
			err = FileAccess.get_open_error()
			return _fail(err, "cannot write %s: %s" % [info_path, error_string(err)])
		file.store_string(JSON.stringify(info, "  ", false) + "\n")
		file.close()
	if err == OK:
		path = dir_path
		_control = control
	return err


## Starts a new episode (ending the current one) in the folder after the highest numbered one.
func start_episode() -> Error:
	if path.is_empty():
		return _fail(ERR_UNCONFIGURED, "call begin() before start_episode()")
	end_episode()
	var prefix := EPISODE_NAME.get_slice("%", 0)
	var number := 0
	for folder in DirAccess.get_directories_at(path):
		var digits: String = folder.trim_prefix(prefix)
		if folder.begins_with(prefix) and digits.is_valid_int():
			number = maxi(number, digits.to_int() + 1)
	var folder_path := path.path_join(EPISODE_NAME % number)
	var err := DirAccess.make_dir_recursive_absolute(folder_path)
	if err != OK:
		return _fail(err, "cannot create %s: %s" % [folder_path, error_string(err)])
	episode_path = folder_path
	episode_frames = 0
	_step = -1
	_last_written = -1
	_prompt = ""
	_size = Vector2i.ZERO
	return OK


## Writes the frame of the next capture step. image: the game's view at this step (every frame of
## an episode has the same size). keys (one per schema key: a bool, 0/1 or the held fraction),
## axes (one float per schema axis, about -1..1 per frame) and embedding (embedding_dim floats;
## empty when the schema has none): the control row that led into this frame. keys and axes null:
## no control led into it. The first frame of an episode has none (nothing came before it), so
## its row is checked but not written. prompt: the scene's description from this frame on,
## written when it differs from the last one ("": unchanged). A call that fails still counts as a
## capture step: the next frame's line then carries its index, so the gap shows in the dataset.
func add_frame(
	image: Image, keys: Variant, axes: Variant, embedding := PackedFloat32Array(), prompt := ""
) -> Error:
	if episode_path.is_empty():
		return _fail(ERR_UNCONFIGURED, "call start_episode() before add_frame()")
	_step += 1
	var err := _check_image(image)
	if err != OK:
		return err
	var line := _line(keys, axes, embedding, prompt)
	if line.is_empty():
		return ERR_INVALID_PARAMETER
	err = _write(image, line)
	if err == OK:
		_last_written = _step
		_prompt = line.get("prompt", _prompt)
		_size = image.get_size()
		episode_frames += 1
	return err


## Counts a capture step whose frame is not recorded (e.g. none was drawn in time): the next
## frame's line carries its index, so the gap shows in the dataset.
func skip_frame() -> void:
	if not episode_path.is_empty():
		_step += 1


## Ends the current episode; one without frames leaves no folder behind.
func end_episode() -> void:
	if _lines != null:
		_lines.close()
		_lines = null
	elif not episode_path.is_empty():
		DirAccess.remove_absolute(episode_path)  # still empty: nothing was captured
	episode_path = ""


## Ends the episode and the capture; begin() starts another.
func close() -> void:
	end_episode()
	path = ""
	_control = {}


## capture.json's content.
func _info(control: Dictionary, fps: float, engine: String) -> Dictionary:
	return {"format": FORMAT, "version": VERSION, "control": control, "fps": fps, "engine": engine}


## The schema's four fields (names, and the dimensions as integers), or {} after an error.
func _checked_schema(schema: Dictionary) -> Dictionary:
	var keys: Variant = schema.get("keys")
	var axes: Variant = schema.get("axes")
	var dim: Variant = schema.get("embedding_dim", 0)
	var per_latent: Variant = schema.get("frames_per_latent", 4)
	var names := func(list): return list is Array and list.all(func(n): return n is String)
	if not names.call(keys) or not names.call(axes):
		_fail(ERR_INVALID_PARAMETER, "the control schema needs keys and axes: Arrays of names")
		return {}
	var count := func(n, least): return (n is int or n is float) and n >= least
	if not count.call(dim, 0) or not count.call(per_latent, 1):
		var problem := "the control schema's embedding_dim (%s) must be 0 or more and its"
		problem += " frames_per_latent (%s) 1 or more"
		_fail(ERR_INVALID_PARAMETER, problem % [dim, per_latent])
		return {}
	return {
		"keys": keys.duplicate(),
		"axes": axes.duplicate(),
		"embedding_dim": int(dim),
		"frames_per_latent": int(per_latent),
	}


## OK if the capture.json at info_path declares the same format, schema and fps as info.
func _check_existing(info_path: String, info: Dictionary) -> Error:
	var found: Variant = JSON.parse_string(FileAccess.get_file_as_string(info_path))
	var wanted: Dictionary = JSON.parse_string(JSON.stringify(info))  # numbers as JSON reads them
	if found is Dictionary:
		var same := true
		for field in ["format", "version", "control", "fps"]:  # compared as canonical JSON text
			same = same and JSON.stringify(found.get(field)) == JSON.stringify(wanted[field])
		if same:
			return OK
	var problem := "%s holds another capture (%s); this one is %s: use another folder"
	var theirs := FileAccess.get_file_as_string(info_path).strip_edges()
	return _fail(ERR_ALREADY_EXISTS, problem % [info_path, theirs, JSON.stringify(info)])


## OK if image can be this step's frame: not empty, the size of the episode's other frames.
func _check_image(image: Image) -> Error:
	if image == null or image.is_empty():
		return _fail(ERR_INVALID_DATA, "frame %d: no image (was anything drawn yet?)" % _step)
	var size := image.get_size()
	if _size != Vector2i.ZERO and size != _size:
		var problem := "frame %d is %dx%d, the episode's frames are %dx%d (one size per episode)"
		return _fail(ERR_INVALID_DATA, problem % [_step, size.x, size.y, _size.x, _size.y])
	return OK


## Saves the image, then appends its line to frames.jsonl (opened with the episode's first frame)
## and flushes it, so every line on disk is whole and names an image that is.
func _write(image: Image, line: Dictionary) -> Error:
	var image_path := episode_path.path_join(line["image"])
	var err := image.save_jpg(image_path, jpeg_quality) if jpeg else image.save_png(image_path)
	if err != OK:
		return _fail(err, "cannot save %s: %s" % [image_path, error_string(err)])
	if _lines == null:
		var lines_path := episode_path.path_join(LINES_FILE)
		_lines = FileAccess.open(lines_path, FileAccess.WRITE)
		if _lines == null:
			err = FileAccess.get_open_error()
			return _fail(err, "cannot write %s: %s" % [lines_path, error_string(err)])
	_lines.store_string(JSON.stringify(line, "", false, true) + "\n")
	_lines.flush()
	return OK


## The frames.jsonl line of the current step, or {} after an error if the row does not fit the
## schema. A control row has every part of the schema; the first line of an episode none.
func _line(
	keys: Variant, axes: Variant, embedding: PackedFloat32Array, prompt: String
) -> Dictionary:
	var line := {"image": IMAGE_NAME % [_step, "jpg" if jpeg else "png"]}
	if _step != _last_written + 1:
		line["index"] = _step  # steps were skipped since the last line
	if typeof(keys) == TYPE_NIL and typeof(axes) == TYPE_NIL and embedding.is_empty():
		pass  # no control led into this frame
	else:
		var problem := _row_problem(keys, axes, embedding)
		if not problem.is_empty():
			_fail(ERR_INVALID_PARAMETER, "frame %d: %s" % [_step, problem])
			return {}
		if _last_written >= 0:
			line["keys"] = keys.map(func(k): return (1 if k else 0) if k is bool else k)
			line["axes"] = axes.map(func(a): return float(a))
			if not embedding.is_empty():
				line["embedding"] = Array(embedding)
	if not prompt.is_empty() and prompt != _prompt:
		line["prompt"] = prompt
	return line


## Why keys, axes and embedding are not one row of the schema ("" if they are).
func _row_problem(keys: Variant, axes: Variant, embedding: PackedFloat32Array) -> String:
	if not (keys is Array and axes is Array):
		return "keys and axes must be Arrays (both null: no control), got %s and %s" % [keys, axes]
	var widths := {
		"keys": [keys.size(), _control["keys"].size()],
		"axes": [axes.size(), _control["axes"].size()],
		"embedding": [embedding.size(), _control["embedding_dim"]],
	}
	for part in widths:
		if widths[part][0] != widths[part][1]:
			var problem := "%s has %d values, the control schema has %d"
			return problem % [part, widths[part][0], widths[part][1]]
	var values: Array = keys + axes + Array(embedding)
	for value in values:
		if not (value is bool or ((value is int or value is float) and is_finite(value))):
			return "%s is not a finite number (keys %s, axes %s)" % [value, keys, axes]
	return ""


func _fail(err: Error, message: String) -> Error:
	push_error("worldsim capture: " + message)
	return err
