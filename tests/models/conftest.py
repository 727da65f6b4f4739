"""Session fixtures for the SmolLM2 tests: attnlab's model and the Hugging Face reference, loaded once.

Loading the reference dequantizes the whole GGUF file (seconds), so every test module that needs
it shares these fixtures by name: ``smollm2`` is ``(model, tokenizer)`` from
``load_pretrained("smollm2")``; ``hf_smollm2`` is the ``transformers`` model in eval mode;
``hf_smollm2_tokenizer`` is ``transformers``' tokenizer converted from the same GGUF file.
"""

from __future__ import annotations

import os

import pytest

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder():
    from attnlab.models.pretrained.packages import package_folder
    from attnlab.models.pretrained.smollm2 import PACKAGE, PIP_SPEC

    return package_folder(PACKAGE, PIP_SPEC)


@pytest.fixture(scope="session")
def smollm2():
    """``(LlamaDecoder, LlamaTokenizer)`` as ``load_pretrained("smollm2")`` returns them."""
    from attnlab.models.pretrained import load_pretrained

    return load_pretrained("smollm2")


@pytest.fixture(scope="session")
def hf_smollm2():
    """The reference ``transformers`` LLaMA model from the same GGUF file (eager attention, float32)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_folder(), gguf_file=GGUF_FILE, attn_implementation="eager", dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer():
    """The reference ``transformers`` tokenizer converted from the GGUF file's metadata."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import transformers

    return transformers.AutoTokenizer.from_pretrained(smollm2_folder(), gguf_file=GGUF_FILE)
