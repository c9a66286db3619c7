"""PyTorch training script for SageMaker, written by `smkit init` as a starting point: edit freely.

The SageMaker contract, all of it:
- each input channel is a directory named by SM_CHANNEL_<NAME> (here: train, validation);
- hyperparameters arrive as `--name value` arguments;
- whatever is in SM_MODEL_DIR when the script ends becomes model.tar.gz;
- a log line `name=value` (or `name: value`) is a metric (the job summary lists it, the cloud records it);
- on bad input: one sentence in /opt/ml/output/failure (SageMaker shows it as FailureReason), exit 1.
It runs outside a container too: python train.py --train DIR --validation DIR --model-dir DIR
"""
import argparse
import glob
import os
import sys

import numpy as np
import torch
from torch import nn


def fail(reason):
    """Tell SageMaker why the job failed, in one sentence, and stop before writing any model."""
    output_dir = os.environ.get("SM_OUTPUT_DIR", "/opt/ml/output")
    if os.path.isdir(output_dir):
        with open(os.path.join(output_dir, "failure"), "w") as handle:
            handle.write(reason)
    print(reason, file=sys.stderr)
    sys.exit(1)


def load_npz(directory, channel):
    """The .npz files of a channel, each with a float matrix X and integer class labels y."""
    files = sorted(glob.glob(os.path.join(directory, "**", "*.npz"), recursive=True))
    if not files:
        fail(f"The {channel} channel ({directory}) holds no .npz file; give it .npz files with arrays X and y.")
    parts = [np.load(path) for path in files]
    x = np.concatenate([p["X"] for p in parts]).astype(np.float32)
    y = np.concatenate([p["y"] for p in parts]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=0.003)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--train", default=os.environ.get("SM_CHANNEL_TRAIN"))
    parser.add_argument("--validation", default=os.environ.get("SM_CHANNEL_VALIDATION"))
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "model"))
    args, _ = parser.parse_known_args()  # SageMaker may pass hyperparameters this script does not use
    if not args.train:
        fail("No train channel was given; pass one (a directory of .npz files) to the job.")

    torch.manual_seed(0)
    x, y = load_npz(args.train, "train")
    xv, yv = load_npz(args.validation, "validation") if args.validation else (x, y)
    classes = int(max(y.max(), yv.max())) + 1
    model = nn.Sequential(nn.Linear(x.shape[1], args.hidden), nn.ReLU(), nn.Linear(args.hidden, classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(x))
        total = 0.0
        for start in range(0, len(x), args.batch_size):
            batch = order[start:start + args.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        model.eval()
        with torch.no_grad():
            logits = model(xv)
            val_loss = loss_fn(logits, yv).item()
            accuracy = (logits.argmax(1) == yv).float().mean().item()
        # One metric line per epoch: `[epoch N] train:loss=... validation:accuracy=...`.
        print(f"[epoch {epoch}] train:loss={total / len(x):.6f} validation:loss={val_loss:.6f} validation:accuracy={accuracy:.6f}")

    os.makedirs(args.model_dir, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(args.model_dir, "model.pth"))


if __name__ == "__main__":
    main()
