"""The matmul floor's kernels: for each kind of weight-bearing matmul in a bundle's decoder
step, a graph of many copies of that node with weights of their own, so that a run streams
more weight bytes than the last-level cache holds (what a step does: it reads every weight
once). `musicgen bench --floor DIR` times these graphs with the engine's own ONNX Runtime
and threads, and sums per-node medians over the step's nodes: the time the step's matmuls
alone take at the rate its own kernels reach on this machine.

    matmul_floor.py BUNDLE/decoder.onnx OUT_DIR    # writes OUT_DIR/floor.json and kernel graphs

A kernel is the node's op and attributes and its weight's shape and type: MatMul on a float
weight, MatMulNBits (bits, block size, accuracy level as exported), and the dynamic int8
pattern (MatMulInteger on a quantized input), which ONNX Runtime fuses into
DynamicQuantizeMatMul and so is timed as that. Weight values are random: a kernel's cost
does not depend on them.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"
# At least this many weight bytes per graph, and at least this much past the cache.
MIN_GRAPH_BYTES = 256 << 20
CACHE_MARGIN = 1.25
MIN_COPIES = 4


def last_level_cache_bytes() -> int:
    """The largest cache sysfs lists for CPU 0 (0 where it lists none)."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        text = (index / "size").read_text().strip() if (index / "size").exists() else ""
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        if text and text[-1] in units:
            sizes.append(int(text[:-1]) * units[text[-1]])
        elif text.isdigit():
            sizes.append(int(text))
    return max(sizes, default=0)


def attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def kernels(graph: onnx.GraphProto) -> dict[str, dict]:
    """Each kernel of the step's weight-bearing matmuls, with how often the step runs it."""
    initializers = {init.name: init for init in graph.initializer}
    found: dict[str, dict] = {}

    def add(key: str, kernel: dict) -> None:
        found.setdefault(key, {**kernel, "count": 0})["count"] += 1

    for node in graph.node:
        if node.op_type == "MatMulNBits":
            attrs = attributes(node)
            weight = initializers[node.input[1]]
            has_zero_points = len(node.input) > 3 and node.input[3] != ""
            kernel = {
                "op": "MatMulNBits",
                "k": attrs["K"],
                "n": attrs["N"],
                "bits": attrs.get("bits", 4),
                "block_size": attrs["block_size"],
                "accuracy_level": attrs.get("accuracy_level", 0),
                "weight_dims": list(weight.dims),
                "scale_dims": list(initializers[node.input[2]].dims),
                "zero_point_dims": list(initializers[node.input[3]].dims) if has_zero_points else None,
            }
            key = "nbits_b{bits}_block{block_size}_acc{accuracy_level}_{k}x{n}".format(**kernel)
            add(key, kernel)
        elif node.op_type in ("MatMul", "MatMulInteger") and node.input[1] in initializers:
            weight = initializers[node.input[1]]
            if len(weight.dims) != 2:
                continue
            k, n = weight.dims
            if node.op_type == "MatMul" and weight.data_type == TensorProto.FLOAT:
                add(f"f32_{k}x{n}", {"op": "MatMul", "k": k, "n": n})
            elif node.op_type == "MatMulInteger":
                add(f"dq8_{k}x{n}", {"op": "DynamicQuantizeMatMul", "k": k, "n": n, "weight_type": weight.data_type})
        elif node.op_type == "DynamicQuantizeMatMul" and node.input[1] in initializers:
            weight = initializers[node.input[1]]
            k, n = weight.dims
            add(f"dq8_{k}x{n}", {"op": "DynamicQuantizeMatMul", "k": k, "n": n, "weight_type": weight.data_type})
    return found


