"""Saves a randomly initialised MusicGen as a transformers checkpoint folder, the shape the
hub's `facebook/musicgen-*` folders have: config.json, safetensors weights (one file or
shards with an index), the T5 tokenizer.json, and for a melody model the feature
extractor's preprocessor_config.json. The weights are the ones `export.py
--random SHAPE` exports, so the bundle `musicgen import` makes of this folder must give
that export's golden codes.

    checkpoint.py --random tiny --out target/checkpoints/tiny
    checkpoint.py --random tiny-stereo --shard-bytes 4000000 --legacy-names --out ...

`--legacy-names` stores Encodec's weight norms as `weight_g`/`weight_v`, as the hub's
checkpoints (saved before torch's parametrizations) have them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import export


def legacy_names(out: Path) -> None:
    """Renames `parametrizations.weight.original0/1` to `weight_g/weight_v` in every
    safetensors file of `out` (and in the shard index)."""
    from safetensors.numpy import load_file, save_file

    def rename(name: str) -> str:
        return name.replace(".parametrizations.weight.original0", ".weight_g").replace(
            ".parametrizations.weight.original1", ".weight_v"
        )

    for path in sorted(out.glob("*.safetensors")):
        tensors = load_file(str(path))
        save_file({rename(name): value for name, value in tensors.items()}, str(path), metadata={"format": "pt"})
    index = out / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {rename(name): file for name, file in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random", required=True, choices=export.RANDOM_SHAPES, help="the model's shape")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    parser.add_argument("--shard-bytes", type=int, help="split the weights into shards of at most this size")
    parser.add_argument("--legacy-names", action="store_true", help="weight norms as weight_g / weight_v")
    args = parser.parse_args()

    model = export.build_random_model(args.random)
    args.out.mkdir(parents=True, exist_ok=True)
    shard = args.shard_bytes if args.shard_bytes else "100GB"
    model.save_pretrained(str(args.out), safe_serialization=True, max_shard_size=shard)
    export.build_tiny_tokenizer(min(model.text_encoder.config.vocab_size, 256), args.out / "tokenizer.json")
    if "melody" in args.random:
        # As the hub's melody folders have it: the chroma settings (preprocessor_config.json).
        from transformers import MusicgenMelodyFeatureExtractor

        MusicgenMelodyFeatureExtractor().save_pretrained(str(args.out))
    if args.legacy_names:
        legacy_names(args.out)
    files = sorted(p.name for p in args.out.iterdir())
    print(f"wrote {args.out}: {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
