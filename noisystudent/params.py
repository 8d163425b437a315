"""The one typed reader of params.yaml.

Every stage calls `load_params()` before it touches any output, so a bad value stops the
stage with a message naming the key (e.g. ``noise.dropout: Input should be less than or
equal to 1``) and nothing is written.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Optional, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

# models trained on labels alone (the rest of eval.models are the chain's students): the teacher,
# the supervised baseline, and the oracle (every label of the training pool, hidden ones included)
SUPERVISED = ("teacher", "baseline", "oracle")
Prob = Annotated[float, Field(ge=0.0, le=1.0)]
INT_MAX = 2**31 - 1  # sizes and counts end up in int32 arrays and tensors; seeds are derived arithmetically
PosInt = Annotated[int, Field(gt=0, le=INT_MAX)]
Seed = Annotated[int, Field(ge=0, le=INT_MAX)]
Count = Annotated[int, Field(ge=0, le=INT_MAX)]


class _Section(BaseModel):
    # forbid: a typo such as `noise.droput` must fail, not be silently ignored;
    # allow_inf_nan=False: `.inf` or `.nan` in any float (lr, temperature, ...) is refused
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DataParams(_Section):
    """Where the images come from and how they are split (stage prepare; see sources.py)."""
    name: Literal["digits", "cifar10", "svhn", "stl10", "imagefolder"] = "digits"
    root: str = "data/raw"  # torchvision files or train/ unlabeled/ test/ [val/] folders; unused by digits
    download: bool = False  # torchvision sets only: fetch into root when missing
    seed: Seed = 0  # the split
    image_size: PosInt | None = None  # digits: 16 when None; None: the data's own size (arrays) or the model's input size (folders)
    channels: Literal[1, 3] | None = None  # None: from the data (folders: 1 if every labeled image is grayscale)
    labeled_per_class: PosInt | None = 3  # None: all of train (less val); the rest joins the unlabeled pool
    val_per_class: PosInt = 10  # carved from train unless the source has a val split
    test_per_class: PosInt | None = None  # a cap on the test split (None: all of it); digits (no test split): carved, None = 40
    max_pixels: PosInt = 64_000_000  # larger images are refused (decompression bombs)

    @model_validator(mode="after")
    def _source(self) -> "DataParams":
        if self.name == "digits":
            return self
        if self.download and self.name == "imagefolder":
            raise ValueError("download: an image folder cannot be downloaded (set it to false)")
        if not self.download and not Path(self.root).exists():
            raise ValueError(f"root: folder {self.root!r} not found (for {self.name}; set download: true for torchvision sets)")
        return self


class StudentParams(_Section):
    steps: PosInt = 300
    batch_ratio: PosInt = 3  # unlabeled batch = ratio x labeled batch; loss = CE_l + ratio CE_u (official code)
    targets: Literal["soft", "hard"] = "soft"  # the official value for a key left out; params.yaml's is tuned
    init: Literal["scratch", "teacher"] = "scratch"  # teacher (an ablation): start from the teacher's weights
    # joint: every step learns from a labeled and a pseudo-labeled batch (the paper); finetune (an
    # ablation): the first half of the steps on the pseudo labels alone, the second on the labels alone
    schedule: Literal["joint", "finetune"] = "joint"
    # iteration -> pretrained weights to start that student from, as teacher.pretrained (the paper's
    # students start from scratch); here, not under `iterations`, so a chain need not name it
    pretrained: dict[str, str] = Field(default_factory=dict)


class NoiseParams(_Section):
    """Student noise: input noise (RandAugment) and model noise (dropout, stochastic depth)."""
    randaugment_n: Annotated[int, Field(ge=0, le=10)] = 2
    randaugment_m: Annotated[float, Field(ge=0, le=30)] = 9.0  # > 10 extrapolates, as the paper
    dropout: Prob = 0.3
    drop_path: Prob = 0.2


# where local pretrained weights live: the training stages depend on this folder, so adding or
# replacing a weights file re-runs what starts from it
PRETRAINED_DIR = "models/pretrained"


class TeacherParams(NoiseParams):
    """The supervised teacher of iteration 0. Its noise is its own (same keys as `noise`), so
    that changing the student's noise leaves the teacher cached."""
    arch: str = "ns_resnet_s"
    steps: PosInt = 400
    dropout: Prob = 0.5
    # start from pretrained weights (the classifier re-initialised for the data's classes), then
    # train as usual: a weights file under models/pretrained/, or a timm pretrained tag of
    # `arch` (e.g. ns_jft_in1k for tf_efficientnet_b0: fetched from the Hugging Face hub)
    pretrained: Optional[str] = None


