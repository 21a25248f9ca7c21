"""Graph templates: a bundle's graphs with the checkpoint's weights taken out, and for each
weight a recipe that makes it from the tensors of a transformers checkpoint.

`musicgen import` (Rust, `import/`) fills a template from a checkpoint's safetensors with no
Python: it evaluates each recipe and writes the result where the template's graphs expect
it, as ONNX external data (`<graph>.data` beside each `<graph>.onnx`). The export writes a
template with `--template-out` after its self-check:

- it exports the graphs again from the model with every tensor scrambled (`scramble`), so
  that no two weights are alike;
- the decoder's weights come with recipes from `decoder_graph.py`, which builds them;
- the graphs torch exports (text encoder, cross-attention projections, codec) lose the
  names of most weights, so each initializer is matched against what the model's tensors
  can become (as they are, transposed, LSTM gates reordered, weight norm folded, ...);
- quantized decoder weights are the blockwise quantization of their float recipe.

Every recipe is evaluated here against the bundle's own initializer before the template is
written: the exact ones must give the same bytes, the folded weight norms agree to float
rounding. A float initializer of 16 or more values that no recipe makes stops the export,
so that a template never carries a random weight of its own.

Recipes (JSON), each giving one tensor, reshaped to its initializer's shape:

    {"tensor": NAME}                        a checkpoint tensor
    {"transpose": R}                        of a 2-D tensor
    {"concat": [R, ...], "axis": A}
    {"lstm_gates": R}                       PyTorch's gate blocks (i, f, g, o) as ONNX's (i, o, f, c)
    {"weight_norm": {"g": NAME, "v": NAME}} v * g / |v|, the norm over all axes but the first
    {"polyphase": R, "stride": S}           a transposed convolution as codec_graphs' polyphase one
    {"repeat": R, "times": N}               R tiled N times
    {"sinusoid": {"positions": P, "frequencies": [F, ...]}}
                                            MusicGen's position table
    {"blockwise": R, "bits": B, "block": K, "part": "blocks" | "scales"}
                                            MatMulNBits' symmetric quantization of R [K_in, N]
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

FORMAT_VERSION = 1
# Offsets of tensors in a data file; 64 bytes keeps every tensor aligned for SIMD loads.
ALIGN_BYTES = 64
# A float initializer this large that no recipe makes is a weight the template would lose.
LARGEST_CONSTANT = 16

# The config fields a template's graphs are built for; `musicgen import` refuses a
# checkpoint whose config.json differs in any of them.
ARCHITECTURE_FIELDS = {
    "decoder": [
        "model_type",
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "ffn_dim",
        "num_codebooks",
        "audio_channels",
        "max_position_embeddings",
        "activation_function",
        "scale_embedding",
    ],
    "text_encoder": [
        "model_type",
        "vocab_size",
        "d_model",
        "d_kv",
        "d_ff",
        "num_layers",
        "num_heads",
        "relative_attention_num_buckets",
        "relative_attention_max_distance",
        "feed_forward_proj",
        "layer_norm_epsilon",
    ],
    "audio_encoder": [
        "model_type",
        "audio_channels",
        "sampling_rate",
        "target_bandwidths",
        "upsampling_ratios",
        "num_filters",
        "num_residual_layers",
        "hidden_size",
        "codebook_dim",
        "codebook_size",
        "num_lstm_layers",
        "kernel_size",
        "last_kernel_size",
        "residual_kernel_size",
        "dilation_growth_rate",
        "compress",
        "norm_type",
        "normalize",
        "use_causal_conv",
        "use_conv_shortcut",
        "pad_mode",
    ],
}


# --------------------------------------------------------------------------- recipes


def position_frequencies(dim: int) -> list[float]:
    """The frequencies of MusicGen's position table, computed by torch as transformers
    computes them: torch's float32 `exp` is not correctly rounded, and over 2048 positions
    one last bit of a frequency moves the table by 3e-5, so the recipe carries them."""
    import torch

    half = dim // 2
    step = math.log(10000) / (half - 1)
    return [float(f) for f in torch.exp(torch.arange(half, dtype=torch.int64).float() * -step)]


def sinusoid(positions: int, frequencies: list[float]) -> np.ndarray:
    """MusicGen's position table from its frequencies: angles in float32 as transformers
    takes them, cos then sin, the functions in float64 rounded once, so that any language
    gets the same bits (torch's own differ from these by one bit at most)."""
    freqs = np.array(frequencies, dtype=np.float32)
    angles = (np.arange(positions, dtype=np.float32)[:, None] * freqs[None, :]).astype(np.float64)
    return np.concatenate([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


def blockwise(weight: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits' symmetric blockwise quantization of `weight` [K, N], bit for bit as
    ONNX Runtime's quantizer makes it: per column, blocks of `block` rows; the scale is the
    block's value of largest magnitude (the negative one on a tie) over -2^(bits-1); values
    round half away from zero after the zero point is added; padding rows stay 0."""
    rows, cols = weight.shape
    k_blocks = -(-rows // block)
    middle, top = 1 << (bits - 1), (1 << bits) - 1
    valid = np.arange(k_blocks * block).reshape(k_blocks, block) < rows
    blocks = np.pad(weight.astype(np.float32), ((0, k_blocks * block - rows), (0, 0))).T.reshape(cols, k_blocks, block)
    largest = np.where(valid, blocks, -np.inf).max(axis=2)
    smallest = np.where(valid, blocks, np.inf).min(axis=2)
    scales = (np.where(np.abs(largest) > np.abs(smallest), largest, smallest) / np.float32(-middle)).astype(np.float32)
    reciprocal = np.zeros_like(scales)
    np.divide(np.float32(1), scales, out=reciprocal, where=scales != 0)
    shifted = ((blocks * reciprocal[..., None]).astype(np.float32) + np.float32(middle)).astype(np.float64)
    rounded = np.sign(shifted) * np.floor(np.abs(shifted) + 0.5)
    q = np.where(valid[None], np.clip(rounded, 0, top), 0).astype(np.uint8)
    if bits == 4:
        q = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    return q, scales


def lstm_gates(array: np.ndarray) -> np.ndarray:
    i, f, g, o = np.split(array, 4, axis=0)
    return np.concatenate([i, o, f, g], axis=0)


def polyphase(weight: np.ndarray, stride: int) -> np.ndarray:
    """A transposed convolution's weight [in, out, 2 * stride] as `PolyphaseConvTranspose1d`
    lays it out: [stride * out, in, 2]."""
    in_channels, out_channels, _ = weight.shape
    taps = np.stack([weight[:, :, stride:], weight[:, :, :stride]], axis=-1)
    return taps.transpose(2, 1, 0, 3).reshape(stride * out_channels, in_channels, 2)


def weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    norm = np.sqrt(np.sum(v.astype(np.float64) ** 2, axis=tuple(range(1, v.ndim)), keepdims=True))
    return (v * (g / norm)).astype(np.float32)


def evaluate(recipe: dict, tensors) -> np.ndarray:
    """The tensor `recipe` makes from `tensors` (name to float32 array)."""
    if "tensor" in recipe:
        return tensors[recipe["tensor"]]
    if "transpose" in recipe:
        return evaluate(recipe["transpose"], tensors).T
    if "concat" in recipe:
        return np.concatenate([evaluate(part, tensors) for part in recipe["concat"]], axis=recipe["axis"])
    if "lstm_gates" in recipe:
        return lstm_gates(evaluate(recipe["lstm_gates"], tensors))
    if "weight_norm" in recipe:
        return weight_norm(tensors[recipe["weight_norm"]["g"]], tensors[recipe["weight_norm"]["v"]])
    if "polyphase" in recipe:
        return polyphase(evaluate(recipe["polyphase"], tensors), recipe["stride"])
    if "repeat" in recipe:
        return np.tile(evaluate(recipe["repeat"], tensors), recipe["times"])
    if "sinusoid" in recipe:
        return sinusoid(recipe["sinusoid"]["positions"], recipe["sinusoid"]["frequencies"])
    if "blockwise" in recipe:
        blocks, scales = LAST_BLOCKWISE.of(recipe, tensors)
        return blocks if recipe["part"] == "blocks" else scales
    raise ValueError(f"unknown recipe {recipe}")


class LastBlockwise:
    """The last weight's blocks and scales: a quantized weight's two initializers come one
    after the other, and quantizing a large model's weights twice each took minutes."""

    def __init__(self) -> None:
        self.tensors = None
        self.key: tuple | None = None
        self.value: tuple[np.ndarray, np.ndarray] | None = None

    def of(self, recipe: dict, tensors) -> tuple[np.ndarray, np.ndarray]:
        key = (json.dumps(recipe["blockwise"], sort_keys=True), recipe["bits"], recipe["block"])
        if tensors is not self.tensors or key != self.key:
            self.tensors, self.key = None, None
            self.value = blockwise(evaluate(recipe["blockwise"], tensors), recipe["bits"], recipe["block"])
            self.tensors, self.key = tensors, key
        return self.value

    def forget(self) -> None:
        """Drops the weight and the tensors it was made from (a model's, which its caller
        may be about to release)."""
        self.tensors, self.key, self.value = None, None, None


LAST_BLOCKWISE = LastBlockwise()


def is_exact(recipe: dict) -> bool:
    """Whether a recipe reproduces the export's bytes exactly (a folded weight norm or the
    position table may differ from torch's in the last bit)."""
    if "weight_norm" in recipe or "sinusoid" in recipe:
        return False
    return all(is_exact(value) for value in recipe.values() if isinstance(value, dict)) and all(
        is_exact(part) for part in recipe.get("concat", [])
    )


def checkpoint_tensors(model) -> dict[str, np.ndarray]:
    """The model's tensors by the names `save_pretrained` gives them."""
    return {name: tensor.detach().cpu().float().numpy() for name, tensor in model.state_dict().items()}


class Sources:
    """Names of the model's tensors, for the recipes of graphs built from them."""

    def __init__(self, model) -> None:
        self.names = {id(tensor): name for name, tensor in model.state_dict(keep_vars=True).items()}

    def tensor(self, tensor) -> dict:
        return {"tensor": self.names[id(tensor)]}


# --------------------------------------------------------------------------- matching


def scramble(model, seed: int) -> None:
    """Gives every tensor of `model` its own random values, in place. A freshly initialised
    model has many alike (zero biases, unit norms, weight norms whose `g` is `|v|`), and a
    template is matched on values: exported from a scrambled model, each weight has one
    recipe only."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))


def candidates(model, tensors: dict[str, np.ndarray]) -> dict[int, list[tuple[dict, np.ndarray, float]]]:
    """What the model's tensors may have become in a torch-exported graph, by element count,
    each with its sum."""
    found: dict[int, list[tuple[dict, np.ndarray, float]]] = {}

    def add(recipe: dict, value: np.ndarray, total: float | None = None) -> None:
        # The sum is taken once here: matching compares it with every initializer of the
        # same size (a large model's cross-attention has 96 weights the size of 768
        # candidates).
        total = float(np.sum(value, dtype=np.float64)) if total is None else total
        found.setdefault(value.size, []).append((recipe, value, total))

    for name, value in tensors.items():
        if not name.endswith(("num_batches_tracked", "inited", "cluster_size", "embed_avg")):
            total = float(np.sum(value, dtype=np.float64))
            add({"tensor": name}, value, total)
            if value.ndim == 2:
                add({"transpose": {"tensor": name}}, value.T, total)
            if ".lstm.weight_" in name:
                add({"lstm_gates": {"tensor": name}}, lstm_gates(value))
    for name in tensors:
        if ".lstm.bias_ih_l" in name:
            hh = name.replace("bias_ih", "bias_hh")
            recipe = {"concat": [{"lstm_gates": {"tensor": name}}, {"lstm_gates": {"tensor": hh}}], "axis": 0}
            add(recipe, evaluate(recipe, tensors))
    strides = transposed_conv_strides(model)
    for name in tensors:
        if name.endswith(".parametrizations.weight.original0"):
            prefix = name.removesuffix(".parametrizations.weight.original0")
            recipe = {"weight_norm": {"g": name, "v": f"{prefix}.parametrizations.weight.original1"}}
            add(recipe, evaluate(recipe, tensors))
            stride = strides.get(prefix)
            if stride is not None:
                phased = {"polyphase": recipe, "stride": stride}
                add(phased, evaluate(phased, tensors))
                bias = {"repeat": {"tensor": f"{prefix}.bias"}, "times": stride}
                add(bias, evaluate(bias, tensors))
    return found


def transposed_conv_strides(model) -> dict[str, int]:
    from torch import nn

    return {
        f"audio_encoder.{name}": module.stride[0]
        for name, module in model.audio_encoder.named_modules()
        if isinstance(module, nn.ConvTranspose1d)
    }


def agrees(recipe: dict, made: np.ndarray, value: np.ndarray) -> bool:
    """Whether `made` is `value`: the same bytes for rearrangements, equal to float
    rounding for folded weight norms and the position table."""
    if is_exact(recipe):
        return np.array_equal(made, value)
    return np.allclose(made, value, rtol=1e-5, atol=1e-6)


def match(value: np.ndarray, found: dict) -> dict | None:
    """The recipe among `found` that makes `value`."""
    flat = value.reshape(-1)
    total = float(np.sum(flat, dtype=np.float64))
    scale = float(np.sum(np.abs(flat), dtype=np.float64)) + 1e-12
    for recipe, candidate, candidate_total in found.get(flat.size, []):
        if abs(candidate_total - total) > 1e-5 * scale:
            continue
        if agrees(recipe, np.ascontiguousarray(candidate).reshape(value.shape), value):
            return recipe
    return None


# --------------------------------------------------------------------------- writing


def graph_recipes(
    bundle: Path,
    file: str,
    graph: onnx.GraphProto,
    tensors,
    found: dict,
    decoder_recipes: dict[str, dict],
    quantization: dict,
) -> dict[str, dict]:
    """The recipes of `graph`'s weights (the graph file `file` in `bundle`) by initializer
    name. Each weight is read from the graph's external data as it comes: a large
    decoder's do not fit in memory beside the model."""
    chosen, missing = {}, []
    for init in graph.initializer:
        if init.data_type not in (TensorProto.FLOAT, TensorProto.UINT8):
            continue
        value = numpy_helper.to_array(init, str(bundle))
        recipe = None
        if file == "decoder.onnx":
            recipe = decoder_recipe(init.name, decoder_recipes, quantization)
        elif init.data_type == TensorProto.FLOAT:
            recipe = match(value, found)
        if recipe is None:
            if init.data_type == TensorProto.FLOAT and value.size >= LARGEST_CONSTANT:
                missing.append(f"{init.name} {list(value.shape)}")
            continue
        check(file, init.name, recipe, value, tensors)
        chosen[init.name] = recipe
    if missing:
        raise SystemExit(f"{file}: no recipe makes these weights from the checkpoint: {', '.join(missing)}")
    return chosen


def decoder_recipe(name: str, decoder_recipes: dict[str, dict], quantization: dict) -> dict | None:
    """A decoder initializer's recipe: as the graph builder made it, or the MatMulNBits
    blocks and scales the quantizer made of it (`<weight>_Q4`, `<weight>_scales`)."""
    if name in decoder_recipes:
        return decoder_recipes[name]
    if quantization.get("method") != "matmul_nbits":
        return None
    bits = {"int8": 8, "int4": 4}[quantization["weights"]]
    for suffix, part in ((f"_Q{bits}", "blocks"), ("_scales", "scales")):
        base = name.removesuffix(suffix)
        if base != name and base in decoder_recipes:
            return {"blockwise": decoder_recipes[base], "bits": bits, "block": quantization["block_size"], "part": part}
    return None


def check(file: str, name: str, recipe: dict, value: np.ndarray, tensors) -> None:
    made = np.asarray(evaluate(recipe, tensors))
    if made.size != value.size:
        raise SystemExit(f"{file}: {name}: its recipe makes {made.size} values, the graph holds {value.size}")
    made = made.reshape(value.shape)
    if not agrees(recipe, made, value):
        error = float(np.max(np.abs(made.astype(np.float64) - value.astype(np.float64))))
        raise SystemExit(f"{file}: {name}: its recipe differs from the export's weight by {error:.3e}")


# A melody model's own fields (config.json's top level, `model` here): how its chroma
# prefix is shaped.
MELODY_FIELDS = ["model_type", "num_chroma", "chroma_length"]


def architecture(model) -> dict:
    config = model.config
    parts = {"decoder": config.decoder, "text_encoder": config.text_encoder, "audio_encoder": config.audio_encoder}
    found = {part: {field: getattr(parts[part], field) for field in fields} for part, fields in ARCHITECTURE_FIELDS.items()}
    if config.model_type == "musicgen_melody":
        found["model"] = {field: getattr(config, field) for field in MELODY_FIELDS}
    return found


def write_template(model, bundle: Path, out: Path, manifest: dict, decoder_recipes: dict[str, dict]) -> None:
    """Writes the template of `bundle` (made from `model`) to `out`."""
    files = [graph["file"] for graph in manifest["graphs"].values()]
    checkpoint = checkpoint_tensors(model)
    found = candidates(model, checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    tensors = []
    for file in files:
        proto = onnx.load(str(bundle / file), load_external_data=False)
        try:
            recipes = graph_recipes(
                bundle, file, proto.graph, checkpoint, found, decoder_recipes, manifest["quantization"]
            )
        finally:
            LAST_BLOCKWISE.forget()
        data = f"{file}.data"
        offset = 0
        for init in proto.graph.initializer:
            recipe = recipes.get(init.name)
            if recipe is None:
                if init.data_location == TensorProto.EXTERNAL:
                    # A constant of the graph's own (no weight): the template carries it.
                    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init, str(bundle)), init.name))
                continue
            dtype = {TensorProto.FLOAT: "float32", TensorProto.UINT8: "uint8"}[init.data_type]
            length = int(np.prod(init.dims, dtype=np.int64)) * (4 if dtype == "float32" else 1)
            tensors.append(
                {
                    "graph": file,
                    "name": init.name,
                    "dtype": dtype,
                    "shape": [int(d) for d in init.dims],
                    "offset": offset,
                    "length": length,
                    "recipe": recipe,
                }
            )
            externalize(init, data, offset, length)
            offset += -(-length // ALIGN_BYTES) * ALIGN_BYTES
        onnx.save(proto, str(out / file))
    kept = {key: value for key, value in manifest.items() if key != "model_name"}
    template = {
        "format_version": FORMAT_VERSION,
        "architecture": architecture(model),
        "manifest": kept,
        "tensors": tensors,
    }
    (out / "template.json").write_text(json.dumps(template, indent=1) + "\n")


def externalize(init: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Points `init` at `length` bytes of `location` from `offset`, its own bytes dropped."""
    for field in ("raw_data", "float_data", "int32_data", "int64_data"):
        init.ClearField(field)
    init.data_location = TensorProto.EXTERNAL
    del init.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = init.external_data.add()
        entry.key, entry.value = key, value
