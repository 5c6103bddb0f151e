"""`potluck node`: parse the command line, run a Node until SIGINT/SIGTERM, leave cleanly."""

from __future__ import annotations

import logging
import os
import sys


def main(args) -> int:
    os.environ.setdefault("RUST_LOG", "off")  # Lattica's Rust core logs to stdout otherwise
    from engine.model.errors import CheckpointError
    from engine.paths import data_dir
    from engine.swarm.node import Node, NodeOptions, free_port

    if args.host and not args.model:
        print("potluck node: --host needs --model (a checkpoint directory, catalog name or hub id).", file=sys.stderr)
        return 2
    if args.join and args.model:
        print("potluck node: --model goes with --host; a joining node serves the host's model.", file=sys.stderr)
        return 2
    try:
        listen = _address(args.listen, default_host="127.0.0.1") if args.listen else None
        api = _address(args.api, default_host="127.0.0.1")
    except ValueError as exc:
        print(f"potluck node: {exc}", file=sys.stderr)
        return 2
    home = data_dir(args.data_dir)
    _log_to(home)
    listen = listen or ("127.0.0.1", free_port("127.0.0.1"))
    options = NodeOptions(host=args.host, model=args.model, join=args.join, listen=listen, api=api, data_dir=home,
                          max_memory_gb=args.max_memory, client_only=args.client_only, backend=args.backend,
                          device=args.device, heartbeat_s=args.heartbeat, evict_after_s=max(5.0, 4 * args.heartbeat),
                          token_timeout_s=args.token_timeout, wire=args.wire)
    try:
        node = Node(options)
    except (CheckpointError, OSError) as exc:
        print(f"potluck node: {exc}", file=sys.stderr)
        return 2
    print(node.ready_line(), flush=True)
    try:
        node.wait()
    finally:
        node.close()
    return 0


def _address(text: str, default_host: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host or default_host, int(port)


def _log_to(home) -> None:
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(logs / "node.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    root.addHandler(console)
