"""``bitsearch import FILE --from hawq|nncf``: read another tool's bit widths as a policy."""

from __future__ import annotations

from .common import add_model_options, check_outputs, optional_model_source, write_output

DESCRIPTION = """\
Read the bit widths of another tool and write a bitsearch policy JSON.

  hawq  a HAWQ-V3 bit_config dictionary (JSON, or a Python file such as HAWQ-V3's
        bit_config.py, read as literals; --config picks one of several) of a ResNet-18,
        -50 or -101 (stem quant_init_block_convbn or quant_init_convbn; the name mapping
        is in docs/interop.md)
  nncf  an NNCF 2.x config (tested with NNCF 2.19; NNCF 3 dropped the format) with
        compression.initializer.precision.bitwidth_per_scope; its op|OUTPUT activation
        quantizers are placed on the layers they feed by tracing --task's model

With --task the layers are checked against the task's model (every layer present,
no unknown ones) and the policy is stamped with the model's fingerprint."""


def register(subparsers) -> None:
    import argparse

    p = subparsers.add_parser("import", help="read a HAWQ-V3 bit_config or NNCF bitwidths as a policy",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="the other tool's file")
    p.add_argument("--from", dest="source_format", required=True, choices=("hawq", "nncf"),
                   help="the file's format")
    p.add_argument("--task", help="check the layers against this task's model (a built-in, or "
                                  "package.module:factory returning a Task or a trained model)")
    p.add_argument("--config", metavar="NAME",
                   help="hawq: which configuration of a file that holds several (its full name, e.g. "
                        "bit_config_resnet50_bops_0.5, or resnet50_bops_0.5, or with --task resnet50 the scheme "
                        "bops_0.5, as quant_train.py's --arch and --quant-scheme); not needed when it holds one")
    p.add_argument("--names", choices=("torchvision", "hawq"), default=None,
                   help="hawq: layer names of the policy (default torchvision: conv1, layer1.0.conv1, fc; "
                        "hawq: stage1.unit1.convbn1 ...)")
    p.add_argument("--act-bits", type=int, default=8, metavar="BITS",
                   help="nncf: activation width of layers the file gives none (default 8)")
    p.add_argument("--out", metavar="FILE", help="write the policy here (default: standard output)")
    add_model_options(p)
    p.set_defaults(func=cmd_import)


def cmd_import(args) -> int:
    from .. import interop

    check_outputs(("--out", args.out))
    source = optional_model_source(args, scoring=False)
    space = _task_space(source) if source is not None else None
    model = {"name": space.model_name, "fingerprint": space.fingerprint} if space is not None else None
    if args.source_format == "hawq":
        naming = args.names or "torchvision"
        arch = args.task.split(":")[-1] if args.task else None
        config = interop.read_hawq_file(args.file, args.config, arch=arch)
        policy = interop.from_hawq(config, naming=naming, model=model)
    else:
        data = interop.read_nncf_file(args.file)
        producers = None
        if source is not None:
            producers = interop.nncf_model_facts(source)[2]
        policy = interop.from_nncf(data, default_act_bits=args.act_bits, model=model,
                                   layer_order=list(space.names) if space is not None else None,
                                   producers=producers)
    if space is not None:
        policy = check_against_space(policy, space, source=args.file)
    write_output(policy.to_json(), args.out, f"{len(policy.bits)} layers")
    return 0


def _task_space(source):
    from ..build import SpaceOptions, TrainedModel, architecture, space_for_task

    if isinstance(source, TrainedModel):
        model, example = architecture(source)
        return SpaceOptions(act_bits=None).discover(model, example, model_name=source.name)
    return space_for_task(source, SpaceOptions(act_bits=None))


def check_against_space(policy, space, *, source=None):
    """Every layer of ``space`` present, no unknown layer; widths checked as policies are
    (any width 1..16 allowed, since the other tool chose them)."""
    from ..policy import validate_policy

    widths = {b for _, bits in policy.bits for b in bits.kernel_bits(1)} | set(space.weight_bits)
    acts = {bits.act_bits for _, bits in policy.bits}
    act_bits = None if acts == {None} else tuple(sorted(a for a in acts if a is not None))
    wide = space.with_(weight_bits=tuple(sorted(widths)), act_bits=act_bits, pinned=(), tied=())  # the other tool chose
    return validate_policy(policy, wide, source=source)
