"""The SageMaker training-container contract, for training scripts.

One small module, baked into /opt/ml/code next to each entry point, so that every script reads its
inputs, hyperparameters, hosts and checkpoint directory the same way, and fails the same way:

- paths: CLI option > SM_* environment (set by sagemaker-training / sagemaker-containers) > /opt/ml;
- hyperparameters: declared defaults < SM_HPS (JSON) < CLI `--key value`, each value coerced from
  whatever the SDK sent (`str()` of a Python value, JSON, "True"/"false", "[64, 32]");
- failures: one sentence in /opt/ml/output/failure (SageMaker shows its first 1024 characters as the
  job's FailureReason), exit code 1, no traceback as the reason, no half-written model;
- checkpoints and models: written to a temporary name, fsynced, then renamed, so a kill (spot
  interruption) never leaves a file that looks complete but is not.

It runs the same outside any container: `python train.py --train DIR --model-dir DIR ...`.
Python 3.10 compatible (the prebuilt XGBoost image runs 3.10) and standard library only.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import re
import shutil
import sys
import tempfile
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

OPT_ML = Path("/opt/ml")
FAILURE_LIMIT = 1024  # SageMaker keeps this many characters of output/failure as FailureReason
IGNORED_FILE_NAMES = {"_SUCCESS", ".DS_Store", "manifest", "_manifest"}


class UserError(Exception):
    """Bad input the user can fix; the message is the one sentence that goes to output/failure."""


# -----------------------------------------------------------------------------------------------
# Hyperparameters


@dataclass(frozen=True)
class Hyperparameter:
    """One declared hyperparameter. `kind` is bool, int, float, str or "ints"/"floats"/"strs" (lists)."""

    kind: Any
    default: Any
    help: str = ""
    choices: Sequence[Any] | None = None
    min: float | None = None
    max: float | None = None


def _strip_json_string(raw: str) -> str:
    # Framework estimators json-encode every value, so a string may arrive as "\"reg:logistic\"".
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        try:
            decoded = json.loads(raw)
            if isinstance(decoded, str):
                return decoded
        except ValueError:
            pass
    return raw


def parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, (int, float)) and raw in (0, 1):
        return bool(raw)
    text = _strip_json_string(str(raw)).strip().lower()
    if text in ("true", "1", "yes", "y", "on"):
        return True
    if text in ("false", "0", "no", "n", "off"):
        return False
    raise ValueError("expected true or false")


def parse_number(raw: Any, kind: type) -> int | float:
    if isinstance(raw, bool):
        raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, got a boolean")
    if isinstance(raw, (int, float)):
        value = raw
    else:
        text = _strip_json_string(str(raw)).strip()
        try:
            value = int(text) if kind is int and re.fullmatch(r"[+-]?\d+", text) else float(text)
        except ValueError:
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}") from None
    if kind is int:
        if float(value) != int(value):
            raise ValueError("expected an integer")
        return int(value)
    return float(value)


def parse_list(raw: Any, item_kind: type) -> list:
    if isinstance(raw, (list, tuple)):
        items = list(raw)
    else:
        text = _strip_json_string(str(raw)).strip()
        if text.startswith("[") or text.startswith("("):
            try:
                items = list(json.loads(text.replace("(", "[").replace(")", "]")))
            except ValueError:
                try:
                    items = list(ast.literal_eval(text))
                except (ValueError, SyntaxError):
                    # Bare names in brackets, as a user types them: [auc, logloss] or (a b).
                    if text[-1:] not in ("]", ")"):
                        raise ValueError("unbalanced brackets") from None
                    items = [part.strip("'\"") for part in re.split(r"[,\s]+", text[1:-1]) if part]
        else:
            items = [part for part in re.split(r"[,\s]+", text) if part]
    if item_kind is str:
        return [str(item) for item in items]
    return [parse_number(item, item_kind) for item in items]


def coerce(name: str, raw: Any, spec: Hyperparameter) -> Any:
    """The value of hyperparameter `name`, from whatever form the SDK or the user sent."""
    kind = spec.kind
    try:
        if kind is bool:
            value = parse_bool(raw)
        elif kind in (int, float):
            value = parse_number(raw, kind)
        elif kind == "ints":
            value = parse_list(raw, int)
        elif kind == "floats":
            value = parse_list(raw, float)
        elif kind == "strs":
            value = parse_list(raw, str)
        else:
            value = None if raw is None else _strip_json_string(str(raw))
    except (ValueError, SyntaxError, TypeError) as exc:
        raise UserError(f"Hyperparameter {name}={raw!r} is invalid ({exc}); {describe(spec)}.") from None
    if spec.choices is not None and value not in spec.choices:
        raise UserError(f"Hyperparameter {name}={raw!r} is invalid; {describe(spec)}.")
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            if (spec.min is not None and item < spec.min) or (spec.max is not None and item > spec.max):
                raise UserError(f"Hyperparameter {name}={raw!r} is out of range; {describe(spec)}.")
    return value


def describe(spec: Hyperparameter) -> str:
    kinds = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             "ints": "a list of integers such as [64, 32]", "floats": "a list of numbers",
             "strs": "a list of names such as [auc, logloss]"}
    text = f"use {kinds.get(spec.kind, 'a value')}"
    if spec.choices is not None:
        text = "use one of " + ", ".join(str(c) for c in spec.choices)
    if spec.min is not None and spec.max is not None:
        text += f" between {spec.min:g} and {spec.max:g}"
    elif spec.min is not None:
        text += f" of at least {spec.min:g}"
    elif spec.max is not None:
        text += f" of at most {spec.max:g}"
    return text


def split_cli(argv: Sequence[str]) -> dict[str, Any]:
    """`--key value`, `--key=value` and `-k value` pairs; a flag without a value means true."""
    pairs: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("-") or token in ("-", "--"):
            raise UserError(f"Command-line argument {token!r} is not an option; pass options as --name value.")
        key = token.lstrip("-")
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not re.fullmatch(r"--?[A-Za-z_][\w.-]*(=.*)?", argv[i + 1]):
            value = argv[i + 1]
            i += 2
        else:
            value, i = "true", i + 1
        pairs[key.replace("-", "_")] = value
    return pairs


# -----------------------------------------------------------------------------------------------
# The training environment


PATH_OPTIONS = {
    # option: (environment variable, /opt/ml default, help)
    "model_dir": ("SM_MODEL_DIR", "model", "where the model is written (tarred to model.tar.gz)"),
    "output_data_dir": ("SM_OUTPUT_DATA_DIR", "output/data", "evaluation results (tarred to output.tar.gz)"),
    "output_dir": ("SM_OUTPUT_DIR", "output", "where the `failure` file is written"),
    "checkpoint_dir": (None, None, "checkpoints to save and resume from (default: /opt/ml/checkpoints if it exists)"),
    "hosts": ("SM_HOSTS", None, "all hosts of the job, as JSON or comma-separated (default: this one)"),
    "current_host": ("SM_CURRENT_HOST", None, "this host's name"),
    "num_gpus": ("SM_NUM_GPUS", None, "GPUs to use (default: all visible)"),
    "num_cpus": ("SM_NUM_CPUS", None, "CPU threads (default: all)"),
}


@dataclass
class TrainingEnv:
    channels: dict[str, Path]
    content_types: dict[str, str]
    distribution: dict[str, str]  # channel -> FullyReplicated | ShardedByS3Key
    model_dir: Path
    output_data_dir: Path
    output_dir: Path | None
    checkpoint_dir: Path | None
    hosts: list[str]
    current_host: str
    num_cpus: int
    num_gpus: int
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    in_container: bool = False

    @property
    def host_rank(self) -> int:
        return self.hosts.index(self.current_host)

    @property
    def is_master(self) -> bool:
        return self.host_rank == 0

    @property
    def master_host(self) -> str:
        return self.hosts[0]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _parse_hosts(raw: str) -> list[str]:
    raw = raw.strip()
    hosts = json.loads(raw) if raw.startswith("[") else [h for h in re.split(r"[,\s]+", raw) if h]
    return sorted(str(h) for h in hosts)


def _usage(script: str, declared: dict[str, Hyperparameter], channels: Sequence[str]) -> str:
    lines = [f"usage: python {script} [--CHANNEL DIR ...] [--model-dir DIR] [--HYPERPARAMETER VALUE ...]", ""]
    lines.append("Runs the same inside a SageMaker training container (paths from SM_* variables) and outside.")
    lines.append("\ndata channels (default: SM_CHANNEL_<NAME>, /opt/ml/input/data/<name>):")
    lines += [f"  --{name} DIR" for name in channels]
    lines.append("\npaths and hosts:")
    for option, (env, _default, text) in PATH_OPTIONS.items():
        lines.append(f"  --{option.replace('_', '-'):18} {text}" + (f" [{env}]" if env else ""))
    lines.append("\nhyperparameters (also from SM_HPS; lists as [a, b] or a,b):")
    for name, spec in declared.items():
        lines.append(f"  --{name:24} {spec.help} (default {spec.default!r}; {describe(spec)})")
    return "\n".join(lines)


def load_environment(
    declared: dict[str, Hyperparameter],
    channels: Sequence[str],
    argv: Sequence[str] | None = None,
    extra_hyperparameters: Callable[[str, Any], Any] | None = None,
    env: dict[str, str] | None = None,
) -> TrainingEnv:
    """Everything the script needs to know about its job, validated before any data is read.

    `extra_hyperparameters(name, raw)` accepts names that are not declared (XGBoost passes every
    booster parameter through); it returns the coerced value or raises UserError.
    """
    env = dict(os.environ if env is None else env)
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(_usage(Path(sys.argv[0]).name, declared, channels))
        raise SystemExit(0)
    cli = split_cli(argv)
    in_container = "SM_TRAINING_ENV" in env or "SM_MODEL_DIR" in env or "SM_HPS" in env

    def path_option(option: str) -> Path | None:
        env_name, default, _ = PATH_OPTIONS[option]
        if option in cli:
            return Path(cli.pop(option))
        if env_name and env.get(env_name):
            return Path(env[env_name])
        if default and (OPT_ML / default).exists():
            return OPT_ML / default
        return None

    config_dir = Path(env.get("SM_INPUT_CONFIG_DIR") or OPT_ML / "input/config")
    input_config = _read_json(config_dir / "inputdataconfig.json")
    channel_dirs = _channel_dirs(set(channels) | set(input_config), cli, env)
    content_types = {n: c.get("ContentType", "") for n, c in input_config.items() if isinstance(c, dict)}
    distribution = {n: c.get("S3DistributionType", "FullyReplicated") for n, c in input_config.items() if isinstance(c, dict)}

    model_dir = path_option("model_dir")
    if model_dir is None:
        raise UserError("No model directory is set; pass --model-dir DIR (SageMaker sets SM_MODEL_DIR).")
    output_data_dir = path_option("output_data_dir") or model_dir.parent / "output-data"
    output_dir = path_option("output_dir")

    checkpoint_dir = Path(cli.pop("checkpoint_dir")) if "checkpoint_dir" in cli else None
    if checkpoint_dir is None:
        configured = _read_json(config_dir / "checkpointconfig.json").get("LocalPath")
        if configured:
            checkpoint_dir = Path(configured)
        elif (OPT_ML / "checkpoints").is_dir():
            checkpoint_dir = OPT_ML / "checkpoints"

    hosts, current = _hosts(cli, env, _read_json(config_dir / "resourceconfig.json"))
    num_cpus = int(parse_number(cli.pop("num_cpus", None) or env.get("SM_NUM_CPUS") or os.cpu_count() or 1, int))
    gpus_raw = cli.pop("num_gpus", None) or env.get("SM_NUM_GPUS")
    num_gpus = int(parse_number(gpus_raw, int)) if gpus_raw is not None else -1  # -1: detect

    values = _hyperparameters(declared, channels, cli, env, extra_hyperparameters)
    _FAILURE.output_dir = output_dir
    return TrainingEnv(
        channels=channel_dirs,
        content_types=content_types,
        distribution=distribution,
        model_dir=model_dir,
        output_data_dir=output_data_dir,
        output_dir=output_dir,
        checkpoint_dir=checkpoint_dir,
        hosts=hosts,
        current_host=current,
        num_cpus=max(1, num_cpus),
        num_gpus=num_gpus,
        hyperparameters=values,
        in_container=in_container,
    )


def _channel_dirs(names: set[str], cli: dict[str, Any], env: dict[str, str]) -> dict[str, Path]:
    """Each channel's directory: --train DIR, SM_CHANNEL_TRAIN, or /opt/ml/input/data/train."""
    found: dict[str, Path] = {}
    for name in names:
        key = name.replace("-", "_")
        if key in cli:
            found[name] = Path(cli.pop(key))
        elif env.get(f"SM_CHANNEL_{name.upper()}"):
            found[name] = Path(env[f"SM_CHANNEL_{name.upper()}"])
        elif (OPT_ML / "input/data" / name).exists():
            found[name] = OPT_ML / "input/data" / name
    return found


