"""Generation through an exported bundle with onnxruntime, following the engine's contract:
one cache buffer per layer, bound as both `past_*` and `present_*` so that the decoder
appends in place, and the delay pattern's columns fed one step (or one prefill) at a time.

The export uses it to check a bundle against transformers and to calibrate an int8 cache.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort


# A melody decoder's inputs that hold its conditioning prefix.
PREFIX_INPUTS = ("chroma", "conditioning")


def prefix_len(inputs: dict) -> int:
    """Cache slots the conditioning prefix takes (0 for cross-attention models)."""
    return sum(inputs[name].shape[1] for name in PREFIX_INPUTS if name in inputs)


class DecoderRunner:
    """decoder.onnx with its self-attention cache of `capacity` slots per layer, for 2 rows
    (guidance) or the conditioned row alone (`rows` 1, guidance off)."""

    def __init__(self, session: ort.InferenceSession, manifest: dict, capacity: int, rows: int = 2):
        geo = manifest["decoder"]
        dtype = np.int8 if manifest["kv_cache"]["dtype"] == "int8" else np.float32
        shape = (rows, geo["num_heads"], capacity, geo["head_dim"])
        self.rows = rows
        self.session = session
        self.layers = geo["num_layers"]
        self.caches = {
            f"{kind}_{i}": ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype))
            for i in range(self.layers)
            for kind in ("key", "value")
        }
        self.length = 0

    def run(self, columns: np.ndarray, inputs: dict) -> np.ndarray:
        """Runs the steps of `columns` (`[S, K]`, the same for every row) and returns the
        last step's logits `[rows, K, V]`. `inputs` hold both guidance rows; a single-row
        runner takes the first. A melody model's prefix (`chroma`, `conditioning`) goes in
        with the first call only; later calls pass it empty."""
        binding = self.session.io_binding()
        rows = self.rows
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(np.repeat(columns[None], rows, axis=0), dtype=np.int64))
        binding.bind_cpu_input("past_len", np.array([self.length], np.int64))
        prefix_len = 0
        for name, value in inputs.items():
            if name in PREFIX_INPUTS:
                if self.length > 0:
                    value = value[:, :0]
                prefix_len += value.shape[1]
            binding.bind_cpu_input(name, np.ascontiguousarray(value[:rows]))
        binding.bind_output("logits")
        for name, cache in self.caches.items():
            binding.bind_ortvalue_input(f"past_{name}", cache)
            binding.bind_ortvalue_output(f"present_{name}", cache)
        self.session.run_with_iobinding(binding)
        self.length += prefix_len + columns.shape[0]
        return binding.get_outputs()[0].numpy()

    def filled(self, name: str) -> np.ndarray:
        """The filled slots of one cache, `[2, H, length, D]`."""
        return self.caches[name].numpy()[:, :, : self.length]


def conditioning_inputs(graphs: dict, manifest: dict, input_ids: list[int], chroma: np.ndarray | None = None) -> dict:
    """The decoder's per-prompt inputs: cross-attention keys and values of both guidance
    rows (the second unconditional) and the text bias (the second row all masked). For a
    melody model, the prefix instead: both rows' chroma (the melody's one-hot frames `[T,
    12]`, or none, tiled to the model's chroma length; the unconditional row has the null
    melody, pitch class 0) and text (zeros on the unconditional row), as transformers
    builds them."""
    ids = np.array([input_ids], dtype=np.int64)
    conditioning = graphs["text_encoder"].run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    both = np.concatenate([conditioning, np.zeros_like(conditioning)], axis=0)
    if "melody" in manifest:
        melody = manifest["melody"]
        null = np.zeros((1, melody["num_chroma"]), np.float32)
        null[0, 0] = 1.0
        rows = [null if chroma is None else chroma.astype(np.float32), null]
        tiled = [np.tile(row, (-(-melody["chroma_length"] // len(row)), 1))[: melody["chroma_length"]] for row in rows]
        return {"chroma": np.stack(tiled), "conditioning": both}
    cross = graphs["cross_kv"].run(None, {"conditioning": both})
    inputs = {}
    for i in range(manifest["decoder"]["num_layers"]):
        inputs[f"cross_key_{i}"] = cross[2 * i]
        inputs[f"cross_value_{i}"] = cross[2 * i + 1]
    text_len = ids.shape[1]
    masked = np.finfo(np.float32).min
    inputs["encoder_attention_bias"] = np.array([[0.0] * text_len, [masked] * text_len], dtype=np.float32)
    return inputs


def generate(
    graphs: dict,
    manifest: dict,
    input_ids: list[int],
    frames: int,
    guidance: float,
    given: np.ndarray | None = None,
    prefill_steps: int = 0,
    rng: np.random.Generator | None = None,
    top_k: int = 250,
    chroma: np.ndarray | None = None,
) -> tuple[np.ndarray, DecoderRunner]:
    """Guided generation of `frames` frames with the delay pattern (guidance 1: the
    conditioned row alone, as transformers generates without guidance): greedy, or top-k
    sampling with `rng`. The first `prefill_steps` steps run as one call, their columns
    taught from `given` (`[K, T]` codes); later steps sample. Returns the codes `[K, frames]`
    and the runner (its cache). `chroma` is a melody model's melody (see conditioning_inputs)."""
    k_count, special = manifest["num_codebooks"], manifest["special_token_id"]
    delays = manifest["pattern"]["delays"]
    inputs = conditioning_inputs(graphs, manifest, input_ids, chroma)
    steps = frames + max(delays)
    rows = 1 if guidance == 1.0 else 2
    runner = DecoderRunner(graphs["decoder"], manifest, prefix_len(inputs) + steps + 1, rows)
    # columns[s, k]: codebook k's token at step s, frame s - 1 - delays[k].
    columns = np.full((steps + 1, k_count), special, dtype=np.int64)
    if given is not None:
        for k in range(k_count):
            for s in range(1, prefill_steps + 1):
                t = s - 1 - delays[k]
                if 0 <= t < given.shape[1]:
                    columns[s, k] = given[k, t]
    s = 0
    while s < steps:
        count = prefill_steps if s == 0 and prefill_steps > 0 else 1
        logits = runner.run(columns[s : s + count], inputs)
        s += count
        guided = logits[0] if rows == 1 else logits[1] + (logits[0] - logits[1]) * guidance
        for k in range(k_count):
            t = s - 1 - delays[k]
            if 0 <= t < frames and not (given is not None and s <= prefill_steps):
                columns[s, k] = pick(guided[k], rng, top_k)
    codes = np.zeros((k_count, frames), np.int64)
    for k in range(k_count):
        codes[k] = columns[delays[k] + 1 : delays[k] + 1 + frames, k]
    return codes, runner


def pick(logits: np.ndarray, rng: np.random.Generator | None, top_k: int) -> int:
    if rng is None:
        return int(np.argmax(logits))
    top = np.argpartition(logits, -top_k)[-top_k:]
    weights = np.exp(logits[top] - logits[top].max())
    return int(rng.choice(top, p=weights / weights.sum()))
