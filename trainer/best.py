"""Keep the weights with the lowest validation bits/char seen so far.

Small corpora overfit: several epochs on ~2.5 M tokens can end worse than they were halfway. The run
ships the best evaluated weights, not merely the last ones; the copy lives on the CPU and is saved
with each checkpoint so `--resume` keeps it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

BEST_WEIGHTS = "best.safetensors"
BEST_STATE = "best.json"


@dataclass
class BestWeights:
    step: int = 0
    metrics: dict = field(default_factory=dict)
    state: dict[str, torch.Tensor] | None = None

    def offer(self, step: int, metrics: dict, model: torch.nn.Module) -> bool:
        """Remember `model`'s weights if `metrics` beat the best so far; True when they did."""
        if self.metrics and metrics["val_bpc"] >= self.metrics["val_bpc"]:
            return False
        self.step, self.metrics = step, dict(metrics)
        self.state = {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}
        return True

    def beats(self, metrics: dict) -> bool:
        return bool(self.metrics) and self.metrics["val_bpc"] < metrics.get("val_bpc", float("inf"))

    def save(self, directory: Path) -> None:
        if self.state is None:
            return
        # The state holds independent CPU copies (tied embeddings copied once per name), which safetensors
        # needs: it refuses tensors that share memory.
        save_file(self.state, str(directory / BEST_WEIGHTS))
        (directory / BEST_STATE).write_text(json.dumps({"step": self.step, "metrics": self.metrics}))

    @classmethod
    def load(cls, directory: Path) -> "BestWeights":
        if not (directory / BEST_STATE).is_file():
            return cls()
        info = json.loads((directory / BEST_STATE).read_text())
        return cls(info["step"], info["metrics"], load_file(str(directory / BEST_WEIGHTS)))
