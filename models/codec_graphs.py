"""Encodec's decoder split for streaming: a frame-rate front end with its LSTM state at the
boundary, and the convolutional upsampler.

Encodec's decoder is a convolution, a two-layer LSTM and a stack of transposed
convolutions. Decoded whole, every sample depends on every earlier frame through the LSTM;
decoded in overlapping windows, the LSTM restarts in each and needs a long left context to
settle. Split at the LSTM, a stream decodes exactly and overlaps little:

- `codec_frontend.onnx`: codes (with `conv_context` frames on each side, reflected at a
  stream's ends as Encodec pads them) and the LSTM state in; the frame-rate features of
  the middle frames and the LSTM state after them out. Each frame passes through it once.
- `codec_upsampler.onnx`: features to audio. Its receptive field spans under
  `upsampler_context` frames on each side, so a window with that much context gives the
  middle frames' samples exactly.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn.utils import parametrize

# Frames of features either side of a chunk that make the upsampler's output exact: its
# transposed convolutions and residual kernels reach about 1.3 frames (844 samples at 32 kHz).
UPSAMPLER_CONTEXT_FRAMES = 2


class PolyphaseConvTranspose1d(nn.Module):
    """A transposed convolution with kernel `2 * stride`, computed as a kernel-2 convolution
    into `stride * C_out` channels whose phases are then interleaved. Each output sample
    still sums the same two input frames with the same weights, but ONNX Runtime runs it as
    one dense convolution instead of a scatter of overlapping kernels."""

    def __init__(self, transposed: nn.ConvTranspose1d):
        super().__init__()
        stride, kernel = transposed.stride[0], transposed.kernel_size[0]
        if kernel != 2 * stride or transposed.groups != 1 or transposed.padding[0] != 0:
            raise ValueError(f"kernel {kernel}, stride {stride}: only kernel = 2 x stride, no groups, no padding")
        weight = transposed.weight.detach()
        in_channels, out_channels, _ = weight.shape
        # Output phase p of frame n: tap 0 reads frame n - 1 through W[..., p + stride],
        # tap 1 reads frame n through W[..., p]. Channels are ordered (phase, out channel).
        taps = torch.stack([weight[:, :, stride:], weight[:, :, :stride]], dim=-1)
        self.conv = nn.Conv1d(in_channels, stride * out_channels, 2, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(taps.permute(2, 1, 0, 3).reshape(stride * out_channels, in_channels, 2))
            self.conv.bias.copy_(transposed.bias.detach().repeat(stride))
        self.out_channels = out_channels
        # Read by EncodecConvTranspose1d to trim its padding.
        self.stride = (stride,)
        self.kernel_size = (kernel,)

    def forward(self, hidden):
        phases = self.conv(hidden)
        batch, _, frames = phases.shape
        stride = self.stride[0]
        phases = phases.view(batch, stride, self.out_channels, frames).permute(0, 2, 3, 1)
        return phases.reshape(batch, self.out_channels, frames * stride)


def streaming_decoder(model) -> nn.Module:
    """A copy of Encodec's decoder for export: weight norm folded into plain weights, and
    transposed convolutions in their polyphase form."""
    from transformers.models.encodec.modeling_encodec import EncodecDecoder

    # A fresh decoder with the same weights: the model's own stays as it is, so that the
    # export's self-check compares against an untouched Encodec.
    decoder = EncodecDecoder(model.audio_encoder.config)
    decoder.load_state_dict(model.audio_encoder.decoder.state_dict())
    decoder.eval()
    for module in decoder.modules():
        conv = getattr(module, "conv", None)
        if isinstance(conv, nn.Module) and parametrize.is_parametrized(conv, "weight"):
            parametrize.remove_parametrizations(conv, "weight")
    for module in decoder.modules():
        if isinstance(getattr(module, "conv", None), nn.ConvTranspose1d):
            module.conv = PolyphaseConvTranspose1d(module.conv)
    return decoder


class CodecFrontendGraph(nn.Module):
    def __init__(self, model, decoder):
        super().__init__()
        self.quantizer = model.audio_encoder.quantizer
        self.conv = decoder.layers[0].conv
        self.lstm = decoder.layers[1].lstm

    def forward(self, audio_codes, lstm_h, lstm_c):
        embeddings = self.quantizer.decode(audio_codes.transpose(0, 1))
        # Valid convolution: the caller gives the context the padding would invent.
        hidden = self.conv(embeddings).permute(2, 0, 1)
        out, (h, c) = self.lstm(hidden, (lstm_h, lstm_c))
        return (out + hidden).permute(1, 2, 0), h, c


class CodecUpsamplerGraph(nn.Module):
    def __init__(self, decoder):
        super().__init__()
        self.layers = decoder.layers[2:]

    def forward(self, features):
        for layer in self.layers:
            features = layer(features)
        return features


def quantize_lstm(path) -> None:
    """Rewrites the front end with int8 LSTM weights (`DynamicQuantizeLSTM`). The LSTM
    reads its recurrent weights once per frame, so this is most of the front end's time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_suffix(".int8.onnx")
    quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["LSTM"])
    tmp.replace(path)


