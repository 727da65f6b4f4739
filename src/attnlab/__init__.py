"""attnlab: self-attention made understandable and fast.

The mechanism lives in :mod:`attnlab.attention` (``attnlab.attention.attention(...)``); text
generation with any attnlab decoder is ``attnlab.generate(model, tokenizer, prompt)``.
"""

from attnlab.generation import generate, stream_generate

__version__ = "0.1.0"

__all__ = ["__version__", "generate", "stream_generate"]
