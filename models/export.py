"""Export MusicGen to a streaming ONNX bundle for MusicGen Live.

The bundle holds five graphs shaped for step-by-step generation (see README.md for the
exact I/O contract), the T5 tokenizer and a manifest, `musicgen.json`. The export checks
itself: greedy generation through the exported graphs must give exactly the codes of
transformers' own `generate`, and the codec graph must match transformers' decode.

Usage (through `cargo xtask export ...`, which prepares the virtual environment):

    export.py --random tiny --golden --out models/tiny
    export.py --random musicgen-small --quantize int8 --out target/bundles/small-int8
    export.py --checkpoint facebook/musicgen-small --out bundles/musicgen-small
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import codec_graphs
import matmul_nbits
from graph_facts import decoder_facts
import stepper
import template
from decoder_graph import LM_HEADS_NODE, build_decoder_graph, decoder_io_names, is_melody
from torch import nn

FORMAT_VERSION = 3
SEED = 0
GOLDEN_PROMPT = "warm lo-fi piano with soft drums"
GOLDEN_GUIDANCE = 3.0
GOLDEN_NEW_TOKENS = 131  # 128 frames with the delay pattern over 4 codebooks
CHECK_NEW_TOKENS = 64
OPSET = 18
CALIBRATION_PROMPTS = ["warm lo-fi piano with soft drums, 80 bpm", "fast techno with heavy bass and hi-hats, 128 bpm"]
CALIBRATION_FRAMES = 250
# Calibration sees two prompts; a key or value up to this many times larger than any it saw
# is stored without clipping.
KV_HEADROOM = 1.5


class Progress:
    """Prints each stage with the time since the start and the process's peak memory so
    far, so that long exports show where they are and what they need."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def stage(self, text: str) -> None:
        elapsed = time.monotonic() - self.start
        print(f"[{elapsed:7.1f} s, peak {peak_rss_gib():5.1f} GiB] {text}", flush=True)


def peak_rss_gib() -> float:
    """The most memory this process has held at once (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


def release_freed_memory() -> None:
    """Collects garbage and hands the freed heap back to the system, so that the memory a
    released model held is free for what comes next and the resident size says so."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass  # not glibc: its allocator keeps its own policy


def rss_gib() -> float:
    """The memory this process holds now."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 30)


# --------------------------------------------------------------------------- models


# The tests' tiny model.
TINY_TEXT = {
    "vocab_size": 256,
    "d_model": 32,
    "d_kv": 16,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 2,
    "relative_attention_num_buckets": 8,
}
TINY_AUDIO = {"num_filters": 4, "hidden_size": 8, "codebook_dim": 8, "num_lstm_layers": 1}
TINY_DECODER = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 128}
# Meta's checkpoints share the T5-base text encoder and the 32 kHz Encodec; their decoders
# (audiocraft's `dim`, `num_layers`, `num_heads`) have the feed-forward 4 times as wide.
T5_BASE = {"vocab_size": 32128, "d_model": 768, "d_kv": 64, "d_ff": 3072, "num_layers": 12, "num_heads": 12}
ENCODEC_32KHZ = {"num_filters": 64, "hidden_size": 128, "codebook_dim": 128, "num_lstm_layers": 2}
DECODER_SIZES = {
    "musicgen-small": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
    "musicgen-medium": {"hidden_size": 1536, "num_hidden_layers": 48, "num_attention_heads": 24},
    "musicgen-large": {"hidden_size": 2048, "num_hidden_layers": 48, "num_attention_heads": 32},
}
RANDOM_SHAPES = [
    "tiny",
    "tiny-stereo",
    "tiny-melody",
    "musicgen-small",
    "musicgen-stereo-small",
    "musicgen-medium",
    "musicgen-stereo-medium",
    "musicgen-melody",
    "musicgen-stereo-melody",
    "musicgen-large",
    "musicgen-stereo-large",
    "musicgen-melody-large",
    "musicgen-stereo-melody-large",
]
# Meta's melody checkpoints without a size in their name (`musicgen-melody`,
# `musicgen-stereo-melody`) have medium's decoder.
MELODY_SIZE = "musicgen-medium"


def random_configs(shape: str):
    """Transformers configs for randomly initialised models: `tiny` for tests, or a real
    checkpoint's shape (see DECODER_SIZES) for benchmarks. A `-stereo` shape is the same
    model with the stereo checkpoints' decoder: 8 codebooks, left and right interleaved,
    decoded by the same mono Encodec one channel at a time. A `-melody` shape has the melody
    checkpoints' decoder (conditioning as a prefix, no cross-attention): see
    build_random_model."""
    stereo = "-stereo" in shape
    base = shape.replace("-stereo", "").replace("-melody", "")
    if base == "musicgen":
        base = MELODY_SIZE
    text, audio, decoder = mono_configs(base)
    if stereo:
        decoder.num_codebooks = 2 * decoder.num_codebooks
        decoder.audio_channels = 2
    return text, audio, decoder


def mono_configs(shape: str):
    from transformers import EncodecConfig, MusicgenDecoderConfig, T5Config

    if shape == "tiny":
        text, audio, decoder = TINY_TEXT, TINY_AUDIO, TINY_DECODER
    elif shape in DECODER_SIZES:
        size = DECODER_SIZES[shape]
        text, audio, decoder = T5_BASE, ENCODEC_32KHZ, {**size, "ffn_dim": 4 * size["hidden_size"]}
    else:
        raise SystemExit(f"unknown --random shape {shape!r}; use one of {', '.join(RANDOM_SHAPES)}")
    return (
        T5Config(**text, decoder_start_token_id=0),
        EncodecConfig(
            audio_channels=1,
            sampling_rate=32000,
            target_bandwidths=[2.2],
            upsampling_ratios=[8, 5, 4, 4],
            codebook_size=2048,
            norm_type="weight_norm",
            normalize=False,
            use_causal_conv=False,
            **audio,
        ),
        MusicgenDecoderConfig(
            vocab_size=2048, num_codebooks=4, max_position_embeddings=2048, audio_channels=1, **decoder
        ),
    )


def random_model_config(shape: str):
    """The config of `shape`'s model, and the transformers class that builds it."""
    from transformers import (
        MusicgenConfig,
        MusicgenForConditionalGeneration,
        MusicgenMelodyConfig,
        MusicgenMelodyDecoderConfig,
        MusicgenMelodyForConditionalGeneration,
    )

    text, audio, decoder = random_configs(shape)
    if "melody" in shape:
        decoder = MusicgenMelodyDecoderConfig(**{k: v for k, v in decoder.to_dict().items() if k != "model_type"})
        config_class, model_class = MusicgenMelodyConfig, MusicgenMelodyForConditionalGeneration
    else:
        config_class, model_class = MusicgenConfig, MusicgenForConditionalGeneration
    config = config_class(text_encoder=text.to_dict(), audio_encoder=audio.to_dict(), decoder=decoder.to_dict())
    config.decoder.pad_token_id = decoder.vocab_size
    config.decoder.decoder_start_token_id = decoder.vocab_size
    config.decoder.bos_token_id = decoder.vocab_size
    config.pad_token_id = decoder.vocab_size
    config.decoder_start_token_id = decoder.vocab_size
    return config, model_class


