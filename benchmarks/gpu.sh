#!/usr/bin/env bash
# The GPU figures in one go, by hand on a CUDA machine (the same scripts as on the CPU; CUDA is
# picked up by train.device: auto): RandAugment alone (PIL on the CPU vs batched on the GPU),
# EfficientNet-B0 at 224x224 on synthetic data, training (real loop vs bare loop, with PIL and
# with batched augmentation) and labeling (real stage vs bare forward), fp32 vs bf16, and DDP
# over every visible GPU through torchrun.
#   bash benchmarks/gpu.sh 2>&1 | tee gpu.log
set -uo pipefail
cd "$(dirname "$0")/.."
W=${WORKERS:-12}
nvidia-smi -L
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
NGPU=$(python -c "import torch; print(torch.cuda.device_count())")
python benchmarks/augment_speed.py --sizes 3x224 --sizes 3x32 --batch 256 --batches 2 --repeats 3 --device cuda
for prec in fp32 bf16; do
  for aug in pil batched; do
    python benchmarks/train_speed.py --synthetic 6000 --size 224 --chans 3 --arch efficientnet_b0 --batch-size 64 \
      --segments 12 --repeats 2 --workers "$W" --channels-last --precision "$prec" --augment "$aug"
  done
done
# DDP: the real training stage on every visible GPU (train.nproc relaunches it under torchrun)
if [ "$NGPU" -gt 1 ]; then  # needs the pipeline reproduced first (data and pseudo labels): dvc repro select@s3
  python benchmarks/ddp_speed.py --nproc "$NGPU" --seeds 0 2>&1 | tail -5
fi
for prec in fp32 bf16; do
  python benchmarks/label_speed.py --arch efficientnet_b0 --size 224 --chans 3 --n 20000 --batch-size 512 \
    --workers "$W" --channels-last --precision "$prec" --repeats 3
done
# the default digits student, for scale: tiny models leave a big GPU mostly idle
python benchmarks/train_speed.py --synthetic 20000 --size 16 --chans 1 --arch ns_resnet_m --segments 20 --repeats 2 --precision bf16
