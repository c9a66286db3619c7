"""XGBoost training script for SageMaker, written by `smkit init` as a starting point: edit freely.

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
import xgboost as xgb


def fail(reason):
    """Tell SageMaker why the job failed, in one sentence, and stop before writing any model."""
    output_dir = os.environ.get("SM_OUTPUT_DIR", "/opt/ml/output")
    if os.path.isdir(output_dir):
        with open(os.path.join(output_dir, "failure"), "w") as handle:
            handle.write(reason)
    print(reason, file=sys.stderr)
    sys.exit(1)


def load_csv(directory, channel):
    """Every .csv file of a channel: the label in the first column, no header (SageMaker's XGBoost convention)."""
    files = sorted(glob.glob(os.path.join(directory, "**", "*.csv"), recursive=True))
    if not files:
        fail(f"The {channel} channel ({directory}) holds no .csv file; give it label-first CSV files without a header.")
    data = np.vstack([np.loadtxt(path, delimiter=",", ndmin=2) for path in files])
    return data[:, 1:], data[:, 0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--num_round", type=int, default=50)
    parser.add_argument("--max_depth", type=int, default=4)
    parser.add_argument("--eta", type=float, default=0.2)
    parser.add_argument("--objective", default="binary:logistic")
    parser.add_argument("--train", default=os.environ.get("SM_CHANNEL_TRAIN"))
    parser.add_argument("--validation", default=os.environ.get("SM_CHANNEL_VALIDATION"))
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "model"))
    args, _ = parser.parse_known_args()  # SageMaker may pass hyperparameters this script does not use
    if not args.train:
        fail("No train channel was given; pass one (a directory of CSV files) to the job.")

    x, y = load_csv(args.train, "train")
    evals = [(xgb.DMatrix(x, label=y), "train")]
    if args.validation:
        xv, yv = load_csv(args.validation, "validation")
        evals.append((xgb.DMatrix(xv, label=yv), "validation"))
    params = {"objective": args.objective, "max_depth": args.max_depth, "eta": args.eta, "eval_metric": ["logloss", "auc"]}
    history = {}
    booster = xgb.train(params, evals[0][0], num_boost_round=args.num_round, evals=evals, evals_result=history,
                        verbose_eval=False)
    # One metric line per 10 rounds: `[round N] train:auc=... validation:auc=...`.
    for step in range(9, args.num_round, 10):
        print(f"[round {step + 1}] " + " ".join(
            f"{data}:{metric}={values[step]:.6f}" for data, metrics in history.items() for metric, values in metrics.items()))

    os.makedirs(args.model_dir, exist_ok=True)
    booster.save_model(os.path.join(args.model_dir, "xgboost-model.json"))


if __name__ == "__main__":
    main()
