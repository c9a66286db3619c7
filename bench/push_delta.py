"""Push delta: what a push after a one-line script edit uploads (bytes, layers, time), versus the first
push of the image, to a real registry (CNCF distribution with htpasswd auth, on loopback;
tests/servers.py). Each repeat starts a fresh, empty registry so that its first push is a true first."""

from __future__ import annotations

import statistics
import threading
from pathlib import Path
from typing import Any

from bench.common import (Config, fmt_bytes, fmt_s, fmt_x, log, machine_note, median_of_ratios, repeats_phrase,
                          spread, stats, table)
from bench.context import Context

NAME = "push_delta"
TITLE = "Push delta: a push after a script edit versus the first push"


def stored_bytes(registry) -> int:
    blobs = Path(registry.root) / "data" / "docker" / "registry" / "v2" / "blobs"
    return sum(p.stat().st_size for p in blobs.rglob("data")) if blobs.exists() else 0


class EngineCpu:
    """How many cores the Docker engine (dockerd) used while a push ran: sampled once a second."""

    def __init__(self) -> None:
        import psutil

        self.samples: list[float] = []
        self.procs = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "dockerd"]
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for p in self.procs:
            p.cpu_percent(None)
        while not self._done.wait(0.5):
            try:
                self.samples.append(sum(p.cpu_percent(None) for p in self.procs) / 100)
            except Exception:  # noqa: BLE001 - the engine restarted: stop sampling
                return

    def __enter__(self) -> "EngineCpu":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


def measure(ctx: Context, name: str, script: str, repeat: int) -> dict[str, Any]:
    """First push of `name` to a fresh registry, then a one-line edit of train_scripts/<script>/train.py,
    the rebuild and the push after it."""
    from smkit import engine, registry as smkit_registry
    from tests.servers import Registry

    server = Registry().start()
    try:
        target = smkit_registry.Target(kind="oci", registry=server.host, repository=f"bench/smkit-{name}", auth=server.auth)
        ref = ctx.image(name)
        image = engine.client().images.get(ref)
        entry: dict[str, Any] = {"repeat": repeat}
        for phase in ("first", "delta"):
            if phase == "delta":
                ctx.project.edit(script)
                build = ctx.rebuild(name)
                ref = build.ref
                image = engine.client().images.get(ref)
                entry["rebuild_s"] = build.seconds
            tag = ref.split(":", 1)[1]
            blobs_before, bytes_before = server.blob_count(), stored_bytes(server)
            ctx.probe.sample()
            with EngineCpu() as engine_cpu:
                result = smkit_registry.push(ref, target, tag, show_progress=False, retries=2)
            ctx.extra_refs.add(f"{target.image}:{tag}")
            layers = image.attrs.get("RootFS", {}).get("Layers", [])
            entry[phase] = {
                "seconds": result.seconds, "layers_pushed": result.layers_pushed,
                "layers_existing": result.layers_existing, "layers_total": len(layers),
                "bytes_reported": result.bytes_pushed,  # the engine's progress totals (uncompressed layers)
                "bytes_stored": stored_bytes(server) - bytes_before,  # what reached the registry (compressed)
                "blobs_added": server.blob_count() - blobs_before, "image_size": image.attrs.get("Size"),
                "skipped": result.skipped, "digest": result.digest, "dockerd_cores": engine_cpu.median,
                "layers": layers,
            }
            log(f"push {name} #{repeat} {phase}: {result.layers_pushed} layer(s), "
                f"{entry[phase]['bytes_stored'] / 1e6:.2f} MB stored, {result.seconds:.2f}s")
        # The smallest possible delta: the changed layer (as the registry stores it) + config + manifest.
        entry["changed_layer_uncompressed"] = _top_layer_size(ref)
        entry["only_last_layer_changed"] = (entry["delta"]["layers"][:-1] == entry["first"]["layers"][:-1]
                                            and entry["delta"]["layers"][-1] != entry["first"]["layers"][-1])
        return entry
    finally:
        server.stop()


def run(cfg: Config, ctx: Context) -> dict[str, Any]:
    from bench.context import INIT_IMAGE

    name = cfg.pick("xgboost", "xgboost", "tiny")
    rows = [measure(ctx, name, "xgboost", repeat) for repeat in range(cfg.repeats)]
    # The same for an image made by `init` (the template's layout): one repeat is enough to show the layers.
    # Not in smoke runs: its first push (a real Python base, ~90 MB compressed) alone would exceed their budget.
    init_row = None
    if cfg.mode != "smoke":
        ctx.init_image()
        init_row = measure(ctx, INIT_IMAGE, INIT_IMAGE, 0)
    first_s = [r["first"]["seconds"] for r in rows]
    delta_s = [r["delta"]["seconds"] for r in rows]
    first_b = [r["first"]["bytes_stored"] for r in rows]
    delta_b = [r["delta"]["bytes_stored"] for r in rows]
    return {
        "image": name, "runs": rows,
        "first": {"seconds": stats(first_s), "bytes_stored": stats(first_b),
                  "dockerd_cores": stats([r["first"]["dockerd_cores"] for r in rows if r["first"]["dockerd_cores"] is not None]),
                  "bytes_reported": stats([r["first"]["bytes_reported"] for r in rows])},
        "delta": {"seconds": stats(delta_s), "bytes_stored": stats(delta_b),
                  "bytes_reported": stats([r["delta"]["bytes_reported"] for r in rows]),
                  "layers_pushed": stats([r["delta"]["layers_pushed"] for r in rows]),
                  "blobs_added": stats([r["delta"]["blobs_added"] for r in rows])},
        "rebuild_s": stats([r["rebuild_s"] for r in rows]),
        "ratio_bytes_delta_to_first": median_of_ratios(list(zip(delta_b, first_b))),
        "ratio_seconds_delta_to_first": median_of_ratios(list(zip(delta_s, first_s))),
        "layers_total": rows[0]["first"]["layers_total"] if rows else None,
        "init_image": init_row and {
            "image": INIT_IMAGE, "framework": "xgboost", "base": ctx.base_for(INIT_IMAGE), "run": init_row,
            "ratio_bytes_delta_to_first": init_row["delta"]["bytes_stored"] / init_row["first"]["bytes_stored"],
            "ratio_seconds_delta_to_first": init_row["delta"]["seconds"] / init_row["first"]["seconds"]},
    }


