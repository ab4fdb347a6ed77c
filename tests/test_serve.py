"""`python -m fwp_hf.serve` (transformers' own `transformers serve` with the FWP architectures registered).

A tiny delta-rule checkpoint with remote code and a trained sentencepiece tokenizer (with its default chat
template) is served on 127.0.0.1 by a subprocess (stopped by its PID); an OpenAI-style completion and chat
completion must return what greedy `generate()` of the same model returns. Skipped when transformers'
serving extra (fastapi, uvicorn, openai, pydantic) is not installed: `pip install -e ".[serve]"`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer
from transformers.utils.import_utils import is_serve_available

from fwp_hf import FWPConfig, FWPForCausalLM
from fwp_hf.serve import CONTINUOUS_BATCHING_REFUSAL, main, register_with_transformers
from fwp_hf.training.lm_data import builtin_corpus_texts
from fwp_hf.training.tokenization import save_tokenizer, train_sentencepiece_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
VOCAB = 400
NEW_TOKENS = 6
STARTUP_SECONDS = 90


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("served") / "model"
    tokenizer = train_sentencepiece_tokenizer(builtin_corpus_texts("train")[:1500], vocab_size=VOCAB)
    torch.manual_seed(0)
    config = FWPConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, attention_type="delta", initializer_range=0.2,
                       pad_token_id=0, bos_token_id=2, eos_token_id=3)
    FWPForCausalLM(config).save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    return folder


def greedy_continuation(folder: Path, prompt_ids: list[int]) -> str:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = FWPForCausalLM.from_pretrained(folder).eval()
    ids = model.generate(torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                         min_new_tokens=NEW_TOKENS, pad_token_id=0)
    return tokenizer.decode(ids[0, len(prompt_ids):])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.skipif(not is_serve_available(),
                    reason="transformers' serving extra is not installed (pip install -e '.[serve]')")
def test_served_checkpoint_answers_completion_and_chat_like_generate(checkpoint, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "hf_modules"),
           "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "fwp_hf.serve", str(checkpoint), "--host", "127.0.0.1", "--port", str(port),
         "--trust-remote-code", "--device", "cpu"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, (
                    "server did not start: " + (tmp_path / "server.log").read_text()[-3000:]
                )
                time.sleep(0.5)

        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        prompt = "the company said"
        completion = post(f"{base}/v1/completions", {"model": str(checkpoint), "prompt": prompt,
                                                     "max_tokens": NEW_TOKENS, "temperature": 0})
        expected = greedy_continuation(checkpoint, tokenizer.encode(prompt, add_special_tokens=False))
        assert completion["object"] == "text_completion"
        assert completion["choices"][0]["text"] == expected
        assert completion["usage"]["completion_tokens"] == NEW_TOKENS

        messages = [{"role": "user", "content": "what did the company say"}]
        chat = post(f"{base}/v1/chat/completions", {"model": str(checkpoint), "messages": messages,
                                                    "max_tokens": NEW_TOKENS, "temperature": 0})
        chat_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"]
        assert chat["object"] == "chat.completion"
        assert chat["choices"][0]["message"]["role"] == "assistant"
        assert chat["usage"]["prompt_tokens"] == len(chat_ids)
        assert chat["choices"][0]["message"]["content"] == greedy_continuation(checkpoint, chat_ids)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_registered_architecture_is_found_in_the_transformers_namespace(checkpoint):
    import transformers

    register_with_transformers()
    architecture = getattr(transformers, json.loads((checkpoint / "config.json").read_text())["architectures"][0])
    assert architecture is FWPForCausalLM


def test_continuous_batching_is_refused_with_the_reason(checkpoint):
    with pytest.raises(SystemExit, match="recurrent state per sequence"):
        main([str(checkpoint), "--continuous-batching"])
    assert "paged" in CONTINUOUS_BATCHING_REFUSAL


def test_trained_tokenizers_have_a_chat_template(checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True,
                                         tokenize=False)
    assert text == "user: hello\nassistant:"