def build_random_model(shape: str):
    torch.manual_seed(SEED)
    config, model_class = random_model_config(shape)
    model = model_class(config)
    # transformers starts Encodec's codebooks at zero (training fills them by k-means), so
    # every code would decode to the same audio and every sound would encode to code 0.
    # Random vectors, from a generator of their own so that every other weight stays as
    # the seed makes it, let codes change the audio as in a trained codec.
    codebooks = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for layer in model.audio_encoder.quantizer.layers:
            embed = torch.randn(layer.codebook.embed.shape, generator=codebooks)
            layer.codebook.embed.copy_(embed)
            layer.codebook.embed_avg.copy_(embed)
        # Likewise, a melody model's projections of chroma and text at transformers'
        # initial scale (std 0.02) leave its decoder all but deaf to its prefix; at the
        # scale of the decoder's own activations the melody and the prompt change the
        # codes as a trained model's do.
        if "melody" in shape:
            for proj in (model.audio_enc_to_dec_proj, model.enc_to_dec_proj):
                proj.weight.copy_(torch.randn(proj.weight.shape, generator=codebooks))
    return model


def load_model(args):
    from transformers import AutoConfig, MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

    if args.random:
        model = build_random_model(args.random)
        name = f"random-{args.random}"
    else:
        melody = AutoConfig.from_pretrained(args.checkpoint).model_type == "musicgen_melody"
        model_class = MusicgenMelodyForConditionalGeneration if melody else MusicgenForConditionalGeneration
        model = model_class.from_pretrained(args.checkpoint)
        name = Path(args.checkpoint).name
    model.config._attn_implementation = "eager"
    for sub in (model.text_encoder, model.decoder, model.audio_encoder):
        sub.config._attn_implementation = "eager"
    model.eval()
    model.generation_config.pad_token_id = model.decoder.config.vocab_size
    model.generation_config.decoder_start_token_id = model.decoder.config.vocab_size
    model.generation_config.bos_token_id = model.decoder.config.vocab_size
    model.generation_config.eos_token_id = None
    return model, name


# --------------------------------------------------------------------------- tokenizer

TOKENIZER_TEXT = """
warm lo-fi piano with soft drums, 80 bpm. fast techno with heavy bass and hi-hats, 128 bpm.
ambient pads, slow evolving synth textures, reverb, calm and dreamy. jazz trio with upright
bass, brushed drums and a mellow electric piano. epic orchestral score with strings, brass,
choir and big percussion. acoustic guitar folk song, gentle and warm, finger picking. funky
disco groove with slap bass, clavinet and horns, 118 bpm. dark drum and bass with reese bass,
fast breakbeats, 174 bpm. happy pop song with catchy synth lead, claps and a four on the floor
kick. lofi hip hop beat, dusty vinyl crackle, jazzy chords, relaxed. heavy metal riff with
distorted electric guitars and double kick drums. reggae with offbeat guitar skank and deep
bass. classical string quartet, baroque, violin cello viola. cinematic piano, emotional, sad,
minor key. upbeat latin percussion, congas, bongos, timbales, salsa piano. chiptune 8-bit
video game music, square waves, arpeggios. deep house with warm chords, shuffling hats, 122
bpm. trap beat with 808 bass, rolling hi-hats, dark melody. blues shuffle with harmonica and
slide guitar. bossa nova with nylon guitar, soft vocals hum, brushes. minimal techno, hypnotic
loop, clicks, sub bass. soft rock ballad with piano and strings. garage rock with fuzzy guitars.
the a an and or of to in on at for by from up down 0 1 2 3 4 5 6 7 8 9 , . ! ? - ' " : ; ( )
"""


def build_tiny_tokenizer(vocab_size: int, path: Path) -> None:
    """A small T5-style tokenizer (Unigram, Metaspace, `</s>` appended), trained offline on
    music descriptions. Its special ids match T5: pad 0, eos 1, unk 2."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    alphabet = sorted(set(TOKENIZER_TEXT.lower().replace("\n", " ")))
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        initial_alphabet=alphabet,
        shrinking_factor=0.75,
    )
    lines = [line for line in TOKENIZER_TEXT.splitlines() if line.strip()]
    tokenizer.train_from_iterator(lines * 4, trainer=trainer)
    eos = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    assert tokenizer.token_to_id("<pad>") == 0 and eos == 1 and tokenizer.token_to_id("<unk>") == 2
    tokenizer.save(str(path))


def write_tokenizer(args, model, out: Path) -> None:
    path = out / "tokenizer.json"
    if args.checkpoint:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(args.checkpoint).backend_tokenizer.save(str(path))
    else:
        build_tiny_tokenizer(min(model.text_encoder.config.vocab_size, 256), path)


def tokenize(out: Path, prompt: str) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(out / "tokenizer.json")).encode(prompt).ids


# --------------------------------------------------------------------------- graphs


class TextEncoderGraph(nn.Module):
    """Token ids and mask to the decoder's conditioning, as MusicgenForConditionalGeneration
    feeds it to the decoder: projected to decoder width and zeroed where masked."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.text_encoder
        self.proj = getattr(model, "enc_to_dec_proj", None)

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.proj is not None:
            hidden = self.proj(hidden)
        return hidden * attention_mask[..., None].to(hidden.dtype)


def split_heads(x, heads):
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