class BaselineParams(_Section):
    """The supervised baseline (stage train_baseline): the teacher's recipe (its noise and
    steps, section `teacher`) on the labeled images alone, in the students' architecture: what
    the students would reach without the unlabeled data, the paper's comparison. Named, not
    derived from `iterations`: the stage then depends on this one key, not on the chain. The
    oracle (stage train_oracle) is the same model and recipe trained on every label the training
    pool has, the hidden labels of the unlabeled images included: the ceiling semi-supervision
    aims at."""
    arch: str = "ns_resnet_m"  # the paper's comparison: the (last) students' architecture


Precision = Literal["fp32", "bf16", "fp16", "mixed"]


class TrainParams(_Section):
    """Optimisation shared by teacher and student (one loop for both)."""
    batch_size: PosInt = 32
    lr: Annotated[float, Field(gt=0)] = 0.05
    momentum: Prob = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.1
    warmup_steps: Count = 20
    seed: Seed = 0  # model init and batch order; iteration i trains with seed + i
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.999  # 0 = off; else val, test and labeling use the EMA weights
    # where and how it runs (noisystudent/runtime.py): these can change the numbers, so they
    # stay dependencies; what only changes the speed is in section `speed`
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when torch sees a GPU
    # torch's intra-op threads (0: torch's default, the core count): on the CPU they split the
    # sums differently, so the numbers change with them (measured: 1 vs 2 threads trained different weights)
    num_threads: Count = 0
    precision: Precision = "fp32"  # mixed: bf16 where the hardware has it, else fp16 + gradient scaler
    channels_last: bool = False
    compile: bool = False  # torch.compile the model (first steps are slow while it compiles)
    nproc: PosInt = 1  # > 1: the stage re-runs itself under `torchrun --nproc_per_node nproc` (DDP)

    @model_validator(mode="after")
    def _batch_splits(self) -> "TrainParams":
        # each of nproc processes takes an equal slice of every global batch
        if self.batch_size % self.nproc:
            raise ValueError(f"batch_size: {self.batch_size} does not split over nproc={self.nproc} processes (make it a multiple)")
        return self


class SpeedParams(_Section):
    """How fast, never what: no stage depends on these (tests/test_pipeline.py proves each one
    result-neutral: changing it leaves every model and metric byte-identical), so tuning them
    re-runs nothing. torch's thread count is not here: it changes the numbers (train.num_threads)."""
    train_workers: Count = 0  # training DataLoader workers (persistent, prefetching)
    data_workers: Count = 0  # DataLoader workers decoding images (prepare, labeling, evaluation)
    checkpoint_every: Count = 100  # steps between resume checkpoints (models/.resume/); 0 = none
    # where RandAugment runs: per image in PIL in the loader, or batched on the training device
    # (the same pixels: noisystudent/randaugment.py); auto = batched on a GPU, PIL on a CPU
    augment: Literal["auto", "batched", "pil"] = "auto"


class PseudoParams(_Section):
    temperature: Annotated[float, Field(gt=0)] = 1.0
    batch_size: PosInt = 256
    num_shards: PosInt = 1  # resumable units; `--shard i` or torchrun ranks label them in parallel
    rows_per_file: PosInt = 100_000  # Parquet part size: memory while labeling is bounded by it
    precision: Precision = "fp32"  # of the teacher's forward pass (on train.device)
    nproc: PosInt = 1  # > 1: torchrun processes on this machine, each labeling its share of the shards
    noised: bool = False  # ablation only: the teacher labels with its own training noise on (the paper: never)


