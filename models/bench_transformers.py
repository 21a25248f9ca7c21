"""The anchor for `cargo xtask bench`: transformers' own `generate` on the same randomly
initialised model that `export.py --random` exports, sampling with guidance as the engine
does, in PyTorch eager mode. Prints one JSON object.

The time of the final Encodec decode is measured apart and left out of the step rate, so
that the figure compares decoder steps with decoder steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import transformers

from export import build_random_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--random", choices=["tiny", "musicgen-small"], default="musicgen-small")
    parser.add_argument("--steps", type=int, required=True, help="decoder steps (max_new_tokens)")
    parser.add_argument("--threads", type=int, required=True, help="torch intra-op threads")
    parser.add_argument("--guidance", type=float, default=3.0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(f"transformers anchor: building {args.random} ...", file=sys.stderr, flush=True)
    model = build_random_model(args.random).eval()
    input_ids = torch.tensor([[3, 9, 1150, 5, 1]])  # a short prompt's worth of T5 ids

    decode_seconds = 0.0
    original = model.audio_encoder.decode

    def timed_decode(*a, **kw):
        nonlocal decode_seconds
        started = time.perf_counter()
        result = original(*a, **kw)
        decode_seconds += time.perf_counter() - started
        return result

    model.audio_encoder.decode = timed_decode

    def generate(steps: int) -> float:
        nonlocal decode_seconds
        decode_seconds = 0.0
        started = time.perf_counter()
        with torch.no_grad():
            model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=True,
                top_k=250,
                guidance_scale=args.guidance,
                max_new_tokens=steps,
            )
        return time.perf_counter() - started - decode_seconds

    generate(4)  # warm-up: first-call allocations and kernels
    print(f"transformers anchor: generating {args.steps} steps ...", file=sys.stderr, flush=True)
    seconds = generate(args.steps)
    print(
        json.dumps(
            {
                "steps": args.steps,
                "seconds": seconds,
                "steps_per_second": args.steps / seconds,
                "decode_seconds": decode_seconds,
                "threads": args.threads,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