class CrossKvGraph(nn.Module):
    """Conditioning of both guidance rows to every layer's cross-attention keys (transposed,
    `[2, H, D, L]`, as the decoder multiplies by them) and values (`[2, H, L, D]`)."""

    def __init__(self, model):
        super().__init__()
        # Only the projections, under the names the decoder gives them: the torch exporter
        # keeps its last graph, with every tensor of the module it exported, past the
        # export, and the decoder's other weights must be freed before the self-check.
        self.layers = nn.ModuleList()
        for layer in model.decoder.model.decoder.layers:
            attention = nn.Module()
            attention.k_proj, attention.v_proj = layer.encoder_attn.k_proj, layer.encoder_attn.v_proj
            holder = nn.Module()
            holder.encoder_attn = attention
            self.layers.append(holder)
        self.heads = model.decoder.config.num_attention_heads

    def forward(self, conditioning):
        outputs = []
        for layer in self.layers:
            outputs.append(split_heads(layer.encoder_attn.k_proj(conditioning), self.heads).transpose(2, 3))
            outputs.append(split_heads(layer.encoder_attn.v_proj(conditioning), self.heads))
        return tuple(outputs)


class CodecEncoderGraph(nn.Module):
    def __init__(self, model, bandwidth):
        super().__init__()
        self.codec = model.audio_encoder
        self.bandwidth = bandwidth

    def forward(self, input_values):
        return self.codec.encode(input_values, bandwidth=self.bandwidth).audio_codes[0]


def export_graph(module, args, path: Path, inputs, outputs, dynamic_shapes) -> None:
    """Exports with torch.export (the dynamo exporter): it keeps every length symbolic,
    where tracing bakes in Python-level decisions taken for the sample length."""
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    onnx.checker.check_model(str(path))


def export_graph_traced(module, args, path: Path, inputs, outputs, dynamic_axes) -> None:
    """The TorchScript exporter, for the codec: torch.export cannot follow Encodec's
    length-dependent padding branches, and the convolutional graph does not depend on them
    for the lengths the engine uses (the self-check decodes another length than the
    sample's)."""
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))


def dim(name: str, max_size: int = 8192):
    return torch.export.Dim(name, min=1, max=max_size)


# What one serialized ONNX file may hold (protobuf's limit), less room for everything that
# is not a weight.
INLINE_LIMIT_BYTES = onnx.checker.MAXIMUM_PROTOBUF - (64 << 20)


def write_decoder(model, path: Path, args, kv_cache: str = "float32", kv_scales: list | None = None) -> dict:
    """Builds and saves the decoder graph; returns its weights' recipes. A decoder that
    does not fit protobuf's 2 GB (musicgen-medium's is 6.5 GB in float32; small's is 1.5
    GB), or any with `--external-data`, keeps its weights in ONNX external data,
    `decoder.onnx.data`, written as the graph is built so that the whole never sits in
    memory. ONNX Runtime reads both from the path."""
    external_data = start_external_data(path)
    if not keeps_external_data(4 * sum(p.numel() for p in model.decoder.parameters()), args):
        proto, recipes = build_decoder_graph(model, kv_cache, kv_scales)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))
    else:
        proto, recipes = build_decoder_graph(model, kv_cache, kv_scales, external_data)
        onnx.save(proto, str(path))
        onnx.checker.check_model(str(path))
    return recipes


def keeps_external_data(weight_bytes: int, args) -> bool:
    """Whether a decoder of `weight_bytes` keeps its weights in `decoder.onnx.data`."""
    return args.external_data or weight_bytes > INLINE_LIMIT_BYTES


def start_external_data(path: Path) -> Path:
    """Removes the external data an earlier save of `path` left (onnx appends to an existing
    data file, so a graph saved again must start a new one); returns its path."""
    external_data = Path(f"{path}.data")
    external_data.unlink(missing_ok=True)
    return external_data


def export_graphs(model, out: Path, args, progress: Progress) -> tuple[dict, dict]:
    """Writes every graph; returns their `(file, inputs, outputs)` by manifest key, and the
    decoder's weight recipes (see template.py)."""
    dec = model.decoder.config
    layers = dec.num_hidden_layers
    k = dec.num_codebooks
    graphs = {}

    progress.stage("exporting text_encoder.onnx")
    ids = torch.tensor([[5, 6, 7, 1]], dtype=torch.long)
    mask = torch.ones_like(ids)
    names = (["input_ids", "attention_mask"], ["conditioning"])
    tokens = dim("tokens", 512)
    export_graph(
        TextEncoderGraph(model),
        (ids, mask),
        out / "text_encoder.onnx",
        *names,
        ({1: tokens}, {1: tokens}),
    )
    graphs["text_encoder"] = ("text_encoder.onnx", *names)

    melody = is_melody(model)
    if not melody:
        progress.stage("exporting cross_kv.onnx")
        cross_out = [n for i in range(layers) for n in (f"cross_key_{i}", f"cross_value_{i}")]
        conditioning = torch.randn(2, 4, dec.hidden_size)
        export_graph(
            CrossKvGraph(model), (conditioning,), out / "cross_kv.onnx", ["conditioning"], cross_out, ({1: tokens},)
        )
        graphs["cross_kv"] = ("cross_kv.onnx", ["conditioning"], cross_out)

    progress.stage("writing decoder.onnx (float32 cache)")
    recipes = write_decoder(model, out / "decoder.onnx", args)
    graphs["decoder"] = ("decoder.onnx", *decoder_io_names(layers, melody))

    progress.stage("exporting codec_frontend.onnx and codec_upsampler.onnx")
    graphs.update(codec_graphs.export_codec_graphs(model, out, export_graph_traced))

    progress.stage("exporting codec_encoder.onnx")
    bandwidth = model.audio_encoder.config.target_bandwidths[0]
    samples_per_frame = int(np.prod(model.audio_encoder.config.upsampling_ratios))
    audio = torch.randn(1, 1, 10 * samples_per_frame)
    export_graph_traced(
        CodecEncoderGraph(model, bandwidth),
        (audio,),
        out / "codec_encoder.onnx",
        ["input_values"],
        ["audio_codes"],
        {"input_values": {2: "samples"}, "audio_codes": {2: "frames"}},
    )
    graphs["codec_encoder"] = ("codec_encoder.onnx", ["input_values"], ["audio_codes"])
    return graphs, recipes


# --------------------------------------------------------------------------- precision