def _top_layer_size(ref: str) -> int | None:
    from smkit import engine

    history = engine.client().images.get(ref).history()
    sizes = [h.get("Size", 0) for h in history if h.get("Size")]
    return sizes[0] if sizes else None


def render(result: dict[str, Any]) -> str:
    m = result["measurements"]
    first, delta = m["first"], m["delta"]
    rows = [
        ["first push (empty registry)", spread(first["seconds"]), spread(first["bytes_stored"], fmt_bytes),
         f"{m['runs'][0]['first']['layers_pushed']} of {m['layers_total']}", "1.00x / 1.00x"],
        ["push after a one-line script edit", spread(delta["seconds"]), spread(delta["bytes_stored"], fmt_bytes),
         f"{delta['layers_pushed']['median']:.0f} of {m['layers_total']}",
         f"{fmt_x(m['ratio_seconds_delta_to_first'])} / {m['ratio_bytes_delta_to_first']:.5f}x"],
    ]
    init = m.get("init_image")
    if init:
        d = init["run"]["delta"]
        rows.append([f"the same for an `init` image (`{init['image']}`, one run)", fmt_s(d["seconds"]),
                     fmt_bytes(d["bytes_stored"]), f"{d['layers_pushed']} of {d['layers_total']}",
                     f"{fmt_x(init['ratio_seconds_delta_to_first'])} / {init['ratio_bytes_delta_to_first']:.5f}x"])
    changed = m["runs"][0].get("changed_layer_uncompressed")
    text = [
        f"Image `{'smkit-' + m['image']}` built on the stand-in base (`--base local`), pushed with "
        "`smkit.registry.push` (what `build.py push --registry` runs) to a fresh registry on loopback; bytes are what "
        f"the registry stored (compressed blobs: layers, image config, manifest). "
        f"{repeats_phrase(result['repeats']).capitalize()}.",
        "",
        table(["push", "time", "bytes uploaded", "layers uploaded", "ratio to first push (time / bytes)"], rows),
        "",
        f"The delta push added {delta['blobs_added']['median']:.0f} blobs to the registry: the script layer "
        f"({fmt_bytes(changed)} uncompressed), the new image config and the manifest. That is the floor: nothing "
        "else changed, and nothing else was sent. Its time is the registry round trips (a HEAD for every existing "
        "layer, the upload of three small blobs, and smkit's digest checks before and after), not bytes.",
        "",
        (f"The `init` row: `build.py init {init['image']} --framework {init['framework']}` (the example script, built "
         f"from the template containers/Dockerfile on `{init['base']}`), a one-line edit of its train.py, the rebuild "
         f"(only the last layer changed: {init['run']['only_last_layer_changed']}) and the push after it, versus its "
         "own first push." if init else ""),
        "",
        machine_note(result),
        "",
        f"The first push moves {fmt_bytes(first['bytes_stored']['median'])} of compressed layers "
        f"({fmt_bytes(first['bytes_reported']['median'])} uncompressed) in {fmt_s(first['seconds']['median'])}, "
        f"{first['bytes_stored']['median'] / 1e6 / first['seconds']['median']:.0f} MB/s over loopback"
        + (f", while the Docker engine kept {first['dockerd_cores']['median']:.1f} of the machine's "
           f"{result['machine']['cores']} cores busy: it gzips every layer as it uploads, so here the first push is "
           "bound by compression, not by the network." if (first["dockerd_cores"].get("median") or 0) >= 0.7 else ".")
        + " Over a real network it is bound by upload bandwidth (into ECR the prebuilt SageMaker base layers, "
          "which live in another AWS account, are uploaded once per repository); the delta push stays a few "
          "round trips.",
    ]
    return "\n".join(text)


def headline(result: dict[str, Any]) -> list[tuple[str, str]]:
    m = result["measurements"]
    return [("push after an edit: bytes / first push", f"{m['ratio_bytes_delta_to_first']:.5f}x "
             f"({fmt_bytes(m['delta']['bytes_stored']['median'])} of {fmt_bytes(m['first']['bytes_stored']['median'])})"),
            ("push after an edit: time / first push", f"{fmt_x(m['ratio_seconds_delta_to_first'])} "
             f"({fmt_s(m['delta']['seconds']['median'])} vs {fmt_s(m['first']['seconds']['median'])})")]
