"""Reliability of the training scripts and images (issue #7, the script side); docs/reliability.md.

1. The bad-input matrix: every case is a real `python train.py ...` process (as the image runs it, minus
   the container), and every case is held to the same contract: exit code 1, one sentence in
   output/failure that names the file/column/parameter and says how to fix it, no traceback, no model.
   `python tests/test_reliability.py` runs the matrix and prints it as the markdown table of
   docs/reliability.md (test_documented_matrix_is_current fails when the two disagree).
2. Spot interruption, through real containers started as SageMaker starts them (local_mode's direct
   backend, network disabled): killed midway (SIGTERM, SIGKILL 2 s later), restarted on the same checkpoint
   directory with a torn newest checkpoint and a stray temporary file planted, it must resume from the
   last complete checkpoint and end bit-identical to a run that was never interrupted.
3. Training without network, for both images.
4. Safe artifacts: nothing the scripts write is a pickle that runs code on load, and the scripts never
   unpickle what they read.

Data is tiny and generated here (the machine has 2 shared cores); no network.
"""

from __future__ import annotations

import ast
import io
import json
import os
import pickletools
import re
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.polling import wait_for

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {
    "xgboost": ROOT / "train_scripts" / "xgboost" / "train.py",
    "pytorch": ROOT / "train_scripts" / "pytorch" / "train.py",
}
SM_CONTRACT = ROOT / "train_scripts" / "common" / "sm_contract.py"
SCRIPT_MODULES = sorted(p for script in SCRIPTS.values() for p in script.parent.glob("*.py"))  # train.py and its modules
DOC = ROOT / "docs" / "reliability.md"
FAILURE_LIMIT = 1024  # SageMaker shows the first 1024 characters of output/failure as FailureReason

# Short, single-threaded runs: the point of every matrix case is that it fails before training.
FAST_ARGS = {
    "xgboost": ["--num-cpus", "1", "--num_round", "2"],
    "pytorch": ["--num-cpus", "1", "--num_threads", "1", "--epochs", "1", "--checkpoint_every", "0",
                "--export_format", "none"],
}


# =================================================================================================
# 1. The bad-input matrix


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def garbage(size: int = 4096, seed: int = 0) -> bytes:
    """Random bytes (fixed seed): what a mis-named binary upload looks like."""
    return _rng(seed).bytes(size)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def npz_bytes(**arrays) -> bytes:
    sink = io.BytesIO()
    np.savez(sink, **arrays)
    return sink.getvalue()


class Payload:
    """An object whose unpickling creates the file `pwned-by-pickle` in the working directory: if a
    loader ever unpickles it, the test sees that file. It only ever creates an empty file."""

    def __reduce__(self):
        return (open, ("pwned-by-pickle", "w"))


def npz_with_object_array() -> bytes:
    """An .npz whose X is an object array: numpy stores it as a pickle (np.load needs allow_pickle=True)."""
    X = np.empty((4, 1), dtype=object)
    X[:, 0] = [Payload(), 1.0, 2.0, 3.0]
    return npz_bytes(X=X, y=np.array([0, 1, 0, 1]))


XGB_CSV = "0,1.5,2\n1,2.5,3\n0,3.5,1\n1,4.5,0\n"
X_SMALL = _rng(1).normal(size=(40, 4)).astype(np.float32)
Y_SMALL = np.arange(40) % 3
HUGE_LINE = b"1," * 10_000_000  # 20 MB, no newline
HUGE_FIELD = b"a" * 20_000_000  # 20 MB, one field
SHELL_VALUE = "$(touch pwned-by-shell); `touch pwned-by-shell`; auc"


@dataclass
class Case:
    """One bad input: files (relative path -> bytes/str, None for an empty directory), extra arguments,
    and the substrings the failure reason must contain (what is wrong, where, how to fix it)."""

    script: str
    name: str
    input: str  # how the table describes the input
    files: dict[str, bytes | str | None]
    args: list[str]
    expect: tuple[str, ...]
    id: str = ""

    def __post_init__(self):
        self.id = f"{self.script}-{self.name.replace(' ', '-')}"


