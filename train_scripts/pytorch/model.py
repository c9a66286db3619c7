"""The model: an MLP on standardized features, and what serving needs.

`load_model(model_dir)` rebuilds the trained model from model.pt and model-config.json (weights only,
nothing unpickled) as a `Predictor`: raw features in, class probabilities or predictions out. Use it in
an inference script (SageMaker's `model_fn`) and in tests; `export_for_serving` writes the same
Predictor as TorchScript (model.ts) and torch.export (model.pt2).

Your own architecture goes into MLP (and build_model, which reads its shape from model-config.json).
Only torch is imported: an inference script needs this file alone.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}


class MLP(nn.Module):
    def __init__(self, input_dim: int, hidden_sizes: list[int], output_dim: int, activation: str = "relu",
                 dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation](), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, output_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_model(config: dict) -> MLP:
    """The MLP described by model-config.json's "model" entry (or the whole config)."""
    spec = config.get("model", config)
    return MLP(int(spec["input_dim"]), [int(h) for h in spec["hidden_sizes"]], int(spec["output_dim"]),
               spec["activation"], float(spec["dropout"]))


class Predictor(nn.Module):
    """Raw features in (columns in model-config.json's feature order); out: class probabilities
    [rows, classes] for classification, predictions in the target's units [rows] for regression."""

    def __init__(self, mlp: MLP, config: dict):
        super().__init__()
        self.mlp = mlp
        self.classification = config["task"] == "classification"
        self.register_buffer("mean", torch.tensor(config["features"]["mean"], dtype=torch.float32))
        self.register_buffer("std", torch.tensor(config["features"]["std"], dtype=torch.float32))
        target = config.get("target") or {"mean": 0.0, "std": 1.0}
        self.target_mean, self.target_std = float(target["mean"]), float(target["std"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mlp((x - self.mean) / self.std)
        if self.classification:
            return torch.softmax(out, dim=1)
        return out[:, 0] * self.target_std + self.target_mean


def load_model(model_dir: str | Path) -> tuple[Predictor, dict]:
    """Rebuild the trained model from model.pt and model-config.json, without unpickling any object."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "model-config.json").read_text())
    mlp = build_model(config)
    mlp.load_state_dict(torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True))
    return Predictor(mlp, config).eval(), config



def model_config(hp: dict, model_spec: dict, preprocessing: dict, world: int, epochs_run: int,
                 best_epoch: int) -> dict:
    """model-config.json: the model's shape and everything a prediction needs besides the weights."""
    classification = hp["task"] == "classification"
    return {
        "format": "smkit-mlp", "version": 1, "task": hp["task"], "model": model_spec,
        "features": {"names": preprocessing["feature_names"], "mean": preprocessing["feature_mean"],
                     "std": preprocessing["feature_std"]},
        "labels": {"classes": preprocessing["classes"], "column": hp["label_column"] or None} if classification else None,
        "target": None if classification else {"mean": preprocessing["target"][0], "std": preprocessing["target"][1]},
        "inputs": "float32 [rows, features], features in features.names order, not standardized",
        "outputs": ("model.pt: MLP state dict (standardized features -> logits); model.ts / model.pt2: "
                    + ("class probabilities [rows, classes], column i is labels.classes[i]" if classification
                       else "predictions [rows] in the target's units")),
        "training": {"hyperparameters": hp, "torch_version": str(torch.__version__),
                     "world_size": world, "epochs_run": epochs_run, "best_epoch": best_epoch},
    }


def export_for_serving(predictor: Predictor, width: int, stage: Path, fmt: str) -> tuple[list[str], list[str]]:
    """model.ts (TorchScript, loads with torch.jit.load in torch 2.x and TorchServe) and model.pt2
    (torch.export, loads with torch.export.load): (files written, warnings). A failed export is a
    warning, not a failed job."""
    written, problems = [], []
    example = torch.randn(3, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.9+ marks TorchScript deprecated
        if fmt in ("both", "torchscript"):
            try:
                torch.jit.trace(predictor, example).save(str(stage / "model.ts"))
                written.append("model.ts")
            except Exception as exc:  # noqa: BLE001
                problems.append(f"TorchScript export failed ({type(exc).__name__}: {exc}); model.pt still loads")
        if fmt in ("both", "export"):
            try:
                program = torch.export.export(predictor, (example,),
                                              dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
                torch.export.save(program, str(stage / "model.pt2"))
                written.append("model.pt2")
            except Exception as exc:  # noqa: BLE001
                problems.append(f"torch.export failed ({type(exc).__name__}: {exc}); model.pt still loads")
    return written, problems
