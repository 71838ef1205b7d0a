"""A plain (non-editable) install works anywhere: the wheel carries the presets, the model configs and the shipped
model; from a folder outside the checkout `sdfn search`, `sdfn train --config tiny-synthetic` and
`from sdfn import Retriever; Retriever()` work, and the default catalog is made under $SDFN_HOME.

The wheel is built from a copy of the sources (nothing is written into the checkout) with the build backend
already installed (no network), and installed with `--no-deps --no-index` into a fresh venv. The venv reuses
this environment's packages (torch, open_clip, faiss, gradio) through a .pth file: `--system-site-packages`
would give the base interpreter's packages, not those of the venv the tests run in. The .pth adds those folders
as plain paths, so the checkout's editable-install hook is not loaded and `import sdfn` finds the wheel's copy.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """Build the wheel, install it into a new venv; returns the venv's paths and an environment to run it in."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "sdfn", source / "sdfn", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(root / "dist"), str(source)], check=True, capture_output=True, text=True)
    wheel = next((root / "dist").glob("sdfn-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    venv_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                    check=True, capture_output=True, text=True).stdout.strip())
    (venv_site / "reuse-test-environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
                    "--no-warn-script-location", str(wheel)], check=True, capture_output=True, text=True)
    home = root / "home"
    env = {**os.environ, "SDFN_HOME": str(home), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    work = root / "elsewhere"
    work.mkdir()
    return {"wheel": wheel, "venv": venv, "python": python, "sdfn": venv / "bin" / "sdfn", "env": env,
            "home": home, "work": work}


def run(installed: dict, *argv, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], cwd=installed["work"], env=installed["env"], capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_the_wheel_carries_presets_model_configs_and_the_shipped_model(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    assets = REPO / "sdfn" / "assets" / "sdfn-tiny"
    shipped = {p.relative_to(assets).as_posix() for p in assets.rglob("*") if p.is_file()}
    assert "combiner/fusion.safetensors" in shipped    # the Combiner beside the model (sdfn.explain)
    assert {f"sdfn/assets/sdfn-tiny/{name}" for name in shipped} <= names
    assert {"sdfn/configs/tiny-synthetic.json", "sdfn/configs/fashioniq-vitb32.json",
            "sdfn/model_configs/sdfn-tiny.json",
            "sdfn/data/synth/noise_words.txt",   # the everyday-request training's inserted words
            "sdfn/data/colour_names.tsv",          # sdfn.reading's colour names
            "sdfn/data/shopper_glossary.json"} <= names   # ... and its shopper's glossary


def test_sdfn_imports_from_the_install_not_the_checkout(installed):
    where = run(installed, installed["python"], "-c", "import sdfn; print(sdfn.__file__)").stdout.strip()
    assert Path(where).is_relative_to(installed["venv"]), where


def test_retriever_with_no_arguments_serves_the_shipped_model_on_the_default_catalog(installed, small_catalog):
    """Retriever() = shipped model + $SDFN_HOME/catalogs/synthetic (placed there small, instead of the minute-long
    full default generation, which tests/test_retrieval.py's own checks cover)."""
    shutil.copytree(small_catalog, installed["home"] / "catalogs" / "synthetic",
                    ignore=shutil.ignore_patterns("index", ".*"))
    code = ("from sdfn import Retriever; import json; r = Retriever(progress=False); "
            "res = r.search('dress-000000', 'is red', k=3); "
            "print(json.dumps({'catalog': str(r.catalog.root), 'ids': [i.id for i in res.items]}))")
    out = json.loads(run(installed, installed["python"], "-c", code).stdout.strip().splitlines()[-1])
    assert out["catalog"] == str(installed["home"] / "catalogs" / "synthetic")
    assert len(out["ids"]) == 3
    assert (installed["home"] / "catalogs" / "synthetic" / "index").is_dir()


def test_sdfn_search_without_a_catalog_uses_the_default_one(installed, small_catalog):
    default = installed["home"] / "catalogs" / "synthetic"
    if not default.is_dir():
        shutil.copytree(small_catalog, default, ignore=shutil.ignore_patterns("index", ".*"))
    done = run(installed, installed["sdfn"], "search", "--ref", "skirt-000003", "--text", "is longer", "-k", "2",
               "--json", "--quiet")
    result = json.loads(done.stdout)
    assert result["query"]["reference"] == "skirt-000003" and len(result["results"]) == 2


def test_sdfn_search_from_another_folder(installed, small_catalog):
    catalog = installed["work"] / "my-catalog"
    shutil.copytree(small_catalog, catalog, ignore=shutil.ignore_patterns("index", ".*"))
    done = run(installed, installed["sdfn"], "search", "--catalog", "my-catalog", "--ref", "dress-000001",
               "--text", "is blue", "-k", "5", "--json", "--quiet")
    result = json.loads(done.stdout)
    assert len(result["results"]) == 5 and result["query"]["reference"] == "dress-000001"


def test_sdfn_train_with_the_packaged_preset_from_another_folder(installed, small_catalog):
    done = run(installed, installed["sdfn"], "train", "--config", "tiny-synthetic", "--out", "run", "--quiet",
               "--stop-after", "1", f"data.root={small_catalog}", "pretrain.epochs=0", "optim.epochs=1",
               "optim.batch_size=32", "optim.num_workers=0", "eval.every=0")
    assert "sdfn train: done, 1 epochs" in done.stdout
    assert (installed["work"] / "run" / "last" / "sdfn_config.json").is_file()
    help_text = run(installed, installed["sdfn"], "train", "--help").stdout
    assert "tiny-synthetic" in help_text and "fashioniq-vitb32" in help_text
