class_name SampleCommandLine
extends RefCounted
## The sample scenes' options: the `--name=value` arguments after `--` on the command line.


static func options() -> Dictionary:
	var found := {}
	for arg in OS.get_cmdline_user_args():
		var parts: PackedStringArray = arg.trim_prefix("--").split("=", true, 1)
		if parts.size() != 2:
			push_warning("ignored argument %s (expected --name=value)" % arg)
			continue
		found[parts[0]] = parts[1]
	return found
