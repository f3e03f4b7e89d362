"""The search's result and the precision configuration file it writes and `--precision-config` reads."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import QCompileError

OBJECTIVES = ("latency", "size")


@dataclass
class MixedResult:
    precisions: dict[str, str]
    layers: list[dict]  # per layer: name, op, group, sensitivity, latency, bytes, chosen
    candidates: list[dict]  # predicted noise / cost, simulated metric, per configuration
    objective: str
    max_drop: float
    metric: str
    float_metric: float
    checked: list[dict] = field(default_factory=list)  # built candidates: real metric, accepted
    uniform: dict = field(default_factory=dict)  # "int8" / "fp32" everywhere, scored like the candidates

    def to_json(self) -> dict:
        return {"precisions": self.precisions, "objective": self.objective, "max_accuracy_drop": self.max_drop,
                "metric": self.metric, "float_metric": self.float_metric, "layers": self.layers,
                "candidates": self.candidates, "checked": self.checked, "uniform": self.uniform}


def read_precision_config(path) -> dict[str, str]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise QCompileError(f"{path}: not a readable precision config ({err})") from None
    precisions = data.get("precisions") if isinstance(data, dict) else None
    if not isinstance(precisions, dict):
        raise QCompileError(f"{path}: a precision config needs a 'precisions' object of layer -> precision")
    return {str(k): str(v) for k, v in precisions.items()}
