"""fwp_hf installed as users install it: from a wheel, without the source tree, and with only what the models
need (torch and transformers) when the `train` extra is absent.

- The wheel holds every file the library reads at run time (the model card template, the offline metric
  modules, the model code a checkpoint ships) and declares the console scripts; installed into a fresh virtual
  environment and run from a folder outside the checkout, its `fwp-train-lm` trains a tiny model and writes the
  card.
- With datasets/accelerate/evaluate/sentencepiece unimportable, `import fwp_hf` builds, generates with,
  saves and reloads a model; importing the training wing says which extra to install.
"""

from __future__ import annotations

import email
import json
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import test_lm_training

from fwp_hf import MODEL_CODE_FILES, SEQ2SEQ_MODEL_CODE_FILES

REPO_ROOT = Path(__file__).resolve().parents[1]
data_files = test_lm_training.data_files  # the tiny PTB files and tokenizer of the training tests (a fixture)
tiny_flags = test_lm_training.tiny_flags
# pyyaml, also in the extra, comes with transformers itself (huggingface_hub needs it).
TRAIN_EXTRA_MODULES = ("datasets", "accelerate", "evaluate", "sentencepiece")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the project's packaging inputs (no build isolation: offline)."""
    setuptools = pytest.importorskip("setuptools")
    if tuple(int(part) for part in setuptools.__version__.split(".")[:2]) < (70, 1):
        pytest.skip(f"building offline needs setuptools >= 70.1 (pyproject's build requirement); this environment has "
                    f"{setuptools.__version__}")
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(source)], check=True, capture_output=True, text=True, timeout=300)
    (built,) = dist.glob("fwp_hf-*.whl")
    return built


def test_wheel_holds_what_the_library_reads_at_run_time(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = {
        "fwp_hf/shared/model_cards/fwp_lm_card.md",
        "fwp_hf/training/evaluate_metrics/sacrebleu.py",
        "fwp_hf/training/evaluate_metrics/chrf.py",
        "fwp_hf/training/evaluate_metrics/_sacrebleu_corpus_metric.py",
        *(f"fwp_hf/{name}" for name in SEQ2SEQ_MODEL_CODE_FILES),
    }
    assert needed <= names, sorted(needed - names)
    assert set(MODEL_CODE_FILES) <= set(SEQ2SEQ_MODEL_CODE_FILES)
    (metadata_name,) = [name for name in names if name.endswith(".dist-info/METADATA")]
    metadata = email.message_from_bytes(zipfile.ZipFile(wheel).read(metadata_name))
    core = [r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
    assert sorted(r.split(">")[0].split("<")[0].split("=")[0].strip() for r in core) == [
        "jinja2", "safetensors", "torch", "transformers"]
    (entry_points_name,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    assert "fwp-train-lm = fwp_hf.console_scripts:train_lm" in zipfile.ZipFile(wheel).read(entry_points_name).decode()


def test_installed_wheel_trains_and_writes_its_card_without_the_source_tree(wheel, data_files, tmp_path):
    environment = tmp_path / "venv"
    # System site-packages give the environment torch/transformers/datasets without a download; the wheel's
    # fwp_hf in the environment's own site-packages comes before the editable checkout on sys.path.
    venv.create(environment, system_site_packages=True, with_pip=False)
    python = environment / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    located = subprocess.run([str(python), "-c", "import fwp_hf; print(fwp_hf.__file__)"], cwd=elsewhere,
                             check=True, capture_output=True, text=True, timeout=120).stdout.strip()
    assert located.startswith(str(environment)), located

    output_dir = tmp_path / "run"
    command = [str(environment / "bin" / "fwp-train-lm"), *tiny_flags(data_files, output_dir, max_steps=2)]
    run = subprocess.run(command, cwd=elsewhere, capture_output=True, text=True, timeout=600,
                         env={"PATH": f"{environment / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
                              "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "validation perplexity:" in run.stdout
    card = (output_dir / "README.md").read_text()
    assert "trust_remote_code=True" in card and "max_steps: 2" in card
    assert json.loads((output_dir / "config.json").read_text())["model_type"] == "fwp"


# A None entry in sys.modules is how Python spells "not installed" to both `import` (ModuleNotFoundError) and
# `importlib.util.find_spec` (None), which transformers and fwp_hf.training ask.
BLOCK_TRAIN_EXTRA = f"""
import sys
for name in {TRAIN_EXTRA_MODULES!r}:
    sys.modules[name] = None
"""

CORE_ONLY_USE = '''
import sys, torch
from transformers import AutoModelForCausalLM
import fwp_hf
from fwp_hf import FWPConfig, FWPForCausalLM

model = FWPForCausalLM(FWPConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, attention_type=["delta", "softmax"])).eval()
ids = torch.randint(1, 40, (1, 5))
tokens = model.generate(ids, max_new_tokens=4, do_sample=False)
model.save_pretrained(sys.argv[1])
again = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
assert torch.equal(again.generate(ids, max_new_tokens=4, do_sample=False), tokens)
loaded = sorted(name for name, module in sys.modules.items()
                if module is not None and name.split(".")[0] in {modules!r})
assert not loaded, loaded
try:
    import fwp_hf.training.lm
except ImportError as error:
    print("TRAINING:", error)
'''


def test_models_need_only_torch_and_transformers(tmp_path):
    script = BLOCK_TRAIN_EXTRA + CORE_ONLY_USE.replace("{modules!r}", repr(TRAIN_EXTRA_MODULES))
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "saved")], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "TRAINING: fwp_hf.training" in run.stdout and "pip install 'fwp-hf[train]'" in run.stdout
    for package in TRAIN_EXTRA_MODULES:
        assert package in run.stdout
