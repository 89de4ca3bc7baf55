"""Model registries behind one interface (`ModelRegistry`, and `registry_for` picks the config's backend):
`LocalRegistry` here, `VertexRegistry` (finops_ml.platform.vertex_registry) on Vertex AI.

The local model registry: versioned directories with the model, its metrics, the config hash and data window.

  REGISTRY/<model name>/v<N>/   model files + entry.json
  REGISTRY/<model name>/aliases.json   {"latest": N, "champion": N}
  REGISTRY/<model name>/endpoint.json  the local "endpoint": which versions serve and their traffic split,
      {"model": NAME, "traffic": {"<version>": percent, ...}, "updated": ISO time}; percents add up to 100.
      Written by `deploy` (the pipeline's deploy step), read by the prediction server (`finops-ml serve`).

A model is registered only after its gate passed (the pipeline decides); it becomes `champion` only when its
primary metric is not worse than the champion's measured on the same holdout (`compare_with_champion`), and the
same data window with the same config digest as the champion's is not registered again.
"""

from __future__ import annotations

import json
import shutil
from abc import ABC, abstractmethod
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from finops_ml.config import Config
from finops_ml.errors import FinopsError
from finops_ml.fileio import atomic_dir, exclusive_lock, read_json, write_json
from finops_ml.models.catalogue import PRIMARY_METRIC
from finops_ml.platform.gcp import label_value

LOCK_WAIT_S = 120.0  # a registration takes seconds: a concurrent one waits its turn rather than fail


# A function scoring a stored model (its directory) on the challenger's holdout, returning its metrics.
Rescorer = Callable[[Path], dict]


def holdout_of(metrics: dict, data_window: dict | None) -> dict:
    """The holdout a model's metrics were measured on: its metrics' holdout_start / holdout_end when they name
    them (forecast, anomaly), else its data window (a seeded split of that data: the labeler)."""
    window = data_window or {}
    return {"start": str(metrics.get("holdout_start") or window.get("start") or ""),
            "end": str(metrics.get("holdout_end") or window.get("end") or "")}


def _same(a: dict | None, b: dict | None) -> bool:
    """The same dates and, where both name one, the same data digest."""
    # label_value: what the Vertex AI registry stores as labels reads back equal to what was sent
    a, b = a or {}, b or {}
    keys = ["start", "end"] + (["digest"] if a.get("digest") and b.get("digest") else [])
    return all(label_value(a.get(k) or "") == label_value(b.get(k) or "") for k in keys)


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def compare_with_champion(name: str, metrics: dict, config_digest: str, data_window: dict, champion: dict | None,
                          rescore_champion: Callable[[], dict] | None = None) -> dict:
    """Whether a new version of NAME (`metrics` on its holdout) becomes champion, and on what basis.

    Like with like: the champion's stored metric counts only when it was measured on the same holdout; otherwise
    the champion is re-scored on the challenger's holdout (`rescore_champion`), and a model that cannot be
    re-scored stays challenger (a person compares and promotes). The champion's own data window with its own
    config digest is a `duplicate`: nothing new to register."""
    primary = PRIMARY_METRIC.get(name)
    value = _number(metrics.get(primary)) if primary else None
    out = {"primary_metric": primary, "challenger": value, "holdout": holdout_of(metrics, data_window)}
    if champion is None:
        return {**out, "wins": True, "duplicate": False, "basis": "no champion yet"}
    stored = _number((champion.get("metrics") or {}).get(primary))
    out.update(champion_version=int(champion["version"]), champion_stored=stored,
               champion_holdout=champion.get("holdout") or holdout_of(champion.get("metrics") or {},
                                                                      champion.get("data_window")))
    if champion.get("config_digest") == config_digest and _same(champion.get("data_window"), data_window):
        return {**out, "wins": False, "duplicate": True, "champion": stored,
                "basis": f"same data window and config digest as the champion v{champion['version']}: "
                         "not registered again"}
    if _same(out["champion_holdout"], out["holdout"]):
        champion_value, basis = stored, "same holdout: the stored metrics compared"
    elif rescore_champion is not None:
        champion_value = _number(rescore_champion().get(primary))
        basis = "the champion re-scored on this holdout"
    else:
        return {**out, "wins": False, "duplicate": False, "champion": None,
                "basis": "the champion was measured on another holdout and this model cannot be re-scored: "
                         "kept as challenger; compare them and `finops-ml promote` by hand"}
    wins = champion_value is None or (value is not None and value >= champion_value)
    return {**out, "wins": wins, "duplicate": False, "champion": champion_value, "basis": basis}