def copy_of(kernel: dict, c: int, rng: np.random.Generator) -> tuple[onnx.NodeProto, list, int]:
    """One node of `kernel` reading input `x`, with weights of its own; its weight bytes."""
    k, n = kernel["k"], kernel["n"]
    if kernel["op"] == "MatMulNBits":
        blob = rng.integers(0, 256, kernel["weight_dims"], dtype=np.uint8)
        scales = (rng.random(kernel["scale_dims"], dtype=np.float32) * 0.01).astype(np.float32)
        inits = [numpy_helper.from_array(blob, f"w{c}"), numpy_helper.from_array(scales, f"s{c}")]
        inputs = ["x", f"w{c}", f"s{c}"]
        if kernel["zero_point_dims"]:
            zero_points = rng.integers(0, 256, kernel["zero_point_dims"], dtype=np.uint8)
            inits.append(numpy_helper.from_array(zero_points, f"z{c}"))
            inputs.append(f"z{c}")
        node = helper.make_node(
            "MatMulNBits",
            inputs,
            [f"y{c}"],
            domain=MS_DOMAIN,
            K=k,
            N=n,
            bits=kernel["bits"],
            block_size=kernel["block_size"],
            accuracy_level=kernel["accuracy_level"],
        )
        return node, inits, blob.nbytes + scales.nbytes
    if kernel["op"] == "MatMul":
        weight = rng.standard_normal((k, n), dtype=np.float32)
        return helper.make_node("MatMul", ["x", f"w{c}"], [f"y{c}"]), [numpy_helper.from_array(weight, f"w{c}")], weight.nbytes
    dtype = np.int8 if kernel["weight_type"] == TensorProto.INT8 else np.uint8
    weight = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, (k, n), dtype=dtype)
    scale = np.full(n, 0.01, np.float32)
    node = helper.make_node("DynamicQuantizeMatMul", ["x", f"w{c}", f"s{c}"], [f"y{c}"], domain=MS_DOMAIN)
    return node, [numpy_helper.from_array(weight, f"w{c}"), numpy_helper.from_array(scale, f"s{c}")], weight.nbytes + scale.nbytes


def kernel_graph(kernel: dict, min_bytes: int, rng: np.random.Generator) -> tuple[onnx.ModelProto, int, int]:
    """A graph of copies of `kernel` holding at least `min_bytes` of weights; its copy count
    and weight bytes."""
    nodes, inits, outputs, total = [], [], [], 0
    copies = 0
    while copies < MIN_COPIES or total < min_bytes:
        node, node_inits, nbytes = copy_of(kernel, copies, rng)
        nodes.append(node)
        inits += node_inits
        outputs.append(helper.make_tensor_value_info(f"y{copies}", TensorProto.FLOAT, ["rows", kernel["n"]]))
        total += nbytes
        copies += 1
    graph = helper.make_graph(
        nodes, "matmul_floor", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", kernel["k"]])], outputs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(MS_DOMAIN, 1)])
    model.ir_version = 10
    return model, copies, total


def main() -> int:
    decoder, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    graph = onnx.load(str(decoder), load_external_data=False).graph
    cache_bytes = last_level_cache_bytes()
    min_bytes = max(MIN_GRAPH_BYTES, math.ceil(cache_bytes * CACHE_MARGIN))
    rng = np.random.default_rng(0)
    entries = []
    for name, kernel in sorted(kernels(graph).items()):
        model, copies, total = kernel_graph(kernel, min_bytes, rng)
        onnx.save(model, str(out / f"{name}.onnx"))
        print(f"  {name}: {kernel['count']} per step, {copies} copies ({total / 1e6:.0f} MB)", file=sys.stderr, flush=True)
        entries.append(
            {
                "name": name,
                "graph": f"{name}.onnx",
                "op": kernel["op"],
                "k": kernel["k"],
                "n": kernel["n"],
                "count_per_step": kernel["count"],
                "copies": copies,
                "weight_bytes_per_copy": total // copies,
            }
        )
    if not entries:
        print(f"{decoder}: no weight-bearing matmul found", file=sys.stderr)
        return 1
    (out / "floor.json").write_text(json.dumps({"cache_bytes": cache_bytes, "kernels": entries}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
