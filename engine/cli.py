"""Headless subcommands of `potluck`: generate, node, profile, simulate.

Heavy imports (torch, transformers, lattica) happen inside the subcommand that needs them, so
`potluck --help` and `potluck simulate` start fast and work without torch installed.
"""

from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose subcommands can be added later (the app adds `app`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._commands = self.add_subparsers(dest="command", metavar="COMMAND",
                                             parser_class=argparse.ArgumentParser)

    def add_subcommand(self, name: str, **kwargs) -> argparse.ArgumentParser:
        return self._commands.add_parser(name, **kwargs)


def build_parser() -> Parser:
    parser = Parser(prog="potluck", description="Run large language models on a swarm of volunteers' computers.")

    gen = parser.add_subcommand("generate", help="run a model in this process and print its answer")
    gen.add_argument("--model", required=True,
                     help="checkpoint directory, catalog name (resources/catalog.toml) or Hugging Face id")
    gen.add_argument("--prompt", required=True, help="the user's message")
    gen.add_argument("--max-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 means greedy (the default)")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--shards", type=int, default=1, help="run the model as K chained layer shards")
    gen.add_argument("--backend", choices=["auto", "torch", "mlx", "gguf"], default="auto")
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    gen.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default="auto")
    gen.add_argument("--system", default=None, help="optional system prompt")
    gen.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")

    node = parser.add_subcommand("node", help="run a swarm node: host a swarm or join one")
    role = node.add_mutually_exclusive_group(required=True)
    role.add_argument("--host", action="store_true", help="start a swarm (this node holds its scheduler)")
    role.add_argument("--join", metavar="MULTIADDR", help="join the swarm whose host is at this address")
    node.add_argument("--model", help="with --host: checkpoint directory, catalog name or Hugging Face id")
    node.add_argument("--listen", default=None, metavar="HOST:PORT",
                      help="peer-to-peer address (default 127.0.0.1 and a free port; give this machine's LAN "
                           "or public address so that other computers can reach it)")
    node.add_argument("--api", default="127.0.0.1:4280", metavar="HOST:PORT",
                      help="OpenAI-compatible API (default 127.0.0.1:4280; port 0 picks a free one)")
    node.add_argument("--data-dir", default=None, help="identity key, settings, caches, logs")
    node.add_argument("--max-memory", type=float, default=None, metavar="GB", help="memory to lend the swarm")
    node.add_argument("--client-only", action="store_true", help="join without serving layers")
    node.add_argument("--backend", choices=["auto", "torch", "mlx"], default="auto")
    node.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    node.add_argument("--wire", choices=["exact", "q8"], default="exact",
                      help="with --host: hidden states between stages in the model's dtype (exact, the default) "
                           "or in 8-bit blocks (q8: half the bytes on volunteers' uplinks, a rounding error of "
                           "about 0.4%% per hop)")
    node.add_argument("--heartbeat", type=float, default=1.0, metavar="S", help=argparse.SUPPRESS)
    node.add_argument("--token-timeout", type=float, default=30.0, metavar="S", help=argparse.SUPPRESS)

    prof = parser.add_subcommand("profile", help="measure this machine's GPU/CPU and print its profile")
    prof.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    prof.add_argument("--model", default=None, help="also time one decoder layer of this checkpoint")
    prof.add_argument("--data-dir", default=None, help="where the profile is cached (default: $POTLUCK_HOME "
                      "or the user data dir)")
    prof.add_argument("--json", action="store_true")

    sim = parser.add_subcommand("simulate", help="simulate a swarm scenario under scheduling policies")
    sim.add_argument("scenario", help="scenario file (TOML)")
    sim.add_argument("--policy", action="append", dest="policies", metavar="NAME",
                     help="policy to run (repeatable; default: all)")
    sim.add_argument("--json", action="store_true")
    sim.add_argument("--plot", metavar="FILE.png")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.command is None:
        build_parser().print_help()
        return 0
    if args.command == "generate":
        from engine.generate_cli import main as generate_main

        return generate_main(args)
    if args.command == "node":
        from engine.swarm.node_cli import main as node_main

        return node_main(args)
    if args.command == "profile":
        return _profile(args)
    if args.command == "simulate":
        from engine.scheduler.cli import main as simulate_main

        return simulate_main(args)
    raise SystemExit(f"potluck: unknown command {args.command!r}")


def _profile(args) -> int:
    import json

    from engine.backends.choose import pick_backend
    from engine.model.errors import CheckpointError
    from engine.paths import data_dir
    from engine.profile import measure, measure_layer, profile_path, save

    try:
        backend = pick_backend("auto")  # what `potluck node` would serve with: MLX on a Mac
        profile = measure(args.device, backend)
        if args.model:
            measure_layer(profile, args.model)
    except CheckpointError as exc:
        print(f"potluck profile: {exc}", file=sys.stderr)
        return 2
    save(profile, profile_path(data_dir(args.data_dir), args.device, backend))
    if args.json:
        print(json.dumps(profile.as_dict()))
        return 0
    gib = 2**30
    print(f"{profile.vendor} {profile.device_name} ({profile.backend})")
    usable = f" ({profile.memory_usable_bytes / gib:.1f} GiB usable by the GPU)" if profile.memory_usable_bytes else ""
    print(f"  memory      {profile.memory_total_bytes / gib:.1f} GiB total{usable}, "
          f"{profile.memory_free_bytes / gib:.1f} GiB free")
    print(f"  matmul      {profile.matmul_tflops_half:.2f} TFLOP/s (16-bit), {profile.matmul_tflops_fp32:.2f} TFLOP/s (fp32)")
    print(f"  bandwidth   {profile.bandwidth_gbs:.1f} GB/s")
    for key, layer in profile.layer_ms.items():
        print(f"  layer       {key}: {layer['decode_ms']:.2f} ms per decode step, "
              f"{layer['prefill_ms_per_token']:.3f} ms per prefill token")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
