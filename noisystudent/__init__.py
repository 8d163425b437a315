"""Noisy Student Training (Xie et al., CVPR 2020) as a DVC pipeline.

The stages live in the repository's `stages/` (one file each, what dvc.yaml runs); this
package is what they are made of, in pipeline order: params (the typed params.yaml reader),
sources + images + data (prepare), models + transforms + recipe + train + checkpoint (the one
training loop for teacher, baseline and student), inference (un-noised predictions), pseudo +
shards (labeling and selection), evaluate, robustness, results + plots + report (what a run
shows), tracking (MLflow), runtime + progress (how it runs).
"""
__version__ = "0.1.0"
