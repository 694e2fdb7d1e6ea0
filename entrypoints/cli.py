"""`calendly-connect`: the command line of the service (subcommands grow with the service)."""

from __future__ import annotations

import argparse
import sys

COMMANDS = {
    "sandbox": "run the Calendly sandbox (a local Calendly look-alike); see --help",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="calendly-connect",
        description="Let each user of a web app connect their own Calendly account.",
        epilog="commands:\n" + "\n".join(f"  {name:<10} {text}" for name, text in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(COMMANDS), help="what to run")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args, rest = parser.parse_known_args(argv[:1])
    if args.command == "sandbox":
        # The sandbox is its own package; the CLI is the one place in the core that starts it.
        from calendly_sandbox import main as sandbox_main

        return sandbox_main(argv[1:] + rest)
    return 2  # pragma: no cover - argparse rejects unknown commands first


if __name__ == "__main__":
    raise SystemExit(main())
