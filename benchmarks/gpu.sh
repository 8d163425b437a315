#!/usr/bin/env bash
# Issue 6's GPU figures in one go, by hand on a CUDA machine (the same scripts as on the CPU;
# CUDA is picked up by train.device: auto): EfficientNet-B0 at 224x224 on synthetic data,
# training (real loop vs bare loop) and labeling (real stage vs bare forward), fp32 vs bf16.
#   bash benchmarks/gpu.sh 2>&1 | tee gpu.log
set -uo pipefail
cd "$(dirname "$0")/.."
W=${WORKERS:-12}
nvidia-smi -L
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
for prec in fp32 bf16; do
  python benchmarks/train_speed.py --synthetic 6000 --size 224 --chans 3 --arch efficientnet_b0 --batch-size 64 \
    --steps 60 --repeats 2 --workers "$W" --channels-last --precision "$prec"
done
for prec in fp32 bf16; do
  python benchmarks/label_speed.py --arch efficientnet_b0 --size 224 --chans 3 --n 20000 --batch-size 512 \
    --workers "$W" --channels-last --precision "$prec" --repeats 3
done
# the default digits student, for scale: tiny models leave a big GPU mostly idle
python benchmarks/train_speed.py --synthetic 20000 --size 16 --chans 1 --arch ns_resnet_m --steps 100 --repeats 2 --precision bf16
