"""What the commands share: exit codes, errors, models by name or directory, text batches."""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcompiler.install_hint import install_hint

__all__ = ["ExitCode", "CliError", "BaseModel", "load_base_model", "load_saved", "read_sentences",
           "encode_sentences", "print_report", "err_console", "MINILM"]

MINILM = "minilm"


class ExitCode(enum.IntEnum):
    OK = 0
    USAGE = 2          # bad arguments, unknown scheme / option
    INPUT = 3          # a file, model or saved directory that cannot be used
    INTERNAL = 4       # a bug: a pass or the verifier failed, or an unexpected exception
    UNAVAILABLE = 5    # a feature or dependency not available here (ONNX export, a backend)
    INTERRUPTED = 130


class CliError(Exception):
    """An error the CLI reports as one line plus a hint, with its exit code."""

    def __init__(self, message: str, code: ExitCode, hint: str | None = None):
        super().__init__(message)
        self.message, self.code, self.hint = message, code, hint


def err_console():
    try:
        from rich.console import Console
        return Console(stderr=True, highlight=False)
    except ImportError:
        return None


def print_report(report, fmt: str) -> None:
    """``table`` (rich when installed and stdout is a terminal-ish stream), ``markdown``, ``json``."""
    if fmt == "json":
        print(report.to_json())
    elif fmt == "markdown":
        print(report.to_markdown())
    else:
        try:
            from rich.console import Console
        except ImportError:
            print(report)
            return
        Console(width=None if sys.stdout.isatty() else 200).print(report)  # a pipe or file: no wrapping


@dataclass
class BaseModel:
    """A float model and how to get it again (stored in the saved model's metadata)."""

    model: Any
    tokenizer: Any
    source: dict[str, Any]
    minilm: Any = None   # the qcompiler.models.MiniLM wrapper for the bundled model


def _causal(config) -> bool:
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def load_base_model(name: str, loader: str = "auto", dtype: str = "float32") -> BaseModel:
    """``minilm`` (the bundled all-MiniLM-L6-v2) or a local Hugging Face model directory."""
    import torch

    if name == MINILM:
        from qcompiler.models import load_minilm
        m = load_minilm()
        return BaseModel(m.model.to(getattr(torch, dtype)), m.tokenizer, {"model": MINILM, "dtype": dtype}, m)
    path = Path(name)
    if not path.is_dir():
        raise CliError(f"model '{name}' is neither 'minilm' nor a directory", ExitCode.INPUT,
                       hint="give a local Hugging Face model directory (with config.json), or 'minilm'")
    if not (path / "config.json").is_file():
        raise CliError(f"'{name}' has no config.json: not a Hugging Face model directory", ExitCode.INPUT,
                       hint="save one with model.save_pretrained(dir) and tokenizer.save_pretrained(dir)")
    try:
        import transformers
        from transformers.utils import logging as hf_logging
    except ImportError as e:
        raise CliError("loading Hugging Face models needs transformers", ExitCode.UNAVAILABLE,
                       hint=install_hint("hf", "transformers")) from e
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # our own bars say what is happening
    try:
        config = transformers.AutoConfig.from_pretrained(path)
        if loader == "auto":
            loader = "causal-lm" if _causal(config) else "base"
        cls = transformers.AutoModelForCausalLM if loader == "causal-lm" else transformers.AutoModel
        model = cls.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
        try:
            tok = transformers.AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError):
            tok = None
    except (OSError, ValueError, KeyError) as e:
        raise CliError(f"cannot load the model in '{name}': {str(e).splitlines()[0][:200]}", ExitCode.INPUT) from e
    if tok is not None and tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token  # causal LMs often ship without one; batches need padding
    return BaseModel(model, tok, {"model": str(path.resolve()), "loader": loader, "dtype": dtype})


def base_model_for(saved_dir: Path, override: str | None) -> BaseModel:
    from qcompiler.serialize import read_description

    doc = read_description(saved_dir)
    source = (doc.get("metadata") or {}).get("source") or {}
    name = override or source.get("model")
    if not name:
        raise CliError(f"'{saved_dir}' does not say which float model it was compiled from", ExitCode.USAGE,
                       hint="pass --model DIR (the Hugging Face directory it was compiled from)")
    return load_base_model(name, source.get("loader", "auto") if not override else "auto",
                           source.get("dtype", "float32"))


def load_saved(saved_dir: str, model_override: str | None = None, *, check_versions: bool = True):
    """``(compiled model, BaseModel)`` from a directory written by ``qcompiler compile``."""
    import qcompiler

    path = Path(saved_dir)
    base = base_model_for(path, model_override)
    return qcompiler.load(path, base.model, check_versions=check_versions), base


def read_sentences(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise CliError(f"calibration file '{path}' does not exist", ExitCode.INPUT,
                       hint="give a UTF-8 text file with one sentence per line")
    try:
        lines = [s.strip() for s in p.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as e:
        raise CliError(f"calibration file '{path}' is not UTF-8 text ({e.reason} at byte {e.start})",
                       ExitCode.INPUT) from None
    lines = [s for s in lines if s]
    if not lines:
        raise CliError(f"calibration file '{path}' has no sentences", ExitCode.INPUT,
                       hint="one sentence per line; empty lines are skipped")
    return lines


def encode_sentences(base: BaseModel, sentences: list[str], batch_size: int, max_length: int) -> list[dict]:
    if base.tokenizer is None:
        raise CliError("the model directory has no tokenizer, so text cannot be turned into inputs",
                       ExitCode.INPUT, hint="save the tokenizer next to the model (tokenizer.save_pretrained)")
    return [dict(base.tokenizer(sentences[i:i + batch_size], padding=True, truncation=True,
                                max_length=max_length, return_tensors="pt"))
            for i in range(0, len(sentences), batch_size)]
