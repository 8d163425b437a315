"""What trains a model, resolved from params: the teacher, the supervised baseline and every
student are one training loop (train.fit) fed different data. Their differences live here, as
data, and nowhere else:

| role     | images                           | noise           | arch              | steps         | seed       |
|----------|----------------------------------|-----------------|-------------------|---------------|------------|
| teacher  | labeled                          | section teacher | teacher.arch      | teacher.steps | train.seed |
| baseline | labeled                          | section teacher | baseline.arch     | teacher.steps | train.seed |
| oracle   | labeled + the pool's true labels | section teacher | baseline.arch     | teacher.steps | train.seed |
| student  | labeled + teacher's labels       | section noise   | iterations.N.arch | student.steps | seed + i   |

The recipe is stored in the checkpoint, so a model says how it was made.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .io import InputError
from .params import SUPERVISED, NoiseParams, Params
from .train import FitConfig


@dataclass(frozen=True)
class Recipe:
    name: str
    role: str  # teacher | baseline | oracle | student
    arch: str
    noise: dict  # randaugment_n, randaugment_m, dropout, drop_path
    steps: int
    seed: int  # model init, batch order, augmentation draws
    batch_ratio: int = 1  # pseudo-labeled batch = ratio x labeled batch; loss = CE_l + ratio CE_u (students)
    targets: str | None = None  # soft | hard pseudo labels; None: labeled images only
    teacher: str | None = None  # whose pseudo labels a student learns from
    init_from_teacher: bool = False  # an ablation: start from the teacher's weights (the paper: from scratch)
    pretrained: str | None = None  # start from these weights (a file under models/pretrained/ or a timm tag)
    schedule: str = "joint"  # joint | finetune (an ablation: pseudo labels alone, then the labels alone)

    @property
    def supervised(self) -> bool:
        return self.targets is None

    def as_dict(self) -> dict:
        return asdict(self)


def _noise(n: NoiseParams) -> dict:
    return {"randaugment_n": n.randaugment_n, "randaugment_m": n.randaugment_m, "dropout": n.dropout, "drop_path": n.drop_path}


def recipe(p: Params, name: str) -> Recipe:
    """The recipe of model `name`: 'teacher', 'baseline', 'oracle' or an iteration key."""
    if name in SUPERVISED:
        # the baseline and the oracle take the teacher's draws too: the baseline differs from the
        # teacher in architecture alone, the oracle from the baseline in its labeled images alone
        return Recipe(name, name, p.arch_of(name), _noise(p.teacher), p.teacher.steps, p.train.seed,
                      pretrained=p.teacher.pretrained if name == "teacher" else None)
    if name not in p.iterations:
        raise InputError(f"{name!r} is not a model of this pipeline: teacher, baseline, oracle or one of {', '.join(p.iterations)}")
    it = p.iterations[name]
    position = list(p.iterations).index(name) + 1  # the chain's order is its structure (dvc.yaml's foreach)
    return Recipe(name, "student", it.arch, _noise(p.noise), p.student.steps, p.train.seed + position,
                  p.student.batch_ratio, p.student.targets, it.teacher, p.student.init == "teacher",
                  p.student.pretrained.get(name), p.student.schedule)


def fit_config(p: Params, r: Recipe, checkpoint_every: int = 0) -> FitConfig:
    t = p.train
    return FitConfig(steps=r.steps, batch_size=t.batch_size, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                     warmup_steps=t.warmup_steps, batch_ratio=r.batch_ratio, seed=r.seed, checkpoint_every=checkpoint_every,
                     ema_decay=t.ema_decay, pretrain_steps=r.steps // 2 if r.schedule == "finetune" else 0)