def quantize_decoder(out: Path, args, progress: Progress) -> None:
    """Rewrites decoder.onnx in place with quantized weights. Inputs and outputs keep their
    types, so the engine's code does not change with the weights' precision.

    `matmul_nbits` (the default) stores 4- or 8-bit blocks in `MatMulNBits` nodes; with
    `accuracy_level` 4 ONNX Runtime's CPU kernels quantize the activations to int8 and run
    integer dot products, where level 0 unpacks the weights to float32 for every step.
    `dynamic` is ONNX Runtime's older dynamic quantization to `MatMulInteger` (int8 only)."""
    if args.quantize == "none":
        return
    path = out / "decoder.onnx"
    if args.quant_method == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        if args.quantize != "int8":
            raise SystemExit("--quant-method dynamic quantizes to int8 only")
        if Path(f"{path}.data").exists():
            raise SystemExit("--quant-method dynamic needs a decoder of under 2 GB in float32 (small); use matmul_nbits")
        progress.stage("quantizing decoder.onnx matrix multiplications to int8 (dynamic, MatMulInteger)")
        tmp = out / "decoder.int8.onnx"
        # Only MatMuls with constant weights: attention stays in float.
        quantize_dynamic(
            str(path),
            str(tmp),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            # Shape inference does not know the com.microsoft operators' outputs.
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
            nodes_to_exclude=[] if args.quantize_lm_heads else [LM_HEADS_NODE],
        )
        tmp.replace(path)
        return
    bits = {"int8": 8, "int4": 4}[args.quantize]
    if not args.quantize_embeddings:
        quantize_matmuls(path, path, args, progress)
        return
    progress.stage(
        f"quantizing decoder.onnx weights to {bits} bits (MatMulNBits, blocks of {args.block_size}, "
        f"accuracy level {args.accuracy_level}, embeddings too)"
    )
    excluded = [] if args.quantize_lm_heads else [LM_HEADS_NODE]
    # Embeddings become GatherBlockQuantized, which only onnxruntime's quantizer writes.
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    op_types = ("MatMul", "Gather")
    config = DefaultWeightOnlyQuantConfig(
        block_size=args.block_size,
        is_symmetric=True,
        accuracy_level=args.accuracy_level,
        op_types_to_quantize=op_types,
        quant_axes=(("MatMul", 0), ("Gather", 1)),
        bits=bits,
    )
    quantizer = MatMulNBitsQuantizer(onnx.load(str(path)), nodes_to_exclude=excluded, algo_config=config)
    quantizer.process()
    quantized_bytes = sum(len(init.raw_data) for init in quantizer.model.model.graph.initializer)
    start_external_data(path)
    quantizer.model.save_model_to_file(str(path), use_external_data_format=keeps_external_data(quantized_bytes, args))


def quantize_matmuls(source: Path, target: Path, args, progress: Progress) -> None:
    """The decoder `source` with its MatMul weights as MatMulNBits blocks, written to `target`
    (which may be `source`). One weight at a time (see matmul_nbits.py): the large decoders'
    13 GB do not fit twice in memory, as onnxruntime's quantizer needs them."""
    bits = {"int8": 8, "int4": 4}[args.quantize]
    progress.stage(
        f"quantizing {source.name} weights to {bits} bits (MatMulNBits, blocks of {args.block_size}, "
        f"accuracy level {args.accuracy_level})"
    )
    excluded = [] if args.quantize_lm_heads else [LM_HEADS_NODE]
    external = keeps_external_data(matmul_nbits.quantized_bytes(source, bits, args.block_size, excluded), args)
    if source == target:
        matmul_nbits.quantize_in_place(source, bits, args.block_size, args.accuracy_level, excluded, external)
    else:
        matmul_nbits.quantize(source, target, bits, args.block_size, args.accuracy_level, excluded, external)


def calibrate_kv_scales(out: Path, manifest: dict, progress: Progress) -> list:
    """Per-channel scales for an int8 self-attention cache, from the float32 cache of
    sampled generations: the largest magnitude each (head, channel) reached, with headroom
    for prompts and lengths the calibration did not see."""
    graphs = sessions(out)
    layers = manifest["decoder"]["num_layers"]
    peaks = {f"{kind}_{i}": 0.0 for i in range(layers) for kind in ("key", "value")}
    rng = np.random.default_rng(SEED)
    for prompt in CALIBRATION_PROMPTS:
        progress.stage(f"calibrating the int8 cache: {CALIBRATION_FRAMES} sampled frames of {prompt!r}")
        _, runner = stepper.generate(graphs, manifest, tokenize(out, prompt), CALIBRATION_FRAMES, GOLDEN_GUIDANCE, rng=rng)
        for name in peaks:
            peak = np.abs(runner.filled(name)).max(axis=(0, 2), keepdims=True)
            peaks[name] = np.maximum(peaks[name], peak)
    scale = lambda peak: (np.maximum(peak, 1e-6) * KV_HEADROOM / 127.0).astype(np.float32)  # noqa: E731
    return [(scale(peaks[f"key_{i}"]), scale(peaks[f"value_{i}"])) for i in range(layers)]


# --------------------------------------------------------------------------- checks


def sessions(out: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, (os.cpu_count() or 2))
    make = lambda name: ort.InferenceSession(str(out / name), options, providers=["CPUExecutionProvider"])  # noqa: E731
    names = ("text_encoder", "cross_kv", "decoder", "codec_frontend", "codec_upsampler")
    return {name: make(f"{name}.onnx") for name in names if (out / f"{name}.onnx").exists()}


# --------------------------------------------------------------------------- melody

# The golden melody: three notes at a DAW's usual rate, so that its chroma is computed from
# resampled audio as a user's would be. Each note changes halfway between two chroma frames'
# centres (one every 4096 samples at 32 kHz: 128 ms), so that no frame's pitch class is a
# near tie between two notes.
MELODY_FILE = "melody.wav"
MELODY_RATE_HZ = 44100
MELODY_SECONDS = 3.0
MELODY_NOTES = [(0.0, 329.63), (0.96, 392.00), (1.984, 523.25)]  # (start s, Hz): E4, G4, C5


def golden_melody() -> np.ndarray:
    """The golden melody, mono float32 at MELODY_RATE_HZ: each note with two overtones, on
    16-bit steps, so that the file written holds exactly these samples."""
    t = np.arange(int(MELODY_SECONDS * MELODY_RATE_HZ)) / MELODY_RATE_HZ
    audio = np.zeros_like(t)
    ends = [start for start, _ in MELODY_NOTES[1:]] + [MELODY_SECONDS]
    for (start, hz), end in zip(MELODY_NOTES, ends):
        note = (t >= start) & (t < end)
        for harmonic, gain in ((1, 0.5), (2, 0.2), (3, 0.1)):
            audio[note] += gain * np.sin(2 * np.pi * hz * harmonic * t[note])
    return (np.round(audio * 32767.0) / 32768.0).astype(np.float32)


def write_wav_pcm16(path: Path, samples: np.ndarray, rate: int) -> None:
    import wave

    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2").tobytes())