def _hosts(cli: dict[str, Any], env: dict[str, str], resource: dict) -> tuple[list[str], str]:
    """All hosts (sorted) and this one: --hosts/--current-host, SM_HOSTS/SM_CURRENT_HOST, resourceconfig.json."""
    hosts_raw = cli.pop("hosts", None) or env.get("SM_HOSTS")
    hosts = _parse_hosts(hosts_raw) if hosts_raw else sorted(resource.get("hosts") or [])
    current = cli.pop("current_host", None) or env.get("SM_CURRENT_HOST") or resource.get("current_host")
    if not hosts:
        hosts = [current or "localhost"]
    current = current or hosts[0]
    if current not in hosts:
        raise UserError(f"Current host {current!r} is not among the hosts {hosts}; pass --current-host one of them.")
    return hosts, current


def _hyperparameters(declared: dict[str, Hyperparameter], channels: Sequence[str], cli: dict[str, Any],
                     env: dict[str, str], extra: Callable[[str, Any], Any] | None) -> dict[str, Any]:
    """Defaults < SM_HPS < CLI, each value coerced; SageMaker's own `sagemaker_*` keys are not ours."""
    raw: dict[str, Any] = {}
    try:
        raw.update(json.loads(env.get("SM_HPS") or "{}"))
    except ValueError:
        raise UserError("SM_HPS is not valid JSON; pass hyperparameters as a JSON object.") from None
    raw.update(cli)
    values = {name: spec.default for name, spec in declared.items()}
    for name, value in raw.items():
        if name.startswith("sagemaker_"):
            continue
        if name in declared:
            values[name] = coerce(name, value, declared[name])
        elif extra is not None:
            values[name] = extra(name, value)
        else:
            raise UserError(unknown_hyperparameter(name, list(declared) + list(channels)))
    return values


