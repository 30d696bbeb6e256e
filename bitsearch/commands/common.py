"""What several commands share: the model and search-space options and how a result is printed."""

from __future__ import annotations

import argparse


def seed_arg(text: str) -> int:
    """``--seed``: an integer in [0, 2**32) (what numpy's and torch's generators take)."""
    from ..errors import UserInputError
    from ..search import check_seed

    try:
        return check_seed(int(text))
    except (ValueError, UserInputError):
        raise argparse.ArgumentTypeError(f"the seed must be an integer in [0, 2**32) (got {text!r})") from None


def threads_arg(text: str) -> int:
    """``--threads``: an integer, capped at the machine's cores (with a warning); a count
    below 1 is refused where it is applied (:func:`bitsearch.progress.limit_threads`)."""
    from ..progress import cap_threads

    try:
        threads = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads takes a whole number of threads (got {text!r})") from None
    return cap_threads(threads) if threads >= 1 else threads


def width_arg(text: str) -> int:
    """A single width in bits (``--pin-first-last``), in the range ``--weight-bits`` takes."""
    from ..errors import UserInputError
    from ..space import parse_bits

    try:
        widths = parse_bits(text)
    except UserInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if len(widths) != 1 or str(widths[0]) != text.strip():
        raise argparse.ArgumentTypeError(f"give one width in bits, e.g. 8 (got {text!r})")
    return widths[0]


TASK_HELP = ("a built-in task (bitsearch tasks), or package.module:factory returning a Task or a "
             "bitsearch.TrainedModel (see docs/tasks.md)")


def add_model_options(parser) -> None:
    """``--weights FILE`` and ``--data KIND:PATH``: your weights and your data for a task's architecture."""
    g = parser.add_argument_group("your weights and data (for a task's architecture)")
    g.add_argument("--weights", metavar="FILE",
                   help="a state_dict for the task's architecture (torch.save(model.state_dict(), FILE); read "
                        "with weights_only=True), e.g. --task resnet18 --weights r18.pt; a classifier with another "
                        "number of classes is taken as it is")
    g.add_argument("--data", metavar="KIND:PATH",
                   help="score on your data: imagefolder:DIR (DIR/<class>/<image>.png|jpg, read batch by batch with "
                        "the usual resize, centre crop and normalisation; DIR/train and DIR/val when both exist)")


def model_source(args, *, scoring: bool = True):
    """What ``--task`` (with ``--weights`` / ``--data``) names: a Task, or a
    :class:`~bitsearch.build.TrainedModel` (a user factory's, or the task's architecture
    with your weights and data).  ``scoring=False``: only the architecture is needed (costs)."""
    from ..build import TrainedModel, model_from_task, resolve_source
    from ..errors import UserInputError

    weights, data = getattr(args, "weights", None), getattr(args, "data", None)
    if data is not None:
        from ..data import parse_data

        parse_data(data)  # fail on a bad --data before anything is built
    source = resolve_source(args.task)
    if weights is None and data is None:
        return source
    if isinstance(source, TrainedModel):
        raise UserInputError(f"--weights and --data load into a task's architecture, but {args.task!r} returns a "
                             "trained model that brings its own weights and data")
    return model_from_task(source, weights=weights, data=data, width_mult=getattr(args, "width_mult", 1.0),
                           scoring=scoring)


def optional_model_source(args, *, scoring: bool = True):
    """:func:`model_source` for a command whose ``--task`` is optional (export, import):
    None without ``--task``, where ``--weights`` or ``--data`` is an error."""
    from ..errors import UserInputError

    if args.task:
        return model_source(args, scoring=scoring)
    if getattr(args, "weights", None) or getattr(args, "data", None):
        raise UserInputError("--weights and --data load into the architecture --task names: give --task")
    return None


def source_width(source, args) -> float:
    """The width multiplier to build ``source`` at: ``--width-mult`` for a Task; 1 for a
    trained model (``model_from_task`` already built it at ``--width-mult``)."""
    from ..build import TrainedModel

    return 1.0 if isinstance(source, TrainedModel) and (getattr(args, "weights", None) or getattr(args, "data", None)) \
        else float(getattr(args, "width_mult", 1.0))


