"""``bitsearch export POLICY --to csv|hawq|nncf|llama.cpp|onnx``: a policy in another tool's
format, or the quantized model itself as ONNX."""

from __future__ import annotations

import argparse
import sys

from .common import add_model_options, check_outputs, model_source, optional_model_source, write_output

DESCRIPTION = """\
Write a policy in another tool's format, or the quantized model as ONNX.

  csv   one row per layer (per-kernel widths joined by ';')
  hawq  HAWQ-V3's bit_config: with --out FILE.py a bit_config.py module (bit_config_dict =
        {NAME: {quantizer: bits}}, the form quant_train.py reads with --arch and
        --quant-scheme), else the bare dictionary as JSON; ResNet-18/50/101 (the name
        mapping is in docs/interop.md)
  nncf  an NNCF 2.x quantization config (NNCFConfig / create_compressed_model, tested with
        NNCF 2.19; NNCF 3 dropped this config format) with a manual precision initializer
  llama.cpp  a --tensor-type-file for llama-quantize: one 'pattern=type' line per tensor,
        GGUF names from the gguf package's Hugging Face -> GGUF name map (--gguf-arch,
        default llama), the nearest ggml type per width (2-6: q2_K..q6_K, 8: q8_0, mxfp4,
        nvfp4); a width without a ggml type (7, fp8_e4m3) is an error
  onnx  the quantized model for onnxruntime: QuantizeLinear/DequantizeLinear around every
        quantized layer, integer weights (int4 for layers of <= 4 bits, int8, int16) with
        per-kernel scales, activations at their searched widths, float layers in float.
        Post-training (calibrated on the task's calibration inputs, as 'bitsearch eval')
        or, with --model, the fine-tuned model of 'bitsearch finetune'.  Needs --task and
        --out, and the deploy extra (pip install 'bitsearch[deploy]').

--task names the policy's task (a built-in, or package.module:factory for your own, which may
return a Task or a trained model): onnx needs it, nncf reads the model's module classes from
it, hawq and csv check the layers against it.  --weights FILE (and for onnx --data KIND:PATH,
the calibration data) load your weights into a task's architecture, as in search and eval."""

EPILOG = """\
examples:
  bitsearch export p.json --to csv
  bitsearch export p.json --to hawq --task resnet18 --out bit_config.py
  bitsearch export p.json --to nncf --task mymodels.cifar:resnet20 --out nncf.json
  bitsearch export p.json --to onnx --task mnist1d-cnn --out p.onnx
  bitsearch finetune p.json --task mnist1d-cnn --epochs 5 --out p.pt
  bitsearch export p.json --to onnx --task mnist1d-cnn --model p.pt --out p-ft.onnx
  bitsearch eval --onnx p.onnx --task mnist1d-cnn
  bitsearch export p.json --to llama.cpp --out tiny.tensor-types.txt
  llama-quantize --tensor-type-file tiny.tensor-types.txt model-f16.gguf model-mixed.gguf Q4_K_M
"""

