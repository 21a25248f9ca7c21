#!/usr/bin/env python3
"""How fast ONNX Runtime's CPU kernels turn a decoder step's weights into outputs on this
machine: for each weight format the engine's bundles use, a [M, 1024] x [1024, 4096] product
(musicgen-small's FFN shape) with M = 2 (one step, both guidance rows) on 1 and on every
core, as weights read per second. A kernel whose rate doubles from one core to two is
bound by arithmetic, not by memory; compare the float32 row, which reads 4 bytes a weight.

usage: kernel_rates.py [THREADS ...]   (runs in target/export-venv: numpy, onnx, onnxruntime)
"""
import os
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper

K, N, M = 1024, 4096, 2
# Enough nodes that their weights (int4: 2 MB each) do not stay in the caches between runs.
NODES = 24
RUNS = 20


def nbits_node(c, bits, block):
    blocks = K // block
    blob = np.random.randint(0, 255, (N, blocks, block * bits // 8), dtype=np.uint8)
    scales = (np.random.rand(N * blocks) * 0.01).astype(np.float32)
    inits = [
        helper.make_tensor(f"w{c}", T.UINT8, blob.shape, blob.tobytes(), raw=True),
        helper.make_tensor(f"s{c}", T.FLOAT, scales.shape, scales.tobytes(), raw=True),
    ]
    node = helper.make_node(
        "MatMulNBits", ["x", f"w{c}", f"s{c}"], [f"y{c}"], domain="com.microsoft",
        K=K, N=N, bits=bits, block_size=block, accuracy_level=4,
    )
    return node, inits, blob.nbytes + scales.nbytes


def int8_node(c):
    weights = np.random.randint(-127, 127, (K, N), dtype=np.int8)
    scales = np.full(N, 0.01, np.float32)
    inits = [
        helper.make_tensor(f"w{c}", T.INT8, weights.shape, weights.tobytes(), raw=True),
        helper.make_tensor(f"s{c}", T.FLOAT, [N], scales.tobytes(), raw=True),
    ]
    node = helper.make_node("DynamicQuantizeMatMul", ["x", f"w{c}", f"s{c}"], [f"y{c}"], domain="com.microsoft")
    return node, inits, weights.nbytes + scales.nbytes


def float_node(c):
    weights = np.random.randn(K, N).astype(np.float32)
    inits = [helper.make_tensor(f"w{c}", T.FLOAT, weights.shape, weights.tobytes(), raw=True)]
    return helper.make_node("MatMul", ["x", f"w{c}"], [f"y{c}"]), inits, weights.nbytes


FORMATS = {
    "int4 MatMulNBits, blocks of 128, level 4": lambda c: nbits_node(c, 4, 128),
    "int4 MatMulNBits, blocks of 32, level 4": lambda c: nbits_node(c, 4, 32),
    "int8 MatMulNBits, blocks of 128, level 4": lambda c: nbits_node(c, 8, 128),
    "int8 DynamicQuantizeMatMul": int8_node,
    "float32 MatMul": float_node,
}


def rate(make, threads):
    nodes, inits, outputs, weight_bytes = [], [], [], 0
    for c in range(NODES):
        node, node_inits, nbytes = make(c)
        nodes.append(node)
        inits += node_inits
        weight_bytes += nbytes
        outputs.append(helper.make_tensor_value_info(f"y{c}", T.FLOAT, [M, N]))
    graph = helper.make_graph(nodes, "kernels", [helper.make_tensor_value_info("x", T.FLOAT, [M, K])], outputs, inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)], ir_version=10
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.random.randn(M, K).astype(np.float32)
    for _ in range(3):
        session.run(None, {"x": x})
    started = time.perf_counter()
    for _ in range(RUNS):
        session.run(None, {"x": x})
    seconds = (time.perf_counter() - started) / RUNS
    return K * N * NODES / seconds / 1e9, weight_bytes / seconds / 1e9, seconds / NODES * 1e6


def main() -> int:
    threads = [int(t) for t in sys.argv[1:]] or [1, os.cpu_count() or 2]
    print(f"onnxruntime {ort.__version__}, [{M}, {K}] x [{K}, {N}], {NODES} nodes per run, {RUNS} runs")
    print(f"{'weights':44} {'threads':>7} {'us/node':>8} {'G weights/s':>12} {'GB/s read':>10}")
    for name, make in FORMATS.items():
        for count in threads:
            weights_per_s, bytes_per_s, us = rate(make, count)
            print(f"{name:44} {count:>7} {us:>8.0f} {weights_per_s:>12.1f} {bytes_per_s:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