class SelectParams(_Section):
    threshold: Prob = 0.3  # the official value for a key left out; params.yaml's is tuned (docs/ablations.md)
    per_class: PosInt | None = None  # None: the median over classes of the images above the threshold (follows the data)
    seed: Seed = 0
    balance: bool = True  # false (an ablation): every image at or above the threshold, once
    unlabeled_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0  # an ablation: a seeded share of the pool


class Iteration(_Section):
    teacher: str  # 'teacher' or an earlier iteration
    arch: str
    allow_smaller: bool = False  # the paper's students are equal or larger; opt in to a smaller one


# the robustness test's vocabulary (implemented in robustness.py, which a test holds to these)
Corruption = Literal[
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
]
Perturbation = Literal["gaussian_noise", "shot_noise", "rotate", "scale", "translate", "tilt", "brightness"]
CORRUPTIONS: tuple[str, ...] = get_args(Corruption)
PERTURBATIONS: tuple[str, ...] = get_args(Perturbation)


class RobustnessParams(_Section):
    """The paper's robustness measurements (stages corrupt, robustness*; see robustness.py)."""
    num_images: PosInt = 200  # test images used (the first of a seeded, class-stratified order)
    corruptions: list[Corruption] = Field(default_factory=lambda: list(CORRUPTIONS), min_length=1)
    severities: list[Annotated[int, Field(ge=1, le=5)]] = Field(default_factory=lambda: [1, 2, 3, 4, 5], min_length=1)
    perturbations: list[Perturbation] = Field(default_factory=lambda: list(PERTURBATIONS), min_length=1)
    frames: Annotated[int, Field(ge=2)] = 8  # images per perturbation sequence
    epsilons: list[Annotated[float, Field(ge=0, le=64)]] = Field(default_factory=lambda: [0, 1, 2, 4, 8, 16], min_length=1)  # FGSM, 0-255 scale
    fgsm_epsilon: Annotated[float, Field(ge=0, le=64)] = 4  # the one reported in the summary; must be in epsilons
    seed: Seed = 0

    @model_validator(mode="after")
    def _reported_eps_measured(self) -> "RobustnessParams":
        if self.fgsm_epsilon not in self.epsilons:
            raise ValueError(f"fgsm_epsilon: {self.fgsm_epsilon:g} must be one of epsilons {self.epsilons}")
        return self


class GalleryParams(_Section):
    """The paper's Figure 1 per iteration (stages gallery@*): unlabeled images where the student
    and its teacher disagree, the student's corrections first when the hidden label is known."""
    pool: PosInt = 2000  # unlabeled images both models predict (a seeded sample: big pools stay cheap)
    images: Annotated[int, Field(ge=1, le=60)] = 18  # shown in the grid (6 per row)
    seed: Seed = 0


class EvalParams(_Section):
    # the models to evaluate: dvc.yaml expands `evaluate` over this list (foreach cannot
    # join the teacher to the iterations dict); checked against `iterations` below
    models: list[str] = Field(default_factory=lambda: ["teacher"])
    batch_size: PosInt = 256
    ece_bins: PosInt = 15
    robustness: RobustnessParams = RobustnessParams()
    gallery: GalleryParams = GalleryParams()


class MlflowParams(_Section):
    enabled: bool = True
    experiment: Annotated[str, Field(min_length=1)] = "noisy-student"
    register_models: bool = False  # also register each trained model in the registry, as <experiment>-<model>