class ModelRegistry(ABC):
    """Versions of each model (by registry name), aliases (`champion` among them) and each version's entry
    (metrics, config digest, data window, holdout, run id). A version becomes champion when registered only if its
    primary metric is not worse than the champion's on the same holdout (`compare_with_champion`); `promote` is
    a person's decision."""

    @abstractmethod
    def versions(self, name: str) -> list[int]:
        """The versions of NAME, oldest first (empty when the model was never registered)."""

    @abstractmethod
    def aliases(self, name: str) -> dict[str, int]:
        """alias -> version."""

    @abstractmethod
    def entry(self, name: str, version: int | str) -> dict:
        """What was stored with a version (given by number or alias): name, version, run_id, metrics,
        config_digest, data_window."""

    @abstractmethod
    def register(self, name: str, model_dir: str | Path, metrics: dict, config_digest: str, data_window: dict,
                 run_id: str = "", rescore: Rescorer | None = None) -> dict:
        """Store MODEL_DIR as a new version of NAME; returns its entry with its `aliases` and `comparison` (with the
        champion: `compare_with_champion`, `rescore` scoring the champion's model directory on this holdout). The
        champion's data window with its config digest is not stored again: then the champion's entry comes back
        with `registered` false and the reason."""

    @abstractmethod
    def promote(self, name: str, version: int) -> dict:
        """Move `champion` to an existing version (no metric comparison)."""

    @staticmethod
    def not_registered(champion: dict, comparison: dict) -> dict:
        """What `register` returns for a duplicate of the champion: the champion's entry, `registered` false."""
        return {**champion, "registered": False, "reason": comparison["basis"], "comparison": comparison}


def registry_for(cfg: Config, registry_dir: str | Path) -> ModelRegistry:
    """The registry the config names: the directory registry (REGISTRY_DIR), or the Vertex AI Model Registry."""
    if cfg.registry.backend == "vertex":
        from finops_ml.platform.vertex_registry import VertexRegistry

        return VertexRegistry(cfg)
    return LocalRegistry(registry_dir)


