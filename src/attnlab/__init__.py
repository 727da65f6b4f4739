"""attnlab: self-attention made understandable and fast.

The mechanism lives in :mod:`attnlab.attention` (``attnlab.attention.attention(...)``); text
generation with any attnlab decoder is ``attnlab.generate(model, tokenizer, prompt)``; in a
notebook, ``attnlab.show(text)`` displays the explanation page of ``attnlab explain`` inline.

``generate``, ``stream_generate`` and ``show`` are imported on first use, not with the package: importing
them pulls in torch (about a second), which ``attnlab --help`` and argument errors never need.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "generate", "show", "stream_generate"]


def __getattr__(name: str):
    if name in ("generate", "stream_generate"):
        from attnlab import generation

        return getattr(generation, name)
    if name == "show":
        from attnlab.notebook import show

        return show
    raise AttributeError(f"module 'attnlab' has no attribute {name!r}")
