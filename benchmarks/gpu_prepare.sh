#!/usr/bin/env bash
# Run here (with network) before benchmarks/gpu.sh goes to a lent GPU machine, which has
# PyTorch but no network: puts the CIFAR-10 JPEG archive in gpu_data/ (19 MB; gpu.sh unpacks
# it there) and, in .whl/, wheels of what the machine's image lacks (Python 3.12, x86-64).
# Both are git-ignored; carry both.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p gpu_data
cp "${CIFAR10_ARCHIVE:-../shared/data/cifar10-jpg.tar.gz}" gpu_data/cifar10-jpg.tar.gz
rm -rf .whl && mkdir .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
# pure-Python projects published as source only: built into wheels here
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3 airbench==0.1.8
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  --find-links .whl -d .whl hydra-core==1.3.2 omegaconf==2.3.0 mlflow-skinny==3.17.2 mlflow-tracing==3.17.2 \
  sqlalchemy alembic 2>&1 | grep -v "^$" || true
# what the GPU image already holds (its package list): never carried, never replaced
have="numpy|pandas|pyarrow|scipy|scikit_learn|matplotlib|torch|torchvision|triton|nvidia_.*|pyyaml|PyYAML|protobuf|\
packaging|requests|urllib3|idna|certifi|charset_normalizer|jinja2|Jinja2|markupsafe|MarkupSafe|click|cloudpickle|\
typing_extensions|psutil|nvidia_ml_py|pillow|fsspec|filelock|sympy|mpmath|networkx|setuptools|\
anyio|h11|httpx|httpcore|attrs|six|python_dateutil|tqdm|zipp|rich|pygments|markdown_it_py|mdurl|\
werkzeug|Werkzeug|markdown|Markdown|pluggy|tabulate|regex|contourpy|cycler|fonttools|kiwisolver|pyparsing"
for f in .whl/*.whl; do
  name=$(basename "$f" | cut -d- -f1)
  if [[ "$name" =~ ^($have)$ ]]; then rm "$f"; fi
done
du -sh .whl gpu_data