def feature_extractor(args):
    """The melody model's MusicgenMelodyFeatureExtractor: the checkpoint's own settings
    when it has them, transformers' defaults (those of Meta's checkpoints) otherwise."""
    from transformers import MusicgenMelodyFeatureExtractor

    if args.checkpoint and (Path(args.checkpoint) / "preprocessor_config.json").exists():
        return MusicgenMelodyFeatureExtractor.from_pretrained(args.checkpoint)
    return MusicgenMelodyFeatureExtractor()


def melody_chroma(extractor, audio: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """The feature extractor's one-hot chroma of `audio` (`[T, 12]`), and the normalized
    chroma it takes the argmax of (`[T, 12]`), computed with its own resampling,
    spectrogram and filters, for the engine's tests to hold their values to."""
    import torchaudio

    # As a batch of one tensor: the extractor resamples tensors only.
    one_hot = extractor(torch.from_numpy(audio)[None], sampling_rate=rate, return_tensors="np")["input_features"][0]
    wav = torch.from_numpy(audio)[None]
    if rate != extractor.sampling_rate:
        wav = torchaudio.functional.resample(wav, rate, extractor.sampling_rate, rolloff=0.945, lowpass_filter_width=24)
    wav = wav[:, : extractor.n_samples]
    raw = torch.einsum("cf,...ft->...ct", extractor.chroma_filters, extractor.spectrogram(wav))
    values = torch.nn.functional.normalize(raw, p=float("inf"), dim=-2, eps=1e-6)[0].T.numpy()
    assert np.array_equal(values.argmax(-1), one_hot.argmax(-1)), "the chroma values do not give the extractor's"
    return one_hot, values


def melody_spec(extractor, model) -> dict:
    """The manifest's `melody`: how the engine computes chroma as the feature extractor
    does, and how the model takes it."""
    return {
        "num_chroma": model.config.num_chroma,
        "chroma_length": model.config.chroma_length,
        "sample_rate_hz": extractor.sampling_rate,
        "n_fft": extractor.n_fft,
        "hop_length": extractor.hop_length,
        "max_seconds": extractor.chunk_length,
    }


def transformers_generate(model, input_ids, new_tokens: int, input_features=None, guidance: float = GOLDEN_GUIDANCE):
    """Greedy generation with `guidance` by transformers itself; returns its codes [K, T]
    (captured from the codec calls: a stereo model decodes its even codebooks as the left
    channel and its odd ones as the right) and its decoded audio [channels, samples].
    `input_features` is a melody model's chroma."""
    captured = []
    original = model.audio_encoder.decode

    def capture(audio_codes, *args, **kwargs):
        captured.append(audio_codes[0, 0].clone().numpy())
        return original(audio_codes, *args, **kwargs)

    model.audio_encoder.decode = capture
    try:
        with torch.no_grad():
            audio = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=False,
                guidance_scale=guidance,
                max_new_tokens=new_tokens,
                **({} if input_features is None else {"input_features": torch.from_numpy(input_features)[None]}),
            )
    finally:
        model.audio_encoder.decode = original
    channels = len(captured)
    codes = np.zeros((channels * captured[0].shape[0], captured[0].shape[1]), np.int64)
    for channel, channel_codes in enumerate(captured):
        codes[channel::channels] = channel_codes
    return codes, audio[0].numpy()


@dataclass
class Reference:
    """What transformers' own `generate` makes of the golden prompt (and melody), computed
    before the graphs are checked so that the torch model can be released first: a model
    and the ONNX Runtime sessions of its graphs do not fit in memory together from the
    large checkpoints on."""

    prompt_ids: list[int]
    codes: np.ndarray
    audio: np.ndarray
    # Without guidance (guidance_scale 1): the conditioned row alone.
    unguided_codes: np.ndarray
    chroma: np.ndarray | None = None
    chroma_values: np.ndarray | None = None
    melody: np.ndarray | None = None


def transformers_reference(model, out: Path, args, progress: Progress) -> Reference:
    """Greedy codes and audio of transformers' `generate` for the golden prompt (read
    with the tokenizer already written to `out`) and, for a melody model, melody."""
    prompt_ids = tokenize(out, GOLDEN_PROMPT)
    new_tokens = GOLDEN_NEW_TOKENS if args.golden else CHECK_NEW_TOKENS
    chroma = melody = values = None
    if is_melody(model):
        melody = golden_melody()
        chroma, values = melody_chroma(feature_extractor(args), melody, MELODY_RATE_HZ)
        print(f"    golden melody: {len(chroma)} chroma frames, pitch classes {values.argmax(-1).tolist()}")
    progress.stage(f"self-check: transformers generate, greedy, guidance {GOLDEN_GUIDANCE}, {new_tokens} steps")
    codes, audio = transformers_generate(model, torch.tensor([prompt_ids]), new_tokens, chroma)
    progress.stage(f"self-check: transformers generate, greedy, no guidance, {new_tokens} steps")
    unguided, _ = transformers_generate(model, torch.tensor([prompt_ids]), new_tokens, chroma, guidance=1.0)
    return Reference(prompt_ids, codes, audio, unguided, chroma, values, melody)