def add_space_options(parser) -> None:
    """``--granularity --weight-bits --act-bits --scale-group --pin --pin-first-last
    --tie-shared-inputs --width-mult``."""
    g = parser.add_argument_group("search space")
    g.add_argument("--granularity", choices=("layer", "kernel"), default="layer",
                   help="one weight width per layer, or per output kernel (default: layer)")
    g.add_argument("--weight-bits", default="2-8", metavar="BITS",
                   help="weight choices: a list (2,3,4,8), a range (2-8), or widths mixed with named formats "
                        "(4,8,fp8_e4m3,nvfp4,mxfp4); default 2-8")
    g.add_argument("--act-bits", default=None, metavar="BITS",
                   help="activation widths: one value fixes them, several are searched per layer (4,8), 'none' "
                        "leaves activations in float (default: 8; none, weight-only, for language models)")
    g.add_argument("--scale-group", type=_scale_group, default=None, metavar="G",
                   help="one fp16 scale per G weights along each kernel's input (32, 64, 128), counted in the "
                        "size and bits costs (default: one fp32 scale per kernel)")
    g.add_argument("--pin", action="append", default=[], metavar="LAYER=W",
                   help="pin a layer (or every layer matching a pattern, e.g. '*embed_tokens') to weight width or "
                        "format W (32: float); repeat for several")
    g.add_argument("--pin-first-last", type=width_arg, default=None, metavar="N",
                   help="pin the first and last layer at N bits (weights and activations)")
    g.add_argument("--tie-shared-inputs", action=argparse.BooleanOptionalAction, default=None,
                   help="give layers that read the same tensor (q/k/v, gate/up) one width (default: tied when "
                        "activations are quantized, free when they stay float)")
    g.add_argument("--width-mult", type=float, default=1.0, metavar="M",
                   help="build the task's model at this width multiplier (default 1.0)")


