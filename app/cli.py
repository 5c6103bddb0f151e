"""The `potluck` command.

The app sits at the top of the data flow (app -> API -> node -> pipeline -> shard), so the entry
point lives here and hands every headless subcommand to `engine.cli`; `engine` never imports `app`.
"""

from __future__ import annotations

import sys

from engine.cli import build_parser, run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    app_parser = parser.add_subcommand("app", help="launch the desktop app (the default)")
    app_parser.add_argument("--no-tray", action="store_true", help="show the main window instead of a tray icon")
    args = parser.parse_args(argv or ["app"])
    if args.command == "app":
        print("The desktop app is not built yet: use `potluck generate` for now.", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
