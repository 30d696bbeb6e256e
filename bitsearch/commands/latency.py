"""``bitsearch latency template|measure``: latency tables for the ``latency`` cost model."""

from __future__ import annotations

import argparse
import sys

from ..progress import Bar
from .common import check_outputs, threads_arg, width_arg

DESCRIPTION = """\
Latency tables for 'bitsearch search --latency-table FILE --budget latency=...'.

  template  the CSV to fill on your own device: one row per layer and (weight bits,
            act bits), the latency column empty, the device line to name
  measure   the same table measured on this machine's CPU: with --runtime torch (default)
            float32 and int8 (torch's quantized CPU kernels), widths the CPU cannot run
            faster charged the nearest kernel it has; with --runtime onnxruntime the
            ONNX models 'bitsearch export --to onnx' writes, profiled by onnxruntime layer
            by layer (int4/int8/int16/float weights, each activation width), with the
            end-to-end time of each uniform model and how well the rows add up to it in
            the file's metadata (needs the deploy extra)"""

EPILOG = """\
examples:
  bitsearch latency template --task resnet18 --weight-bits 4,8 --act-bits 4,8 --out resnet18.csv
  bitsearch latency measure --task mnist1d-cnn --weight-bits 4,8,16 --out mnist1d.csv
  bitsearch latency measure --template resnet18.csv --task resnet18 --out resnet18-here.csv
  bitsearch latency measure --runtime onnxruntime --task mnist1d-cnn --weight-bits 2-8 --act-bits 8 --out ort.csv
  bitsearch search --task mnist1d-cnn --searcher uniform --weight-bits 4,8,16 \\
      --latency-table mnist1d.csv --budget latency=frac:0.5
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("latency", help="latency tables: a template to fill, or measured on this CPU",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="latency_command", metavar="ACTION", parser_class=type(p))
    sub.required = True
    for action, help_text in (("template", "write the table to fill on your own device"),
                              ("measure", "measure the table on this machine's CPU")):
        q = sub.add_parser(action, help=help_text, description=help_text, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("--task", required=True, help="a built-in task (bitsearch tasks) or package.module:factory")
        q.add_argument("--weight-bits", default=None, metavar="BITS",
                       help="weight widths: a list (4,8,16) or a range (2-8); default 2-8")
        q.add_argument("--act-bits", default=None, metavar="BITS",
                       help="activation widths (4,8; 'none' for float, also beside widths: 8,none); default 8")
        q.add_argument("--width-mult", type=float, default=1.0, metavar="M", help="model width multiplier")
        q.add_argument("--pin-first-last", type=width_arg, default=None, metavar="N",
                       help="the first and last layer only at N bits (as in bitsearch search)")
        q.add_argument("--out", required=True, metavar="FILE", help="the CSV to write")
        if action == "measure":
            q.add_argument("--template", metavar="FILE", help="measure the rows of this table (e.g. a template)")
            q.add_argument("--repeats", type=int, default=20, help="timed samples per layer and kernel (default 20)")
            q.add_argument("--warmup", type=int, default=3, help="warm-up calls before timing (default 3)")
            q.add_argument("--threads", type=threads_arg, default=1, help="torch CPU threads (default 1)")
            q.add_argument("--batch", type=int, default=1, help="batch size of the timed calls (default 1); "
                                                                "latencies are per sample")
            q.add_argument("--float-only", action="store_true", help="torch: time the float32 kernel only")
            q.add_argument("--runtime", choices=("torch", "onnxruntime"), default="torch",
                           help="what runs the layers: torch's CPU kernels (default) or onnxruntime on the "
                                "exported ONNX model")
            q.add_argument("--no-int4", action="store_true",
                           help="onnxruntime: store weights of <= 4 bits as int8, as 'export --no-int4' does")
        q.set_defaults(func=cmd_latency, latency_command=action)


def _space(args):
    from ..build import SpaceOptions, space_for_task
    from ..space import parse_bits
    from ..tasks import get_task

    task = get_task(args.task)
    weight_bits = parse_bits(args.weight_bits or "2-8")
    parts = [p.strip() for p in (args.act_bits or "8").split(",") if p.strip()]
    floats = [p for p in parts if p.lower() in ("none", "float", "fp32")]
    ints = [p for p in parts if p not in floats]
    act_bits = parse_bits(",".join(ints)) if ints else None
    args.table_acts = tuple(act_bits or ()) + ((None,) if floats else ())
    options = SpaceOptions(weight_bits=weight_bits, act_bits=act_bits, pin_first_last=args.pin_first_last)
    if task.shape_only:
        space = space_for_task(task, options, width_mult=args.width_mult)
    else:
        from ..discover import discover

        model = task.build_model(args.width_mult)  # shapes only: no training needed for a latency table
        name = task.name if args.width_mult == 1.0 else f"{task.name}@x{args.width_mult:g}"
        space = discover(model, task.example_input(1), weight_bits=weight_bits, act_bits=act_bits,
                         pin_first_last=args.pin_first_last, model_name=name)
    return task, space


def cmd_latency(args) -> int:
    from .. import latency
    from ..errors import LatencyTableError, UserInputError

    check_outputs(("--out", args.out))
    task, space = _space(args)
    if args.latency_command == "template":
        keys = latency.table_keys(space, act_bits=args.table_acts)
        layers = {l.name: l for l in space.layers}
        rows = [latency.Row(n, w, a, None, "", layers[n].kind, layers[n].macs) for n, w, a in keys]
        meta = latency.template_meta(task.name, space, space.weight_bits, args.table_acts)
        latency.write_table(args.out, rows, meta, parents=False)
        print(f"wrote {args.out}: {len(rows)} rows for {len(space.layers)} layers; fill the latency column "
              "and the device line", file=sys.stderr)
        return 0
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1 or args.batch < 1:
        raise UserInputError("--repeats, --threads and --batch must be >= 1, --warmup >= 0")
    if args.template:
        meta, keys = latency.read_template(args.template)
        model = meta.get("model", "")
        if model and space.fingerprint not in model:
            raise LatencyTableError(f"{args.template}: the table is for model {model!r}, but task {task.name!r} "
                                    f"gives {space.fingerprint}: a table for another model")
        unknown = sorted({k[0] for k in keys} - set(space.names))
        if unknown:
            raise LatencyTableError(f"{args.template}: layers {', '.join(unknown[:8])} are not layers of "
                                    f"task {task.name!r}")
    else:
        keys = latency.table_keys(space, act_bits=args.table_acts)
    if args.runtime == "onnxruntime":
        if args.float_only:
            raise UserInputError("--float-only is for --runtime torch")
        from ..latency_ort import measure_onnxruntime

        with Bar("latency (onnxruntime)", 1) as bar:
            rows, meta, summary = measure_onnxruntime(task, space, keys, batch=args.batch, repeats=args.repeats,
                                                      warmup=args.warmup, threads=args.threads,
                                                      int4=not args.no_int4, width_mult=args.width_mult,
                                                      progress=lambda done, total: bar.set(done, total=total))
        for name, entry in summary.items():
            print(f"  uniform {name}: end to end {entry['end_to_end_ms']:.4f} ms, layer rows add up to "
                  f"{entry['layers_sum_ms']:.4f} ms ({entry['layers_sum_over_end_to_end']:.2f}x), other nodes "
                  f"{entry['other_nodes_ms']:.4f} ms", file=sys.stderr)
    else:
        if args.no_int4:
            raise UserInputError("--no-int4 is for --runtime onnxruntime")
        with Bar("latency", len(keys)) as bar:
            rows, meta = latency.measure_latency(task, keys, width_mult=args.width_mult, batch=args.batch,
                                                 repeats=args.repeats, warmup=args.warmup, threads=args.threads,
                                                 progress=lambda done, total: bar.set(done, total=total),
                                                 int8=not args.float_only)
    meta["model"] = f"{space.model_name} {space.fingerprint}"
    latency.write_table(args.out, rows, meta, parents=False)
    total = {}
    for row in rows:
        total.setdefault((row.weight_bits, row.act_bits), 0.0)
        total[(row.weight_bits, row.act_bits)] += row.latency
    print(f"wrote {args.out}: {len(rows)} rows measured on {meta['device']}", file=sys.stderr)
    for (w, a), value in sorted(total.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1])):
        print(f"  all layers at w{w}/a{'float' if a is None else a}: {value:.4f} ms", file=sys.stderr)
    return 0
