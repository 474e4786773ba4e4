"""``worldsim serve`` and ``worldsim keys``: argument parsing and start-up (the work lives in the serve modules).

Imports torch only inside :func:`run_serve`, so building the CLI parser stays fast.
"""

from __future__ import annotations

import argparse
import signal
import sys

from ..pipeline.options import (add_model_folder_arguments, default_threads, parse_denoising_steps,
                                parse_step_indices)
from .protocol import PROTOCOL_VERSION, Limits

DEFAULT_BIND = "tcp://127.0.0.1:5555"


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    lim = Limits()
    m = p.add_argument_group("model")
    m.add_argument("--preset", metavar="NAME",
                   help="serve this model preset (small, tiny, toy, ...: `worldsim presets`) with random, untrained "
                        "weights instead of the default model: for speed checks and tests")
    m.add_argument("--model", metavar="PATH",
                   help="serve this instead of the embedded default model (the toy world, trained): a worldsim model "
                        "package (a folder with "
                        "worldsim-model.json, e.g. OUT/final of `worldsim train self-forcing`), a Wan2.1 model folder "
                        "(official or diffusers layout; with --checkpoint for Self-Forcing weights; UMT5 prompts, Wan "
                        "VAE or TAEHV frames), or one checkpoint file (worldsim .safetensors, Self-Forcing .pt with "
                        "--config; hashing prompts, preview frames)")
    m.add_argument("--config", help="architecture for a checkpoint file that stores none (preset name or Wan folder)")
    add_model_folder_arguments(m, decoder_default=None)
    m.add_argument("--height", type=int, help="video height in pixels (default 128; 480 for Wan2.1-sized models)")
    m.add_argument("--width", type=int, help="video width in pixels (default 128; 832 for Wan2.1-sized models)")
    m.add_argument("--fps", type=float, help="frame rate sessions are paced at (default: a package's, else 16)")
    m.add_argument("--sink", type=int, help="KV-cache sink, latent frames (default: a package's, else 3)")
    m.add_argument("--window", type=int, help="KV-cache rolling window, latent frames (default: a package's, else 12)")
    m.add_argument("--chunk-latents", type=int, metavar="N",
                   help="latent frames per chunk (default: the model's, 3 for Wan2.1 Self-Forcing); 1 or 2 cut "
                        "control-to-photon latency at some cost in quality")
    m.add_argument("--steps", type=parse_denoising_steps, metavar="N|T1,T2,..",
                   help="denoising steps per chunk: a count, evenly spaced from 1000 (4: 1000,750,500,250, Self "
                        "Forcing's), or the timesteps themselves (default: the model package's; the default model's "
                        "1000,250); fewer run faster, at some cost in quality (docs/EXPERIMENTS.md: the toy model "
                        "at 2, 3 and 4)")
    m.add_argument("--control-guidance", type=float, metavar="S",
                   help="classifier-free guidance on the controls: each denoising step also runs without them and "
                        "extrapolates, S times as far (1: off; >1 follows the controls more strongly, each step "
                        "then a batch of two; default: the model package's, else 1)")
    m.add_argument("--text-guidance", type=float, metavar="S",
                   help="classifier-free guidance on the prompt: each denoising step also runs with the empty "
                        "prompt and extrapolates, S times as far (1: off; >1 holds the prompt's look more strongly, "
                        "one more branch in each step's batch; default: the model package's, else 1)")
    m.add_argument("--guided-steps", type=parse_step_indices, metavar="I,J,..",
                   help="the denoising steps guidance applies to, 0 = the first (default: the model package's, else "
                        "all); the toy model holds its theme as well with the last step alone, at a fraction of "
                        "the cost")
    m.add_argument("--hold-idle-reference", action=argparse.BooleanOptionalAction,
                   help="while nothing is held, a frame-reference model reads the frame the idle stretch began with, "
                        "not its own last frame (for worlds that do not move by themselves, like the toy world; "
                        "default: the model package's, else off)")
    m.add_argument("--reference-start", type=int, metavar="K",
                   help="a frame-reference model's chunks start from their reference frame noised to denoising step "
                        "K and skip the K steps before it: fewer forwards per frame, frames that keep what the "
                        "reference shows (0: every step from noise; default: the model package's, else 0; the "
                        "default model serves 2; docs/EXPERIMENTS.md: 0..3 compared)")
    m.add_argument("--no-reference-flow", dest="reference_flow", action="store_false",
                   help="serve a package that has a reference flow without it: the DiT reads its last frame unmoved "
                        "(comparisons; the default model walks only with it)")
    m.add_argument("--control-keys", type=_names, default=("W", "A", "S", "D", "Space", "Shift"), metavar="K1,K2,..",
                   help="control keys of a preset's control module (default W,A,S,D,Space,Shift)")
    m.add_argument("--control-axes", type=_names, default=("mouse_dx", "mouse_dy"), metavar="A1,A2,..",
                   help="control axes of a preset's control module (default mouse_dx,mouse_dy)")
    m.add_argument("--embedding-dim", type=int, default=0, help="engine embedding width of a preset (default 0)")
    m.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    m.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    m.add_argument("--threads", type=int, default=default_threads(),
                   help=f"torch CPU threads (default {default_threads()}: all cores but one, which the socket loop and "
                        "a local client need; oversubscribed torch threads stall for seconds)")
    m.add_argument("--max-batch", type=int, metavar="N",
                   help="generate up to N sessions in one batched forward (default: 8 on CUDA, 1 on a CPU, where "
                        "batching gains little)")
    n = p.add_argument_group("network and limits")
    n.add_argument("--bind", default=DEFAULT_BIND, help=f"ZeroMQ endpoint (default {DEFAULT_BIND}; "
                                                        "tcp://127.0.0.1:* picks a free port)")
    n.add_argument("--keys", metavar="DIR", help="CurveZMQ key directory from `worldsim keys DIR`: encrypt and accept "
                                                 "only the clients in DIR/authorized")
    n.add_argument("--insecure", action="store_true", help="allow a non-loopback --bind without --keys, or a "
                                                            "non-loopback --ws without TLS (unsafe)")
    n.add_argument("--max-sessions", type=int, default=lim.max_sessions, help=f"(default {lim.max_sessions})")
    n.add_argument("--max-sessions-per-client", type=int, default=lim.max_sessions_per_client,
                   help=f"(default {lim.max_sessions_per_client})")
    n.add_argument("--max-clients", type=int, default=lim.max_clients, help=f"(default {lim.max_clients})")
    n.add_argument("--queue-frames", type=int, default=lim.queue_frames,
                   help=f"frames buffered per session for a slow client (default {lim.queue_frames})")
    n.add_argument("--idle-timeout", type=float, default=lim.idle_timeout_s,
                   help=f"drop clients silent this many seconds (default {lim.idle_timeout_s:g})")
    n.add_argument("--max-message-bytes", type=int, help="inbound message size limit (default: fits a start frame "
                                                         "or max_samples control rows for this model)")
    w = p.add_argument_group("WebSocket gateway (browsers, Godot, Unity; bridge/PROTOCOL.md section 14)")
    w.add_argument("--ws", metavar="HOST:PORT",
                   help="also serve protocol v1 over WebSocket here (e.g. 127.0.0.1:8765), with the browser client at "
                        "http://HOST:PORT/")
    add_ws_security_arguments(w)
    o = p.add_argument_group("logs")
    o.add_argument("--log-format", choices=["text", "json"], default="text")
    o.add_argument("--log-level", default="INFO")
    o.add_argument("--stats-interval", type=float, default=30.0, help="seconds between per-session stats logs (0: off)")