def unknown_hyperparameter(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]}?" if close else "remove it or check the spelling"
    return f"Hyperparameter {name!r} is not known to this script; {hint}"


# -----------------------------------------------------------------------------------------------
# Channel files and multi-host sharding


def channel_files(env: TrainingEnv, channel: str, required: bool) -> list[Path]:
    """Every data file of a channel directory and its subdirectories, sorted by path."""
    directory = env.channels.get(channel)
    if directory is None or not directory.exists():
        if required:
            where = f" ({directory})" if directory else ""
            raise UserError(
                f"Required channel '{channel}' is missing{where}; give the job a '{channel}' input channel "
                f"(fit({{'{channel}': ...}})) or pass --{channel} DIR."
            )
        return []
    if directory.is_file():
        return [directory]
    files = sorted(
        p for p in directory.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
        and p.name not in IGNORED_FILE_NAMES
    )
    if not files and required:
        raise UserError(
            f"Channel '{channel}' has no data files in {directory}; put at least one data file under the "
            f"channel's S3 prefix or local directory."
        )
    return files


@dataclass(frozen=True)
class Shard:
    """What one worker reads: its files, and if the files are fewer than workers, a part of the rows."""

    files: list[Path]
    part: int = 0  # this worker's row part, of `parts`, over the rows of `files` in order
    parts: int = 1


