"""Learning curves of a run: the metric lines of its log as a table (metrics.csv) and a plot (curves.png).

metrics.csv is "long" (tidy): one row per value, in the order the log printed them, so a spreadsheet or
pandas can pivot it any way (`pd.read_csv(...).pivot_table(index="step", columns="metric")`):

    step    the step as the script printed it: `[round 12] ...` -> 12, `[epoch 3] ...` -> 3
    kind    the word before the step: round, epoch, final, ...
    host    the host whose container printed the line (algo-1, ...), empty when the log does not say
    metric  the name as printed: train:loss, validation:auc, ...
    value   the number

curves.png has one panel per metric family, the name after the channel (`loss` for train:loss and
validation:loss), with every channel's curve in it, so training and validation read side by side.
Lines of another kind than the panel's main one (PyTorch's `[final 7]`) are single points; several hosts
get one line style each.

Drawing is the slow half (importing matplotlib and rendering: ~0.8 s, more than a whole job on the sample
data), so the CLI and the watch put it after the summary: within `drawing_deferred()`, record() writes
metrics.csv at once and the PNG only at draw_pending() or when the block ends. The summary names the PNG;
it is there by the time the prompt returns.
"""

from __future__ import annotations

import contextlib
import csv
import math
import threading
from dataclasses import dataclass
from pathlib import Path

CSV_NAME = "metrics.csv"
PNG_NAME = "curves.png"
COLUMNS = ("step", "kind", "host", "metric", "value")
CHANNEL_COLOURS = {"train": "C0", "validation": "C1", "test": "C2"}
HOST_STYLES = ("-", "--", ":", "-.")


@dataclass
class Curves:
    csv: Path
    png: Path | None  # None when the log held no metric line
    families: list[str]  # the panels of the plot, in order


_pending: list[tuple] | None = None  # plots put off by drawing_deferred(): (rows, families, path, title)
_pending_lock = threading.Lock()


@contextlib.contextmanager
def drawing_deferred():
    """Within the block, write_curves() draws no PNG; draw_pending() (or the block's end) draws them."""
    global _pending
    with _pending_lock:
        outermost = _pending is None  # a nested block leaves the drawing to the outermost one
        if outermost:
            _pending = []
    try:
        yield
    finally:
        if outermost:
            draw_pending()
            with _pending_lock:
                _pending = None


def draw_pending() -> None:
    """Draw the plots put off so far (a plot that cannot be drawn costs a warning)."""
    from smkit import console

    with _pending_lock:
        if not _pending:
            return
        todo = list(_pending)
        _pending.clear()
    for rows, families, path, title in todo:
        try:
            _plot(rows, families, path, title)
        except Exception as exc:  # noqa: BLE001 - matplotlib or the disk: the run itself is not at fault
            console.warn(f"could not draw the learning curves {path}: {exc}")


def write_curves(history: list[dict], run_dir: Path | str, title: str | None = None) -> Curves:
    """Write metrics.csv and curves.png into `run_dir` from `history`, the step lines
    local_mode.artifacts.parse_metrics returns ({kind, step, host, metrics}). Returns their paths
    (inside drawing_deferred() the PNG comes later)."""
    run_dir = Path(run_dir)
    rows = [(str(line["step"]), line["kind"], line.get("host") or "", name, value)
            for line in history for name, value in line["metrics"].items()]
    csv_path = run_dir / CSV_NAME
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    if not rows:
        return Curves(csv=csv_path, png=None, families=[])
    families = _families(rows)
    png_path = run_dir / PNG_NAME
    with _pending_lock:
        deferred = _pending is not None
        if deferred:
            _pending.append((rows, families, png_path, title or run_dir.name))
    if not deferred:
        _plot(rows, families, png_path, title or run_dir.name)
    return Curves(csv=csv_path, png=png_path, families=list(families))


def split_name(metric: str) -> tuple[str, str]:
    """`validation:loss` -> (validation, loss); a name without a channel is its own family."""
    channel, sep, family = metric.partition(":")
    return (channel, family) if sep and family else ("", metric)


def _families(rows) -> dict[str, list[str]]:
    """family -> its metric names, both in first-seen order."""
    families: dict[str, list[str]] = {}
    for *_, metric, _ in rows:
        names = families.setdefault(split_name(metric)[1], [])
        if metric not in names:
            names.append(metric)
    return families


def _x(step: str, index: int) -> float:
    try:
        value = float(step)
        return value if math.isfinite(value) else float(index)
    except ValueError:
        return float(index)  # a step that is not a number (`[round 3/10]`): its position in the series


def _plot(rows, families: dict[str, list[str]], path: Path, title: str) -> None:
    # The object-oriented API with no pyplot: no GUI backend is chosen, nothing global is touched, and
    # savefig renders the PNG with Agg.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    hosts = sorted({host for _, _, host, _, _ in rows})
    columns = min(3, len(families))
    lines = math.ceil(len(families) / columns)
    figure = Figure(figsize=(4.8 * columns, 3.4 * lines + 0.5), layout="constrained")
    axes = list(figure.subplots(lines, columns, squeeze=False).flat)
    figure.suptitle(title, fontsize=11)
    extra_colours = iter(f"C{i}" for i in range(3, 10))
    colours: dict[str, str] = {}
    for ax, (family, metrics) in zip(axes, families.items()):
        series: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
        for step, kind, host, metric, value in rows:
            if metric in metrics:
                points = series.setdefault((metric, kind, host), [])
                points.append((_x(step, len(points)), value))
        kinds = {}
        for (_, kind, _), points in series.items():
            kinds[kind] = kinds.get(kind, 0) + len(points)
        main_kind = max(kinds, key=kinds.get)
        for (metric, kind, host), points in series.items():
            channel = split_name(metric)[0] or metric
            colour = colours.setdefault(channel, CHANNEL_COLOURS.get(channel) or next(extra_colours, "C9"))
            label = channel + ("" if kind == main_kind else f" ({kind})") + (f" [{host}]" if len(hosts) > 1 else "")
            xs, ys = zip(*sorted(points))
            if len(points) == 1 or kind != main_kind:
                ax.plot(xs, ys, linestyle="none", marker="o", color=colour, label=label)
            else:
                style = HOST_STYLES[hosts.index(host) % len(HOST_STYLES)]
                ax.plot(xs, ys, linestyle=style, marker="." if len(points) <= 40 else None, color=colour, label=label)
        ax.set_title(family)
        ax.set_xlabel(main_kind)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds and epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(families):]:  # the panels left over in the last row
        ax.set_visible(False)
    # The panels in the PNG's own metadata: a reader (or a test) can tell what is drawn without looking.
    figure.savefig(path, dpi=100, metadata={"Title": title, "Description": "panels: " + ", ".join(families)})


def record(history: list[dict], run_dir: Path | str) -> dict[str, str]:
    """write_curves for a run's result: {"metrics_csv": path, "curves": png path} for JobResult.extra
    (and so summary.json). A plot that cannot be drawn costs a warning, never the run's summary."""
    from smkit import console

    try:
        written = write_curves(history, run_dir)
    except Exception as exc:  # noqa: BLE001 - matplotlib or the disk: the run itself is not at fault
        console.warn(f"could not write the learning curves into {run_dir}: {exc}")
        return {}
    return {"metrics_csv": str(written.csv), **({"curves": str(written.png)} if written.png else {})}
