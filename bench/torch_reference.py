"""The limit the PyTorch script is measured against: a bare in-memory training loop over the same MLP
(the script's own `build_model`), with the same batch size, optimizer, learning rate and thread count,
and nothing else (no sharding, schedule, clipping, metrics, checkpoints or exports).

    python -m bench.torch_reference --train DIR --epochs 4 --batch-size 256 --threads 1

It prints `[epoch N] train:loss=...` as the script does, so both are timed the same way: from the
arrival of the first epoch line to the last one (steady state, start-up and data loading excluded).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.common import ROOT

T0 = time.monotonic()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, type=Path)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden-sizes", default="128,64")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--learning-rate", type=float, default=0.001)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F

    sys.path[:0] = [str(ROOT / "train_scripts" / "pytorch"), str(ROOT / "train_scripts" / "common")]
    from model import build_model  # the script's MLP, layer for layer

    torch.set_num_threads(args.threads)
    torch.manual_seed(42)
    files = sorted(p for p in args.train.iterdir() if p.suffix == ".npz")
    arrays = [np.load(f) for f in files]
    X = np.concatenate([a["X"] for a in arrays]).astype(np.float32)
    y = np.concatenate([a["y"] for a in arrays]).astype(np.int64)
    X = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1)
    X, Y = torch.from_numpy(X.astype(np.float32)), torch.from_numpy(y)
    classes = int(Y.max()) + 1
    model = build_model({"input_dim": X.shape[1], "hidden_sizes": [int(h) for h in args.hidden_sizes.split(",") if h],
                         "output_dim": classes, "activation": "relu", "dropout": args.dropout})
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.01)
    print(f"bare loop: {len(Y)} rows x {X.shape[1]} features, {classes} classes, threads={torch.get_num_threads()}",
          flush=True)
    loaded = time.monotonic()
    model.train()
    for epoch in range(args.epochs):
        total = 0.0
        for idx in torch.randperm(len(Y)).split(args.batch_size):
            xb, yb = X[idx], Y[idx]
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().item() * len(yb)
        print(f"[epoch {epoch + 1}] train:loss={total / len(Y):.6g}", flush=True)
    print(json.dumps({"rows": len(Y), "startup_s": round(loaded - T0, 3), "train_s": round(time.monotonic() - loaded, 3)}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