class Params(_Section):
    data: DataParams = DataParams()
    teacher: TeacherParams = TeacherParams()
    baseline: BaselineParams = BaselineParams()
    student: StudentParams = StudentParams()
    noise: NoiseParams = NoiseParams()
    train: TrainParams = TrainParams()
    speed: SpeedParams = SpeedParams()
    pseudo: PseudoParams = PseudoParams()
    select: SelectParams = SelectParams()
    iterations: dict[str, Iteration] = Field(default_factory=dict)
    eval: EvalParams = EvalParams()
    mlflow: MlflowParams = MlflowParams()

    @field_validator("iterations")
    @classmethod
    def _chain(cls, its: dict[str, Iteration]) -> dict[str, Iteration]:
        if not its:
            raise ValueError("at least one iteration is needed")
        seen = {"teacher"}
        for name, it in its.items():
            if name in SUPERVISED:
                raise ValueError(f"{name!r} is reserved for a supervised model")
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise ValueError(f"{name!r}: an iteration name becomes a file name: letters, digits, '_' and '-' only")
            if it.teacher not in seen:
                raise ValueError(f"{name}.teacher={it.teacher!r} must be 'teacher' or an earlier iteration")
            seen.add(name)
        return its

    @model_validator(mode="after")
    def _student_pretrained_names(self) -> "Params":
        for name in self.student.pretrained:
            if name not in self.iterations:
                raise ValueError(f"student.pretrained.{name}: no such iteration (one of {', '.join(self.iterations)})")
        return self

    @model_validator(mode="after")
    def _models(self, info: ValidationInfo) -> "Params":
        """The checks that build models (timm's registry, parameter counts, weight files): they
        import torch and timm, seconds per process, so stages that build no model skip them
        (`load_params(models=False)`); every stage that trains or loads one runs them, the first
        of them (train_teacher) before any later stage."""
        if not (info.context or {}).get("models", True):
            return self
        from .models import check_arch, check_pretrained, count_params

        check_arch(self.teacher.arch, "teacher.arch")
        check_arch(self.baseline.arch, "baseline.arch")
        for name, it in self.iterations.items():
            check_arch(it.arch, f"iterations.{name}.arch")
        check_pretrained(self.teacher.pretrained, self.teacher.arch, "teacher.pretrained")
        for name, weights in self.student.pretrained.items():
            check_pretrained(weights, self.iterations[name].arch, f"student.pretrained.{name}")
        for name, it in self.iterations.items():
            t_arch = self.arch_of(it.teacher)
            if not it.allow_smaller and count_params(it.arch) < count_params(t_arch):
                raise ValueError(
                    f"iterations.{name}.arch: {it.arch} ({count_params(it.arch):,} parameters) is smaller than its teacher "
                    f"{t_arch} ({count_params(t_arch):,}); Noisy Student uses equal-or-larger students "
                    f"(set iterations.{name}.allow_smaller: true to allow it)")
        return self

    @model_validator(mode="after")
    def _init_needs_equal_archs(self) -> "Params":
        if self.student.init == "teacher":
            for name, it in self.iterations.items():
                if it.arch != self.arch_of(it.teacher):
                    raise ValueError(f"student.init: teacher needs each student in its teacher's architecture "
                                     f"(iterations.{name}.arch {it.arch}, its teacher's {self.arch_of(it.teacher)})")
        return self

    @model_validator(mode="after")
    def _eval_covers_chain(self) -> "Params":
        want = ["teacher", *self.iterations, "baseline", "oracle"]
        if self.eval.models != want:
            raise ValueError(f"eval.models must list the teacher, every iteration in order, the baseline and the oracle: {want} "
                             f"(got {self.eval.models})")
        return self

    def arch_of(self, model: str) -> str:
        if model == "teacher":
            return self.teacher.arch
        if model in ("baseline", "oracle"):
            return self.baseline.arch
        return self.iterations[model].arch


def unwrap(p):
    """The plain params behind a recording view (tests/paramtrace.py), or `p` itself: for
    reads that change no result (what MLflow logs), which must not count as dependencies."""
    return getattr(p, "__wrapped__", p)


class ParamsError(ValueError):
    """A params.yaml problem, phrased as one line naming the key."""


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        if "input" in e and e["type"] != "extra_forbidden" and not isinstance(e["input"], dict):
            msg += f" (got {e['input']!r})"
        sub = re.match(r"(\w+): (.*)", msg)
        if key and sub:  # a section's own check naming its key: data.root, not "data: root"
            key, msg = f"{key}.{sub.group(1)}", sub.group(2)
        lines.append(f"{key}: {msg}" if key else msg)
    return "; ".join(lines)


def load_params(path: str | Path = "params.yaml", models: bool = True) -> Params:
    """params.yaml, validated; `models=False` skips the checks that need torch and timm (for
    stages that build no model)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping")
    try:
        return Params.model_validate(raw, context={"models": models})
    except ValidationError as e:
        raise ParamsError(f"{path}: {_describe(e)}") from None
