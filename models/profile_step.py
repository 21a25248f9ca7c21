#!/usr/bin/env python3
"""Where one decoder step's time goes: runs a bundle's decoder.onnx for single steps at a
given context (the cache bound in place as the engine binds it: each past tensor is also its
present), times them, then profiles them with ONNX Runtime's profiler and prints the time
per operator type (the profiler adds its own overhead: read the shares, not the sum).

usage: profile_step.py BUNDLE [CONTEXT_FRAMES] [THREADS]   (runs in target/export-venv)
"""
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

STEPS = 30
TEXT_TOKENS = 12


def session(bundle: Path, threads: int, profile_dir: str | None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if profile_dir:
        options.enable_profiling = True
        options.profile_file_prefix = f"{profile_dir}/step"
    return ort.InferenceSession(str(bundle / "decoder.onnx"), options, providers=["CPUExecutionProvider"])


def bind(decoder, manifest: dict, context: int):
    """Inputs of one step at `context` frames, with a cache of room for the model's
    context and random cross-attention keys and values."""
    capacity = manifest["max_frames"] + manifest["num_codebooks"]
    geometry = manifest["decoder"]
    cache_type = np.int8 if manifest["kv_cache"]["dtype"] == "int8" else np.float32
    binding = decoder.io_binding()
    binding.bind_cpu_input("input_ids", np.zeros((2, 1, manifest["num_codebooks"]), np.int64))
    binding.bind_cpu_input("past_len", np.array([context], np.int64))
    binding.bind_cpu_input("encoder_attention_bias", np.zeros((2, TEXT_TOKENS), np.float32))
    caches = []
    for tensor in decoder.get_inputs():
        name = tensor.name
        if name.startswith(("past_key_", "past_value_")):
            shape = (2, geometry["num_heads"], capacity, geometry["head_dim"])
            cache = ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, cache_type))
            caches.append(cache)
            binding.bind_ortvalue_input(name, cache)
            binding.bind_ortvalue_output(name.replace("past_", "present_"), cache)
        elif name.startswith("cross_"):
            # The graph's own layout (keys may come transposed), the text axis symbolic.
            shape = [d if isinstance(d, int) else TEXT_TOKENS for d in tensor.shape]
            binding.bind_cpu_input(name, np.random.randn(*shape).astype(np.float32))
    binding.bind_output("logits")
    return binding, caches


def main() -> int:
    bundle = Path(sys.argv[1])
    context = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    manifest = json.loads((bundle / "musicgen.json").read_text())

    decoder = session(bundle, threads, None)
    binding, _caches = bind(decoder, manifest, context)
    for _ in range(3):
        decoder.run_with_iobinding(binding)
    started = time.perf_counter()
    for _ in range(STEPS):
        decoder.run_with_iobinding(binding)
    step_ms = (time.perf_counter() - started) / STEPS * 1000
    print(f"{bundle.name}: {step_ms:.2f} ms per step at {context} frames, {threads} threads "
          f"({1000 / step_ms:.1f} steps/s; onnxruntime {ort.__version__})")

    with tempfile.TemporaryDirectory() as profile_dir:
        decoder = session(bundle, threads, profile_dir)
        binding, _caches = bind(decoder, manifest, context)
        for _ in range(STEPS):
            decoder.run_with_iobinding(binding)
        events = json.loads(Path(decoder.end_profiling()).read_text())
    per_op, nodes = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
            nodes[event["args"]["op_name"]] += 1
    total = sum(per_op.values())
    print(f"{'operator':28} {'ms/step':>8} {'share':>6} {'nodes':>6}   (profiled)")
    for op, us in per_op.most_common():
        print(f"{op:28} {us / STEPS / 1000:>8.2f} {100 * us / total:>5.1f}% {nodes[op] // STEPS:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
