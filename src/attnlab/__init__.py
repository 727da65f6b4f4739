"""attnlab: self-attention made understandable and fast.

The mechanism lives in :mod:`attnlab.attention` (``attnlab.attention.attention(...)``).
"""

__version__ = "0.1.0"
