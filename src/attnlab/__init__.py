"""attnlab: self-attention made understandable and fast.

The mechanism lives in :mod:`attnlab.attention` (``attnlab.attention.attention(...)``); text
generation with any attnlab decoder is ``attnlab.generate(model, tokenizer, prompt)``.

``generate`` and ``stream_generate`` are imported on first use, not with the package: importing
them pulls in torch (about a second), which ``attnlab --help`` and argument errors never need.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "generate", "stream_generate"]


def __getattr__(name: str):
    if name in ("generate", "stream_generate"):
        from attnlab import generation

        return getattr(generation, name)
    raise AttributeError(f"module 'attnlab' has no attribute {name!r}")
