"""Prints the size of the safetensors file `save_pretrained` writes for each model shape,
without building or writing the weights: the model is made on torch's meta device, and the
file laid out as safetensors lays it out (an 8-byte length, the JSON header padded to 8
bytes, then each tensor by name). A shape's size is the official checkpoint's, whose
weights are float32 too; the app lists it before a download (`import/src/hub.rs`).

    weight_sizes.py                   every official shape
    weight_sizes.py musicgen-small    (checkpoint.py's save of it measured 2358843992 bytes)
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import export

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.int64: "I64", torch.bool: "BOOL"}


def safetensors_bytes(shape: str) -> int:
    config, model_class = export.random_model_config(shape)
    with torch.device("meta"):
        model = model_class(config)
    # A tied weight is saved once, under the first of its names.
    first_names: dict[int, str] = {}
    tied = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if first_names.setdefault(id(parameter), name) != name:
            tied.add(name)
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, tensor in sorted(model.state_dict().items()):
        if name in tied:
            continue
        length = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + length],
        }
        offset += length
    header_bytes = len(json.dumps(header, separators=(",", ":")).encode())
    return 8 + -(-header_bytes // 8) * 8 + offset


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    official = [shape for shape in export.RANDOM_SHAPES if shape.startswith("musicgen")]
    parser.add_argument("shapes", nargs="*", metavar="SHAPE", help=f"model shapes (default: all of {', '.join(official)})")
    args = parser.parse_args()
    unknown = [shape for shape in args.shapes if shape not in official]
    if unknown:
        parser.error(f"unknown shape {', '.join(unknown)}; the shapes are {', '.join(official)}")
    for shape in args.shapes or official:
        print(f"{shape:<32} {safetensors_bytes(shape):>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
