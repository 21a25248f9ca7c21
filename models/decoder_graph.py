"""The decoder graph, written node by node from a MusicGen decoder's weights.

torch.export gives a graph of small generic operators; this one uses the fused operators
ONNX Runtime runs fastest on the CPU, and a cache contract that never copies the past:

- self-attention is `GroupQueryAttention` on packed QKV (one MatMul per layer for q, k and
  v). Its `past_key`/`past_value` inputs and `present_key`/`present_value` outputs are the
  same buffer in the engine (an `IoBinding`), which ONNX Runtime detects: it appends the
  new keys and values in place and attends over the filled slots only. The cache may be
  float32 or int8 (per-channel scales, static, calibrated at export);
- each residual add is fused with the next layer norm (`SkipLayerNormalization`);
- the feed-forward activation is `Gelu` (exact, erf);
- the step axis `S` is free: one call runs one step (`S = 1`) or fills an empty cache with
  `S` given steps at once (a prefill); only the last step's logits are computed;
- the row axis is free too: two rows for classifier-free guidance (conditioned, then
  unconditional), or the conditioned row alone when guidance is off, which then costs one
  row's attention and cache instead of two.

Cross-attention runs on keys and values `cross_kv.onnx` computes once per prompt; its keys
come transposed (`[2, H, D, L]`) so that a step multiplies without a transpose.

A melody model (`MusicgenMelodyForConditionalGeneration`) has no cross-attention: its
conditioning is a prefix of the decoder's own sequence, the projected chroma followed by the
projected text (transformers concatenates them in front of the codes' embeddings). The graph
takes both as inputs, `chroma` `[2, C, 12]` and `conditioning` `[2, L, width]`, and puts them
in front of the step's embeddings; the engine passes them with the first call on an empty
cache and zero-length ones afterwards, so the cache's first `C + L` slots hold the prefix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from template import Sources, position_frequencies

MS_DOMAIN = "com.microsoft"
LAYER_NORM_EPSILON = 1e-5
# Node names the quantizer includes or leaves out.
EMBED_NODE = "embedded_codes"
LM_HEADS_NODE = "lm_heads"


# Initializers of at least this many bytes go to the external data file, when there is one.
EXTERNAL_MIN_BYTES = 1024
# Each one starts at a multiple of the page size there, so that a runtime may map it.
EXTERNAL_ALIGN_BYTES = 4096


class TensorWriter:
    """Makes initializers: inline, or with `data` (a file path) written to that file as they
    come (ONNX external data beside the graph), so that a graph larger than protobuf's 2 GB
    never sits in memory whole. The graph names the file `location` (by default its own
    name), where it will lie once the graph is complete."""

    def __init__(self, data: Path | None, location: str | None = None) -> None:
        self.data = data
        self.location = location or (data.name if data is not None else None)
        if data is not None:
            data.write_bytes(b"")

    def tensor(self, name: str, array: np.ndarray) -> onnx.TensorProto:
        array = np.ascontiguousarray(array)
        if self.data is None or array.nbytes < EXTERNAL_MIN_BYTES:
            return numpy_helper.from_array(array, name)
        with self.data.open("ab") as data:
            data.write(bytes(-data.tell() % EXTERNAL_ALIGN_BYTES))
            offset = data.tell()
            data.write(array.tobytes())
        tensor = onnx.TensorProto(name=name, dims=array.shape, data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", offset), ("length", array.nbytes)):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
        return tensor


class GraphBuilder:
    """Collects nodes and initializers; names every intermediate value uniquely. With
    `external_data` (a file path), weights go there as they come (see TensorWriter)."""

    def __init__(self, external_data: Path | None = None) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        # How each weight is made from the checkpoint's tensors (see template.py).
        self.recipes: dict[str, dict] = {}
        self.count = 0
        self.writer = TensorWriter(external_data)

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(self.writer.tensor(name, array))
        return name

    def weight(self, name: str, array: np.ndarray, recipe: dict) -> str:
        self.recipes[name] = recipe
        return self.const(name, array)

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "", **attrs):
        if isinstance(outputs, int):
            names = []
            for _ in range(outputs):
                self.count += 1
                names.append(f"{op_type.lower()}_{self.count}")
        else:
            names = outputs
        # Nodes are named after their first output, so that tools can pick them by name.
        node_name = next(name for name in names if name)
        self.nodes.append(helper.make_node(op_type, inputs, names, name=node_name, domain=domain or None, **attrs))
        return names[0] if len(names) == 1 else names


def f32(tensor) -> np.ndarray:
    return tensor.detach().cpu().float().numpy()


def is_melody(model) -> bool:
    """Whether `model` conditions by prefix (MusicgenMelodyForConditionalGeneration)."""
    return not hasattr(model.decoder.model.decoder.layers[0], "encoder_attn")


def build_decoder_graph(
    model, kv_cache: str = "float32", kv_scales: dict | None = None, external_data: Path | None = None
) -> tuple[onnx.ModelProto, dict]:
    """The decoder graph of `model` (a MusicgenForConditionalGeneration or
    MusicgenMelodyForConditionalGeneration), and the recipes of its weights by initializer name. `kv_cache` is `float32` or `int8`; int8 needs
    `kv_scales`: per layer `(key_scale, value_scale)`, each `[1, H, 1, D]` float32. With
    `external_data`, the weights are written there (see GraphBuilder)."""
    decoder = model.decoder.model.decoder
    config = model.decoder.config
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    width = config.hidden_size
    head_dim = width // heads
    k_count, vocab = config.num_codebooks, config.vocab_size
    cache_type = {"float32": TensorProto.FLOAT, "int8": TensorProto.INT8}[kv_cache]
    melody = is_melody(model)
    g = GraphBuilder(external_data)
    source = Sources(model)

    def transposed(*modules) -> tuple[np.ndarray, dict]:
        """Linear weights as MatMul's right operand, side by side."""
        array = np.concatenate([f32(m.weight).T for m in modules], axis=1)
        parts = [{"transpose": source.tensor(m.weight)} for m in modules]
        return array, parts[0] if len(parts) == 1 else {"concat": parts, "axis": 1}

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["rows", "steps", k_count]),
        helper.make_tensor_value_info("past_len", TensorProto.INT64, [1]),
    ]
    if melody:
        inputs.append(helper.make_tensor_value_info("chroma", TensorProto.FLOAT, ["rows", "chroma", model.config.num_chroma]))
        inputs.append(helper.make_tensor_value_info("conditioning", TensorProto.FLOAT, ["rows", "text", width]))
    else:
        inputs.append(helper.make_tensor_value_info("encoder_attention_bias", TensorProto.FLOAT, ["rows", "text"]))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["rows", k_count, vocab])]
    for i in range(layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_{kind}_{i}", cache_type, ["rows", heads, "capacity", head_dim]))
            outputs.append(
                helper.make_tensor_value_info(f"present_{kind}_{i}", cache_type, ["rows", heads, "capacity", head_dim])
            )
    for i in range(layers if not melody else 0):
        inputs.append(helper.make_tensor_value_info(f"cross_key_{i}", TensorProto.FLOAT, ["rows", heads, head_dim, "text"]))
        inputs.append(helper.make_tensor_value_info(f"cross_value_{i}", TensorProto.FLOAT, ["rows", heads, "text", head_dim]))

    # Token embeddings: one table for all codebooks, each codebook's ids offset into it.
    table = np.concatenate([f32(embed.weight) for embed in decoder.embed_tokens], axis=0)
    table_recipe = {"concat": [source.tensor(embed.weight) for embed in decoder.embed_tokens], "axis": 0}
    offsets = np.arange(k_count, dtype=np.int64) * (vocab + 1)
    ids = g.op("Add", ["input_ids", g.const("codebook_offsets", offsets)])
    embedded = g.op("Gather", [g.weight("embed_tokens", table, table_recipe), ids], outputs=[EMBED_NODE], axis=0)
    hidden = g.op("ReduceSum", [embedded, g.const("codebook_axis", np.array([2], np.int64))], keepdims=0)
    if melody:
        # The prefix: chroma projected to the decoder's width, then the (already projected)
        # text; both empty after the first call.
        chroma = "chroma"
        proj = getattr(model, "audio_enc_to_dec_proj", None)
        if proj is not None:
            chroma = g.op("MatMul", [chroma, g.weight("audio_enc_to_dec_proj.weight", *transposed(proj))])
            chroma = g.op("Add", [chroma, g.weight("audio_enc_to_dec_proj.bias", f32(proj.bias), source.tensor(proj.bias))])
        hidden = g.op("Concat", [chroma, "conditioning", hidden], axis=1)

    # Positions past_len .. past_len + S - 1 (S counts a melody model's prefix too);
    # GroupQueryAttention's lengths as int32.
    steps = g.op("Gather", [g.op("Shape", [hidden]), g.const("step_axis", np.array([1], np.int64))], axis=0)
    total = g.op("Add", ["past_len", steps])
    scalar_axes = g.const("scalar_axes", np.array([0], np.int64))
    end_position = g.op("Squeeze", [total, scalar_axes])
    sinusoid_table = f32(decoder.embed_positions.weights)
    sinusoid_recipe = {"sinusoid": {"positions": sinusoid_table.shape[0], "frequencies": position_frequencies(width)}}
    position_table = g.weight("embed_positions", sinusoid_table, sinusoid_recipe)
    positions = g.op("Slice", [position_table, "past_len", total, scalar_axes])
    hidden = g.op("Add", [hidden, positions])
    total_len = g.op("Cast", [end_position], to=TensorProto.INT32)
    # GroupQueryAttention's seqlens_k is the index of the last filled slot, per row.
    last_slot = g.op("Sub", [end_position, g.const("one_scalar", np.array(1, np.int64))])
    rows = g.op("Slice", [g.op("Shape", ["input_ids"]), g.const("row_axis_start", np.array([0], np.int64)), g.const("row_axis_end", np.array([1], np.int64))])
    seqlens_k = g.op("Expand", [g.op("Cast", [last_slot], to=TensorProto.INT32), rows])

    # Cross-attention bias, added to every head's scores: 0 where the text is, the float
    # minimum where it is masked (the unconditional row, all of it), as transformers builds
    # it from a mask. A float input rather than a mask, so that a morph between two prompts
    # can weigh each prompt's tokens: adding log(w) to a token's scores weighs its share of
    # the softmax by w.
    if not melody:
        cross_bias = g.op("Unsqueeze", ["encoder_attention_bias", g.const("bias_axes", np.array([1, 2], np.int64))])

    scaling = np.array(head_dim**-0.5, np.float32)
    if not melody:
        scaling_name = g.const("attention_scaling", scaling)
        # 0 keeps the input's rows.
        split_shape = g.const("split_heads", np.array([0, -1, heads, head_dim], np.int64))
        merge_shape = g.const("merge_heads", np.array([0, -1, width], np.int64))

    def layer_norm_weights(norm, name):
        return (
            g.weight(f"{name}.weight", f32(norm.weight), source.tensor(norm.weight)),
            g.weight(f"{name}.bias", f32(norm.bias), source.tensor(norm.bias)),
        )

    first = decoder.layers[0].self_attn_layer_norm
    x = g.op("LayerNormalization", [hidden, *layer_norm_weights(first, "layers.0.self_attn_layer_norm")], axis=-1, epsilon=LAYER_NORM_EPSILON)

    def skip_norm(delta, residual, norm, name):
        """`residual + delta` and its layer norm, in one fused node."""
        g.count += 1
        normed, summed = f"{name}.normed_{g.count}", f"{name}.residual_{g.count}"
        g.op(
            "SkipLayerNormalization",
            [delta, residual, *layer_norm_weights(norm, name)],
            outputs=[normed, "", "", summed],
            domain=MS_DOMAIN,
            epsilon=LAYER_NORM_EPSILON,
        )
        return normed, summed

    for i, layer in enumerate(decoder.layers):
        prefix = f"layers.{i}"
        attn = layer.self_attn
        qkv = g.op("MatMul", [x, g.weight(f"{prefix}.self_attn.qkv.weight", *transposed(attn.q_proj, attn.k_proj, attn.v_proj))])
        gqa_inputs = [qkv, "", "", f"past_key_{i}", f"past_value_{i}", seqlens_k, total_len]
        gqa_attrs = dict(num_heads=heads, kv_num_heads=heads, scale=float(scaling))
        if kv_cache == "int8":
            key_scale, value_scale = kv_scales[i]
            gqa_inputs += ["", "", "", "", "", g.const(f"{prefix}.key_scale", key_scale), g.const(f"{prefix}.value_scale", value_scale)]
            gqa_attrs.update(k_quant_type="PER_CHANNEL", v_quant_type="PER_CHANNEL", kv_cache_bit_width=8)
        attended, _, _ = g.op(
            "GroupQueryAttention",
            gqa_inputs,
            outputs=[f"self_attn_{i}", f"present_key_{i}", f"present_value_{i}"],
            domain=MS_DOMAIN,
            **gqa_attrs,
        )
        delta = g.op("MatMul", [attended, g.weight(f"{prefix}.self_attn.out_proj.weight", *transposed(attn.out_proj))])
        if not melody:
            x, hidden = skip_norm(delta, hidden, layer.encoder_attn_layer_norm, f"{prefix}.encoder_attn_layer_norm")
            cross = layer.encoder_attn
            q = g.op("MatMul", [x, g.weight(f"{prefix}.encoder_attn.q_proj.weight", *transposed(cross.q_proj))])
            q = g.op("Transpose", [g.op("Reshape", [q, split_shape])], perm=[0, 2, 1, 3])
            scores = g.op("MatMul", [q, f"cross_key_{i}"])
            scores = g.op("Add", [g.op("Mul", [scores, scaling_name]), cross_bias])
            context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), f"cross_value_{i}"])
            context = g.op("Reshape", [g.op("Transpose", [context], perm=[0, 2, 1, 3]), merge_shape])
            delta = g.op(
                "MatMul", [context, g.weight(f"{prefix}.encoder_attn.out_proj.weight", *transposed(cross.out_proj))]
            )
        x, hidden = skip_norm(delta, hidden, layer.final_layer_norm, f"{prefix}.final_layer_norm")

        up = g.op("MatMul", [x, g.weight(f"{prefix}.fc1.weight", *transposed(layer.fc1))])
        delta = g.op("MatMul", [g.op("Gelu", [up], domain=MS_DOMAIN), g.weight(f"{prefix}.fc2.weight", *transposed(layer.fc2))])
        if i + 1 < layers:
            next_norm = decoder.layers[i + 1].self_attn_layer_norm
            x, hidden = skip_norm(delta, hidden, next_norm, f"layers.{i + 1}.self_attn_layer_norm")
        else:
            x, hidden = skip_norm(delta, hidden, decoder.layer_norm, "layer_norm")

    # Only the last step's logits: a prefill needs the cache, not every step's logits.
    last_step = g.op("Sub", [g.op("Squeeze", [steps, scalar_axes]), g.const("one_step", np.array(1, np.int64))])
    last = g.op("Gather", [x, last_step], axis=1)
    logits = g.op("MatMul", [last, g.weight("lm_heads.weight", *transposed(*model.decoder.lm_heads))], outputs=[LM_HEADS_NODE])
    g.op("Reshape", [logits, g.const("logits_shape", np.array([-1, k_count, vocab], np.int64))], outputs=["logits"])

    graph = helper.make_graph(g.nodes, "musicgen_decoder", inputs, outputs, g.initializers)
    model_proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(MS_DOMAIN, 1)],
        producer_name="musicgen-live export",
    )
    model_proto.ir_version = 10
    return model_proto, g.recipes


def decoder_io_names(layers: int, melody: bool) -> tuple[list[str], list[str]]:
    inputs = ["input_ids", "past_len", *(["chroma", "conditioning"] if melody else ["encoder_attention_bias"])]
    outputs = ["logits"]
    for i in range(layers):
        inputs += [f"past_key_{i}", f"past_value_{i}"]
        outputs += [f"present_key_{i}", f"present_value_{i}"]
    for i in range(layers if not melody else 0):
        inputs += [f"cross_key_{i}", f"cross_value_{i}"]
    return inputs, outputs
