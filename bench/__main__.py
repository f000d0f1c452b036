"""``python -m bench [NAME [options]]``: run every benchmark, or the one named (``--list`` names them).

``make bench`` runs ``python -m bench``.
"""

from __future__ import annotations

import sys

from bench import available


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    benches = available()
    if args and args[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("benchmarks: " + ", ".join(benches))
        return 0
    if args and args[0] == "--list":
        print("\n".join(benches))
        return 0
    if args:
        name, rest = args[0], args[1:]
        if name not in benches:
            print(f"unknown benchmark {name!r}; available: {', '.join(benches)}", file=sys.stderr)
            return 2
        return benches[name](rest)
    status = 0
    for name, run in benches.items():
        print(f"=== {name} ===", flush=True)
        status = max(status, run([]))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