def _cases() -> list[Case]:
    cases: list[Case] = []

    def xgb(name, input, files, args, *expect):
        cases.append(Case("xgboost", name, input, files, args, expect))

    def pt(name, input, files, args, *expect):
        cases.append(Case("pytorch", name, input, files, args, expect))

    good_parquet = parquet_bytes(pa.table({"y": [0, 1, 0, 1] * 50, "x": np.arange(200, dtype=float)}))

    # ---- XGBoost
    xgb("missing channel", "`--train nowhere` (no such directory)", {}, ["--train", "nowhere"],
        "Required channel 'train' is missing", "pass --train DIR")
    xgb("empty channel", "`train/` exists, no files", {"train": None}, [],
        "Channel 'train' has no data files", "put at least one data file")
    xgb("zero-byte file", "`train/a.csv`, 0 bytes", {"train/a.csv": b""}, [],
        "train", "only empty files")
    xgb("garbage csv", "`train/a.csv`: 4 KiB of random bytes", {"train/a.csv": garbage()}, [],
        "train/a.csv", "holds binary data", "remove it from the channel")
    xgb("garbage parquet", "`train/a.parquet`: 4 KiB of random bytes", {"train/a.parquet": garbage()}, [],
        "train/a.parquet")
    xgb("truncated parquet", "`train/a.parquet`: a valid file cut in half",
        {"train/a.parquet": good_parquet[: len(good_parquet) // 2]}, [], "train/a.parquet")
    xgb("ragged rows", "`train/a.csv`: `1,2,3` then `4,5`", {"train/a.csv": "1,2,3\n4,5\n"}, [],
        "train/a.csv", "row 2", "give every row the same number of fields")
    xgb("non-numeric value", "`train/a.csv`: 3000 numeric rows, then `1,abc` (`batch_mb=0.001`)",
        {"train/a.csv": "1,2\n" * 3000 + "1,abc\n"}, ["--batch_mb", "0.001"],
        "train/a.csv", "'abc'", "row 3001")
    xgb("text label for regression", "`train/a.csv`: labels `cat`, `dog`; `objective=reg:squarederror`",
        {"train/a.csv": "y,x\ncat,1\ndog,2\n"}, ["--objective", "reg:squarederror"], "holds text", "binary:logistic")
    xgb("NaN label", "`train/a.csv`: second row's label is `NaN`", {"train/a.csv": "y,x\n1,2\nNaN,3\n"}, [],
        "Data row 2 of train/a.csv has no label", "column 'y'")
    xgb("missing label", "`train/a.csv`: second row's label is empty", {"train/a.csv": "1,2\n,3\n"}, [],
        "Data row 2 of train/a.csv has no label")
    xgb("label outside num_class", "labels 0, 1, 3; `objective=multi:softmax num_class=3`",
        {"train/a.csv": "0,1\n1,2\n3,3\n"}, ["--objective", "multi:softmax", "--num_class", "3"],
        "class 3", "num_class=4")
    xgb("more classes than present", "labels 0, 1, 2; `objective=multi:softmax num_class=5`",
        {"train/a.csv": "0,1\n1,2\n2,3\n"}, ["--objective", "multi:softmax", "--num_class", "5"],
        "num_class=5", "only has the classes 0..2", "set num_class=3")
    xgb("binary label out of range", "labels 0, 2; `objective=binary:logistic`",
        {"train/a.csv": "0,1\n2,2\n"}, ["--objective", "binary:logistic"], "labels between 0 and 1")
    xgb("huge single line", "`train/a.csv`: 20 MB `1,1,1,...` without a newline", {"train/a.csv": HUGE_LINE}, [],
        "train/a.csv", "line of 20,000,000 characters", "end every row with a line break")
    xgb("huge single field", "`train/a.csv`: 20 MB `aaa...` without a comma or newline", {"train/a.csv": HUGE_FIELD},
        [], "train/a.csv", "line of 20,000,000 characters", "end every row with a line break")
    xgb("unknown hyperparameter", "`--max_dept 3`", {"train/a.csv": XGB_CSV}, ["--max_dept", "3"],
        "'max_dept'", "did you mean max_depth?")
    xgb("hyperparameter type", "`--max_depth six`", {"train/a.csv": XGB_CSV}, ["--max_depth", "six"],
        "max_depth", "six")
    xgb("hyperparameter value", "`--tree_method fast`", {"train/a.csv": XGB_CSV}, ["--tree_method", "fast"],
        "Hyperparameter tree_method=fast is rejected by XGBoost")
    xgb("negative eta", "`--eta -0.5`", {"train/a.csv": XGB_CSV}, ["--eta", "-0.5"], "eta")
    xgb("shell metacharacters", f"``--eval_metric '{SHELL_VALUE}'``", {"train/a.csv": XGB_CSV},
        ["--eval_metric", SHELL_VALUE], "Hyperparameter eval_metric=", "Unknown metric function $(touch")
    xgb("value with spaces", "`--objective 'binary logistic'`", {"train/a.csv": XGB_CSV},
        ["--objective", "binary logistic"], "objective", "binary logistic")
    xgb("target column missing", "header `y,x`; `--target_column label`", {"train/a.csv": "y,x\n1,2\n"},
        ["--target_column", "label"], "target_column 'label' is not a column", "columns: y, x")
    xgb("validation columns differ", "train has 3 columns, validation 2",
        {"train/a.csv": "1,2,3\n", "validation/v.csv": "1,2\n"}, [], "give every file the same columns")
    xgb("negative weight", "`csv_weights=1`, a weight of -1", {"train/a.csv": "1,-1,2\n0,1,3\n"},
        ["--csv_weights", "1"], "train/a.csv", "-1 as its weight", "non-negative")

    # ---- PyTorch
    good_npz = npz_bytes(X=X_SMALL, y=Y_SMALL)
    pt("missing channel", "`--train nowhere` (no such directory)", {}, ["--train", "nowhere"],
       "Required channel 'train' is missing", "pass --train DIR")
    pt("empty channel", "`train/` exists, no files", {"train": None}, [],
       "Channel 'train' has no data files", "put at least one data file")
    pt("zero-byte file", "`train/a.csv`, 0 bytes", {"train/a.csv": b""}, [],
       "Channel 'train' has only empty files", "put data in at least one file")
    pt("garbage csv", "`train/a.csv`: 4 KiB of random bytes", {"train/a.csv": garbage()}, [],
       "train/a.csv", "neither CSV, Parquet nor .npz")
    pt("garbage parquet", "`train/a.parquet`: 4 KiB of random bytes", {"train/a.parquet": garbage()}, [],
       "train/a.parquet")
    pt("garbage npz", "`train/a.npz`: 4 KiB of random bytes", {"train/a.npz": garbage()}, [], "train/a.npz")
    pt("truncated parquet", "`train/a.parquet`: a valid file cut in half",
       {"train/a.parquet": good_parquet[: len(good_parquet) // 2]}, [], "train/a.parquet", "fix or remove")
    pt("truncated npz", "`train/a.npz`: a valid file cut in half", {"train/a.npz": good_npz[: len(good_npz) // 2]},
       [], "train/a.npz", "cannot be read as .npz")
    pt("wrong npz keys", "`train/a.npz` with arrays `features`, `labels`",
       {"train/a.npz": npz_bytes(features=X_SMALL, labels=Y_SMALL)}, [],
       "train/a.npz", "['features', 'labels']", "np.savez(path, X=features, y=labels)")
    pt("pickled npz", "`train/a.npz` whose X is an object array (a pickle)", {"train/a.npz": npz_with_object_array()},
       [], "train/a.npz", "Python objects")
    pt("ragged rows", "`train/a.csv`: `a,b,label`, `1,2,0`, `3,4`", {"train/a.csv": "a,b,label\n1,2,0\n3,4\n"}, [],
       "train/a.csv", "fix or remove")
    pt("non-numeric feature", "`train/a.csv`: column `b` holds `red`, `blue`",
       {"train/a.csv": "a,b,label\n1,red,0\n2,blue,1\n"}, [], "Feature column 'b'", "train/a.csv", "encode it as numbers")
    pt("NaN label", "`train/a.npz`: y[7] is NaN",
       {"train/a.npz": npz_bytes(X=X_SMALL, y=np.where(np.arange(40) == 7, np.nan, Y_SMALL))}, [],
       "train/a.npz", "NaN or infinite labels")
    pt("missing label", "`train/a.csv`: second row's label is empty", {"train/a.csv": "a,label\n1,2\n3,\n"}, [],
       "train/a.csv", "missing values (first at data row 2)")
    pt("label outside the classes", "validation label 7; train labels 0, 1, 2",
       {"train/a.npz": good_npz, "validation/v.npz": npz_bytes(X=X_SMALL[:5], y=np.full(5, 7))}, [],
       "The validation channel has the label 7", "every class must occur in the training data")
    pt("fewer classes than num_classes", "3 distinct labels; `--num_classes 2`", {"train/a.npz": good_npz},
       ["--num_classes", "2"], "num_classes=2", "3 distinct labels", "set num_classes=3")
    pt("more classes than present", "3 distinct labels; `--num_classes 5`", {"train/a.npz": good_npz},
       ["--num_classes", "5"], "num_classes=5", "3 distinct labels", "set num_classes=3")
    pt("huge single line", "`train/a.csv`: 20 MB `1,1,1,...` without a newline", {"train/a.csv": HUGE_LINE}, [],
       "train/a.csv", "line of 20,000,000 characters", "end every row with a line break")
    pt("huge single field", "`train/a.csv`: 20 MB `aaa...` without a comma or newline", {"train/a.csv": HUGE_FIELD},
       [], "train/a.csv", "line of 20,000,000 characters", "end every row with a line break")
    pt("unknown hyperparameter", "`--epoch 3`", {"train/a.npz": good_npz}, ["--epoch", "3"],
       "'epoch'", "did you mean epochs?")
    pt("hyperparameter type", "`--epochs many`", {"train/a.npz": good_npz}, ["--epochs", "many"], "epochs", "many")
    pt("hyperparameter value", "`--learning_rate -1`", {"train/a.npz": good_npz}, ["--learning_rate", "-1"],
       "learning_rate='-1' is out of range")
    pt("bad list", "`--hidden_sizes '[64, x]'`", {"train/a.npz": good_npz}, ["--hidden_sizes", "[64, x]"],
       "Hyperparameter hidden_sizes")
    pt("shell metacharacters", f"``--task '{SHELL_VALUE}'``", {"train/a.npz": good_npz}, ["--task", SHELL_VALUE],
       "task", "$(touch pwned-by-shell)")
    pt("value with spaces", "`--task 'a b'`", {"train/a.npz": good_npz}, ["--task", "a b"], "task", "'a b'")
    pt("text labels for regression", "labels `a`; `--task regression`",
       {"train/a.npz": npz_bytes(X=X_SMALL, y=np.array(["a"] * 40))}, ["--task", "regression"], "task=regression")
    return cases


CASES = _cases()


@dataclass
class Outcome:
    code: int
    reason: str | None  # output/failure, as written
    stdout: str
    stderr: str
    leftovers: list[str] = field(default_factory=list)  # files in model/ and output/data/
    pwned: list[str] = field(default_factory=list)  # marker files a shell or an unpickler would have created


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def run_case(case: Case, tmp: Path) -> Outcome:
    """`python train.py` in `tmp` with relative paths (so reasons read as they would in a job)."""
    tmp.mkdir(parents=True, exist_ok=True)
    for rel, content in case.files.items():
        path = tmp / rel
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    args = [] if "--train" in case.args else ["--train", "train"]
    if (tmp / "validation").exists():
        args += ["--validation", "validation"]
    command = [sys.executable, str(SCRIPTS[case.script]), *args, "--model-dir", "model",
               "--output-data-dir", "output/data", "--output-dir", "output", *FAST_ARGS[case.script], *case.args]
    done = subprocess.run(command, cwd=tmp, env=clean_env(), capture_output=True, text=True, timeout=300)
    failure = tmp / "output" / "failure"
    leftovers = [str(p.relative_to(tmp)) for d in ("model", "output/data") if (tmp / d).exists()
                 for p in sorted((tmp / d).rglob("*")) if p.is_file()]
    return Outcome(done.returncode, failure.read_text() if failure.exists() else None, done.stdout, done.stderr,
                   leftovers, sorted(p.name for p in tmp.rglob("pwned*")))


def contract_violations(case: Case, outcome: Outcome) -> list[str]:
    """Everything about `outcome` that breaks the failure contract (empty when it holds)."""
    problems = []
    if outcome.code != 1:
        problems.append(f"exit code {outcome.code}, expected 1")
    reason = outcome.reason
    if reason is None:
        return problems + ["no output/failure written"]
    if not reason.endswith("\n") or reason.count("\n") != 1:
        problems.append("the reason is not exactly one line")
    if len(reason.rstrip("\n")) > FAILURE_LIMIT:
        problems.append(f"the reason has {len(reason)} characters (more than {FAILURE_LIMIT})")
    if "Traceback" in reason or 'File "' in reason:
        problems.append("the reason holds a traceback")
    if reason.startswith("Unexpected "):
        problems.append("a bad input is reported as an unexpected error")
    if "Traceback (most recent call last)" in outcome.stderr:
        problems.append("the log holds a traceback (only unexpected errors may)")
    for text in case.expect:
        if text not in reason:
            problems.append(f"the reason does not contain {text!r}")
    if outcome.leftovers:
        problems.append(f"files left behind: {outcome.leftovers}")
    if outcome.pwned:
        problems.append(f"a value or a file was executed: {outcome.pwned}")
    return problems


MATRIX_RESULTS: dict[str, Outcome] = {}  # filled by test_bad_input_matrix, read by test_documented_matrix_is_current


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_matrix(case: Case, tmp_path: Path):
    outcome = run_case(case, tmp_path)
    MATRIX_RESULTS[case.id] = outcome
    problems = contract_violations(case, outcome)
    assert not problems, f"{case.id}: {problems}\nreason: {outcome.reason!r}\nstderr: {outcome.stderr[-3000:]}"


def test_matrix_covers_both_scripts():
    per_script = {s: sum(c.script == s for c in CASES) for s in SCRIPTS}
    assert len(CASES) >= 25 and min(per_script.values()) >= 15, per_script
    assert len({c.id for c in CASES}) == len(CASES)


def markdown_row(case: Case, outcome: Outcome) -> str:
    """One table row; the reason is escaped so that it renders exactly as written (no code spans)."""
    reason = (outcome.reason or "(none)").strip().replace("`", "\\`")
    cells = [case.name, case.script, case.input, reason]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def markdown_table(results: dict[str, Outcome]) -> str:
    lines = ["| case | script | input | failure reason (output/failure, as observed) |", "|---|---|---|---|"]
    lines += [markdown_row(case, results[case.id]) for case in CASES if case.id in results]
    return "\n".join(lines)


def test_documented_matrix_is_current(tmp_path):
    """docs/reliability.md shows the reasons the scripts give now (regenerate: python tests/test_reliability.py).
    Uses the outcomes of test_bad_input_matrix; runs the cases itself when it runs alone."""
    for case in CASES:
        if case.id not in MATRIX_RESULTS:
            MATRIX_RESULTS[case.id] = run_case(case, tmp_path / case.id)
    documented = DOC.read_text()
    stale = [row for row in (markdown_row(c, MATRIX_RESULTS[c.id]) for c in CASES) if row not in documented]
    assert not stale, "docs/reliability.md is out of date (python tests/test_reliability.py prints the table):\n" + \
        "\n".join(stale)


# =================================================================================================
# 2. and 3. Real containers, started as SageMaker starts them, network disabled: spot interruption
# and resume, and training without network.

CHECKPOINT_NAMES = {"xgboost": "xgboost-checkpoint-{:08d}.ubj", "pytorch": "checkpoint-{:08d}.pt"}
CHECKPOINT_EVERY = {"xgboost": 50, "pytorch": 1}
# Long enough that the kill lands midway, even on a fast machine: SIGTERM, then SIGKILL 2 s later (the script
# gets SIGTERM through the image's keep-failure lines and exits non-zero at once; the kill is the fallback).
# Bit-identical resume needs fixed seeds and one thread.
SPOT_HYPERPARAMETERS = {
    "xgboost": {"objective": "binary:logistic", "num_round": 1500, "max_depth": 6, "eta": 0.05, "subsample": 0.8,
                "colsample_bynode": 0.8, "seed": 7, "nthread": 1, "checkpoint_frequency": CHECKPOINT_EVERY["xgboost"]},
    "pytorch": {"epochs": 60, "hidden_sizes": [128, 128], "batch_size": 64, "learning_rate": 0.003, "seed": 3,
                "num_threads": 1, "checkpoint_every": CHECKPOINT_EVERY["pytorch"], "keep_checkpoints": 2},
}
TOTAL_STEPS = {"xgboost": SPOT_HYPERPARAMETERS["xgboost"]["num_round"], "pytorch": SPOT_HYPERPARAMETERS["pytorch"]["epochs"]}


def spot_data(framework: str, root: Path) -> dict[str, Path]:
    """Synthetic data (fixed seed): 3000 rows, binary (XGBoost CSV) or 3-class (PyTorch .npz)."""
    rng = _rng(7)
    (root / "train").mkdir(parents=True)
    if framework == "xgboost":
        X = rng.normal(size=(3000, 10))
        y = (X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(scale=0.5, size=3000) > 0).astype(int)
        np.savetxt(root / "train" / "train.csv", np.column_stack([y, X]), delimiter=",", fmt="%.6g")
    else:
        X = rng.normal(size=(3000, 20)).astype(np.float32)
        y = (X @ rng.normal(size=(20, 3))).argmax(1)
        np.savez(root / "train" / "train.npz", X=X, y=y)
    return {"train": root / "train"}


def saved_checkpoints(framework: str, directory: Path) -> list[int]:
    """The steps of the complete checkpoints (by name) in `directory`."""
    pattern = CHECKPOINT_NAMES[framework].replace(".", r"\.").replace("{:08d}", r"(\d{8})")
    return sorted(int(m.group(1)) for p in directory.iterdir() if (m := re.fullmatch(pattern, p.name)))


@dataclass
class Run:
    """A finished container: its exit code, log, directories (kept after the run) and network mode."""

    code: int | None
    log: str
    model_dir: Path
    output_dir: Path
    checkpoint_dir: Path | None
    network_mode: str
    seconds: float
    failure: str | None = None

    @property
    def model_files(self) -> list[str]:
        return sorted(p.name for p in self.model_dir.iterdir()) if self.model_dir.exists() else []


def start_job(image: str, runs: Path, channels: dict[str, Path], hyperparameters: dict,
              checkpoint_dir: Path | None = None):
    """One container started as SageMaker starts it (direct backend, network disabled); its directories
    are kept after finish() for the assertions."""
    from local_mode import Channel, JobSpec
    from local_mode.direct import start_direct

    spec = JobSpec(image=image, channels=[Channel(name, str(path)) for name, path in channels.items()],
                   hyperparameters=hyperparameters, sdk="v3",
                   checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None)
    return start_direct(spec, runs_dir=runs, stream=False, keep_work=True)


@dataclass
class Spot:
    whole: Run  # never interrupted
    killed: Run  # stopped midway
    resumed: Run  # a new container on the killed run's checkpoint directory
    killed_at: list[int]  # the checkpoints on disk after the kill
    torn: str  # the torn newest checkpoint planted before the restart
    stray: str  # a temporary file of a save that was cut off
    killed_model: list[str]  # files in the killed run's model directory


def finish(job, started: float, timeout: float = 300) -> Run:
    try:
        code = job.wait(timeout)
        (container,) = job.containers.values()
        mode = container.attrs["HostConfig"]["NetworkMode"]
        result = job.finish()
    finally:
        job.cleanup()
    if result.stop_reason and result.stop_reason != "stopped":
        code = None  # a timeout, not the job's own exit
    elif result.stop_reason:
        code = job.exit_codes[job.hosts[0]]  # stopped on purpose (the spot interruption): what it exited with
    return Run(code, job.logs(), job.model_dir, job.output_dir(), job.checkpoint_dir, mode, time.monotonic() - started,
               result.failure_reason)


def run_spot(image: str, framework: str, root: Path) -> Spot:
    channels = spot_data(framework, root / "data")
    hps = SPOT_HYPERPARAMETERS[framework]
    name = CHECKPOINT_NAMES[framework]

    # The reference, a container that is never interrupted, runs beside the other two (one thread each).
    whole_started = time.monotonic()
    whole_job = start_job(image, root / "whole", channels, hps, checkpoint_dir=root / "whole" / "checkpoints")
    try:
        # The interrupted run: stopped as soon as its first complete checkpoint exists.
        started = time.monotonic()
        job = start_job(image, root / "job", channels, hps, checkpoint_dir=root / "job" / "checkpoints")
        try:
            (container,) = job.containers.values()
            wait_for(lambda: saved_checkpoints(framework, job.checkpoint_dir)
                     or (container.reload() or container.status == "exited"), timeout=240, interval=0.05)
            job.stop(grace=2)  # SIGTERM, then SIGKILL after 2 s: what a spot interruption does
        finally:
            killed = finish(job, started)
        killed_at = saved_checkpoints(framework, job.checkpoint_dir)
        killed_model = killed.model_files

        # What the kill may leave: the newest checkpoint torn (a copy cut off), and a save's temporary file.
        last = killed_at[-1] if killed_at else 0
        complete = (job.checkpoint_dir / name.format(last)).read_bytes() if killed_at else b""
        torn = name.format(last + CHECKPOINT_EVERY[framework])
        (job.checkpoint_dir / torn).write_bytes(complete[: len(complete) // 2])
        stray = f".{name.format(last + 2 * CHECKPOINT_EVERY[framework])}.x7k2q9.tmp"
        (job.checkpoint_dir / stray).write_bytes(complete[:1000])

        # The restart: a new container (a new run: fresh model and output directories), the same checkpoint directory.
        started = time.monotonic()
        resumed = finish(start_job(image, root / "job", channels, hps, checkpoint_dir=job.checkpoint_dir), started)
    except BaseException:
        whole_job.cleanup()
        raise
    whole = finish(whole_job, whole_started)
    return Spot(whole, killed, resumed, killed_at, torn, stray, killed_model)


@pytest.fixture(scope="module")
def built_images(project_images) -> dict[str, str]:
    """Both images of images.toml on the stand-in bases, as `make build BASE=local` builds them (in a
    scratch copy of the project: the checkout's build/images.json is never rewritten)."""
    return project_images


@pytest.fixture(scope="module")
def spot(built_images, tmp_path_factory) -> Callable[[str], Spot]:
    """The three containers of each framework, run once per module (on first use)."""
    runs: dict[str, Spot] = {}

    def get(framework: str) -> Spot:
        if framework not in runs:
            runs[framework] = run_spot(built_images[framework], framework, tmp_path_factory.mktemp(f"spot-{framework}"))
        return runs[framework]

    return get


@pytest.mark.docker
@pytest.mark.parametrize("framework", ["xgboost", "pytorch"])
def test_training_without_network(spot, framework):
    """Single-host training with the container's network disabled (`docker run --network none`)."""
    whole = spot(framework).whole
    assert whole.network_mode == "none"
    assert whole.code == 0, whole.log[-3000:]
    expected = {"xgboost": ["model-metadata.json", "xgboost-model"],
                "pytorch": ["model-config.json", "model.pt", "model.pt2", "model.ts"]}[framework]
    assert whole.model_files == expected
    assert (whole.output_dir / "data" / "evaluation.json").exists()
    assert not (whole.output_dir / "failure").exists()


CONTAINER_SHELL_VALUE = "$(touch /opt/ml/output/pwned-by-shell); `touch /opt/ml/output/pwned-by-shell`; x"


@pytest.mark.docker
@pytest.mark.parametrize("framework", ["xgboost", "pytorch"])
def test_shell_metacharacters_in_hyperparameters_never_run_in_the_container(built_images, framework, tmp_path):
    """The toolkit in the image passes hyperparameters to the script as arguments, never through a
    shell: a value that would create a file if a shell ran it is rejected by the script, and no file appears."""
    (tmp_path / "data").mkdir()
    if framework == "xgboost":
        (tmp_path / "data" / "a.csv").write_text(XGB_CSV)
        hps = {"num_round": 2, "nthread": 1, "eval_metric": CONTAINER_SHELL_VALUE}
    else:
        (tmp_path / "data" / "a.npz").write_bytes(npz_bytes(X=X_SMALL, y=Y_SMALL))
        hps = {"epochs": 1, "num_threads": 1, "task": CONTAINER_SHELL_VALUE}
    job = start_job(built_images[framework], tmp_path / "runs", {"train": tmp_path / "data"}, hps)
    run = finish(job, time.monotonic(), timeout=180)
    assert run.code not in (0, None), run.log[-3000:]
    reason = run.failure or ""
    assert ("eval_metric" if framework == "xgboost" else "task='$(touch /opt/ml/output/pwned-by-shell)") in reason, reason
    assert not list(tmp_path.rglob("pwned*")), "a hyperparameter value was run by a shell"
    assert run.model_files == []


def load_model_state(framework: str, model_dir: Path):
    if framework == "xgboost":
        import xgboost as xgb

        booster = xgb.Booster(model_file=str(model_dir / "xgboost-model"))
        return booster
    import torch

    return torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)


@pytest.mark.docker
@pytest.mark.parametrize("framework", ["xgboost", "pytorch"])
def test_spot_interruption_resumes_to_the_identical_model(spot, framework):
    run = spot(framework)
    total, every = TOTAL_STEPS[framework], CHECKPOINT_EVERY[framework]
    name = CHECKPOINT_NAMES[framework]

    # Killed midway: not finished, no model, at least one complete checkpoint.
    assert run.killed.code != 0, "the run finished before the interruption landed: make it longer"
    assert run.killed.network_mode == "none"
    assert run.killed_at and run.killed_at[-1] < total, run.killed_at
    assert run.killed_model == [], "a killed run must leave no model"
    assert not (run.killed.output_dir / "success").exists()
    last = run.killed_at[-1]

    # The restart skipped the torn newest checkpoint and the temporary file, and went on from the last complete one.
    assert run.resumed.code == 0, run.resumed.log[-3000:]
    log = run.resumed.log
    if framework == "xgboost":
        assert f"Warning: checkpoint {run.torn} cannot be loaded" in log
        assert f"Resuming from checkpoint {name.format(last)}: {last} rounds done." in log
        assert f"[round {last}] " in log and f"[round {last - 1}] " not in log
    else:
        assert f"warning: checkpoint /opt/ml/checkpoints/{run.torn} cannot be loaded" in log
        assert f"resumed from the checkpoint of epoch {last} in /opt/ml/checkpoints" in log
        assert f"[epoch {last + 1}] " in log and f"[epoch {last}] " not in log
    assert run.stray not in log
    checkpoint_dir = run.resumed.checkpoint_dir
    assert saved_checkpoints(framework, checkpoint_dir)[-1] == total  # the torn file was replaced by a real one
    assert (checkpoint_dir / run.stray).exists()  # never loaded, never mistaken for a checkpoint

    # The same model as the run that never stopped, bit for bit.
    assert run.whole.code == 0, run.whole.log[-3000:]
    ours, theirs = (load_model_state(framework, r.model_dir) for r in (run.resumed, run.whole))
    if framework == "xgboost":
        assert ours.num_boosted_rounds() == theirs.num_boosted_rounds() == total
        assert ours.get_dump(dump_format="json") == theirs.get_dump(dump_format="json")
        assert ours.save_raw("ubj") == theirs.save_raw("ubj")
    else:
        import torch

        assert list(ours) == list(theirs)
        different = [k for k in ours if not torch.equal(ours[k], theirs[k])]
        assert not different, f"tensors differ after the resume: {different}"



# =================================================================================================
# 4. Safe artifacts: a pickle runs code when it is loaded (its opcodes may call any importable
# function), so no file the scripts write may need an unpickler that can do that, and the scripts
# never unpickle what they read (data, checkpoints).

# What a pickle inside our files may reference: tensor rebuilders, storages, OrderedDict, and (in
# TorchScript archives, read by TorchScript's own unpickler) TorchScript's types and helpers.
PICKLE_SAFE_GLOBALS = {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                       "torch.jit._pickle.build_intlist", "torch.jit._pickle.restore_type_tag"}


def is_pickle(data: bytes) -> bool:
    """The header of a pickle of protocol 2 or later: 0x80 and the protocol byte."""
    return len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5


def pickle_globals(data: bytes) -> set[str]:
    """Every global (module.name) a pickle would import when loaded, read from its opcodes: nothing is run."""
    found, recent, memo = set(), [], {}
    for op, arg, _ in pickletools.genops(io.BytesIO(data)):
        if op.name in ("GLOBAL", "INST"):
            found.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            module, name = (recent[-2:] + [None, None])[:2] if len(recent) >= 2 else (None, None)
            found.add(f"{module}.{name}" if isinstance(module, str) and isinstance(name, str) else "<unresolved STACK_GLOBAL>")
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
                       "SHORT_BINSTRING"):
            recent.append(arg)
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            recent.append(memo.get(arg))
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = recent[-1] if recent else None
        elif op.name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif op.name != "STACK_GLOBAL":
            recent.append(None)
    return found


def safe_global(name: str, torchscript: bool) -> bool:
    return (name in PICKLE_SAFE_GLOBALS or re.fullmatch(r"torch\.\w+Storage", name) is not None
            or (torchscript and name.startswith("__torch__.")))


def zip_members(data: bytes, where: str):
    """(path, bytes) of every member of a zip archive, nested archives included."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for member in archive.namelist():
            blob = archive.read(member)
            yield f"{where}!{member}", blob
            if blob[:4] == b"PK\x03\x04":
                yield from zip_members(blob, f"{where}!{member}")


XGBOOST_CHECKPOINT = re.compile(r"^xgboost-checkpoint-\d{8}\.ubj$")
TORCH_CHECKPOINT = re.compile(r"^checkpoint-\d{8}\.pt$")


def check_artifact(path: Path) -> str:
    """Assert that `path` loads without a code-running unpickler; return what kind of file it is."""
    import torch
    import xgboost as xgb

    data = path.read_bytes()
    assert not is_pickle(data), f"{path} is a pickle"
    if data[:4] == b"PK\x03\x04":  # torch's formats are zip archives with pickles inside
        torchscript = path.suffix == ".ts"
        for member, blob in zip_members(data, path.name):
            if is_pickle(blob):
                unsafe = {g for g in pickle_globals(blob) if not safe_global(g, torchscript)}
                assert not unsafe, f"{member} would import {sorted(unsafe)} when loaded"
            if blob[:4] == b"PK\x03\x04" and member.endswith(".pt"):  # e.g. model.pt2's sample inputs
                torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        if path.suffix == ".pt":
            torch.load(path, map_location="cpu", weights_only=True)
            return "torch tensors (torch.load weights_only=True)"
        if path.suffix == ".ts":
            torch.jit.load(str(path), map_location="cpu")
            return "TorchScript (torch.jit.load)"
        if path.suffix == ".pt2":
            torch.export.load(str(path))
            return "torch.export program (torch.export.load)"
        raise AssertionError(f"{path}: an archive of unknown kind")
    if path.name == "xgboost-model" or XGBOOST_CHECKPOINT.match(path.name):
        assert data[:1] == b"{", f"{path} is not UBJSON"
        xgb.Booster(model_file=str(path))
        return "XGBoost UBJSON (xgboost.Booster)"
    if path.suffix == ".json":
        json.loads(data)
        return "JSON"
    if path.suffix == ".csv" or path.name in ("success", "failure"):
        data.decode("utf-8")
        return "text"
    raise AssertionError(f"{path}: a file check_artifact does not know; add its kind")


@pytest.mark.docker
def test_written_files_are_never_code_running_pickles(spot):
    """Every file the scripts wrote in the spot runs (model, output data, checkpoints, killed and resumed
    runs) loads with a loader that cannot run code; pickles inside torch's archives import only tensor
    rebuilders and storages."""
    kinds: dict[str, set[str]] = {}
    for framework in ("xgboost", "pytorch"):
        run = spot(framework)
        directories = [d for r in (run.whole, run.killed, run.resumed) for d in (r.model_dir, r.output_dir, r.checkpoint_dir)]
        for directory in directories:
            for path in sorted(p for p in directory.rglob("*") if p.is_file()):
                if path.name.startswith("."):  # a temporary file of a save: never loaded (name checked)
                    assert re.fullmatch(r"\.(xgboost-)?checkpoint-\d{8}\.(ubj|pt)\.\w+\.tmp", path.name), path
                    continue
                kinds.setdefault(check_artifact(path), set()).add(path.name)
    assert {"torch tensors (torch.load weights_only=True)", "TorchScript (torch.jit.load)",
            "torch.export program (torch.export.load)", "XGBoost UBJSON (xgboost.Booster)"} <= set(kinds), kinds
    assert {"model.pt", "checkpoint-00000060.pt"} <= kinds["torch tensors (torch.load weights_only=True)"]
    assert {"xgboost-model", "xgboost-checkpoint-00001500.ubj"} <= kinds["XGBoost UBJSON (xgboost.Booster)"]


def test_pickle_audits_see_a_pickle(tmp_path):
    """The static audit flags a pickle that would call a function on load, and the audit hook of
    AUDITED_RUN (below) stops a script that unpickles."""
    unpickler = tmp_path / "unpickles.py"
    unpickler.write_text("import collections, pickle\npickle.loads(pickle.dumps(collections.OrderedDict()))\n")
    done = subprocess.run([sys.executable, "-c", AUDITED_RUN, str(unpickler)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "AUDIT: pickle.find_class(collections.OrderedDict)" in done.stderr
    assert "io.open" in pickle_globals(__import__("pickle").dumps(Payload(), protocol=2))
    assert "io.open" in pickle_globals(__import__("pickle").dumps(Payload(), protocol=5))
    assert not safe_global("io.open", torchscript=True) and safe_global("torch.FloatStorage", False)


FORBIDDEN_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def test_scripts_never_unpickle_in_their_source():
    """No pickle-family import, np.load never with allow_pickle=True, torch.load always weights_only=True."""
    seen = {"np.load": 0, "torch.load": 0}
    for path in (*SCRIPT_MODULES, SM_CONTRACT):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not {n.split(".")[0] for n in names} & FORBIDDEN_MODULES, f"{path.name}:{node.lineno} imports {names}"
            if not isinstance(node, ast.Call):
                continue
            name = dotted(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            where = f"{path.name}:{node.lineno} {name}"
            assert not name.endswith(("read_pickle", "jit.load", "export.load")), where
            if name in ("np.load", "numpy.load"):
                seen["np.load"] += 1
                flag = keywords.get("allow_pickle")
                assert flag is None or (isinstance(flag, ast.Constant) and flag.value is False), where
            if name == "torch.load":
                seen["torch.load"] += 1
                flag = keywords.get("weights_only")
                assert isinstance(flag, ast.Constant) and flag.value is True, where
    assert seen["np.load"] >= 1 and seen["torch.load"] >= 2, seen  # the checks above did look at the loaders


# Runs a script as `python train.py ...` does, with an audit hook that reports (and stops) every
# lookup of a global by Python's pickle module: the scripts must never need one.
AUDITED_RUN = """
import runpy, sys
def audit(event, args):
    if event == "pickle.find_class":
        sys.stderr.write(f"AUDIT: pickle.find_class({args[0]}.{args[1]})\\n")
        raise RuntimeError("pickle.find_class is not allowed in the training scripts")
sys.addaudithook(audit)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def planted_checkpoint(framework: str, directory: Path) -> Path:
    """A checkpoint file, named as the newest, that runs code (creates pwned-by-pickle) if unpickled."""
    import pickle

    directory.mkdir(parents=True)
    if framework == "xgboost":
        path = directory / CHECKPOINT_NAMES["xgboost"].format(990)
        path.write_bytes(pickle.dumps(Payload(), protocol=2))
    else:
        import torch

        path = directory / CHECKPOINT_NAMES["pytorch"].format(99)
        torch.save({"format": "smkit-mlp-checkpoint", "epoch": 98, "payload": Payload()}, path)
    return path


@pytest.mark.parametrize("framework", ["xgboost", "pytorch"])
def test_a_pickled_checkpoint_is_never_executed(framework, tmp_path):
    """A checkpoint that would run code when unpickled is refused as damaged (the run starts over), and
    Python's pickle module is never asked to import anything while the script trains and resumes."""
    planted = planted_checkpoint(framework, tmp_path / "checkpoints")
    (tmp_path / "train").mkdir()
    if framework == "xgboost":
        (tmp_path / "train" / "a.csv").write_text(XGB_CSV * 5)
    else:
        (tmp_path / "train" / "a.npz").write_bytes(npz_bytes(X=X_SMALL, y=Y_SMALL))
    command = [sys.executable, "-c", AUDITED_RUN, str(SCRIPTS[framework]), "--train", "train", "--model-dir", "model",
               "--output-data-dir", "output/data", "--output-dir", "output", "--checkpoint-dir", "checkpoints",
               *FAST_ARGS[framework]]
    if framework == "pytorch":
        command += ["--checkpoint_every", "1"]  # (a later option wins)
    done = subprocess.run(command, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "AUDIT:" not in done.stderr and not list(tmp_path.rglob("pwned*"))
    assert f"{planted.name} cannot be loaded" in done.stdout
    assert (tmp_path / "model").exists() and any((tmp_path / "model").iterdir())


def test_the_documented_model_loader_refuses_a_pickled_model(tmp_path, monkeypatch):
    """model.load_model (what docs/pytorch.md tells users to call) reads model.pt with weights_only=True:
    a model.pt that would run code is refused, and nothing runs."""
    import torch

    from tests.scripts import script_module

    module = script_module("pytorch", "model")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    config = {"model": {"input_dim": 4, "hidden_sizes": [8], "output_dim": 3, "activation": "relu", "dropout": 0.0}}
    (tmp_path / "model" / "model-config.json").write_text(json.dumps(config))
    torch.save({"0.weight": Payload()}, tmp_path / "model" / "model.pt")
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        module.load_model(tmp_path / "model")
    assert not (tmp_path / "pwned-by-pickle").exists()


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        results = {}
        for case in CASES:
            results[case.id] = run_case(case, Path(scratch) / case.id)
            problems = contract_violations(case, results[case.id])
            if problems:
                print(f"CONTRACT BROKEN {case.id}: {problems} {results[case.id].reason!r}", file=sys.stderr)
        print(markdown_table(results))