def shard(files: list[Path], rank: int, world: int, already_sharded: bool = False) -> Shard:
    """The rule every script uses to split a FullyReplicated channel among `world` workers.

    With at least as many files as workers each worker reads whole files (round robin by sorted path),
    so the workers together read the data exactly once. With fewer files, each worker reads them all
    and keeps one contiguous part of the rows. A ShardedByS3Key channel is already split by SageMaker.
    """
    if world <= 1 or already_sharded:
        return Shard(list(files))
    if len(files) >= world:
        return Shard(files[rank::world])
    return Shard(list(files), part=rank, parts=world)


def row_range(total: int, part: int, parts: int) -> tuple[int, int]:
    """[start, stop) of rows for `part` of `parts`, as even as possible."""
    base, extra = divmod(total, parts)
    start = part * base + min(part, extra)
    return start, start + base + (1 if part < extra else 0)


def first_long_line(handle: Any, limit: int, chunk: int = 1 << 20) -> tuple[int, int] | None:
    """(1-based line number, length) of the first line of an open file longer than `limit` bytes or
    characters, or None. For error messages: a CSV reader fails on a line longer than its block."""
    newline = b"\n" if isinstance(handle.read(0), bytes) else "\n"
    number, length = 1, 0
    while True:
        data = handle.read(chunk)
        if not data:
            return (number, length) if length > limit else None
        start = 0
        while (end := data.find(newline, start)) >= 0:
            length += end - start
            if length > limit:
                return number, length
            number, length, start = number + 1, 0, end + 1
        length += len(data) - start


