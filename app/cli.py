"""The `potluck` command.

The app sits at the top of the data flow (app -> API -> node -> pipeline -> shard), so the entry
point lives here and hands every headless subcommand to `engine.cli`; `engine` never imports `app`.
`potluck --self-test` runs app/self_test.py headless: it never imports Qt.
"""

from __future__ import annotations

import os
import sys

from engine.cli import build_parser, run


def main(argv: list[str] | None = None) -> int:
    # Must be set before torch loads OpenMP. By default its threads spin at every barrier; when
    # another program holds a core (a volunteer's desktop always has one) a spinning thread waits
    # on a descheduled partner, and decoding slowed 24x here (0.64 vs 15.2 tok/s, one busy core).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    parser.add_argument("--self-test", nargs="?", const="", default=None, metavar="MODEL_DIR",
                        help="check that this installation works, without a screen: start a node on the demo "
                             "model (or on MODEL_DIR), answer one chat message, exit 0 if all went well")
    app_parser = parser.add_subcommand("app", help="launch the desktop app (the default)")
    app_parser.add_argument("--no-tray", action="store_true", help="show the main window instead of a tray icon")
    app_parser.add_argument("--data-dir", default=None, help="settings, logs and the node's identity (default: "
                            "$POTLUCK_HOME or the user data dir)")
    args = parser.parse_args(argv or ["app"])
    if args.self_test is not None:
        if args.command is not None:
            parser.error("--self-test runs on its own: give it no command")
        from app.self_test import run_self_test

        return run_self_test(model=args.self_test or None)
    if args.command == "app":
        from app.main import run as run_app

        return run_app(no_tray=args.no_tray, data_dir=args.data_dir)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
