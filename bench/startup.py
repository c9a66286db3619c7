"""Local-mode start-up: what SageMaker SDK local mode (v2 and v3) costs on top of starting the same
container as SageMaker does through the Docker API (local_mode's direct backend: `docker run <image> train`
with the /opt/ml layout written by local_mode/contract.py), on the same image and tiny data (the bundled
sample, one boosting round). The variant key `docker_run` is the direct backend."""

from __future__ import annotations

from typing import Any

from bench import jobs
from bench.common import (HOST_PYTHON, SDK3_PYTHON, Config, fmt_s, fmt_x, interleaved, log, machine_note,
                          median_of_ratios, repeats_phrase, run_measured, spread, stats, table)
from bench.context import Context

NAME = "startup"
TITLE = "Local-mode start-up: SDK v2 and v3 versus the direct backend (a plain docker run)"
VARIANTS = ["docker_run", "sdk_v2", "sdk_v3"]
LABELS = {"docker_run": "direct backend (`docker run <image> train` via the Docker API)", "sdk_v2": "SDK v2 local mode",
          "sdk_v3": "SDK v3 local mode"}
# Parts of the SDK overhead, timed on their own in the same repeats: a fresh Python importing what the
# local-mode driver imports, and one start of the docker-compose program the SDK runs.
COMPONENTS = {
    "import_v2": [HOST_PYTHON, "-c", "from sagemaker.estimator import Estimator; from sagemaker.local import LocalSession"],
    "import_v3": [str(SDK3_PYTHON), "-c",
                  "from sagemaker.train import ModelTrainer; from sagemaker.core.training.configs import Compute"],
    "compose_cli": ["docker-compose", "version"],
}
COMPONENT_LABELS = {"import_v2": "of which: a fresh Python importing SDK v2",
                    "import_v3": "of which: a fresh Python importing SDK v3",
                    "compose_cli": "of which: one start of `docker-compose` (the SDK runs `docker-compose up`)"}


def run(cfg: Config, ctx: Context) -> dict[str, Any]:
    from local_mode import Channel
    from local_mode.job import SAMPLE_DATA

    image = ctx.image("xgboost")
    train = SAMPLE_DATA / "xgboost" / "train"
    hps = {"objective": "binary:logistic", "num_round": 1, "nthread": cfg.threads}
    # Smoke size: SDK v2 only here (the inner-loop smoke run covers v3), and no component timings.
    variants = cfg.pick([*VARIANTS, *COMPONENTS], [*VARIANTS, *COMPONENTS], ["docker_run", "sdk_v2"])
    times: dict[str, list[float]] = {v: [] for v in variants}
    runs = []
    for repeat, variant in interleaved(cfg.repeats, variants):
        if variant in COMPONENTS:
            run_ = run_measured(COMPONENTS[variant], env={"SAGEMAKER_SUPPRESS_V2_WARNING": "1"}, timeout=300)
            run_.check(variant)
            times[variant].append(run_.wall)
            continue
        ctx.probe.sample()
        if variant == "docker_run":
            job = jobs.local_job(ctx, image, [Channel("train", str(train), "text/csv")], hps, sdk="v2", backend="direct")
        else:
            job = jobs.local_job(ctx, image, [Channel("train", str(train), "text/csv")], hps, sdk=variant[-2:])
        job.check(f"start-up run {variant}")
        times[variant].append(job.wall)
        runs.append({"repeat": repeat, "variant": variant, "seconds": round(job.wall, 3)})
        log(f"startup {variant} #{repeat}: {job.wall:.2f}s")
    per = {v: stats(t) for v, t in times.items()}
    summary = {}
    for sdk in ("sdk_v2", "sdk_v3"):
        if sdk not in times:
            continue
        pairs = list(zip(times[sdk], times["docker_run"]))
        summary[sdk] = {
            "ratio_to_docker_run": median_of_ratios(pairs),
            "overhead_s": stats([a - b for a, b in pairs])["median"],
        }
    return {"image": image, "data": str(train), "hyperparameters": hps, "variants": per, "summary": summary,
            "runs": runs}


def render(result: dict[str, Any]) -> str:
    m = result["measurements"]
    per, summary = m["variants"], m["summary"]
    rows = [[LABELS["docker_run"], spread(per["docker_run"]), "1.00x (the limit)", "—"]]
    for sdk in summary:
        rows.append([LABELS[sdk], spread(per[sdk]), fmt_x(summary[sdk]["ratio_to_docker_run"]),
                     fmt_s(summary[sdk]["overhead_s"])])
    for component in COMPONENTS:
        if per.get(component, {}).get("n"):
            rows.append([COMPONENT_LABELS[component], spread(per[component]), "", ""])
    worst = max(summary[s]["ratio_to_docker_run"] or 0 for s in summary)
    text = [
        f"Same image (`{m['image']}`), the bundled sample data (455 rows), one boosting round, "
        f"nthread={m['hyperparameters']['nthread']}. Wall time from the call to the job's end, clean-up "
        f"included; {repeats_phrase(result['repeats'])}, the runs interleaved.",
        "",
        table(["how the job starts", "wall time", "ratio to docker run", "overhead"], rows),
        "",
        machine_note(result),
    ]
    if worst > 1.5 and all(c in per for c in COMPONENTS):
        imports = {"sdk_v2": per["import_v2"]["median"], "sdk_v3": per["import_v3"]["median"]}
        compose = per["compose_cli"]["median"]
        split = "; ".join(
            f"{sdk[-2:]}: {fmt_s(summary[sdk]['overhead_s'])} = {fmt_s(imports[sdk])} importing the SDK + "
            f"{fmt_s(compose)} starting `docker-compose` + "
            f"{fmt_s(summary[sdk]['overhead_s'] - imports[sdk] - compose)} for the rest" for sdk in summary)
        text += ["", "**Why SDK local mode is slower than docker run, and what would close it.** The container "
                 "work is identical; the difference is the SDK around it. Split with the parts measured above "
                 f"({split}): the rest is the SDK writing the compose file, compose creating a network and the "
                 "containers and tearing them down, the SDK packaging model and output, and local_mode's own "
                 "driver process and clean-up. A runner that keeps the SDK imported between jobs and starts the "
                 "containers through the Docker API (the direct backend, `--backend direct`) brings a job close to the "
                 f"docker-run time; `docker run` itself ({fmt_s(per['docker_run']['median'])} here: create, start, "
                 "the toolkit and the script, remove) is the floor."]
    return "\n".join(text)


def headline(result: dict[str, Any]) -> list[tuple[str, str]]:
    summary = result["measurements"]["summary"]
    return [(f"start-up: SDK {sdk[-2:]} local mode / docker run", fmt_x(s["ratio_to_docker_run"]))
            for sdk, s in summary.items()]
