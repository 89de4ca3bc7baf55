"""Packaging: the wheel carries the SQL and the default configs, each runtime's extra installs what it runs, the CLI
names the extra a command lacks, and the constraints pin what was tested."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from finops_ml import config as config_mod
from finops_ml.config import CONFIG_DIR, load_config
from finops_ml.data.warehouse import FEATURE_DIR, FEATURE_VIEWS
from finops_ml.errors import FinopsError

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# What a wheel is built from (and what the Dockerfiles copy).
SOURCES = ("pyproject.toml", "README.md", "finops_ml", "finops_cli", "components", "pipelines", "feature_defs",
           "configs")

# Each test is `unit` unless it starts a subprocess (`cli`).
pytestmark = pytest.mark.unit


def _extra(name: str) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in PYPROJECT["project"]["optional-dependencies"][name]}


def _constraints_module():
    spec = importlib.util.spec_from_file_location("constraints", ROOT / "deploy" / "constraints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- package data ---------------------------------------------------------------------------------------------------

def test_the_listed_packages_are_the_source_tree_plus_the_two_data_folders():
    from setuptools import find_packages

    found = find_packages(str(ROOT), include=["finops_ml*", "finops_cli*", "components*", "pipelines*"])
    listed = PYPROJECT["tool"]["setuptools"]["packages"]
    assert sorted(listed) == sorted([*found, "finops_ml.feature_defs", "finops_ml.configs"])
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"finops_ml.feature_defs": "feature_defs",
                                                              "finops_ml.configs": "configs"}


def test_sql_and_configs_are_read_as_package_data():
    assert CONFIG_DIR.samefile(ROOT / "configs") and FEATURE_DIR.samefile(ROOT / "feature_defs")  # editable install
    assert {f"{v}.sql" for v in FEATURE_VIEWS} <= {p.name for p in FEATURE_DIR.iterdir()}
    shipped = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())["budgets"]
    assert [b.name for b in load_config().budgets] == [b["name"] for b in shipped] and len(shipped) >= 1


def test_a_missing_default_config_is_an_error_not_silent_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(config_mod, "CONFIG_DIR", tmp_path)
    with pytest.raises(FinopsError, match=r"default config .*local\.yaml is not installed; reinstall finops-ml"):
        load_config()


# ---- extras ---------------------------------------------------------------------------------------------------------

def test_the_serving_extra_installs_none_of_the_other_runtimes():
    closure = _constraints_module().closure
    serving = set(closure("finops-ml", {"serving"}))
    assert {"fastapi", "uvicorn", "google-cloud-storage", "xgboost-cpu", "scikit-learn"} <= serving
    assert not serving & {"kfp", "google-cloud-bigquery", "confluent-kafka", "duckdb", "matplotlib", "pyarrow",
                          "sqlglot", "google-cloud-aiplatform"}
    assert "kfp" in closure("finops-ml", {"pipeline"}) and "kfp" not in closure("finops-ml", set())


def test_dev_installs_every_runtime():
    dev = PYPROJECT["project"]["optional-dependencies"]["dev"]
    assert "finops-ml[pipeline,serving,stream,vertex,bridge]" in dev


def test_xgboost_installs_on_every_os():
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"] if r.startswith("xgboost")]
    for platform in ("linux", "darwin", "win32"):
        env = {"sys_platform": platform}
        chosen = [r.name for r in reqs if r.marker is None or r.marker.evaluate(env)]
        # xgboost-cpu has no macOS wheel
        assert chosen == (["xgboost"] if platform == "darwin" else ["xgboost-cpu"]), platform


def _distribution_of(module: str, installed: dict[str, list[str]]) -> str:
    top, rel = module.split(".")[0], module.replace(".", "/")
    for dist in installed[top]:
        if any(str(f).startswith(rel + "/") or str(f) == rel + ".py" for f in metadata.files(dist) or []):
            return canonicalize_name(dist)
    raise AssertionError(f"no installed distribution provides {module}")


def test_each_module_the_cli_names_is_in_the_extra_it_names():
    from finops_cli.errors import EXTRAS

    installed = metadata.packages_distributions()
    for module, extra in EXTRAS.items():
        assert _distribution_of(module, installed) in _extra(extra) | {"google-api-core"}, module
    # google-api-core comes with each google-cloud-* library of the vertex extra
    assert all(r.startswith("google-cloud-") for r in PYPROJECT["project"]["optional-dependencies"]["vertex"])


BLOCKER = """
import sys
class Block:
    def __init__(self, names):
        self.names = names
    def find_spec(self, fullname, path=None, target=None):
        if any(fullname == n or fullname.startswith(n + ".") for n in self.names):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
sys.meta_path.insert(0, Block(sys.argv[1].split(",")))
"""
# What the serving image does not install.
NOT_IN_SERVING = "kfp,pyarrow,duckdb,sqlglot,matplotlib,google.cloud.bigquery,confluent_kafka,google.cloud.aiplatform"


def _without(modules: str, code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `code` with `modules` (comma-separated) made impossible to import, as in an install without them."""
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code), modules, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "400"})


