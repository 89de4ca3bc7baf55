"""The local model registry: versioned directories with the model, its metrics, the config hash and data window.

  REGISTRY/<model name>/v<N>/   model files + entry.json
  REGISTRY/<model name>/aliases.json   {"latest": N, "champion": N}

A model is registered only after its gate passed (the pipeline decides); it becomes `champion` only when
its primary metric is not worse than the current champion's stored metric (no re-evaluation needed).
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

from finops_ml.fileio import atomic_dir, read_json, write_json

# Which stored metric decides champion / challenger for each model, higher is better.
PRIMARY_METRIC = {"cost-forecast": "forecast_accuracy", "cost-anomaly": "anomaly_f1",
                  "resource-labeler": "label_accuracy_min"}


class LocalRegistry:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def versions(self, name: str) -> list[int]:
        d = self.root / name
        return sorted(int(p.name[1:]) for p in d.glob("v*") if p.name[1:].isdigit()) if d.exists() else []

    def aliases(self, name: str) -> dict[str, int]:
        path = self.root / name / "aliases.json"
        return read_json(path) if path.exists() else {}

    def entry(self, name: str, version: int | str) -> dict:
        if isinstance(version, str) and not version.isdigit():
            version = self.aliases(name)[version]
        return read_json(self.root / name / f"v{int(version)}" / "entry.json")

    def register(self, name: str, model_dir: str | Path, metrics: dict, config_digest: str, data_window: dict,
                 run_id: str = "") -> dict:
        """Store a new version; move `latest`, and `champion` when not worse than the current champion."""
        version = (self.versions(name) or [0])[-1] + 1
        primary = PRIMARY_METRIC.get(name)
        value = metrics.get(primary) if primary else None
        aliases = self.aliases(name)
        champion_value = self.entry(name, aliases["champion"])["metrics"].get(primary) if "champion" in aliases else None
        is_champion = champion_value is None or (value is not None and value >= champion_value)
        entry = {"name": name, "version": version, "run_id": run_id, "metrics": metrics, "primary_metric": primary,
                 "config_digest": config_digest, "data_window": data_window,
                 "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "champion_when_registered": is_champion}
        with atomic_dir(self.root / name / f"v{version}") as tmp:
            shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
            (tmp / "entry.json").write_text(json.dumps(entry, indent=2, default=str))
        aliases["latest"] = version
        if is_champion:
            aliases["champion"] = version
        write_json(self.root / name / "aliases.json", aliases)
        return {**entry, "aliases": [a for a, v in aliases.items() if v == version]}

    def model_dir(self, name: str, alias_or_version: str | int = "champion") -> Path:
        entry = self.entry(name, alias_or_version)
        return self.root / name / f"v{entry['version']}"
