"""Noisy Student Training (Xie et al., CVPR 2020) as a DVC pipeline.

Modules, in pipeline order: data (prepare), models + transforms + train (teacher and
student, one loop), pseudo (labeling and selection), evaluate, tracking (MLflow),
pipeline (what each stage does), params (the typed params.yaml reader).
"""
__version__ = "0.1.0"
