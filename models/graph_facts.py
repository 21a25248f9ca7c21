"""What a decoder step costs in a bundle's graph: its node count and the weight bytes it
reads (every initializer but the embedding tables, of which a step reads only a few rows).

    graph_facts.py BUNDLE/decoder.onnx    # prints one JSON object

The export writes these into `export_report.json`; `cargo xtask bench` also asks for them of
bundles made by earlier exports.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx


def decoder_facts(path: Path) -> dict:
    # Shapes and types are enough: a medium decoder's weights (7 GB) stay on disk.
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = sum(
        int(np.prod(init.dims, dtype=np.int64)) * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
        for init in graph.initializer
        if not init.name.startswith("embed_") and "embed_tokens" not in init.name and "embed_positions" not in init.name
    )
    return {"decoder_nodes": len(graph.node), "decoder_weight_bytes_per_step": int(weights)}


if __name__ == "__main__":
    print(json.dumps(decoder_facts(Path(sys.argv[1]))))
