"""``bitsearch export POLICY --to csv|hawq|nncf``: a policy in another tool's format."""

from __future__ import annotations

from .common import check_outputs, write_output


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="convert a policy to another tool's format")
    p.add_argument("policy", help="policy JSON file")
    p.add_argument("--to", required=True, help="target format: csv, hawq (HAWQ-V3 bit_config), nncf (NNCF bitwidth_per_scope)")
    p.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from ..export import export_policy
    from ..policy import load_policy

    check_outputs(("--out", args.out))
    write_output(export_policy(load_policy(args.policy), args.to), args.out)
    return 0