def quantize_upsampler(out, model, windows: int = 24, frames: int = 14) -> None:
    """Rewrites the upsampler with int8 convolutions (static QDQ, per-channel weights),
    calibrated on the features the front end makes of random codes. The last upsampling
    stage and the output convolution stay float32: at the audio rate, int8 there costs
    most of the signal-to-noise ratio (musicgen-small's shape: 39 dB with them in float32,
    19 dB without) for a quarter of the time saved."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    k = codebooks_per_channel(model)
    layers, width = lstm_shape(model)
    context = conv_context_frames(model)
    frontend = ort.InferenceSession(str(out / "codec_frontend.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    state = np.zeros((layers, 1, width), np.float32)
    samples = []
    for _ in range(windows):
        codes = rng.integers(0, model.decoder.config.vocab_size, (1, k, frames + 2 * context), dtype=np.int64)
        features, _, _ = frontend.run(None, {"audio_codes": codes, "lstm_h": state, "lstm_c": state})
        samples.append({"features": features})

    class Features(CalibrationDataReader):
        def __init__(self):
            self.items = iter(samples)

        def get_next(self):
            return next(self.items, None)

    path = out / "codec_upsampler.onnx"
    graph = onnx.load(str(path)).graph
    last_stage = max(layer_index(n.name) for n in graph.node if n.name.endswith("/conv/conv/Conv"))
    audio_rate = [n.name for n in graph.node if n.op_type == "Conv" and layer_index(n.name) >= last_stage]
    tmp = path.with_suffix(".int8.onnx")
    quantize_static(
        str(path),
        str(tmp),
        Features(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],
        nodes_to_exclude=audio_rate,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    tmp.replace(path)


def layer_index(node_name: str) -> int:
    """`n` of an exported node named `/layers.n/...` (the upsampler's layer list)."""
    return int(node_name.split("/")[1].split(".")[1])


def conv_context_frames(model) -> int:
    kernel = model.audio_encoder.decoder.layers[0].conv.kernel_size[0]
    return (kernel - 1) // 2


def lstm_shape(model) -> tuple[int, int]:
    lstm = model.audio_encoder.decoder.layers[1].lstm
    return lstm.num_layers, lstm.hidden_size


def decode(frontend, upsampler, codes: np.ndarray, context: int, layers: int, width: int, split: int, chunk: int):
    """Decodes `codes` `[K, T]` with the split graphs as a stream does: the front end in two
    calls (the state carried across `split`), the upsampler in windows of `chunk` frames
    with `UPSAMPLER_CONTEXT_FRAMES` on each side. Returns that audio and the upsampler's
    output over all features in one call; both equal Encodec's own decode."""
    padded = np.pad(codes, ((0, 0), (context, context)), mode="reflect")[None].astype(np.int64)
    h = np.zeros((layers, 1, width), np.float32)
    c = np.zeros((layers, 1, width), np.float32)
    parts = []
    for start, end in ((0, split), (split, codes.shape[1])):
        window = padded[:, :, start : end + 2 * context]
        features, h, c = frontend.run(None, {"audio_codes": window, "lstm_h": h, "lstm_c": c})
        parts.append(features)
    features = np.concatenate(parts, axis=2)
    whole = upsampler.run(None, {"features": features})[0][0, 0]
    frames = features.shape[2]
    samples_per_frame = whole.shape[0] // frames
    windowed = []
    for start in range(0, frames, chunk):
        end = min(start + chunk, frames)
        first = max(0, start - UPSAMPLER_CONTEXT_FRAMES)
        last = min(frames, end + UPSAMPLER_CONTEXT_FRAMES)
        audio = upsampler.run(None, {"features": features[:, :, first:last]})[0][0, 0]
        windowed.append(audio[(start - first) * samples_per_frame : (end - first) * samples_per_frame])
    return np.concatenate(windowed), whole


def codebooks_per_channel(model) -> int:
    """The codebooks Encodec decodes into one channel: a stereo decoder's codebooks are the
    left and right channels' interleaved."""
    dec = model.decoder.config
    return dec.num_codebooks // dec.audio_channels


def export_codec_graphs(model, out, export_traced) -> dict:
    """Writes both graphs; returns their `(file, inputs, outputs)` by manifest key."""
    k = codebooks_per_channel(model)
    layers, width = lstm_shape(model)
    context = conv_context_frames(model)
    codes = torch.randint(0, model.decoder.config.vocab_size, (1, k, 10 + 2 * context))
    state = torch.zeros(layers, 1, width)
    decoder = streaming_decoder(model)
    frontend = (["audio_codes", "lstm_h", "lstm_c"], ["features", "lstm_h_out", "lstm_c_out"])
    export_traced(
        CodecFrontendGraph(model, decoder),
        (codes, state, state),
        out / "codec_frontend.onnx",
        *frontend,
        {"audio_codes": {2: "frames"}, "features": {2: "inner_frames"}},
    )
    upsampler = (["features"], ["audio_values"])
    export_traced(
        CodecUpsamplerGraph(decoder),
        (torch.randn(1, width, 10),),
        out / "codec_upsampler.onnx",
        *upsampler,
        {"features": {2: "frames"}, "audio_values": {2: "samples"}},
    )
    return {
        "codec_frontend": ("codec_frontend.onnx", *frontend),
        "codec_upsampler": ("codec_upsampler.onnx", *upsampler),
    }
