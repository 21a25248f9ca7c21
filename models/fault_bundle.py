"""Writes a copy of a bundle whose decoder fails once its self-attention cache holds a
given number of steps: the engine's fault tests use it to check that a graph error
mid-stream ends that stream only, with its error shown.

The failure is ONNX Runtime's own: the decoder's logits get a zero added from a table of
`--step` entries indexed by `past_len`, and Gather refuses an index past the table's end.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True, help="the bundle to copy")
    parser.add_argument("--out", type=Path, required=True, help="the failing copy's folder")
    parser.add_argument("--step", type=int, required=True, help="the first decoder step that fails")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(args.bundle, args.out)

    path = args.out / "decoder.onnx"
    model = onnx.load(str(path))
    graph = model.graph
    producer = next(node for node in graph.node if "logits" in node.output)
    producer.output[list(producer.output).index("logits")] = "logits_before_fault"
    graph.initializer.append(numpy_helper.from_array(np.zeros([args.step], np.float32), "fault_table"))
    graph.node.extend(
        [
            helper.make_node("Gather", ["fault_table", "past_len"], ["fault_zero"], name="fault_gather"),
            helper.make_node("Add", ["logits_before_fault", "fault_zero"], ["logits"], name="fault_add"),
        ]
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    print(f"wrote {args.out}: its decoder fails at step {args.step}")


if __name__ == "__main__":
    main()
