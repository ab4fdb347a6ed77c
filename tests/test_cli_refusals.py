"""The scripts refuse bad command lines as argparse does: one ``<script>: error: <message>`` line on stderr,
exit status 2, no traceback; a misspelt flag is never taken for another flag by its prefix; a Hub teacher
without a network is one clean line, not five retries and a traceback."""

from __future__ import annotations

import socket

import pytest

from fwp_hf.shared.cli import parse_config_and_flags
from fwp_hf.training.linearize import main as linearize_main
from fwp_hf.training.lm import DataTrainingArguments, parse_lm_arguments
from fwp_hf.training.lm import main as train_lm_main
from fwp_hf.training.translation import main as train_translation_main


def test_a_flag_prefix_is_not_taken_for_another_flag():
    # argparse's allow_abbrev would read --carry_stat as --carry_state and run a carried-state training.
    with pytest.raises(ValueError, match="--carry_stat"):
        parse_lm_arguments(["--output_dir", "out", "--carry_stat", "true"])
    with pytest.raises(ValueError, match="--max_train_sample"):
        parse_config_and_flags([DataTrainingArguments], ["--max_train_sample", "3"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--output_dir", "out", "--do_train", "--packing", "true", "--carry_state", "true"],
         "--packing true and --carry_state true exclude each other"),
        (["--output_dir", "out", "--do_train", "--no_such_flag", "1"], "--no_such_flag"),
        (["--output_dir", "out", "--do_train", "--carry_stat", "true"], "--carry_stat"),
        (["--output_dir", "out"], "nothing to do: pass --do_train and/or --do_eval"),
    ],
    ids=["packing-with-carry-state", "unknown-flag", "misspelt-flag", "nothing-to-do"],
)
def test_train_lm_refusals_are_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        train_lm_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train_lm.py: error: ") and message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_train_translation_unknown_flag_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_translation_main(["--output_dir", "out", "--do_train", "--no_such_flag", "1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("train_translation.py: error: ")


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_linearize_with_a_hub_id_and_no_network_is_one_clean_line(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    unreachable = closed_port_url()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", unreachable)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(SystemExit) as exit_info:
        linearize_main(["--teacher_model_name_or_path", "someone/some-model", "--output_dir", str(tmp_path / "out"),
                        "--max_steps", "1", "--report_to", "none"])
    message = str(exit_info.value.code)
    assert message.startswith("linearize: error: teacher 'someone/some-model' is not a local folder, and the Hub")
    assert "cannot be reached" in message and "HF_HUB_OFFLINE=1" in message
    captured = capsys.readouterr()
    assert "Retry" not in captured.out + captured.err  # asked once, not five retries per file
    assert not (tmp_path / "out").exists()


def test_every_script_parser_turns_prefix_matching_off():
    """Every (Hf)ArgumentParser built in the library passes allow_abbrev=False (a static check of the source)."""
    import ast
    from pathlib import Path

    source_root = Path(__file__).resolve().parents[1] / "src" / "fwp_hf"
    parsers = []
    for path in sorted(source_root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in ("ArgumentParser", "HfArgumentParser"):
                    keywords = {k.arg: k.value for k in node.keywords}
                    allow_abbrev = keywords.get("allow_abbrev")
                    off = isinstance(allow_abbrev, ast.Constant) and allow_abbrev.value is False
                    parsers.append((f"{path.relative_to(source_root)}:{node.lineno}", off))
    assert len(parsers) >= 9, parsers
    assert [where for where, off in parsers if not off] == []


@pytest.mark.parametrize(
    ("main", "prog", "old", "replacement"),
    [
        (train_lm_main, "train_lm.py", ["--dpfp_nu", "2"],
         """--config_overrides '{"feature_maps": {"dpfp": {"nu": 2}}}'"""),
        (train_lm_main, "train_lm.py", ["--performer_num_features=32"],
         """--config_overrides '{"feature_maps": {"favor": {"num_features": 32}}}'"""),
        (train_translation_main, "train_translation.py", ["--dpfp-nu", "3"],
         """--config_overrides '{"feature_maps": {"dpfp": {"nu": 3}}}'"""),
    ],
    ids=["dpfp_nu", "performer_num_features-inline", "translation-dashes"],
)
def test_a_retired_feature_map_flag_is_refused_naming_its_group(main, prog, old, replacement, capsys, tmp_path,
                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["--output_dir", "out", "--do_train", *old])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"{prog}: error: --{old[0][2:].split('=')[0]} was removed; give {replacement} instead", err
    assert not (tmp_path / "out").exists()


def test_a_retired_key_in_a_config_file_is_refused_and_its_replacement_builds_the_model(tmp_path):
    from fwp_hf.training.common import fwp_config_from_arguments

    config = tmp_path / "config.yaml"
    config.write_text("output_dir: out\ndo_train: true\nattention_type: dpfp\ndpfp_nu: 2\n")
    with pytest.raises(ValueError) as error:
        parse_lm_arguments([str(config)])
    replacement = """config_overrides: {"feature_maps": {"dpfp": {"nu": 2}}}"""
    assert str(error.value) == f"config file {str(config)!r}: key 'dpfp_nu' was removed; write {replacement} instead"
    config.write_text(config.read_text().replace("dpfp_nu: 2", replacement))  # the replacement, word for word

    class EightTokens:
        pad_token_id, bos_token_id, eos_token_id = 0, 2, 3

        def __len__(self) -> int:
            return 8

    built = fwp_config_from_arguments(parse_lm_arguments([str(config)])[0], EightTokens())
    assert (built.attention_type, built.feature_maps["dpfp"].nu) == ("dpfp", 2)
