"""The references the XGBoost script is measured against, run as their own processes (plain Python):

    python -m bench.xgb_reference tutorial --train DIR --threads 1 --rounds 100 --model OUT
    python -m bench.xgb_reference limit    --train DIR --threads 1 --rounds 100 --model OUT

tutorial: what the SageMaker XGBoost tutorials do: pandas.read_csv (or read_parquet) -> xgboost.DMatrix
          -> xgboost.train.
limit:    the fastest load this machine allows (for CSV pandas' C parser, measured faster here than
          pyarrow's reader at the same thread count; for Parquet pyarrow) straight into one float32
          matrix, plus xgboost.train on an in-memory QuantileDMatrix.

Both train with the same parameters as the script (hist, max_bin 256, seed 0) and, like the script,
evaluate the training data every round. The last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

T0 = time.monotonic()


def files_of(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))


def load_tutorial(files: list[Path]):
    import pandas as pd

    if files[0].suffix == ".csv":
        df = pd.concat([pd.read_csv(f, header=None) for f in files], ignore_index=True) if len(files) > 1 \
            else pd.read_csv(files[0], header=None)
    else:
        df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if len(files) > 1 \
            else pd.read_parquet(files[0])
    y = df.iloc[:, 0]
    X = df.iloc[:, 1:]
    return X, y


def load_limit(files: list[Path], threads: int):
    import numpy as np

    if files[0].suffix == ".csv":
        import pandas as pd

        parts = [pd.read_csv(f, header=None, dtype=np.float32, engine="c").to_numpy() for f in files]
        data = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return np.ascontiguousarray(data[:, 1:]), data[:, 0].copy()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pa.set_cpu_count(threads)
    pa.set_io_thread_count(threads)
    tables = [pq.read_table(f, use_threads=True) for f in files]
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    del tables
    n, width = table.num_rows, table.num_columns
    X = np.empty((n, width - 1), dtype=np.float32)
    y = table.column(0).to_numpy().astype(np.float32)
    for j in range(1, width):
        X[:, j - 1] = table.column(j).to_numpy()
    del table
    return X, y


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=["tutorial", "limit"])
    parser.add_argument("--train", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--max-depth", type=int, default=6)
    parser.add_argument("--model", type=Path)
    args = parser.parse_args()

    import xgboost as xgb

    files = files_of(args.train)
    t_load = time.monotonic()
    if args.variant == "tutorial":
        X, y = load_tutorial(files)
        dtrain = xgb.DMatrix(X, label=y, nthread=args.threads)
    else:
        X, y = load_limit(files, args.threads)
        dtrain = xgb.QuantileDMatrix(X, label=y, max_bin=256, nthread=args.threads)
    del X, y
    loaded = time.monotonic()
    params = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": args.max_depth, "eta": 0.3,
              "max_bin": 256, "seed": 0, "nthread": args.threads, "eval_metric": "logloss"}
    history: dict = {}
    booster = xgb.train(params, dtrain, num_boost_round=args.rounds, evals=[(dtrain, "train")],
                        evals_result=history, verbose_eval=False)
    trained = time.monotonic()
    if args.model:
        args.model.parent.mkdir(parents=True, exist_ok=True)
        booster.save_model(str(args.model))
    print(json.dumps({
        "variant": args.variant, "rows": dtrain.num_row(), "features": dtrain.num_col(),
        "startup_s": round(t_load - T0, 3), "load_s": round(loaded - t_load, 3), "train_s": round(trained - loaded, 3),
        "total_s": round(time.monotonic() - T0, 3), "train_logloss": history["train"]["logloss"][-1],
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
