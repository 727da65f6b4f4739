"""``attnlab explain``: a real model's attention on your text, made readable.

- :mod:`~attnlab.explain.collect`: :func:`build_explanation`, one traced forward pass turned into
  the JSON-ready explanation data (schema version 1);
- :mod:`~attnlab.explain.heads`: :func:`choose_head`, which head to show first and why;
- :mod:`~attnlab.explain.summary`: the plain-language terminal summary and its ``--json`` form;
- :mod:`~attnlab.explain.plots`: :func:`write_heatmaps`, PNG heatmaps;
- :mod:`~attnlab.explain.page`: :func:`write_page`, the self-contained interactive HTML page.

Nothing is imported here, so ``import attnlab.explain.page`` stays free of torch and matplotlib.
"""