def check_bundle(out: Path, manifest: dict, reference: Reference, args, progress: Progress) -> dict:
    graphs = sessions(out)
    prompt_ids = reference.prompt_ids
    report = {}
    exact = manifest["quantization"]["weights"] == "none" and manifest["kv_cache"]["dtype"] == "float32"
    chroma, melody, extracted = reference.chroma, reference.melody, reference.chroma_values
    if extracted is not None:
        margins = np.sort(extracted, axis=-1)
        report["melody_chroma_min_margin"] = float(np.min(margins[:, -1] - margins[:, -2]))
    reference_codes, reference_audio = reference.codes, reference.audio
    frames = reference_codes.shape[1]
    progress.stage(f"self-check: the same through the exported graphs ({frames} frames, one step per call)")
    stepped, _ = stepper.generate(graphs, manifest, prompt_ids, frames, GOLDEN_GUIDANCE, chroma=chroma)
    agreement = float(np.mean(stepped == reference_codes))
    report["frames"] = frames
    report["code_agreement"] = agreement
    print(f"    codes equal to transformers': {agreement * 100:.2f}% of {stepped.size}")
    prefill_steps = frames // 2
    progress.stage(f"self-check: the first {prefill_steps} steps again as one prefill call, then stepping on")
    prefilled, _ = stepper.generate(
        graphs, manifest, prompt_ids, frames, GOLDEN_GUIDANCE, given=stepped, prefill_steps=prefill_steps, chroma=chroma
    )
    prefill_agreement = float(np.mean(prefilled == stepped))
    report["prefill_agreement"] = prefill_agreement
    print(f"    prefill and steps agree on {prefill_agreement * 100:.2f}% of the codes")
    progress.stage(f"self-check: without guidance, the conditioned row alone ({frames} frames)")
    unguided, _ = stepper.generate(graphs, manifest, prompt_ids, frames, 1.0, chroma=chroma)
    unguided_agreement = float(np.mean(unguided == reference.unguided_codes))
    report["unguided_code_agreement"] = unguided_agreement
    print(f"    one row, guidance 1: codes equal to transformers' on {unguided_agreement * 100:.2f}%")
    if exact:
        assert np.array_equal(stepped, reference_codes), "exported graphs do not reproduce transformers' codes"
        assert prefill_agreement == 1.0, "a prefill call does not continue as the steps it replaces"
        assert np.array_equal(unguided, reference.unguided_codes), (
            "one row without guidance does not reproduce transformers' generate(guidance_scale=1)"
        )
    else:
        # Quantized weights and caches change some argmax decisions, and a prefill
        # quantizes its activations over many rows at once; near-ties in a random model's
        # logits then flip. A broken export agrees no better than chance (1 / 2048).
        assert agreement > 0.05, f"only {agreement:.3f} of the codes agree with transformers'"
        assert prefill_agreement > 0.5, f"prefill and steps agree on only {prefill_agreement:.3f} of the codes"

    progress.stage("self-check: codec_frontend.onnx (in two calls) and codec_upsampler.onnx against transformers' decode")
    codec = manifest["codec"]
    channels = manifest["audio_channels"]
    decoded = [
        codec_graphs.decode(
            graphs["codec_frontend"],
            graphs["codec_upsampler"],
            reference_codes[channel::channels],
            codec["conv_context_frames"],
            codec["lstm_layers"],
            codec["lstm_width"],
            split=frames // 3,
            chunk=10,
        )
        for channel in range(channels)
    ]
    windowed = np.stack([w for w, _ in decoded])
    audio = np.stack([a for _, a in decoded])
    window_error = float(np.max(np.abs(windowed - audio)))
    report["codec_window_max_abs_error"] = window_error
    print(f"    upsampler windows of 10 frames against one call: max abs error {window_error:.3e}")
    assert window_error <= 1e-4, f"the upsampler's context is too short: windows differ by {window_error}"
    max_error = float(np.max(np.abs(audio - reference_audio)))
    snr_db = float(10 * np.log10(np.sum(reference_audio**2) / max(np.sum((audio - reference_audio) ** 2), 1e-30)))
    report["codec_max_abs_error"] = max_error
    report["codec_snr_db"] = snr_db
    print(f"    codec max abs error: {max_error:.3e}, SNR {snr_db:.1f} dB")
    if codec["lstm_weights"] == "float32" and codec["upsampler_weights"] == "float32":
        assert max_error <= 1e-4, f"codec graphs differ from transformers' decode by {max_error}"
    else:
        # An int8 codec is kept only while its audio stays this close to float32's.
        assert snr_db >= 30.0, f"the int8 codec's audio is {snr_db:.1f} dB from float32's"

    if args.golden:
        golden_melody_spec = None
        if melody is not None:
            write_wav_pcm16(out / MELODY_FILE, melody, MELODY_RATE_HZ)
            golden_melody_spec = {
                "file": MELODY_FILE,
                "sample_rate_hz": MELODY_RATE_HZ,
                "generated_by": "transformers MusicgenMelodyFeatureExtractor (torchaudio resampling)",
                "pitch_classes": extracted.argmax(-1).tolist(),
                "normalized_chroma": extracted.round(6).tolist(),
            }
        write_golden(out, prompt_ids, reference, manifest, golden_melody_spec)
    return report


def write_golden(out: Path, prompt_ids, reference: Reference, manifest, melody: dict | None = None) -> None:
    model_class = "MusicgenMelodyForConditionalGeneration" if melody else "MusicgenForConditionalGeneration"
    golden = {
        "prompt": GOLDEN_PROMPT,
        "input_ids": [int(i) for i in prompt_ids],
        "guidance_scale": GOLDEN_GUIDANCE,
        "greedy": True,
        "max_new_tokens": GOLDEN_NEW_TOKENS,
        "generated_by": f"transformers {model_class}.generate(do_sample=False, guidance_scale=3)",
        **({"melody": melody} if melody else {}),
        "codes": reference.codes.astype(int).tolist(),
        "unguided": {
            "guidance_scale": 1.0,
            "generated_by": f"transformers {model_class}.generate(do_sample=False, guidance_scale=1)",
            "codes": reference.unguided_codes.astype(int).tolist(),
        },
    }
    (out / "golden.json").write_text(json.dumps(golden) + "\n")
    write_wav_f32(out / "golden.wav", reference.audio.astype(np.float32), manifest["sample_rate_hz"])


def write_wav_f32(path: Path, samples: np.ndarray, rate: int) -> None:
    """32-bit float WAV (format tag 3) of `samples` [channels, samples]; the stdlib `wave`
    module writes PCM only."""
    channels = samples.shape[0]
    data = samples.T.astype("<f4").tobytes()
    header = b"RIFF" + (36 + len(data)).to_bytes(4, "little") + b"WAVE"
    fmt = (
        b"fmt "
        + (16).to_bytes(4, "little")
        + (3).to_bytes(2, "little")
        + channels.to_bytes(2, "little")
        + rate.to_bytes(4, "little")
        + (rate * 4 * channels).to_bytes(4, "little")
        + (4 * channels).to_bytes(2, "little")
        + (32).to_bytes(2, "little")
    )
    path.write_bytes(header + fmt + b"data" + len(data).to_bytes(4, "little") + data)


# --------------------------------------------------------------------------- manifest


def graph_io(path: Path):
    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    return inputs, [o.name for o in model.graph.output]