FORMATS = ("csv", "hawq", "nncf", "llama.cpp", "onnx")


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="convert a policy to another tool's format, or export the model as ONNX",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("policy", help="policy JSON file")
    p.add_argument("--to", required=True, metavar="FORMAT",
                   help="target format: " + ", ".join(FORMATS))
    p.add_argument("--task", help="the policy's task (a built-in or package.module:factory)")
    p.add_argument("--out", metavar="FILE", help="write here instead of standard output (required for onnx)")
    add_model_options(p)
    h = p.add_argument_group("hawq")
    h.add_argument("--config-name", metavar="NAME", default=None,
                   help="the configuration's name in bit_config_dict (default bit_config_<model>_bitsearch)")
    h.add_argument("--json", dest="hawq_json", action="store_true",
                   help="write the bare bit_config dictionary as JSON even to a .py file (standard output and "
                        "other files get JSON anyway; --out FILE.py gets a bit_config.py module)")
    n = p.add_argument_group("nncf")
    n.add_argument("--target-device", default=None, metavar="DEVICE",
                   help="NNCF target_device (default TRIAL, the one that accepts every width the policy gives; "
                        "ANY, CPU, GPU, NPU, CPU_SPR restrict the widths NNCF allows)")
    l = p.add_argument_group("llama.cpp")
    l.add_argument("--gguf-arch", default=None, metavar="ARCH",
                   help="the GGUF architecture whose tensor names to use (default llama)")
    o = p.add_argument_group("onnx")
    o.add_argument("--model", metavar="FILE", help="export this fine-tuned model (.pt from bitsearch finetune)")
    o.add_argument("--no-int4", action="store_true",
                   help="store weights of <= 4 bits as int8 too (onnxruntime's integer CPU kernels take int8 "
                        "weights; int4 storage is smaller and runs through a float kernel)")
    o.add_argument("--opset", type=int, default=None, metavar="N", help="ONNX opset (default 21, the least it needs)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from ..errors import UserInputError
    from ..policy import load_policy

    if args.to not in FORMATS:
        raise UserInputError(f"unknown export format {args.to!r}; known formats: {', '.join(FORMATS)}")
    check_outputs(("--out", args.out))
    policy = load_policy(args.policy)
    if args.to != "onnx":
        for flag, value in (("--model", args.model), ("--no-int4", args.no_int4), ("--opset", args.opset)):
            if value:
                raise UserInputError(f"{flag} is for --to onnx only")
    if args.to != "hawq" and (args.config_name or args.hawq_json):
        raise UserInputError("--config-name and --json are for --to hawq only")
    if args.to != "nncf" and args.target_device:
        raise UserInputError("--target-device is for --to nncf only")
    if args.to != "llama.cpp" and args.gguf_arch:
        raise UserInputError("--gguf-arch is for --to llama.cpp only")
    if args.to == "onnx":
        return _export_onnx(args, policy)
    from ..export import export_policy

    task = optional_model_source(args, scoring=False)
    hawq_json = args.hawq_json or not (args.out and args.out.endswith(".py"))
    if args.config_name and hawq_json:
        raise UserInputError("--config-name names the entry of a bit_config.py module: give --out FILE.py")
    text = export_policy(policy, args.to, task=task, source=args.policy, config_name=args.config_name,
                         hawq_json=hawq_json, target_device=args.target_device, gguf_arch=args.gguf_arch)
    write_output(text, args.out, _llamacpp_detail(policy, text, args.gguf_arch) if args.to == "llama.cpp" else "")
    return 0


def _llamacpp_detail(policy, text: str, arch: str | None) -> str:
    from ..llamacpp import DEFAULT_ARCH, gguf_bits_per_weight, tensor_types

    kinds = sorted({kind for _, kind in tensor_types(policy, arch=arch or DEFAULT_ARCH)})
    return (f"{text.count(chr(10))} tensors; ggml types " +
            ", ".join(f"{k} ({gguf_bits_per_weight(k):g} bits/weight)" for k in kinds))


def _export_onnx(args, policy) -> int:
    from ..errors import UserInputError
    from ..build import TrainedModel
    from ..onnx_export import DEFAULT_OPSET, export_onnx, quantized_model_for_task, require_runtime

    if not args.task:
        raise UserInputError("--to onnx needs --task (the model comes from the task)")
    if not args.out:
        raise UserInputError("--to onnx needs --out FILE (an ONNX model is binary)")
    require_runtime()
    import torch

    task = model_source(args)
    if isinstance(task, TrainedModel):
        example = task.example_input
        if not isinstance(example, torch.Tensor):
            raise UserInputError(f"the ONNX export takes a model of one tensor input, but {args.task!r} gives an "
                                 f"example input of type {type(example).__name__}")
    else:
        example = task.example_input(2)
    qmodel, metadata = quantized_model_for_task(task, policy, model_path=args.model, source=args.policy)
    result = export_onnx(qmodel, example, args.out, int4=not args.no_int4,
                         opset=args.opset or DEFAULT_OPSET, metadata=metadata)
    own = metadata["fake_quant_metrics"]
    metric = own.get("metric", "top1")
    score = f"; bitsearch's fake-quantized {metric} {own[metric]:.4f}" if metric in own else ""
    again = " ".join(f"{flag} {value}" for flag, value in (("--task", args.task), ("--weights", args.weights),
                                                            ("--data", args.data)) if value)
    print(f"wrote {args.out}: {result.summary()}{score} (check it with: bitsearch eval --onnx {args.out} {again})",
          file=sys.stderr)
    return 0
