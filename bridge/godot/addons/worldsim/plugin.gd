@tool
extends EditorPlugin
## Enabling the plugin adds the autoload "Worldsim": one WorldsimClient for the whole game,
## reachable from every scene as Worldsim and kept across scene changes (a session outlives the
## scene that opened it). It stays idle until Worldsim.connect_to_url() is called.
##
## The node type itself needs no registration: worldsim_client.gd declares class_name
## WorldsimClient, which already lists it in the Create Node dialog (add_custom_type would list it
## twice). Games that want a connection per scene, or several, add WorldsimClient nodes instead.

const AUTOLOAD_NAME := "Worldsim"


func _enable_plugin() -> void:
	var here := (get_script() as Script).resource_path.get_base_dir()
	add_autoload_singleton(AUTOLOAD_NAME, here.path_join("worldsim_client.gd"))


func _disable_plugin() -> void:
	remove_autoload_singleton(AUTOLOAD_NAME)