def write_manifest(model, name: str, out: Path, graphs: dict, args, kv_cache: str | None = None) -> dict:
    dec = model.decoder.config
    codec = model.audio_encoder.config
    samples_per_frame = int(np.prod(codec.upsampling_ratios))
    manifest = {
        "format_version": FORMAT_VERSION,
        "model_name": name,
        "sample_rate_hz": codec.sampling_rate,
        "frame_rate_hz": codec.sampling_rate / samples_per_frame,
        "samples_per_frame": samples_per_frame,
        "audio_channels": dec.audio_channels,
        "num_codebooks": dec.num_codebooks,
        "cardinality": dec.vocab_size,
        "special_token_id": dec.vocab_size,
        "family": family(model),
        "pattern": {"kind": "delay", "delays": delays(dec)},
        "max_frames": min(MAX_FRAMES, dec.max_position_embeddings - dec.num_codebooks),
        "decoder": {
            "num_layers": dec.num_hidden_layers,
            "num_heads": dec.num_attention_heads,
            "head_dim": dec.hidden_size // dec.num_attention_heads,
            "hidden_size": dec.hidden_size,
        },
        "text_encoder": {
            "vocab_size": model.text_encoder.config.vocab_size,
            "hidden_size": model.text_encoder.config.d_model,
            "max_tokens": max_prompt_tokens(model),
        },
        "codec": {
            "conv_context_frames": codec_graphs.conv_context_frames(model),
            "upsampler_context_frames": codec_graphs.UPSAMPLER_CONTEXT_FRAMES,
            "lstm_layers": codec_graphs.lstm_shape(model)[0],
            "lstm_width": codec_graphs.lstm_shape(model)[1],
            "lstm_weights": codec_lstm(args),
            "upsampler_weights": codec_upsampler(args),
        },
        "quantization": quantization_spec(args),
        "kv_cache": {"dtype": kv_cache or args.kv_cache},
        "graphs": {},
    }
    if is_melody(model):
        manifest["melody"] = melody_spec(feature_extractor(args), model)
    for key, (file, _, _) in graphs.items():
        inputs, outputs = graph_io(out / file)
        manifest["graphs"][key] = {"file": file, "inputs": inputs, "outputs": outputs}
    (out / "musicgen.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# The longest window the engine generates in one context: 30 s at 50 Hz, as Meta's models
# were trained.
MAX_FRAMES = 1500
# T5's own limit on a prompt.
MAX_TEXT_TOKENS = 512


def max_prompt_tokens(model) -> int:
    """The longest prompt the decoder's positions leave room for. A cross-attention model's
    text takes no positions; a melody model's prefix (chroma, then text) comes before the
    window's steps (step 0, frames, and the pattern's delays) in one position table."""
    dec = model.decoder.config
    if not is_melody(model):
        return MAX_TEXT_TOKENS
    room = dec.max_position_embeddings - model.config.chroma_length - MAX_FRAMES - dec.num_codebooks
    if room <= 0:
        raise SystemExit(f"max_position_embeddings {dec.max_position_embeddings} leaves no room for a prompt")
    return min(MAX_TEXT_TOKENS, room)


def family(model) -> dict:
    """Which MusicGen the bundle holds: its channels, its conditioning, and its size as
    Meta's checkpoints have it (`custom` for another decoder, such as tiny's)."""
    dec = model.decoder.config
    geometry = {"hidden_size": dec.hidden_size, "num_hidden_layers": dec.num_hidden_layers}
    sizes = [
        name.removeprefix("musicgen-")
        for name, size in DECODER_SIZES.items()
        if all(size[key] == value for key, value in geometry.items())
    ]
    return {
        "channels": "stereo" if dec.audio_channels == 2 else "mono",
        "conditioning": "text+melody" if is_melody(model) else "text",
        "size": sizes[0] if sizes else "custom",
    }


def delays(dec) -> list[int]:
    """Each codebook's delay in steps: k for mono; for stereo, left and right codebooks
    interleaved, each pair delayed together (transformers' `build_delay_pattern_mask`)."""
    return [k // dec.audio_channels for k in range(dec.num_codebooks)]


def codec_lstm(args) -> str:
    """The codec LSTM's weights: `auto` is int8 for bundles with quantized weights."""
    if args.codec_lstm == "auto":
        return "int8" if args.quantize != "none" else "float32"
    return args.codec_lstm


def codec_upsampler(args) -> str:
    """The codec upsampler's convolutions: `auto` is int8 for bundles with quantized weights."""
    if args.codec_upsampler == "auto":
        return "int8" if args.quantize != "none" else "float32"
    return args.codec_upsampler


def quantization_spec(args) -> dict:
    """How the decoder's weights were stored, for people and benchmarks."""
    if args.quantize == "none":
        return {"weights": "none"}
    if args.quant_method == "dynamic":
        return {"weights": args.quantize, "method": "dynamic", "lm_heads": args.quantize_lm_heads}
    return {
        "weights": args.quantize,
        "method": "matmul_nbits",
        "block_size": args.block_size,
        "accuracy_level": args.accuracy_level,
        "lm_heads": args.quantize_lm_heads,
        "embeddings": args.quantize_embeddings,
    }


# --------------------------------------------------------------------------- template


def write_template(model, name: str, args, progress: Progress) -> None:
    """The graph template of this export, from the same graphs exported again off the model
    with its tensors scrambled (the model is not used after this: the reference codes are
    computed before)."""
    scramble_for_template(model, progress)
    with tempfile.TemporaryDirectory(prefix="musicgen-template-") as tmp:
        staging = Path(tmp)
        graphs, decoder_recipes = export_graphs(model, staging, args, progress)
        manifest = write_manifest(model, name, staging, graphs, args)
        quantize_decoder(staging, args, progress)
        progress.stage(f"template: writing {args.template_out} (weights out, a recipe for each)")
        template.write_template(model, staging, args.template_out, manifest, decoder_recipes)


def scramble_for_template(model, progress: Progress) -> None:
    progress.stage("template: scrambling every tensor of the model, so that each weight has one recipe")
    template.scramble(model, SEED + 2)


# The precisions `musicgen import` offers. Quantized templates keep the cache and the codec
# in float32: their int8 forms are calibrated by running the model, which an import cannot.
TEMPLATE_PRECISIONS = ("float32", "int8", "int4")


def write_every_template(model, name: str, args, progress: Progress) -> None:
    """Each of `TEMPLATE_PRECISIONS`' templates into `<template_out>/<precision>`, all from one
    export of the scrambled model: only the decoder's weights differ between them, so each
    quantized template's graphs are the float32 ones with the decoder quantized beside them."""
    scramble_for_template(model, progress)
    with tempfile.TemporaryDirectory(prefix="musicgen-template-") as tmp:
        exported = Path(tmp) / "float32"
        exported.mkdir()
        graphs, decoder_recipes = export_graphs(model, exported, args, progress)
        for precision in TEMPLATE_PRECISIONS:
            quantize = "none" if precision == "float32" else precision
            # External data keeps a quantized decoder's bytes out of the graph in memory; the
            # template takes every weight out either way.
            precision_args = argparse.Namespace(
                **{
                    **vars(args),
                    "quantize": quantize,
                    "codec_lstm": "float32",
                    "codec_upsampler": "float32",
                    "external_data": True,
                }
            )
            staging = exported
            if precision != "float32":
                staging = Path(tmp) / precision
                staging.mkdir()
                for item in exported.glob("*.onnx*"):
                    if not item.name.startswith("decoder.onnx"):
                        # Copied, not linked: onnx refuses external data with two links.
                        shutil.copyfile(item, staging / item.name)
                quantize_matmuls(exported / "decoder.onnx", staging / "decoder.onnx", precision_args, progress)
            manifest = write_manifest(model, name, staging, graphs, precision_args)
            out = args.template_out / precision
            if out.exists():
                shutil.rmtree(out)
            progress.stage(f"template: writing {out} (weights out, a recipe for each)")
            template.write_template(model, staging, out, manifest, decoder_recipes)


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--random", choices=RANDOM_SHAPES, help="randomly initialised model of this shape")
    source.add_argument("--checkpoint", help="transformers folder or hub id (hub ids need network access)")
    parser.add_argument("--out", type=Path, help="bundle folder to write")
    parser.add_argument("--quantize", choices=["none", "int8", "int4"], default="none", help="decoder weights")
    parser.add_argument(
        "--quant-method",
        choices=["matmul_nbits", "dynamic"],
        default="matmul_nbits",
        help="MatMulNBits blocks (default) or the older dynamic MatMulInteger (int8 only)",
    )
    parser.add_argument("--block-size", type=int, choices=[16, 32, 64, 128, 256], default=32, help="MatMulNBits block")
    parser.add_argument(
        "--accuracy-level", type=int, choices=[0, 1, 2, 3, 4], default=4, help="MatMulNBits compute type (4: int8)"
    )
    parser.add_argument("--no-quantize-lm-heads", dest="quantize_lm_heads", action="store_false", help="keep the LM heads in float32")
    parser.add_argument("--quantize-embeddings", action="store_true", help="codebook embeddings as GatherBlockQuantized")
    parser.add_argument("--kv-cache", choices=["float32", "int8"], default="float32", help="self-attention cache type")
    parser.add_argument(
        "--codec-lstm",
        choices=["auto", "float32", "int8"],
        default="auto",
        help="codec LSTM weights (auto: int8 when --quantize is set)",
    )
    parser.add_argument(
        "--codec-upsampler",
        choices=["auto", "float32", "int8"],
        default="auto",
        help="codec upsampler convolutions but the last stage (auto: int8 when --quantize is set)",
    )
    parser.add_argument(
        "--external-data",
        action="store_true",
        help="keep the decoder's weights in decoder.onnx.data even where they fit in the graph (always above 2 GB)",
    )
    parser.add_argument("--golden", action="store_true", help="also write golden.json and golden.wav")
    parser.add_argument(
        "--template-out", type=Path, help="also write the graph template `musicgen import` fills (see template.py)"
    )
    parser.add_argument(
        "--template-only",
        action="store_true",
        help="write no bundle, only the templates of every precision, to <template-out>/<precision>",
    )
    parser.add_argument("--skip-check", action="store_true", help="skip the self-check against transformers")
    args = parser.parse_args()
    if args.template_only != (args.out is None):
        parser.error("--out names the bundle to write; --template-only writes none")
    if args.template_only and not args.template_out:
        parser.error("--template-only needs --template-out")
    if args.template_only and (args.quantize != "none" or args.codec_lstm != "auto" or args.codec_upsampler != "auto"):
        parser.error("--template-only writes every precision's template; leave out --quantize and the codec's flags")
    exact_codec = codec_lstm(args) == "float32" and codec_upsampler(args) == "float32"
    if args.golden and (args.quantize != "none" or args.kv_cache != "float32" or not exact_codec):
        parser.error("--golden needs an exact bundle: float32 weights, cache and codec")

    if args.template_out and (args.kv_cache != "float32" or args.quant_method != "matmul_nbits" or not exact_codec):
        # Calibrated scales come from running the model, not from its checkpoint.
        parser.error("--template-out needs a float32 cache and codec, and MatMulNBits for quantized weights")

    progress = Progress()
    torch.set_num_threads(max(1, os.cpu_count() or 2))
    progress.stage(f"building the model ({args.random or args.checkpoint})")
    model, name = load_model(args)
    params = sum(p.numel() for p in model.parameters())
    progress.stage(f"model ready: {params / 1e6:.1f} M parameters")

    if args.template_only:
        write_every_template(model, name, args, progress)
        return 0

    out = args.out
    with tempfile.TemporaryDirectory(prefix="musicgen-export-") as tmp:
        staging = Path(tmp)
        write_tokenizer(args, model, staging)
        reference = None if args.skip_check else transformers_reference(model, staging, args, progress)
        graphs, _ = export_graphs(model, staging, args, progress)
        if args.kv_cache == "int8":
            float_manifest = write_manifest(model, name, staging, graphs, args, kv_cache="float32")
            scales = calibrate_kv_scales(staging, float_manifest, progress)
            progress.stage("writing decoder.onnx (int8 cache)")
            write_decoder(model, staging / "decoder.onnx", args, "int8", scales)
        if codec_lstm(args) == "int8":
            progress.stage("quantizing codec_frontend.onnx's LSTM to int8")
            codec_graphs.quantize_lstm(staging / "codec_frontend.onnx")
        if codec_upsampler(args) == "int8":
            progress.stage("quantizing codec_upsampler.onnx's convolutions to int8 (static, calibrated)")
            codec_graphs.quantize_upsampler(staging, model)
        manifest = write_manifest(model, name, staging, graphs, args)
        if args.template_out:
            write_template(model, name, args, progress)
        # Everything after this reads the graphs alone: the quantizer holds the float32
        # decoder, the self-check its sessions, and neither fits beside a large model.
        del model
        release_freed_memory()
        progress.stage(f"released the torch model: {rss_gib():.1f} GiB resident")
        quantize_decoder(staging, args, progress)
        report = decoder_facts(staging / "decoder.onnx")
        if reference is not None:
            report.update(check_bundle(staging, manifest, reference, args, progress))
            print(f"    self-check passed: {json.dumps(report)}")
        (staging / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        # Weights an earlier export kept beside a graph that now holds its own.
        for stale in out.glob("*.onnx.data"):
            stale.unlink()
        for item in staging.iterdir():
            # onnx writes some files for its owner alone; a bundle is for whoever plays it.
            item.chmod(0o644)
            shutil.move(item, out / item.name)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    progress.stage(f"wrote {out} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
