"""MatMulNBits quantization of a graph's constant MatMul weights, one weight at a time.

ONNX Runtime's `MatMulNBitsQuantizer` loads the whole float32 graph and holds it beside
its quantized weights (on musicgen-medium's 6.5 GB decoder it raised the export's peak by
6.5 GiB at 4 bits and 8.8 GiB at 8; large's decoder is 11.4 GB). This
rewrites the graph as that quantizer does (symmetric blocks along K, its node and tensor
names, its order of initializers), reading each weight from the graph's external data as
it comes and writing the result straight out, so that it needs the memory of one weight.
The blocks are `template.blockwise`'s, bit for bit the quantizer's; `--check` holds a
graph quantized here to one the quantizer made.

    matmul_nbits.py --check models/tiny/decoder.onnx
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from decoder_graph import LM_HEADS_NODE, MS_DOMAIN, TensorWriter
from template import blockwise


def quantized_weights(graph: onnx.GraphProto, excluded: list[str]) -> dict[str, TensorProto]:
    """The weights `quantize` replaces, by the name of their MatMul node: each MatMul's
    second input where it is a 2-D float initializer, but for the nodes in `excluded`."""
    initializers = {init.name: init for init in graph.initializer}
    found = {}
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is None or node.name in excluded:
            continue
        if len(weight.dims) == 2 and weight.data_type == TensorProto.FLOAT:
            found[node.name] = weight
    return found


def tensor_bytes(tensor: TensorProto) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def quantized_bytes(source: Path, bits: int, block_size: int, excluded: list[str]) -> int:
    """The weight bytes of the graph `quantize` would make of `source`."""
    graph = onnx.load(str(source), load_external_data=False).graph
    replaced = quantized_weights(graph, excluded)
    total = sum(tensor_bytes(init) for init in graph.initializer) - sum(tensor_bytes(w) for w in replaced.values())
    for weight in replaced.values():
        k, n = (int(d) for d in weight.dims)
        k_blocks = -(-k // block_size)
        total += n * k_blocks * (block_size * bits // 8 + 4)
    return total


def quantize(
    source: Path,
    target: Path,
    bits: int,
    block_size: int,
    accuracy_level: int,
    excluded: list[str],
    external_data: bool,
    data_file: Path | None = None,
) -> None:
    """Writes `target`: the graph `source` with each MatMul whose second input is a 2-D
    float initializer (but the nodes named in `excluded`) as a MatMulNBits of `bits`-bit
    blocks of `block_size`. With `external_data`, its weights go to `<target>.data`, or
    to `data_file` for the caller to move there (`target` may then be `source`)."""
    model = onnx.load(str(source), load_external_data=False)
    graph = model.graph
    to_quantize = quantized_weights(graph, excluded)
    location = f"{target.name}.data"
    writer = TensorWriter((data_file or target.with_name(location)) if external_data else None, location)
    replaced: set[str] = set()
    added: list[TensorProto] = []
    nodes = []
    for node in graph.node:
        weight = to_quantize.get(node.name)
        if weight is None:
            nodes.append(node)
            continue
        k, n = (int(d) for d in weight.dims)
        blocks, scales = blockwise(numpy_helper.to_array(weight, str(source.parent)), bits, block_size)
        quantized = f"{weight.name}_Q{bits}"
        scale_name = f"{weight.name}_scales"
        added += [writer.tensor(quantized, blocks), writer.tensor(scale_name, scales)]
        replaced.add(weight.name)
        attrs = {"K": k, "N": n, "bits": bits, "block_size": block_size}
        if accuracy_level:
            attrs["accuracy_level"] = accuracy_level
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [node.input[0], quantized, scale_name],
                list(node.output),
                name=f"{node.name}_Q{bits}",
                domain=MS_DOMAIN,
                **attrs,
            )
        )
    kept = []
    for init in graph.initializer:
        if init.name in replaced:
            continue
        if init.data_location == TensorProto.EXTERNAL:
            init = writer.tensor(init.name, numpy_helper.to_array(init, str(source.parent)))
        kept.append(init)
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.ClearField("initializer")
    graph.initializer.extend(kept + added)
    if not any(opset.domain == MS_DOMAIN for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    onnx.save(model, str(target))


def quantize_in_place(
    path: Path, bits: int, block_size: int, accuracy_level: int, excluded: list[str], external_data: bool
) -> None:
    """`quantize` from `path` to itself: the source's external data is read while the
    target's is written beside it, then takes its place."""
    staging = path.with_name(f"quantized-{path.name}.data")
    quantize(path, path, bits, block_size, accuracy_level, excluded, external_data, staging)
    Path(f"{path}.data").unlink(missing_ok=True)
    if external_data:
        staging.replace(f"{path}.data")


def check(source: Path, block_size: int) -> None:
    """Quantizes `source` here and with ONNX Runtime's quantizer, at 4 and 8 bits; stops
    unless both give the same nodes, the same initializers in the same order, and the same
    bytes."""
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    for bits in (4, 8):
        config = DefaultWeightOnlyQuantConfig(
            block_size=block_size,
            is_symmetric=True,
            accuracy_level=4,
            op_types_to_quantize=("MatMul",),
            quant_axes=(("MatMul", 0),),
            bits=bits,
        )
        reference = MatMulNBitsQuantizer(onnx.load(str(source)), nodes_to_exclude=[LM_HEADS_NODE], algo_config=config)
        reference.process()
        expected = reference.model.model
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "decoder.onnx"
            quantize(source, target, bits, block_size, 4, [LM_HEADS_NODE], external_data=True)
            made = onnx.load(str(target))
        if quantized_bytes(source, bits, block_size, [LM_HEADS_NODE]) != sum(map(tensor_bytes, made.graph.initializer)):
            raise SystemExit(f"{source}: quantized_bytes miscounts the {bits}-bit graph's weights")
        if [n.SerializeToString() for n in made.graph.node] != [n.SerializeToString() for n in expected.graph.node]:
            raise SystemExit(f"{source}: {bits}-bit nodes differ from onnxruntime's quantizer's")
        names = lambda m: [init.name for init in m.graph.initializer]  # noqa: E731
        if names(made) != names(expected):
            raise SystemExit(f"{source}: {bits}-bit initializers differ from onnxruntime's quantizer's (names, order)")
        for ours, theirs in zip(made.graph.initializer, expected.graph.initializer):
            a, b = numpy_helper.to_array(ours), numpy_helper.to_array(theirs)
            if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
                raise SystemExit(f"{source}: {bits}-bit {ours.name} differs from onnxruntime's quantizer's")
        quantized = sum(n.op_type == "MatMulNBits" for n in made.graph.node)
        print(
            f"{source}: {bits}-bit MatMulNBits (blocks of {block_size}) of {quantized} weights"
            " equal to onnxruntime's quantizer's"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", required=True, type=Path, help="a float32 decoder.onnx to quantize both ways")
    args = parser.parse_args()
    for block_size in (32, 128):
        check(args.check, block_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
