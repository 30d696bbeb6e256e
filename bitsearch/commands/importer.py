"""``bitsearch import FILE --from hawq|nncf``: read another tool's bit widths as a policy."""

from __future__ import annotations

from .common import check_outputs, write_output

DESCRIPTION = """\
Read the bit widths of another tool and write a bitsearch policy JSON.

  hawq  a HAWQ-V3 bit_config dictionary (JSON, or a Python file such as HAWQ-V3's
        bit_config.py, read as literals; --config picks one of several)
  nncf  an NNCF config with compression.initializer.precision.bitwidth_per_scope

With --task the layers are checked against the task's model (every layer present,
no unknown ones) and the policy is stamped with the model's fingerprint."""


def register(subparsers) -> None:
    import argparse

    p = subparsers.add_parser("import", help="read a HAWQ-V3 bit_config or NNCF bitwidths as a policy",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="the other tool's file")
    p.add_argument("--from", dest="source_format", required=True, choices=("hawq", "nncf"),
                   help="the file's format")
    p.add_argument("--task", help="check the layers against this task's model")
    p.add_argument("--config", metavar="NAME", help="hawq: which configuration of a file that holds several")
    p.add_argument("--names", choices=("torchvision", "hawq"), default=None,
                   help="hawq: layer names of the policy (default torchvision: conv1, layer1.0.conv1, fc; "
                        "hawq: stage1.unit1.convbn1 ...)")
    p.add_argument("--act-bits", type=int, default=8, metavar="BITS",
                   help="nncf: activation width of layers the file gives none (default 8)")
    p.add_argument("--out", metavar="FILE", help="write the policy here (default: standard output)")
    p.set_defaults(func=cmd_import)


def cmd_import(args) -> int:
    from .. import interop

    check_outputs(("--out", args.out))
    space = _task_space(args.task) if args.task else None
    model = {"name": space.model_name, "fingerprint": space.fingerprint} if space is not None else None
    if args.source_format == "hawq":
        naming = args.names or "torchvision"
        config = interop.read_hawq_file(args.file, args.config)
        policy = interop.from_hawq(config, naming=naming, model=model)
    else:
        data = interop.read_nncf_file(args.file)
        policy = interop.from_nncf(data, default_act_bits=args.act_bits, model=model,
                                   layer_order=list(space.names) if space is not None else None)
    if space is not None:
        policy = check_against_space(policy, space, source=args.file)
    write_output(policy.to_json(), args.out, f"{len(policy.bits)} layers")
    return 0


def _task_space(name):
    from ..build import SpaceOptions, space_for_task
    from ..tasks import get_task

    task = get_task(name)
    return space_for_task(task, SpaceOptions(act_bits=None))


def check_against_space(policy, space, *, source=None):
    """Every layer of ``space`` present, no unknown layer; widths checked as policies are
    (any width 1..16 allowed, since the other tool chose them)."""
    from ..policy import validate_policy

    widths = {b for _, bits in policy.bits for b in bits.kernel_bits(1)} | set(space.weight_bits)
    acts = {bits.act_bits for _, bits in policy.bits}
    act_bits = None if acts == {None} else tuple(sorted(a for a in acts if a is not None))
    wide = space.with_(weight_bits=tuple(sorted(widths)), act_bits=act_bits, pinned=())
    return validate_policy(policy, wide, source=source)
