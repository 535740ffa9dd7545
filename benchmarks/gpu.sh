#!/usr/bin/env bash
# Every GPU check in one run sized for 15 minutes of device time, start-up included:
#   1. tests/test_gpu.py: autocast, device-resident batches, 1-GPU NCCL DDP (+ SyncBatchNorm)
#   2. a 1-GPU NCCL DDP run under torchrun, through the CLI; 2b. two processes where two GPUs exist
#   3. the fair race: airbench94's reference code (fp16, as shipped) against
#      experiment=airbench94 (autocast; tracking and checkpoints on), alternated over 2
#      seeds, each timed from process start to its printed accuracy; then
#      experiment=airbench94_muon over 2 seeds, timed the same way
#   4. images/s of simple_cnn and resnet18 with bf16 autocast (the epoch after a warm-up one)
# The machine has PyTorch and no network. Prepare here first: bash benchmarks/gpu_prepare.sh
# (wheels in .whl/, the data archive in gpu_data/), then on the device tool:
#   run(command="bash benchmarks/gpu.sh", carry=[".whl", "gpu_data"], timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site CIFAR10_JPG=/tmp/gpu-data/cifar10-jpg
py=python3
out=${OUT:-/tmp/gpu-out}; mkdir -p "$out"
log() { echo "## $(date +%T) $*"; }

log "setup"
$py -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
$py -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . || exit 1
mkdir -p /tmp/gpu-data && tar xzf gpu_data/cifar10-jpg.tar.gz -C /tmp/gpu-data || exit 1
$py - <<'PY' || exit 1
import torch
assert torch.cuda.is_available(), "no CUDA device"
print(f"# GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
PY
work=$(mktemp -d)

log "1. tests/test_gpu.py"
timeout 180 $py -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -5

log "2. 1-GPU NCCL DDP run"
(cd "$work" && timeout 90 $py -m torch.distributed.run --standalone --nproc_per_node=1 -m cifar_exp \
  dataset=synthetic trainer.strategy=ddp trainer.device=cuda epochs=2 trainer.progress=false 2>&1 \
  | grep -E "^(run dir|epoch|Accuracy of the network)|error" )

log "2b. 2-process NCCL DDP run (one process per GPU)"
if [ "$($py -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  (cd "$work" && timeout 120 $py -m torch.distributed.run --standalone --nproc_per_node=2 -m cifar_exp \
    dataset=synthetic trainer.strategy=ddp trainer.device=cuda epochs=2 trainer.progress=false 2>&1 \
    | grep -E "^(run dir|epoch|Accuracy of the network)|world_size|error" )
else
  echo "skipped: one GPU on this machine (two-process NCCL needs one GPU per process)"
fi

log "3. the race: airbench94 reference vs experiment=airbench94, then experiment=airbench94_muon"
(cd benchmarks && timeout 300 $py airbench_race.py --seeds 0 1 --sides ours:amp reference:fp16 2>&1 \
  | tee "$out/airbench_race.txt")
(cd benchmarks && timeout 150 $py airbench_race.py --seeds 0 1 --preset airbench94_muon --sides ours:amp \
  --target 0.94 2>&1 | tee "$out/airbench_muon.txt")

log "4. images/s with bf16 autocast"
for model in simple_cnn resnet18; do
  (cd "$work" && timeout 90 $py -m cifar_exp model=$model trainer.device=cuda dataset=image_folder \
    dataset.root="$CIFAR10_JPG" dataset.cache_dir="$work/cache" epochs=2 trainer.progress=false \
    mlflow.enabled=false checkpoint.enabled=false 2>&1 | grep "^epoch 2/2" \
    | sed -E "s/.*\| ([0-9.]+)s$/\1/" | awk -v m=$model '{printf "%s: %.0f images/s (epoch 2: %.2f s)\n", m, 50000/$1, $1}')
done
log "done"
