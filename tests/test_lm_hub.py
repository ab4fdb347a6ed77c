"""Hub round trip of a trained FWP language model, against the test Hub in `tests/hub_server.py`.

`scripts/train_lm.py --push_to_hub` trains a tiny model and pushes weights, code, tokenizer and card;
a fresh process where `fwp_hf` cannot be imported loads it from the Hub with trust_remote_code=True,
gets logits identical to the local folder's, and runs `pipeline("text-generation")`. An unreachable
endpoint and a failing commit give clear errors and leave the local files as they were.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hub_server import HubServer
from isolation import run_without_fwp_hf
from transformers import AutoModelForCausalLM

from fwp_hf import MODEL_CODE_FILES
from fwp_hf.shared.hub import HubPushError, push_folder_to_hub
from fwp_hf.training.lm_data import builtin_corpus_texts

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "tester/fwp-tiny"

LOAD_SCRIPT = textwrap.dedent(
    """
    import sys

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    repo_id, ids_path, out_path = sys.argv[1:4]
    model = AutoModelForCausalLM.from_pretrained(repo_id, trust_remote_code=True).eval()
    # As the model card says: the tokenizer loads without remote code, without asking and without warning.
    tokenizer = AutoTokenizer.from_pretrained(repo_id, config=model.config)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    text = generator("the company said", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    with torch.no_grad():
        logits = model(torch.load(ids_path)).logits
    torch.save({"logits": logits, "text": text, "module": type(model).__module__,
                "ids": tokenizer("the company said")["input_ids"]}, out_path)
    """
)


def hub_env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("HF_TOKEN", "HF_HUB_OFFLINE")}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HUB_DISABLE_XET="1",
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        TRANSFORMERS_VERBOSITY="error",
        OMP_NUM_THREADS="1",
    )
    return env


def folder_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_push_then_load_from_the_hub_without_fwp_hf(tmp_path):
    train_file, valid_file = tmp_path / "train.txt", tmp_path / "valid.txt"
    train_file.write_text("\n".join(builtin_corpus_texts("train")[:1500]) + "\n")
    valid_file.write_text("\n".join(builtin_corpus_texts("validation")[:100]) + "\n")
    output_dir = tmp_path / "trained"
    with HubServer() as hub:
        env = hub_env(tmp_path, hub.url)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])
        train = subprocess.run(
            [
                sys.executable,
                str(REPO_ROOT / "scripts" / "train_lm.py"),
                "--output_dir",
                str(output_dir),
                "--train_file",
                str(train_file),
                "--validation_file",
                str(valid_file),
                "--tokenizer_vocab_size",
                "400",
                "--hidden_size",
                "32",
                "--intermediate_size",
                "64",
                "--num_hidden_layers",
                "2",
                "--num_attention_heads",
                "2",
                "--chunk_size",
                "16",
                "--block_size",
                "32",
                "--max_steps",
                "3",
                "--per_device_train_batch_size",
                "4",
                "--max_eval_samples",
                "4",
                "--streaming_eval_max_tokens",
                "500",
                "--do_train",
                "--do_eval",
                "--report_to",
                "none",
                "--disable_tqdm",
                "true",
                "--push_to_hub",
                "true",
                "--hub_model_id",
                REPO_ID,
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
        assert f"pushed to {hub.url}/{REPO_ID}/commit/" in train.stdout
        pushed = set(hub.repos[REPO_ID].files)
        assert {
            "model.safetensors",
            "config.json",
            *MODEL_CODE_FILES,
            "tokenizer.json",
            "tokenizer_config.json",
            "README.md",
        } <= pushed
        assert not any(name.startswith("checkpoint-") for name in pushed)
        assert hub.repos[REPO_ID].files["README.md"] == (output_dir / "README.md").read_bytes()
        # The card's loading code is what LOAD_SCRIPT runs: the tokenizer without remote code.
        card = (output_dir / "README.md").read_text()
        assert f'AutoTokenizer.from_pretrained("{REPO_ID}", config=model.config)' in card
        # The training configuration names what defines the model, defaults included.
        for name in ("attention_type: delta", "feature_map: dpfp", "num_attention_heads:", "chunk_size:"):
            assert name in card, name

        ids = torch.randint(4, 400, (2, 21), generator=torch.Generator().manual_seed(0))
        torch.save(ids, tmp_path / "ids.pt")
        load_env = hub_env(tmp_path, hub.url)
        load = run_without_fwp_hf(LOAD_SCRIPT, [REPO_ID, "ids.pt", "out.pt"], cwd=tmp_path, extra_env=load_env,
                                  verbosity="warning")
        assert load.returncode == 0, load.stderr[-4000:]
        # No "You are using a model of type `fwp` to instantiate a model of type ``" (AutoTokenizer's fallback
        # to the base config class when it may not run the model code).
        assert "to instantiate a model of type" not in load.stderr, load.stderr[-2000:]

    result = torch.load(tmp_path / "out.pt")
    assert result["module"].startswith("transformers_modules"), result["module"]
    local = AutoModelForCausalLM.from_pretrained(output_dir).eval()
    with torch.no_grad():
        assert torch.equal(result["logits"], local(ids).logits)
    assert result["text"].startswith("the company said") and len(result["text"]) > len("the company said")
    assert result["ids"][:1] != [0] and 1 not in result["ids"]  # real pieces, neither padding nor <unk>


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_failed_pushes_give_clear_errors_and_keep_local_files(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "fwp"}))
    (folder / "model.safetensors").write_bytes(b"not really weights")
    before = folder_digest(folder)

    unreachable = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(HubPushError, match=f"cannot create the Hub repo 'tester/x' at {unreachable}"):
        push_folder_to_hub(folder, "tester/x", endpoint=unreachable)
    with HubServer(fail_commits=True) as hub:
        with pytest.raises(
            HubPushError, match=f"(?s)pushing .* to 'tester/x' at {hub.url} failed.*local files are intact"
        ):
            push_folder_to_hub(folder, "tester/x", endpoint=hub.url)
    assert folder_digest(folder) == before
    with pytest.raises(ValueError, match="hub_model_id must be 'owner/name'"):
        push_folder_to_hub(folder, "no-namespace", endpoint=unreachable)