def is_number(text: str) -> bool:
    """Whether a CSV field is a number as float() reads it (also nan, inf, 1e-3)."""
    try:
        float(text)
        return True
    except ValueError:
        return False


def csv_has_header(rows: Sequence[Sequence[str]], named_columns: Sequence[str] = ()) -> bool:
    """The one header rule of every script (csv_header=auto), from the first rows of a CSV file.

    The first row is a header when it contains one of `named_columns` (a label or weight column the
    user named), or when its fields are distinct, non-empty and not numbers, and either no row follows
    or a following row holds a number. So `y,x1,x2` above numbers is a header; `1,2,3`, `a,,b`, `a,a,b`
    are data; a text-only file (`red,blue` above `green,red`) is data too.
    """
    if not rows:
        return False
    first = [field.strip() for field in rows[0]]
    if any(name in first for name in named_columns if name):
        return True
    if any(not f or is_number(f) for f in first) or len(set(first)) != len(first):
        return False
    below = rows[1:]
    return not below or any(is_number(row[i].strip()) for row in below for i in range(min(len(row), len(first))))


# -----------------------------------------------------------------------------------------------
# Metrics in the log

# One line per step, `[<kind> <step>] name=value name=value`, names as `<channel>:<metric>`
# (e.g. `[round 12] train:rmse=0.3512 validation:rmse=0.4012`). A SageMaker metric definition for a
# name is METRIC_REGEX.format(name=re.escape(name)); local_mode parses the same lines.
METRIC_REGEX = r"{name}=([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


def log(message: str, everywhere: bool = False) -> None:
    """A line in the job log, printed once per host: of several processes that torchrun started on a
    host (env RANK), only rank 0 prints, unless `everywhere`."""
    if everywhere or int(os.environ.get("RANK", "0") or 0) == 0:
        print(message, flush=True)


def log_metrics(kind: str, step: int | str, metrics: dict[str, float]) -> None:
    fields = " ".join(f"{name}={value:.6g}" for name, value in metrics.items())
    print(f"[{kind} {step}] {fields}", flush=True)


# -----------------------------------------------------------------------------------------------
# Failure reporting


def failure_path(output_dir: Path | None) -> Path | None:
    if output_dir is not None:
        return output_dir / "failure"
    if os.environ.get("SM_OUTPUT_DIR"):
        return Path(os.environ["SM_OUTPUT_DIR"]) / "failure"
    if (OPT_ML / "output").is_dir():
        return OPT_ML / "output" / "failure"
    return None


def write_failure(message: str, output_dir: Path | None = None) -> None:
    """One line in output/failure, unless something wrote there first (the first cause wins)."""
    message = " ".join(str(message).split())
    # Bytes of a binary file quoted in a reason would reach the console as control characters: escape them.
    message = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in message)[:FAILURE_LIMIT]
    print(f"ERROR: {message}", file=sys.stderr, flush=True)
    path = failure_path(output_dir)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or not path.read_text().strip():
            path.write_text(message + "\n")
    except OSError:
        pass


class _FailureState:
    """Where the failure file goes (known once load_environment has run) and how to exit."""

    output_dir: Path | None = None
    hard_exit = False


_FAILURE = _FailureState()


def exit_hard_after_failure() -> None:
    """Leave the process with os._exit once the failure is written (run does it): a host that failed alone
    in a multi-host job must not run a collective library's teardown, which waits for the other hosts."""
    _FAILURE.hard_exit = True


def output_dir_from_argv(argv: Sequence[str]) -> Path | None:
    """--output-dir of a command line: where output/failure goes when the environment itself fails to load."""
    for i, token in enumerate(argv):
        if token.startswith(("--output-dir", "--output_dir")):
            value = token.split("=", 1)[1] if "=" in token else (argv[i + 1] if i + 1 < len(argv) else "")
            return Path(value) if value else None
    return None


def run(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> None:
    """`main(argv)`, with every failure as one sentence in output/failure and exit code 1: a UserError's
    message, or any other exception's type and message (the traceback goes to the log, not the reason)."""
    _FAILURE.output_dir, _FAILURE.hard_exit = None, False
    command_line = list(sys.argv[1:] if argv is None else argv)
    try:
        main(argv)
        return
    except UserError as exc:
        reason, code = str(exc), 1
    except KeyboardInterrupt:
        reason, code = "Training was interrupted (SIGINT) before it finished; no model was written.", 130
    except MemoryError:
        reason, code = ("Training ran out of memory; use an instance type with more memory, fewer rows per host, "
                        "or the external-memory option where the script offers one."), 1
    except SystemExit as exc:
        if not _FAILURE.hard_exit:
            raise
        reason, code = "", exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # noqa: BLE001 - every failure must reach output/failure
        traceback.print_exc()
        where = traceback.extract_tb(exc.__traceback__)[-1]
        reason, code = (f"Unexpected {type(exc).__name__} at {Path(where.filename).name}:{where.lineno}: {exc}; "
                        "see the job log for the traceback."), 1
    if reason:
        write_failure(reason, _FAILURE.output_dir or output_dir_from_argv(command_line))
    if _FAILURE.hard_exit:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code) from None


