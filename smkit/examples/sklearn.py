"""scikit-learn training script for SageMaker, written by `smkit init` as a starting point: edit freely.

The SageMaker contract, all of it:
- each input channel is a directory named by SM_CHANNEL_<NAME> (here: train, validation);
- hyperparameters arrive as `--name value` arguments;
- whatever is in SM_MODEL_DIR when the script ends becomes model.tar.gz;
- a log line `name=value`, `name: value` or `name = value` is a metric (the job summary lists it, the cloud records it);
- on bad input: one sentence in /opt/ml/output/failure (SageMaker shows it as FailureReason), exit 1.
It runs outside a container too: python train.py --train DIR --validation DIR --model-dir DIR
"""
import argparse
import glob
import os
import sys

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def fail(reason):
    """Tell SageMaker why the job failed, in one sentence, and stop before writing any model."""
    output_dir = os.environ.get("SM_OUTPUT_DIR", "/opt/ml/output")
    if os.path.isdir(output_dir):
        with open(os.path.join(output_dir, "failure"), "w") as handle:
            handle.write(reason)
    print(reason, file=sys.stderr)
    sys.exit(1)


def load_csv(directory, channel):
    """Every .csv file of a channel: the label in the first column, no header."""
    files = sorted(glob.glob(os.path.join(directory, "**", "*.csv"), recursive=True))
    if not files:
        fail(f"The {channel} channel ({directory}) holds no .csv file; give it label-first CSV files without a header.")
    data = np.vstack([np.loadtxt(path, delimiter=",", ndmin=2) for path in files])
    return data[:, 1:], data[:, 0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--max_iter", type=int, default=500)
    parser.add_argument("--train", default=os.environ.get("SM_CHANNEL_TRAIN"))
    parser.add_argument("--validation", default=os.environ.get("SM_CHANNEL_VALIDATION"))
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "model"))
    args, _ = parser.parse_known_args()  # SageMaker may pass hyperparameters this script does not use
    if not args.train:
        fail("No train channel was given; pass one (a directory of CSV files) to the job.")

    x, y = load_csv(args.train, "train")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=args.C, max_iter=args.max_iter))
    model.fit(x, y)
    print(f"train:accuracy = {model.score(x, y):.6f}")
    if args.validation:
        xv, yv = load_csv(args.validation, "validation")
        print(f"validation:accuracy = {model.score(xv, yv):.6f}")

    os.makedirs(args.model_dir, exist_ok=True)
    joblib.dump(model, os.path.join(args.model_dir, "model.joblib"))


if __name__ == "__main__":
    main()
