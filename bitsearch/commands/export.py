"""``bitsearch export POLICY --to csv|hawq|nncf|llama.cpp``: a policy in another tool's format."""

from __future__ import annotations

import argparse

from .common import check_outputs, write_output

EPILOG = """\
examples:
  bitsearch export p.json --to csv
  bitsearch export p.json --to llama.cpp --out tiny.tensor-types.txt
  llama-quantize --tensor-type-file tiny.tensor-types.txt model-f16.gguf model-mixed.gguf Q4_K_M

llama.cpp: one 'pattern=type' line per tensor, GGUF names from the gguf package's
Hugging Face -> GGUF name map (--gguf-arch, default llama), the nearest ggml type per
width (2-6: q2_K..q6_K, 8: q8_0, mxfp4, nvfp4); a width without a ggml type (7, fp8_e4m3)
is an error.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="convert a policy to another tool's format",
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("policy", help="policy JSON file")
    p.add_argument("--to", required=True, help="target format: csv, hawq (HAWQ-V3 bit_config), nncf (NNCF "
                                               "bitwidth_per_scope), llama.cpp (a --tensor-type-file for "
                                               "llama-quantize)")
    p.add_argument("--gguf-arch", default="llama", metavar="ARCH",
                   help="llama.cpp: the GGUF architecture whose tensor names to use (default llama)")
    p.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from ..export import export_policy
    from ..policy import load_policy

    check_outputs(("--out", args.out))
    policy = load_policy(args.policy)
    if args.to == "llama.cpp":
        from ..llamacpp import gguf_bits_per_weight, tensor_types, to_tensor_type_file

        text = to_tensor_type_file(policy, arch=args.gguf_arch)
        kinds = sorted({kind for _, kind in tensor_types(policy, arch=args.gguf_arch)})
        detail = (f"{text.count(chr(10))} tensors; ggml types " +
                  ", ".join(f"{k} ({gguf_bits_per_weight(k):g} bits/weight)" for k in kinds))
        write_output(text, args.out, detail)
        return 0
    write_output(export_policy(policy, args.to), args.out)
    return 0
