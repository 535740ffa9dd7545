#!/usr/bin/env bash
# Time to accuracy on a GPU machine, in well under 5 minutes: the speed_net preset at full
# width, then ResNet-18 for a short cosine schedule. Run from the repository root after
# installing (pip install -e .); CIFAR10_JPG points at an extracted cifar10-jpg copy.
set -euo pipefail
cd "$(dirname "$0")"
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device"
print("# GPU:", torch.cuda.get_device_name(0))
PY
python time_to_accuracy.py --presets speed_net_cpu -- trainer.device=cuda 'model.widths=[64,256,256]' epochs=10
python time_to_accuracy.py --presets resnet18_cosine -- trainer.device=cuda epochs=8 dataset.batch_size=256
