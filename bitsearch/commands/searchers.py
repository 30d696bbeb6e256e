"""``bitsearch searchers``: the registered searchers and their settings (type, default, help)."""

from __future__ import annotations

import argparse
import json

EPILOG = """\
examples:
  bitsearch searchers                 # every searcher, one line each
  bitsearch searchers ilp haq         # with every setting: type, default, allowed values, help
  bitsearch searchers --json          # all of it, machine-readable

a setting is given as --set KEY=VALUE to bitsearch search (read as the setting's type), or in a
bench suite as settings = { KEY = VALUE }.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("searchers", help="list the searchers and their settings",
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                              description="The registered searchers (built in, or from other packages through "
                                          "the bitsearch.searchers entry point) and their settings.")
    p.add_argument("names", nargs="*", metavar="NAME", help="show these searchers' settings in full")
    p.add_argument("--json", action="store_true", help="machine-readable output (every searcher, every setting)")
    p.set_defaults(func=cmd_searchers)


def _row(name: str) -> dict:
    from .. import searchers
    from ..errors import UserInputError
    from ..settings import SearcherSettings

    try:
        cls = searchers.get(name)
    except UserInputError as exc:
        return {"name": name, "description": f"(unavailable: {exc})", "granularities": [], "needs": "",
                "settings": []}
    settings_class = getattr(cls, "settings_class", None)
    typed = isinstance(settings_class, type) and issubclass(settings_class, SearcherSettings)
    return {"name": name, "description": getattr(cls, "description", ""),
            "granularities": list(getattr(cls, "granularities", ("layer", "kernel"))),
            "needs": getattr(cls, "needs", "any"), "deterministic": bool(getattr(cls, "deterministic", False)),
            "settings": [info.to_dict() for info in settings_class.describe()] if typed else []}


def shown(value) -> str:
    """A default as it is written after ``--set KEY=``: none, true, 300,300, a bare string."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(shown(v) for v in value) if value else "[]"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def cmd_searchers(args) -> int:
    from .. import searchers

    names = args.names or searchers.available()
    for name in args.names:
        searchers.get(name)  # an unknown name: one line listing the known ones
    rows = [_row(name) for name in names]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        grains = "/".join(r["granularities"])
        print(f"{r['name']:<{width}}  {r['description']}  [{grains}]")
        if not r["settings"]:
            continue
        if not args.names:
            print(" " * (width + 2) + "settings: " + ", ".join(f"{s['name']}={shown(s['default'])}"
                                                                for s in r["settings"]))
            continue
        key_width = max(len(s["name"]) for s in r["settings"])
        type_width = max(len(s["type"]) for s in r["settings"])
        default_width = max(len(shown(s["default"])) for s in r["settings"])
        for s in r["settings"]:
            allowed = f" [{s['allowed']}]" if s["allowed"] else ""
            print(f"  {s['name']:<{key_width}}  {s['type']:<{type_width}}  {shown(s['default']):<{default_width}}  "
                  f"{s['help']}{allowed}")
        print()
    if not args.names:
        print("\nbitsearch searchers NAME: every setting with its type, default, allowed values and help")
    return 0