@pytest.mark.cli
@pytest.mark.parametrize("blocked, command, extra", [
    ("kfp", ["compile", "--output", "p.yaml"], "pipeline"),
    ("pyarrow", ["generate", "--out", "data"], "pipeline"),
    ("fastapi", ["serve"], "serving"),
    ("google.cloud.bigquery", ["ingest", "bq://acme.billing.export"], "pipeline"),
    ("confluent_kafka", ["ingest", "kafka://127.0.0.1:9/billing"], "stream"),
])
def test_a_command_whose_extra_is_missing_says_which_to_install(tmp_path, blocked, command, extra):
    r = _without(blocked, "sys.argv = ['finops-ml', *sys.argv[2:]]\nfrom finops_cli.main import main\nmain()",
                 *command, *(["--out", "o"] if command[0] == "ingest" else []), cwd=tmp_path)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0] == (f"error: this command needs the {extra} extra (the Python module {blocked} is not installed): "
                        f"pip install 'finops-ml[{extra}]'.")
    assert not (tmp_path / "p.yaml").exists() and not (tmp_path / "data").exists()


@pytest.mark.cli
def test_the_server_runs_without_the_other_runtimes():
    """The serving image's path: the app and the predictors import, `python -m finops_ml.serving` reads its settings."""
    code = """
    import runpy
    import finops_ml.serving.app, finops_ml.serving.predictors, finops_cli.serve
    runpy.run_module("finops_ml.serving", run_name="__main__")
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIP_", "FINOPS_"))}
    r = subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code), NOT_IN_SERVING],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1 and r.stderr.startswith("error: AIP_STORAGE_URI is not set"), r.stderr


@pytest.mark.cli
def test_the_library_never_imports_kfp():
    code = """
    import pkgutil, importlib, finops_ml
    for m in pkgutil.walk_packages(finops_ml.__path__, "finops_ml."):
        if not m.name.endswith("__main__"):
            importlib.import_module(m.name)
    print(sorted(m for m in sys.modules if m.split(".")[0] in ("kfp", "components", "pipelines")))
    """
    r = _without("", code)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


# ---- constraints and Dockerfiles ------------------------------------------------------------------------------------

def test_constraints_pin_the_tested_tree_and_the_dockerfiles_use_them():
    lines = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and line[0] != "#"]
    pins = dict(line.split("==") for line in lines)
    assert all(re.fullmatch(r"[a-z0-9-]+", name) for name in pins), "names are canonical, one pin a line"
    assert set(pins) == set(_constraints_module().closure("finops-ml", {"dev"})), "run `make constraints`"
    for name in ("Dockerfile.pipeline", "Dockerfile.serving"):
        text = (ROOT / "deploy" / name).read_text()
        installs = [line for line in text.splitlines() if "pip install" in line]
        assert installs and all("-c constraints.txt" in line and " -e " not in line for line in installs), name
        ignore = (ROOT / "deploy" / f"{name}.dockerignore").read_text().splitlines()
        assert "!constraints.txt" in ignore and any(line.startswith("!configs/") for line in ignore), name
    assert '"/src[serving]"' in (ROOT / "deploy" / "Dockerfile.serving").read_text()


# ---- the wheel, installed in a fresh virtual environment ------------------------------------------------------------

def _fresh_venv(tmp_path: Path) -> Path:
    """A virtual environment that sees this one's installed dependencies (a .pth line naming its site-packages:
    the .pth files there, the editable finder of this checkout among them, are not run) and nothing of the checkout."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (purelib / "_finops_test_deps.pth").write_text("".join(f"{p}\n" for p in deps))
    return venv


@pytest.mark.cli
@pytest.mark.slow
def test_the_wheel_installed_in_a_fresh_venv_runs_from_another_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-q", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    wheel = next((tmp_path / "dist").glob("finops_ml-*.whl"))

    venv = _fresh_venv(tmp_path)
    python, script = venv / "bin" / "python", venv / "bin" / "finops-ml"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")} | {"COLUMNS": "400"}
    # --ignore-installed: this checkout's editable finops-ml is visible through the .pth and must stay untouched
    r = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                        str(wheel)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()

    def cli(*args: str) -> str:
        done = subprocess.run([str(script), *args], cwd=work, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "generated" in cli("generate", "--out", "data", "--resources-per-project", "2", "--plants", "1")
    assert (work / "data" / "events.jsonl").stat().st_size > 0
    cli("compile", "--output", "pipeline.yaml")
    assert "deploymentSpec" in yaml.safe_load((work / "pipeline.yaml").read_text())

    probe = """
    import json, sys
    import finops_ml, finops_ml.data, finops_ml.models
    no_kfp = not any(m.split(".")[0] == "kfp" for m in sys.modules)
    from finops_ml.config import CONFIG_DIR, load_config
    from finops_ml.data.warehouse import FEATURE_DIR, feature_sql
    print(json.dumps({"no_kfp": no_kfp, "package": finops_ml.__file__, "configs": str(CONFIG_DIR),
                      "sql": str(FEATURE_DIR), "budgets": [b.name for b in load_config().budgets],
                      "daily_cost": feature_sql("daily_cost"),
                      "finders": [str(f) for f in sys.meta_path if "editable" in str(f).lower()]}))
    """
    r = subprocess.run([str(python), "-c", textwrap.dedent(probe)], cwd=work, capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["no_kfp"] and seen["finders"] == []
    installed = venv.resolve()
    for key in ("package", "configs", "sql"):
        assert Path(seen[key]).resolve().is_relative_to(installed), (key, seen[key])
    shipped = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())["budgets"]
    assert seen["budgets"] == [b["name"] for b in shipped]
    assert seen["daily_cost"] == (ROOT / "feature_defs" / "daily_cost.sql").read_text()