def add_ws_security_arguments(g) -> None:
    g.add_argument("--ws-token-file", metavar="FILE", help="token WebSocket clients must give (?token=...); required "
                                                            "off loopback; `worldsim keys DIR` writes DIR/ws.token")
    g.add_argument("--ws-cert", metavar="PEM", help="TLS certificate chain: serve wss:// (with --ws-key)")
    g.add_argument("--ws-key", metavar="PEM", help="TLS private key for --ws-cert")
    g.add_argument("--ws-queue-frames", type=int, default=8, metavar="N",
                   help="frames the gateway holds for a slow WebSocket client before it stops reading from the daemon, "
                        "which then drops that session's oldest frames (default 8)")


def host_port(text: str) -> tuple[str, int]:
    """'127.0.0.1:8765', '[::1]:8765' or ':8765' (loopback) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8765)")
    return host.strip("[]") or "127.0.0.1", int(port)


def local_endpoint(endpoint: str) -> str:
    """The address a process on this machine reaches a daemon bound to ``endpoint`` at."""
    for wildcard in ("://0.0.0.0:", "://*:", "://[::]:"):
        endpoint = endpoint.replace(wildcard, "://127.0.0.1:")
    return endpoint


def gateway_config(args: argparse.Namespace, listen: str, daemon: str, curve, max_message_bytes: int):
    from .gateway import GatewayConfig, read_token

    host, port = host_port(listen)
    return GatewayConfig(daemon=daemon, host=host, port=port, token=read_token(args.ws_token_file), cert=args.ws_cert,
                         key=args.ws_key, insecure=args.insecure, curve=curve, max_message_bytes=max_message_bytes,
                         queue_frames=args.ws_queue_frames)


def run_serve(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from ..model_package import default_package
    from ..runtime import RuntimeOptions, build_runtime
    from .daemon import Daemon, DaemonConfig
    from .logs import configure

    configure(args.log_format, args.log_level)
    torch.set_num_threads(args.threads)
    if args.model and args.preset:
        print("error: give --model PATH or --preset NAME, not both", file=sys.stderr)
        return 2
    try:
        model = args.model or (None if args.preset else str(default_package()))
        backend = build_runtime(RuntimeOptions(
            preset=args.preset or "small", model=model, config=args.config, height=args.height, width=args.width,
            device=args.device, dtype=args.dtype, keys=args.control_keys, axes=args.control_axes,
            embedding_dim=args.embedding_dim, fps=args.fps, sink_frames=args.sink, window_frames=args.window,
            chunk_latents=args.chunk_latents, checkpoint=args.checkpoint and str(args.checkpoint),
            use_ema=args.use_ema, decoder=args.decoder or "auto", taehv=args.taehv and str(args.taehv),
            attn=args.attn, compile=args.compile, offload_text_encoder=args.offload_text_encoder,
            control_guidance=args.control_guidance, text_guidance=args.text_guidance,
            guided_steps=args.guided_steps, denoising_steps=args.steps, reference_flow=args.reference_flow,
            hold_idle_reference=args.hold_idle_reference, reference_start=args.reference_start))
        lim = dataclasses.replace(Limits(), max_sessions=args.max_sessions, max_clients=args.max_clients,
                                  max_sessions_per_client=args.max_sessions_per_client, queue_frames=args.queue_frames,
                                  idle_timeout_s=args.idle_timeout, heartbeat_s=min(2.0, args.idle_timeout / 4),
                                  max_message_bytes=args.max_message_bytes)
        daemon = Daemon(backend, DaemonConfig(bind=args.bind, limits=lim, keys_dir=args.keys, insecure=args.insecure,
                                              stats_interval_s=args.stats_interval, max_batch=args.max_batch))
        gateway = None
        if args.ws:
            from .gateway import start_in_thread
            from .security import ClientCurve

            curve = ClientCurve.from_dir(args.keys, "gateway") if args.keys else None
            gateway = start_in_thread(gateway_config(args, args.ws, local_endpoint(daemon.endpoint), curve,
                                                        daemon.limits.max_message_bytes))
    except FileNotFoundError as e:
        print(f"error: {e}" + (f"; with --keys, --ws needs a client key named 'gateway': `worldsim keys {args.keys} "
                               "--client gateway`" if args.ws and args.keys else ""), file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if backend.untrained:
        print(f"worldsim serve: NOTE the model is the {backend.name!r} preset with RANDOM, UNTRAINED weights "
              "(--preset). Frames are abstract patterns that respond to prompts and controls but depict nothing. "
              "Without --preset the embedded toy-world model is served; real weights with --model PATH.",
              file=sys.stderr)
    h, w = backend.video_shape
    print(f"worldsim serve: listening on {daemon.endpoint} (protocol {PROTOCOL_VERSION}, {w}x{h} at {backend.fps:g} "
          f"fps, {'CURVE' if args.keys else 'no encryption'}); "
          f"connect with `worldsim play --connect {daemon.endpoint}`",
          file=sys.stderr, flush=True)
    if gateway is not None:
        print(f"worldsim serve: WebSocket gateway on {gateway.url} (browser client: "
              f"{gateway.page_url})", file=sys.stderr, flush=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda num, _frame: daemon.request_stop(f"daemon stopping ({signal.Signals(num).name})"))
    try:
        daemon.serve_forever()
    finally:
        daemon.close()  # tells every client, the gateway's connections included, that it is stopping
        if gateway is not None:
            gateway.stop()  # gives its connections time to pass that notice on
            gateway.stopped.wait(5.0)
    return 0


def add_gateway_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connect", default=DEFAULT_BIND, metavar="ENDPOINT", help=f"the daemon (default {DEFAULT_BIND})")
    p.add_argument("--listen", default="127.0.0.1:8765", metavar="HOST:PORT",
                   help="WebSocket address (default 127.0.0.1:8765); the browser client is served at /")
    p.add_argument("--keys", metavar="DIR", help="the daemon's CurveZMQ key directory, if it uses one")
    p.add_argument("--key-name", default="gateway", help="this gateway's client key pair in --keys (default gateway)")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --listen without TLS (unsafe)")
    add_ws_security_arguments(p)
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument("--log-level", default="INFO")


def run_gateway(args: argparse.Namespace) -> int:
    """A WebSocket gateway in its own process, a client of a running daemon (asks it for its limits first)."""
    import asyncio

    from ..client import Client, ClientError
    from .gateway import Gateway
    from .logs import configure
    from .security import ClientCurve

    configure(args.log_format, args.log_level)
    try:
        curve = ClientCurve.from_dir(args.keys, args.key_name) if args.keys else None
        with Client(args.connect, name="worldsim-gateway", curve=curve, timeout=10) as probe:
            max_bytes = probe.welcome.limits["max_message_bytes"]
        gateway = Gateway(gateway_config(args, args.listen, args.connect, curve, max_bytes))
    except (OSError, ValueError, ClientError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, gateway.stop)
        task = asyncio.create_task(gateway.serve())
        await asyncio.to_thread(gateway.started.wait)
        print(f"worldsim gateway: {gateway.url} -> {args.connect} (browser client: "
              f"{gateway.page_url})", file=sys.stderr, flush=True)
        await task

    try:
        asyncio.run(main())
    except OSError as e:
        print(f"error: the gateway could not listen on {args.listen}: {e}", file=sys.stderr)
        return 2
    return 0


def add_keys_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="key directory (created if needed; the daemon's key pair is made once)")
    p.add_argument("--client", default="client", help="name of the client key pair to add (default: client)")


def run_keys(args: argparse.Namespace) -> int:
    from .security import create_keys

    try:
        paths = create_keys(args.dir, args.client)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"daemon key pair:   {paths['server_secret']} (keep on the daemon host) and {paths['server_public']}\n"
          f"client {args.client!r}: {paths['client_secret']} (give to that client with {paths['server_public'].name}); "
          f"authorised as {paths['client_public']}\n"
          f"serve:  worldsim serve --bind tcp://0.0.0.0:5555 --keys {args.dir}\n"
          f"play:   worldsim play --connect tcp://HOST:5555 --keys {args.dir} --key-name {args.client}\n"
          f"WebSocket token: {paths['ws_token']} (worldsim serve --ws HOST:PORT --ws-token-file {paths['ws_token']})")
    return 0