# -----------------------------------------------------------------------------------------------
# Hosts and processes agreeing on a step


class Peers:
    """This process among the job's processes. Subclasses move objects between them (gather, broadcast);
    `agree` is the rule every script uses so that a bad input on one process fails every process with the
    same reason, instead of leaving the others waiting in a collective step. One process: no-ops."""

    rank = 0
    world = 1

    def gather(self, obj: Any) -> list[Any]:
        """Every process's `obj`, in rank order."""
        return [obj]

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every process."""
        return obj

    def failed(self, rank: int, reason: str, here: BaseException | None) -> BaseException:
        """The exception every process raises when `rank` failed with `reason` (`here`: this one's own)."""
        return here if here is not None else UserError(f"{reason} (reported by rank {rank})")

    def agree(self, step: Callable[..., Any], *args: Any) -> Any:
        """`step(*args)` on every process; if it fails on any process, every process fails with the reason
        of the first one that did (in rank order)."""
        here: BaseException | None = None
        try:
            result, error = step(*args), None
        except UserError as exc:
            result, error, here = None, str(exc), exc
        except Exception as exc:  # noqa: BLE001 - the others must learn of it, then it is raised here
            if self.world == 1:
                raise
            traceback.print_exc()  # the log keeps where it happened, whatever the reason says
            result, error, here = None, f"{type(exc).__name__}: {exc}", exc
        first = next(((rank, e) for rank, e in enumerate(self.gather(error)) if e), None)
        if first is not None:
            raise self.failed(first[0], first[1], here)
        return result


# -----------------------------------------------------------------------------------------------
# Atomic files: models and checkpoints


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def atomic_write(path: Path, write: Callable[[Path], Any]) -> Path:
    """Call write(tmp) for a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp makes the file 0600; give it the mode an ordinary open() would (0666 less the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


@contextmanager
def staged_outputs(*directories: Path) -> Iterator[list[Path]]:
    """Stage files for each directory and move them in only when the block succeeds.

    Yields one staging directory per target; on success every staged file is renamed into its target
    (same filesystem, so each rename is atomic). On failure nothing reaches the targets, so a failed
    job never leaves a model that looks usable.
    """
    stages = []
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(".staging-*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        stages.append(Path(tempfile.mkdtemp(prefix=".staging-", dir=directory)))
    try:
        yield stages
        for stage, directory in zip(stages, directories):
            for item in sorted(stage.rglob("*")):
                if item.is_file():
                    fsync_file(item)
            for item in stage.iterdir():
                os.replace(item, directory / item.name)
    finally:
        for stage in stages:
            shutil.rmtree(stage, ignore_errors=True)


class Checkpoints:
    """Numbered checkpoint files in a directory: save atomically, resume from the newest complete one.

    SageMaker syncs the checkpoint directory to S3 (CheckpointConfig) and restores it when a spot job
    restarts. Files are named `<prefix>-<step:08d><suffix>`; anything else (a temporary file of a save
    that was killed) is never loaded.
    """

    def __init__(self, directory: Path | None, prefix: str = "checkpoint", suffix: str = "", keep: int = 2):
        self.directory = directory
        self.prefix, self.suffix, self.keep = prefix, suffix, keep
        self._pattern = re.compile(rf"^{re.escape(prefix)}-(\d{{8}}){re.escape(suffix)}$")

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def path(self, step: int) -> Path:
        assert self.directory is not None
        return self.directory / f"{self.prefix}-{step:08d}{self.suffix}"

    def saved(self) -> list[tuple[int, Path]]:
        if self.directory is None or not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := self._pattern.match(p.name))]
        return sorted(found)

    def latest(self) -> tuple[int, Path] | None:
        saved = self.saved()
        return saved[-1] if saved else None

    def save(self, step: int, write: Callable[[Path], Any]) -> Path | None:
        if self.directory is None:
            return None
        path = atomic_write(self.path(step), write)
        for _, old in self.saved()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path
