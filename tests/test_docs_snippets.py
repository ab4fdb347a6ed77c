"""Every ```python block of README.md and of the guides in docs/ runs as written.

Each block runs alone in a fresh process (forked from one that has imported torch and transformers, which
saves seconds per block: `snippet_runner.py`), in an empty working directory, offline (HF_HUB_OFFLINE=1), so
a block that forgets an import or an input fails here as it would for a reader. A comment on the line
before the fence adjusts the run (several separated by ";"):

- ``<!-- docs-test: needs-internet -->``: the block needs the Hub. It is compiled (syntax) and run offline,
  where it must fail cleanly: a non-zero exit whose last line is one error naming the missing connection
  (offline / connect / internet), within the time limit (no retry loop).
- ``<!-- docs-test: fixture=outputs/tiny -->``: the working directory holds ``outputs/tiny``, a small model
  folder as the README's main job leaves it (FWP delta-rule model with its code, a sentencepiece tokenizer,
  a ``checkpoint-*`` folder), built once here in seconds instead of the main job's minutes.
- ``<!-- docs-test: replace OLD with NEW -->``: run the block with that text replaced (e.g. torch.compile's
  slow inductor backend by the eager one); the documented text stays what a reader runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:^<!-- docs-test: (?P<marker>[^\n]*?) -->\n)?^```python\n(?P<code>.*?)^```\s*$", re.M | re.S)
OFFLINE_ERROR = re.compile(r"offline|connect|internet", re.I)
TIMEOUT_S = 240


@dataclass(frozen=True)
class Snippet:
    document: Path
    line: int
    code: str
    markers: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.document.relative_to(REPO_ROOT)}:{self.line}"

    def runnable_code(self) -> str:
        code = self.code
        for marker in self.markers:
            replace = re.fullmatch(r"replace (.+) with (.+)", marker)
            if replace:
                old, new = replace.groups()
                assert old in code, f"{self.name}: marker replaces {old!r}, which the block does not hold"
                code = code.replace(old, new)
        return code


def find_snippets(documents: list[Path] = DOCUMENTS) -> list[Snippet]:
    snippets = []
    for document in documents:
        text = document.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            markers = tuple(m.strip() for m in (match["marker"] or "").split(";") if m.strip())
            line = text.count("\n", 0, match.start("code"))  # the fence's line number (1-based)
            snippets.append(Snippet(document, line, match["code"], markers))
    return snippets


SNIPPETS = find_snippets()
KNOWN_MARKERS = re.compile(r"needs-internet|fixture=outputs/tiny|replace .+ with .+")


def test_snippets_are_found_and_markers_are_known():
    assert len(SNIPPETS) >= 8, [s.name for s in SNIPPETS]
    assert any(s.document.name == "README.md" for s in SNIPPETS)
    for snippet in SNIPPETS:
        for marker in snippet.markers:
            assert KNOWN_MARKERS.fullmatch(marker), f"{snippet.name}: unknown docs-test marker {marker!r}"
    # An HTML comment meant for a block must sit right above its fence, or the block would run unmarked.
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        for match in re.finditer(r"^<!-- docs-test:.*-->\n(?!```python\n)", text, re.M):
            raise AssertionError(f"{document.name}: a docs-test marker is not directly above a ```python fence: "
                                 f"{match.group(0).strip()}")


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory) -> Path:
    """A stand-in for the main job's ``outputs/tiny``: a delta-rule FWP model saved with its code and a
    sentencepiece tokenizer trained on Penn Treebank sentences, plus an (empty) checkpoint folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from fwp_hf.training.lm_data import builtin_corpus_texts
    from fwp_hf.training.tokenization import save_tokenizer, train_sentencepiece_tokenizer

    folder = tmp_path_factory.mktemp("main_job") / "tiny"
    tokenizer = train_sentencepiece_tokenizer(builtin_corpus_texts("train")[:2000], vocab_size=400)
    save_tokenizer(tokenizer, folder)
    torch.manual_seed(0)
    config = AutoConfig.for_model("fwp", attention_type="delta", feature_map="dpfp", vocab_size=len(tokenizer),
                                  hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  chunk_size=16, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    (folder / "checkpoint-200").mkdir()
    return folder


def closed_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


class SnippetRunner:
    """`tests/snippet_runner.py` in a subprocess: torch and transformers imported once, each snippet in a fork
    (a fresh process for the snippet: its own modules beyond those two, its own working directory)."""

    def __init__(self, home: Path) -> None:
        env = {key: value for key, value in os.environ.items() if key not in ("HF_TOKEN", "HF_ENDPOINT")}
        env.update(
            PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")]),
            HF_HOME=str(home / "hf_home"), HF_MODULES_CACHE=str(home / "hf_modules"),
            HF_HUB_OFFLINE="1", HF_ENDPOINT=closed_port_url(), HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1",
            TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg",
        )
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("snippet_runner.py"))],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert json.loads(self.process.stdout.readline()) == {"ready": True}

    def run(self, script: Path, cwd: Path) -> subprocess.CompletedProcess:
        out, err = cwd.parent / "stdout.txt", cwd.parent / "stderr.txt"
        request = {"script": str(script), "cwd": str(cwd), "stdout": str(out), "stderr": str(err),
                   "timeout": TIMEOUT_S}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        returncode = json.loads(self.process.stdout.readline())["returncode"]
        return subprocess.CompletedProcess([str(script)], returncode, out.read_text(), err.read_text())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    runner = SnippetRunner(tmp_path_factory.mktemp("snippet_runner"))
    yield runner
    runner.close()


@pytest.mark.parametrize("snippet", SNIPPETS, ids=lambda snippet: snippet.name)
def test_snippet_runs_as_written(snippet: Snippet, tmp_path: Path, runner: SnippetRunner, request):
    code = snippet.runnable_code()
    compile(code, snippet.name, "exec")  # syntax, for every block
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    if "fixture=outputs/tiny" in snippet.markers:
        shutil.copytree(request.getfixturevalue("trained_tiny"), workdir / "outputs" / "tiny")
    script = workdir / "snippet.py"
    script.write_text(code, encoding="utf-8")
    run = runner.run(script, workdir)
    assert run.returncode != 124, f"{snippet.name} ran past {TIMEOUT_S} s"
    if "needs-internet" in snippet.markers:
        last_line = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ""
        assert run.returncode != 0, f"{snippet.name} needs the internet but ran offline:\n{run.stdout[-2000:]}"
        assert OFFLINE_ERROR.search(last_line), f"{snippet.name}: offline failure is not a clear error:\n" \
                                                f"{run.stderr[-3000:]}"
        return
    assert run.returncode == 0, f"{snippet.name} failed:\n{run.stderr[-4000:]}"