class LocalRegistry(ModelRegistry):
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
                 run_id: str = "", rescore: Rescorer | None = None) -> dict:
        """Store a new version; move `latest`, and `champion` when not worse than the champion on the same holdout.
        Registrations of one model are serialised (a lock per model), so two at once get two versions."""
        with exclusive_lock(self.root / name, "registration", wait_s=LOCK_WAIT_S):
            return self._register(name, model_dir, metrics, config_digest, data_window, run_id, rescore)

    def _register(self, name: str, model_dir: str | Path, metrics: dict, config_digest: str, data_window: dict,
                  run_id: str, rescore: Rescorer | None) -> dict:
        version = (self.versions(name) or [0])[-1] + 1
        primary = PRIMARY_METRIC.get(name)
        aliases = self.aliases(name)
        champion = self.entry(name, aliases["champion"]) if "champion" in aliases else None
        champion_dir = self.root / name / f"v{champion['version']}" if champion else None
        comparison = compare_with_champion(name, metrics, config_digest, data_window, champion,
                                           (lambda: rescore(champion_dir)) if rescore and champion else None)
        if comparison["duplicate"]:
            return self.not_registered({**champion, "aliases": [a for a, v in aliases.items()
                                                               if v == champion["version"]]}, comparison)
        is_champion = comparison["wins"]
        entry = {"name": name, "version": version, "run_id": run_id, "metrics": metrics, "primary_metric": primary,
                 "config_digest": config_digest, "data_window": data_window, "holdout": comparison["holdout"],
                 "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "champion_when_registered": is_champion, "comparison": comparison}
        with atomic_dir(self.root / name / f"v{version}") as tmp:
            shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
            (tmp / "entry.json").write_text(json.dumps(entry, indent=2, default=str))
        aliases["latest"] = version
        if is_champion:
            aliases["champion"] = version
        write_json(self.root / name / "aliases.json", aliases)
        return {**entry, "registered": True, "aliases": [a for a, v in aliases.items() if v == version]}

    def model_dir(self, name: str, alias_or_version: str | int = "champion") -> Path:
        entry = self.entry(name, alias_or_version)
        return self.root / name / f"v{entry['version']}"

    def promote(self, name: str, version: int) -> dict:
        """Move the `champion` alias to an existing version (a person's decision: no metric comparison)."""
        with exclusive_lock(self.root / name, "promotion", wait_s=LOCK_WAIT_S):
            return self._promote(name, version)

    def _promote(self, name: str, version: int) -> dict:
        if int(version) not in self.versions(name):
            known = ", ".join(f"v{v}" for v in self.versions(name)) or "none"
            raise FinopsError(f"Model {name} has no version {version} in the registry {self.root} (versions: {known}); "
                              "pass one of its versions.")
        aliases = self.aliases(name)
        aliases["champion"] = int(version)
        write_json(self.root / name / "aliases.json", aliases)
        return aliases

    def endpoint(self, name: str) -> dict:
        """The local endpoint's state: {"model", "traffic": {version: percent}} (empty traffic when nothing serves)."""
        path = self.root / name / "endpoint.json"
        return read_json(path) if path.exists() else {"model": name, "traffic": {}}

    def deploy(self, name: str, version: int, canary_percent: int, keep_versions: int) -> dict:
        """Serve `version` with `canary_percent` of the traffic (all of it on an empty endpoint), the versions already
        serving share the rest in their proportions, and only the newest `keep_versions` versions stay deployed."""
        with exclusive_lock(self.root / name, "deployment", wait_s=LOCK_WAIT_S):
            return self._deploy(name, version, canary_percent, keep_versions)

    def _deploy(self, name: str, version: int, canary_percent: int, keep_versions: int) -> dict:
        if int(version) not in self.versions(name):
            raise FinopsError(f"Model {name} has no version {version} in the registry {self.root}; register it first.")
        current = {int(v): p for v, p in self.endpoint(name)["traffic"].items()}
        split = canary_split(current, int(version), canary_percent)
        split = keep_newest(split, keep_versions, int(version))
        state = {"model": name, "traffic": {str(v): p for v, p in sorted(split.items())},
                 "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_json(self.root / name / "endpoint.json", state)
        return state


def _largest_remainder(weights: dict, total: int) -> dict:
    """Integer percents proportional to `weights` adding up to exactly `total` (largest remainder method)."""
    weight_sum = sum(weights.values())
    if not weights:
        return {}
    if weight_sum <= 0:
        weights, weight_sum = {k: 1 for k in weights}, len(weights)
    exact = {k: total * w / weight_sum for k, w in weights.items()}
    out = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (out[k] - exact[k], str(k)))[: total - sum(out.values())]:
        out[k] += 1
    return out


def canary_split(current: dict, new, canary_percent: int) -> dict:
    """The traffic split after deploying `new` with `canary_percent` beside what serves now (`current`: id ->
    percent). On an empty endpoint the new model takes 100%; otherwise the current models keep their relative
    shares of the remaining traffic. Percents are integers adding up to 100, as Vertex AI requires."""
    if not 1 <= canary_percent <= 100:
        raise FinopsError(f"Canary percentage {canary_percent} is out of range; give 1 to 100.")
    others = {k: v for k, v in current.items() if k != new}
    if not others or canary_percent == 100:
        return {**{k: 0 for k in others}, new: 100}
    return {**_largest_remainder(others, 100 - canary_percent), new: canary_percent}


def keep_newest(split: dict, keep: int, pinned, key=lambda k: k) -> dict:
    """Keep `pinned` (the model just deployed, at its share) and the newest others (ordered by `key`), `keep` in all.
    The traffic of those dropped goes to the other kept ones in proportion to what they carry, so a canary stays a
    canary; with nothing else kept, `pinned` takes it all."""
    others = sorted((k for k in split if k != pinned), key=key, reverse=True)[: max(keep - 1, 0)]
    if not others:
        return {pinned: 100}
    return {**_largest_remainder({k: split[k] for k in others}, 100 - split[pinned]), pinned: split[pinned]}
