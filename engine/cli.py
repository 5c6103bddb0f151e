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
    gen.add_argument("--model", required=True, help="checkpoint directory (Hugging Face format)")
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
    if args.command == "simulate":
        from engine.scheduler.cli import main as simulate_main

        return simulate_main(args)
    raise SystemExit(f"potluck: unknown command {args.command!r}")


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