def whole_number_arg(minimum: int, message: str):
    """An argparse type: a whole number of at least ``minimum``, else ``message``
    (``{text!r}`` in it: what was given)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(message.format(text=text))
        return value

    return parse


_scale_group = whole_number_arg(1, "{text!r} is not a positive group size (e.g. 32, 64, 128)")


def parse_pins(pairs) -> tuple[tuple[str, object], ...]:
    """``LAYER=W`` strings into ``(pattern, width or format)`` pairs."""
    from .. import formats
    from ..errors import UserInputError

    out = []
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        choice = formats.normalize_choice(value.strip())
        try:
            if not sep or not name.strip():
                raise ValueError("expected LAYER=W")
            formats.check_choice(choice)
        except ValueError as exc:
            raise UserInputError(f"--pin {pair!r}: {exc} (e.g. --pin model.embed_tokens=8, --pin lm_head=32)") \
                from None
        out.append((name.strip(), choice))
    return tuple(out)


def default_act_bits(source) -> str:
    """The ``--act-bits`` a source gets when none is given: ``none`` for language models
    (weight-only quantization), else ``8``."""
    return "none" if getattr(source, "weight_only", False) else "8"


def space_options(args, source=None):
    """The :class:`~bitsearch.build.SpaceOptions` of :func:`add_space_options`' arguments
    (``source``: the task or trained model, for its default activation widths)."""
    from ..build import SpaceOptions
    from ..space import parse_bits, parse_weight_choices

    act_text = args.act_bits if args.act_bits is not None else default_act_bits(source)
    return SpaceOptions(granularity=args.granularity, weight_bits=parse_weight_choices(args.weight_bits),
                        act_bits=parse_bits(act_text, allow_none=True), pin_first_last=args.pin_first_last,
                        scale_group=args.scale_group, tie_shared_inputs=args.tie_shared_inputs,
                        pins=parse_pins(args.pin))


SUMMARY_PAST = 40  # layers; a larger policy is printed as a summary unless --verbose


def print_result(problem, policy, metrics, costs, *, verbose: bool = False) -> None:
    """A policy layer by layer (a summary of its widths past ``SUMMARY_PAST`` layers, unless
    ``verbose``), its costs against the problem's budgets, and its metrics."""
    from ..budget import format_cost

    space = problem.space
    named = any(isinstance(b.weight_bits, str) for _, b in policy.bits)  # the summary counts integer widths
    if verbose or named or len(space.layers) <= SUMMARY_PAST:
        width = max(28, max(len(layer.name) for layer in space.layers))
        for layer in space.layers:
            b = policy[layer.name]
            if b.per_kernel:
                wtxt = f"mean {b.mean_weight_bits:.2f} (min {min(b.weight_bits)}, max {max(b.weight_bits)})"
            else:
                wtxt = str(b.weight_bits)
            if layer.name in space.pins:
                wtxt += " (pinned)"
            atxt = "float" if b.act_bits is None else str(b.act_bits)
            print(f"  {layer.name:<{width}} weights {wtxt:<28} acts {atxt}")
    else:
        print_summary(space, policy)
    budgets = {b.cost: b for b in problem.budgets}
    parts = []
    for name, value in costs.items():
        unit = problem.costs[name].unit
        text = f"{name} {format_cost(value, unit)}"
        if name in budgets:
            text += f" (budget {format_cost(budgets[name].limit, unit)}: kept)"
        parts.append(text)
    print("costs: " + ", ".join(parts))
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    if shown:
        print("metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))


def check_outputs(*options: tuple[str, str | None]) -> None:
    """Check every ``(option, path)`` the command will write, before any work: a regular
    file or a new name in an existing folder (see :func:`bitsearch._io.check_output`;
    commands that write files never create folders), else one line and exit code 2."""
    from .._io import check_output

    for option, path in options:
        if path:
            check_output(path, parents=False, what=option)


def print_summary(space, policy) -> None:
    """How many weight units (and what share of the weights) each width got, and the
    activation widths: a few lines for a policy of any size."""
    import numpy as np

    units = np.zeros(65, dtype=np.int64)
    weights = np.zeros(65)
    uniform_units: dict = {}
    uniform_weights: dict = {}
    acts: dict = {}
    per_layer_units = space.granularity == "layer"
    for layer in space.layers:
        b = policy[layer.name]
        acts[b.act_bits] = acts.get(b.act_bits, 0) + 1
        w = b.weight_bits
        if w.__class__ is tuple:
            counts = np.bincount(np.asarray(w, dtype=np.int64), minlength=65)[:65]
            units += counts
            weights += counts * (layer.params / layer.kernels)
        else:
            uniform_units[w] = uniform_units.get(w, 0) + (1 if per_layer_units else layer.kernels)
            uniform_weights[w] = uniform_weights.get(w, 0) + layer.params
    for w, n in uniform_units.items():
        units[w] += n
        weights[w] += uniform_weights[w]
    n_units = int(units.sum())
    total = float(weights.sum()) or 1.0
    what = "kernels" if space.granularity == "kernel" else "layers"
    counted = f"{len(space.layers):,} layers" + (f", {n_units:,} kernels" if what == "kernels" else "")
    print(f"  {counted}: the widths in a summary (--verbose lists every layer)")
    print(f"  {'weight bits':>11}  {what:>12}  {'share':>6}  {'of weights':>10}")
    for w in np.flatnonzero(units).tolist():
        print(f"  {w:>11}  {int(units[w]):>12,}  {units[w] / n_units:>6.1%}  {weights[w] / total:>10.1%}")
    mean = float((np.arange(65) * weights).sum() / total)
    shown = ", ".join(f"{'float' if a is None else a} ({n:,} layers)" for a, n in
                      sorted(acts.items(), key=lambda item: (item[0] is None, item[0] or 0)))
    print(f"  mean weight width {mean:.3f} bits (over the weights); activations {shown}")


def print_solve(info) -> None:
    """The solver's account, when it gives one: objective, proven bound and gap, the
    method, and which budgets bind."""
    if not isinstance(info, dict) or info.get("objective") is None:
        return
    parts = [f"objective {info['objective']:.10g}"]
    if info.get("bound") is not None:
        parts.append(f"bound {info['bound']:.10g}")
    if info.get("gap") is not None:
        parts.append(f"proven gap {info['gap']:.2g}")
    line = ", ".join(parts) + (f" ({info['method']}" + (f", {info['status']}" if info.get("status") else "") + ")"
                               if info.get("method") else "")
    print(line)
    if info.get("budgets"):
        binding = [b["spec"] for b in info["budgets"] if b.get("binding")]
        unknown = all(b.get("binding") is None for b in info["budgets"])
        if not unknown:
            print("binding budgets: " + (", ".join(binding) if binding else "none (every budget has room)"))


def write_output(text: str, out: str | None, detail: str = "") -> None:
    """``text`` into the file ``out`` (atomically; "wrote OUT" on standard error), or onto
    standard output when no file is named."""
    import sys

    from .._io import atomic_write_text

    if out:
        atomic_write_text(out, text, parents=False)
        print(f"wrote {out}" + (f" ({detail})" if detail else ""), file=sys.stderr)
    else:
        sys.stdout.write(text)
