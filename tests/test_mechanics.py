"""The method's mechanics, each pinned by a fast test that fails when it is switched off or
altered: the loss weighting, soft / hard targets and the temperature, the threshold and the
balancing, the three noises (on in training, off at labeling), the un-noised teacher, the EMA
weights that predict, and the chain of teachers. benchmarks/mutations.py shows it: every one of
its targeted mutations of these mechanisms fails a test (benchmarks/results/mutations.md).

In-process, tiny models and tensors, no DVC, no MLflow; the stage tests share one prepared
digits folder with a pool cut to POOL unlabeled images."""
import copy
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import ROOT, tiny_raw
from noisystudent.params import Params

POOL = 150  # unlabeled images the stage tests label and select


def _p(**kw) -> Params:
    return Params.model_validate(tiny_raw(**kw))


# teacher and student noise all different, so a mix-up between them shows
NOISY = {"teacher__randaugment_n": 1, "teacher__randaugment_m": 5, "teacher__dropout": 0.6, "teacher__drop_path": 0.3,
         "noise__randaugment_n": 3, "noise__randaugment_m": 7, "noise__dropout": 0.2, "noise__drop_path": 0.1,
         "teacher__steps": 2, "student__steps": 2, "student__batch_ratio": 3}


def _ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-sum_c t_c log softmax(z)_c, per-example mean: written out, not the library's."""
    return -(targets * torch.log_softmax(logits, 1)).sum(1).mean()


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(1, keepdims=True)


def _randaugment(tf):
    """(N, M) of the RandAugment inside a Preprocess, or None."""
    from noisystudent.transforms import RandAugment

    ops = [] if tf.pil is None else [o for o in tf.pil.transforms if isinstance(o, RandAugment)]
    return (ops[0].num_layers, ops[0].magnitude) if ops else None


def _noise_of(model) -> tuple[float, float]:
    """(dropout before the classifier, stochastic depth of the last block) of an ns_resnet."""
    last = model.blocks[-1].drop_path
    return model.drop.p, getattr(last, "drop_prob", 0.0)


class Probe(nn.Module):
    """A linear model that records the size of each batch it sees and its mode."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(2, 2)
        self.seen: list[tuple[int, bool]] = []

    def forward(self, x):
        self.seen.append((len(x), self.training))
        return self.fc(x)


# ---- the loss and the training loop ------------------------------------------------------


@pytest.mark.parametrize("student", [True, False])
def test_one_step_follows_the_gradient_of_ce_labeled_plus_ratio_ce_pseudo(student):
    """Every labeled row is (x_l, t_l), every pseudo-labeled row (x_u, t_u), so whatever the
    batches drawn, one SGD step (lr, Nesterov momentum m, no weight decay) moves the weights by
    lr (1 + m) grad[CE(x_l, t_l) + ratio CE(x_u, t_u)]; the network sees B labeled + ratio x B
    pseudo-labeled images in one batch, in training mode (its dropout and stochastic depth on)."""
    from noisystudent.train import FitConfig, fit

    B, ratio, lr, m = 4, 3, 0.1, 0.9
    x_l, t_l = torch.tensor([1.0, 2.0]), torch.tensor([0.9, 0.1])
    x_u, t_u = torch.tensor([-1.5, 0.5]), torch.tensor([0.2, 0.8])
    labeled = TensorDataset(x_l.repeat(10, 1), t_l.repeat(10, 1))
    pseudo = TensorDataset(x_u.repeat(30, 1), t_u.repeat(30, 1)) if student else None
    model = Probe()
    ref = copy.deepcopy(model)

    def grads(weight_u: float) -> list[torch.Tensor]:
        ref.zero_grad()
        loss = _ce(ref.fc(x_l[None]), t_l[None]) + (weight_u * _ce(ref.fc(x_u[None]), t_u[None]) if student else 0)
        loss.backward()
        return [p.grad.clone() for p in ref.parameters()]

    want, other = grads(ratio), grads(1.0)
    fit(model, labeled, FitConfig(steps=1, batch_size=B, lr=lr, momentum=m, weight_decay=0.0, batch_ratio=ratio, seed=0), pseudo)
    moved = [p0.detach() - p1.detach() for p0, p1 in zip(ref.parameters(), model.parameters())]
    assert all(torch.allclose(d, lr * (1 + m) * g, rtol=1e-4, atol=1e-7) for d, g in zip(moved, want))
    if student:  # the test tells the weightings apart: ratio 1 would have moved the weights elsewhere
        assert not all(torch.allclose(d, lr * (1 + m) * g, rtol=1e-3, atol=1e-6) for d, g in zip(moved, other))
    assert model.seen == [(B + ratio * B if student else B, True)]


def test_pretrain_then_finetune_learns_from_one_set_per_phase():
    """pretrain_steps > 0 (the ablation against joint training): before that step the network
    sees only the pseudo-labeled batch and steps down grad CE(x_u, t_u), weighted 1, not ratio;
    from it on, only the labeled batch, down grad CE(x_l, t_l). The logged losses say which."""
    from noisystudent.train import FitConfig, fit

    B, ratio, lr, m = 4, 3, 0.1, 0.9
    x_l, t_l = torch.tensor([1.0, 2.0]), torch.tensor([0.9, 0.1])
    x_u, t_u = torch.tensor([-1.5, 0.5]), torch.tensor([0.2, 0.8])
    labeled, pseudo = TensorDataset(x_l.repeat(10, 1), t_l.repeat(10, 1)), TensorDataset(x_u.repeat(30, 1), t_u.repeat(30, 1))
    model = Probe()
    weights = [[q.detach().clone() for q in model.parameters()]]

    def grad(at: list[torch.Tensor], x, t) -> list[torch.Tensor]:
        ref = copy.deepcopy(model)
        with torch.no_grad():
            for q, w in zip(ref.parameters(), at):
                q.copy_(w)
        _ce(ref.fc(x[None]), t[None]).backward()
        return [q.grad.clone() for q in ref.parameters()]

    cfg = FitConfig(steps=2, batch_size=B, lr=lr, momentum=m, weight_decay=0.0, batch_ratio=ratio, seed=0, log_every=1,
                    pretrain_steps=1)
    _, history = fit(model, labeled, cfg, pseudo, on_log=lambda *_: weights.append([q.detach().clone() for q in model.parameters()]))
    g1, g2 = grad(weights[0], x_u, t_u), grad(weights[1], x_l, t_l)
    # Nesterov SGD: step 1 moves by lr_1 (1 + m) g1, step 2 by lr_2 ((1 + m) g2 + m^2 g1) (lr_t: the schedule's)
    for step, want in enumerate([[(1 + m) * a for a in g1], [(1 + m) * b + m * m * a for a, b in zip(g1, g2)]]):
        moved = [w0 - w1 for w0, w1 in zip(weights[step], weights[step + 1])]
        assert all(torch.allclose(d, history[step]["lr"] * g, rtol=1e-4, atol=1e-7) for d, g in zip(moved, want)), step
    assert model.seen == [(ratio * B, True), (B, True)]
    assert history[0]["loss_labeled"] == 0 < history[0]["loss_pseudo"] and history[1]["loss_pseudo"] == 0 < history[1]["loss_labeled"]


def test_finetune_schedule_splits_the_student_steps_in_half():
    from noisystudent.train import FitConfig, fit

    labeled = TensorDataset(torch.randn(8, 2), torch.eye(2)[torch.arange(8) % 2])
    pseudo = TensorDataset(torch.randn(24, 2), torch.eye(2)[torch.arange(24) % 2])
    model = Probe()
    fit(model, labeled, FitConfig(steps=6, batch_size=2, lr=0.1, batch_ratio=3, seed=0, pretrain_steps=3), pseudo)
    assert [n for n, _ in model.seen] == [6, 6, 6, 2, 2, 2]
    model = Probe()
    fit(model, labeled, FitConfig(steps=2, batch_size=2, lr=0.1, batch_ratio=3, seed=0), pseudo)
    assert [n for n, _ in model.seen] == [8, 8]  # joint (the default): both batches in every step


def test_ema_weights_predict_log_and_average_the_trained_ones():
    """ema_decay > 0: fit returns the EMA copy (eval mode), on_log gets that same copy (validation
    uses it), and it averages the trained weights: after step 1 it is they (timm's warm-up), after
    step 2 it lies strictly between the weights of steps 1 and 2."""
    from noisystudent.train import FitConfig, fit

    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    ds = TensorDataset(x, torch.nn.functional.one_hot((x[:, 0] > 0).long(), 2).float())
    model = Probe()
    logged, raw = [], []

    def on_log(step, figs, m):
        logged.append(m)
        raw.append([p.detach().clone() for p in model.parameters()])

    predictor, _ = fit(model, ds, FitConfig(steps=2, batch_size=8, lr=0.5, seed=0, ema_decay=0.9, log_every=1), on_log=on_log)
    assert predictor is not model and logged == [predictor, predictor] and not predictor.training
    for w1, w2, ema in zip(*raw, predictor.parameters()):
        moved, followed = w2 - w1, ema.detach() - w1
        assert moved.abs().min() > 1e-6
        c = (followed / moved).flatten()
        assert torch.allclose(c, c[0].expand_as(c), atol=1e-4) and 0.05 < c[0] < 0.95, c


# ---- the noises: in the model, in the data, on in training -------------------------------


def test_created_model_carries_dropout_and_stochastic_depth():
    from noisystudent.models import create_model

    m = create_model("ns_resnet_xs", 10, 1, dropout=0.5, drop_path=0.2)
    assert _noise_of(m) == (0.5, pytest.approx(0.2))
    assert _noise_of(create_model("ns_resnet_xs", 10, 1)) == (0.0, 0.0)


@pytest.mark.parametrize("dropout, drop_path", [(0.5, 0.0), (0.0, 0.5)])
def test_each_model_noise_is_active_in_training_and_off_in_eval(dropout, drop_path):
    """Each noise on its own changes train-mode outputs from call to call (batch statistics alone
    do not: the noiseless model is deterministic in train mode too); eval mode is deterministic."""
    from noisystudent.models import create_model

    torch.manual_seed(0)
    x = torch.randn(6, 1, 8, 8)
    for noise, expect_noisy in (((dropout, drop_path), True), ((0.0, 0.0), False)):
        torch.manual_seed(1)
        m = create_model("ns_resnet_xs", 10, 1, *noise).train()
        a, b = m(x), m(x)
        assert (not torch.allclose(a, b)) == expect_noisy, noise
        m.eval()
        assert torch.equal(m(x), m(x))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The tiny digits folder (prepare stage), its unlabeled pool cut to POOL images."""
    from stages.prepare import run as prepare_stage

    d = tmp_path_factory.mktemp("mechanics") / "data"
    prepare_stage(_p(), d)
    pd.read_parquet(d / "unlabeled.parquet").iloc[:POOL].to_parquet(d / "unlabeled.parquet", index=False)
    return d


def test_randaugment_reaches_the_training_batches(prepared):
    """A training dataset's batches carry RandAugment (drawn from each key's seed: the same
    seeds, the same batch); the eval transform's batches are the plain images."""
    from noisystudent.data import ImageDataset, Prepared
    from noisystudent.transforms import data_config, eval_transform, train_transform

    data = Prepared.load(prepared)
    ids = data.split("labeled")["id"].to_numpy()[:12]
    cfg = data_config("ns_resnet_xs", data.in_chans, 8, data.image_size)
    keys = [(i, 1000 + i) for i in range(len(ids))]
    plain, _ = ImageDataset(data.images, ids, None, eval_transform(cfg)).__getitems__(keys)
    train = ImageDataset(data.images, ids, None, train_transform(cfg, 2, 9))
    a, _ = train.__getitems__(keys)
    b, _ = train.__getitems__(keys)
    assert torch.equal(a, b) and a.shape == plain.shape
    assert sum(not torch.equal(a[i], plain[i]) for i in range(len(ids))) >= len(ids) // 2


def test_randaugment_applies_n_ops_to_every_image():
    from noisystudent.transforms import RandAugment

    ra, applied = RandAugment(3, 9), []
    ra.ops = [(lambda name: lambda img: applied.append(name) or img)(op.name) for op in ra.ops]
    for _ in range(20):
        ra(None)
    assert len(applied) == 60 and len(set(applied)) > 5


def _spy_fit(monkeypatch) -> dict:
    """Let stages/train.py train through the real fit, keeping what it was given and returned."""
    import noisystudent.train as train_mod

    real, got = train_mod.fit, {}

    def spy(model, labeled, cfg, pseudo=None, **kw):
        predictor, history = real(model, labeled, cfg, pseudo, **kw)
        got.update(model=model, labeled=labeled, cfg=cfg, pseudo=pseudo, predictor=predictor)
        return predictor, history

    monkeypatch.setattr(train_mod, "fit", spy)
    return got


def test_train_stage_teacher_gets_its_noise_and_saves_the_ema_weights(prepared, tmp_path, monkeypatch):
    from noisystudent.checkpoint import load_checkpoint
    from stages.train import run as train_stage

    p = _p(**NOISY)
    got = _spy_fit(monkeypatch)
    train_stage(p, "teacher", prepared, tmp_path / "t.pt", tmp_path / "t.json")
    assert got["pseudo"] is None and _randaugment(got["labeled"].transform) == (1, 5.0)  # section teacher's noise
    assert _noise_of(got["model"]) == (0.6, pytest.approx(0.3))
    assert got["cfg"].ema_decay == p.train.ema_decay > 0
    # the checkpoint's predicting weights are the EMA copy's; the raw ones are kept beside them
    model, predictor, ck = got["model"], got["predictor"], load_checkpoint(tmp_path / "t.pt")
    assert predictor is not model
    assert all(torch.equal(v, ck["state_dict"][k]) for k, v in predictor.state_dict().items())
    assert all(torch.equal(v, ck["state_dict_raw"][k]) for k, v in model.state_dict().items())
    assert not torch.equal(ck["state_dict"]["fc.weight"], ck["state_dict_raw"]["fc.weight"])


def _selected(path, data, rng) -> pd.DataFrame:
    """A selected.parquet as the select stage writes it (probs, label = argmax, confidence, copies)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from noisystudent.shards import frame_to_table

    ids = data.split("unlabeled")["id"].to_numpy()[:40]
    probs = rng.dirichlet(np.ones(data.num_classes), len(ids)).astype(np.float32)
    copies = rng.integers(1, 4, len(ids)).astype(np.int32)
    pq.write_table(frame_to_table(ids, probs, probs.max(1)).append_column("copies", pa.array(copies)), path)
    return pd.DataFrame({"id": ids, "label": probs.argmax(1), "probs": list(probs), "copies": copies}).set_index("id")


@pytest.mark.parametrize("targets", ["soft", "hard"])
def test_train_stage_student_gets_student_noise_weighting_and_its_targets(prepared, tmp_path, monkeypatch, targets):
    """A student: section noise (not the teacher's) on both its labeled and pseudo-labeled images
    and in its model, batch_ratio into the loop, every selected image as many times as its
    copies, and as targets its soft labels (as labeled: softmax(logits / T)) or one-hot hard
    labels with the labeled images' smoothing."""
    from noisystudent.data import Prepared
    from stages.train import run as train_stage

    p = _p(**NOISY, student__targets=targets)
    data = Prepared.load(prepared)
    sel = _selected(tmp_path / "sel.parquet", data, np.random.default_rng(0))
    got = _spy_fit(monkeypatch)
    train_stage(p, "s1", prepared, tmp_path / "s1.pt", tmp_path / "s1.json", tmp_path / "sel.parquet")
    pseudo = got["pseudo"]
    assert _randaugment(pseudo.transform) == _randaugment(got["labeled"].transform) == (3, 7.0)
    assert _noise_of(got["model"]) == (0.2, pytest.approx(0.1))
    assert got["cfg"].batch_ratio == 3
    assert Counter(pseudo.ids.tolist()) == sel["copies"].to_dict()
    smooth, k = p.train.label_smoothing, data.num_classes
    for i, t in zip(pseudo.ids, pseudo.targets):
        want = sel.loc[i, "probs"] if targets == "soft" else np.eye(k)[sel.loc[i, "label"]] * (1 - smooth) + smooth / k
        np.testing.assert_allclose(t, want, atol=1e-6)


# ---- labeling: the teacher un-noised, the temperature ------------------------------------


def test_label_rows_temper_the_targets_and_never_the_confidence():
    from noisystudent.pseudo import label_rows, soft_labels

    z = np.array([[3.0, 1.0, -2.0], [0.5, 0.4, 2.5]])
    probs, conf = label_rows(z, temperature=3.0)
    np.testing.assert_allclose(probs, _softmax(z / 3.0), atol=1e-6)
    np.testing.assert_allclose(conf, _softmax(z).max(1), atol=1e-6)
    np.testing.assert_allclose(soft_labels(z, 0.5), _softmax(z / 0.5), atol=1e-6)


def _noisy_model():
    from noisystudent.models import create_model

    torch.manual_seed(0)
    m = create_model("ns_resnet_xs", 10, 1, dropout=0.9, drop_path=0.5)
    with torch.no_grad():
        m.fc.weight.mul_(20)  # confident, varied predictions
    return m


def test_labeling_and_evaluation_predict_in_eval_mode():
    """Whatever mode the model comes in, labeling (stream_soft_labels) and evaluation /
    validation (predict_logits) are eval mode: no dropout, no stochastic depth, BatchNorm's
    running statistics; the same labels twice."""
    from noisystudent.inference import predict_logits, stream_soft_labels

    m = _noisy_model()
    x = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = m.eval()(x).numpy()
    dl = DataLoader(TensorDataset(x, torch.arange(10)), batch_size=4)
    runs = []
    for _ in range(2):
        m.train()
        ids, probs, conf = (np.concatenate(c) for c in zip(*stream_soft_labels(m, dl, 2.0)))
        runs.append(probs)
        assert ids.tolist() == list(range(10))
        np.testing.assert_allclose(probs, _softmax(want / 2.0), atol=1e-5)
        np.testing.assert_allclose(conf, _softmax(want).max(1), atol=1e-5)
    assert np.array_equal(*runs)
    m.train()
    logits, keys = predict_logits(m, dl, desc=None)
    assert torch.allclose(logits, torch.from_numpy(want), atol=1e-5) and keys.tolist() == list(range(10))


def _teacher_checkpoint(path, data, p) -> tuple[nn.Module, dict]:
    """A teacher checkpoint trained with heavy noise (its recipe says so), EMA and raw weights
    different: what labeling must undo (noise) and pick (EMA)."""
    from noisystudent.checkpoint import save_model
    from noisystudent.models import create_model
    from noisystudent.transforms import data_config

    ema = _noisy_model()
    torch.manual_seed(5)
    raw = create_model("ns_resnet_xs", data.num_classes, data.in_chans, 0.9, 0.5)
    dcfg = data_config("ns_resnet_xs", data.in_chans, p.data.image_size, data.image_size)
    noise = {"randaugment_n": 2, "randaugment_m": 15, "dropout": 0.9, "drop_path": 0.5}
    save_model(path, ema, raw, {"arch": "ns_resnet_xs", "num_classes": data.num_classes, "in_chans": data.in_chans,
                                "name": "teacher", "data_config": dcfg, "recipe": {"noise": noise}})
    return ema, dcfg


def test_load_model_is_the_ema_weights_in_eval_mode_without_noise_unless_asked(tmp_path, prepared):
    from noisystudent.checkpoint import load_model
    from noisystudent.data import Prepared

    ema, _ = _teacher_checkpoint(tmp_path / "t.pt", Prepared.load(prepared), _p())
    model, ck = load_model(tmp_path / "t.pt")
    assert not model.training and _noise_of(model) == (0.0, 0.0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ema.state_dict().items())
    noised, _ = load_model(tmp_path / "t.pt", noised=True)  # the ablation only
    assert _noise_of(noised) == (0.9, pytest.approx(0.5))


def test_pseudo_label_stage_labels_with_the_unnoised_ema_teacher_at_the_temperature(tmp_path, prepared):
    """The stage's rows are exactly the clean forward pass of the teacher's EMA weights in eval
    mode on the eval transform (no RandAugment, dropout or stochastic depth, though its recipe
    has them), tempered targets, T = 1 confidence; pseudo.noised is off unless asked."""
    from noisystudent.data import Prepared
    from noisystudent.shards import read_labels
    from noisystudent.transforms import eval_transform
    from stages.pseudo_label import run as pseudo_label_stage

    p = _p(pseudo__temperature=2.0)
    assert p.pseudo.noised is False
    data = Prepared.load(prepared)
    ema, dcfg = _teacher_checkpoint(tmp_path / "t.pt", data, p)
    pseudo_label_stage(p, "s1", prepared, tmp_path / "t.pt", tmp_path / "labels")
    rows = read_labels(tmp_path / "labels").sort_values("id", ignore_index=True)
    ids = np.sort(data.split("unlabeled")["id"].to_numpy())
    assert rows["id"].tolist() == ids.tolist()
    with torch.no_grad():
        logits = ema.eval()(eval_transform(dcfg).batch(data.images.take(ids))).numpy()
    np.testing.assert_allclose(np.stack(rows["probs"]), _softmax(logits / 2.0), atol=1e-5)
    np.testing.assert_allclose(rows["confidence"], _softmax(logits).max(1), atol=1e-5)


# ---- selection: threshold and balancing --------------------------------------------------


def _labels_folder(out, data) -> pd.DataFrame:
    """A finished labels folder for the pool, confidences spread over (0.1, 1)."""
    from noisystudent.shards import label_shard, open_labels_dir

    ids = data.split("unlabeled")["id"].to_numpy()
    probs = _softmax(np.random.default_rng(3).normal(size=(len(ids), data.num_classes)) * 2.5).astype(np.float32)

    where = {int(i): k for k, i in enumerate(ids)}

    def predict(chunk):
        pos = np.array([where[int(i)] for i in chunk])
        yield chunk, probs[pos], probs[pos].max(1)

    open_labels_dir(out, {"num_ids": len(ids)})
    label_shard(ids, 0, 1, out, 1000, predict)
    return pd.DataFrame({"id": ids, "label": probs.argmax(1), "confidence": probs.max(1)})


@pytest.mark.parametrize("balance", [True, False])
def test_select_stage_thresholds_and_balances(prepared, tmp_path, balance):
    """Only images at or above select.threshold; balanced: every class to per_class images
    (here under-full: every eligible image, duplicated); unbalanced (the ablation): each once."""
    import json

    from noisystudent.data import Prepared
    from stages.select import run as select_stage

    p = _p(select__threshold=0.5, select__per_class=30, select__balance=balance)
    frame = _labels_folder(tmp_path / "labels", Prepared.load(prepared))
    eligible = frame[frame["confidence"] >= 0.5]
    assert 0 < len(eligible) < len(frame) and eligible["label"].value_counts().max() < 30
    select_stage(p, "s1", prepared, tmp_path / "labels", tmp_path / "sel.parquet", tmp_path / "sel.json")
    sel = pd.read_parquet(tmp_path / "sel.parquet")
    assert sorted(sel["id"]) == sorted(eligible["id"]) and (sel["confidence"] >= 0.5).all()
    per_class = sel.groupby("label")["copies"].sum()
    if balance:
        assert (per_class == 30).all() and len(per_class) == eligible["label"].nunique()
    else:
        assert (sel["copies"] == 1).all()
    assert json.loads((tmp_path / "sel.json").read_text())["kept_after_threshold"] == len(eligible)


# ---- the chain, the recipes, the method's settings ---------------------------------------


CHAIN = {"s1": {"teacher": "teacher", "arch": "ns_resnet_xs"}, "s2": {"teacher": "s1", "arch": "ns_resnet_xs"},
         "s3": {"teacher": "s1", "arch": "ns_resnet_xs"}}


def test_each_student_learns_from_its_own_teacher_in_the_chain():
    """recipe and dvc.yaml agree with iterations.<key>.teacher (s3's teacher is s1, not the
    previous key): its labels come from that teacher's model, its training reads its own
    selection and writes its own model."""
    from depgraph import dvc_yaml, instances
    from noisystudent.recipe import recipe

    p = _p(iterations=CHAIN, eval__models=["teacher", "s1", "s2", "s3", "baseline", "oracle"])
    stages, raw = instances(p), dvc_yaml()["stages"]
    for key, it in p.iterations.items():
        assert recipe(p, key).teacher == it.teacher
        label, sel, train = stages[f"pseudo_label@{key}"], stages[f"select@{key}"], stages[f"train_student@{key}"]
        assert f"--teacher models/{it.teacher}.pt" in label["cmd"] and f"--out data/pseudo/{key}/labels" in label["cmd"]
        deps = {st: [d.replace("${key}", key).replace("${item.teacher}", it.teacher) for d in raw[st]["do"]["deps"]]
                for st in ("pseudo_label", "train_student")}
        assert f"models/{it.teacher}.pt" in deps["pseudo_label"]
        assert f"--labels data/pseudo/{key}/labels " in sel["cmd"] and f"--out data/pseudo/{key}/selected.parquet" in sel["cmd"]
        assert f"--selected data/pseudo/{key}/selected.parquet " in train["cmd"] and f"--out models/{key}.pt" in train["cmd"]
        assert f"--teacher models/{it.teacher}.pt" in train["cmd"] and f"data/pseudo/{key}/selected.parquet" in deps["train_student"]


def test_recipes_give_each_role_its_noise_weighting_targets_and_start():
    from noisystudent.recipe import fit_config, recipe

    p = _p(**NOISY, student__targets="hard", train__ema_decay=0.99)
    t, s = recipe(p, "teacher"), recipe(p, "s1")
    assert t.noise == {"randaugment_n": 1, "randaugment_m": 5, "dropout": 0.6, "drop_path": 0.3} and t.supervised
    assert s.noise == {"randaugment_n": 3, "randaugment_m": 7, "dropout": 0.2, "drop_path": 0.1}
    assert (s.batch_ratio, s.targets, s.init_from_teacher) == (3, "hard", False)
    assert recipe(p, "baseline").noise == t.noise
    cfg = fit_config(p, s)
    assert (cfg.batch_ratio, cfg.ema_decay) == (3, 0.99)
    assert cfg.pretrain_steps == 0 and s.schedule == "joint"
    f = recipe(_p(**NOISY, student__schedule="finetune"), "s1")
    assert f.schedule == "finetune" and fit_config(p, f).pretrain_steps == f.steps // 2 > 0
    assert fit_config(p, recipe(_p(**NOISY, student__schedule="finetune"), "teacher")).pretrain_steps == 0


def test_students_are_equal_or_larger_than_their_teachers():
    one = {"eval__models": ["teacher", "s1", "baseline", "oracle"], "teacher__arch": "ns_resnet_s"}
    with pytest.raises(ValueError, match="smaller than its teacher"):
        _p(**one, iterations={"s1": {"teacher": "teacher", "arch": "ns_resnet_xs"}})
    _p(**one, iterations={"s1": {"teacher": "teacher", "arch": "ns_resnet_xs", "allow_smaller": True}})
    _p(**one, iterations={"s1": {"teacher": "teacher", "arch": "ns_resnet_m"}})


def test_repository_params_are_the_papers_method():
    """params.yaml and the defaults: the teacher labels un-noised, every student noise on,
    students from scratch, balanced selection, EMA weights predict."""
    from noisystudent.params import PseudoParams, load_params

    p = load_params(ROOT / "params.yaml")
    assert p.pseudo.noised is False and PseudoParams().noised is False
    n = p.noise
    assert n.randaugment_n > 0 and n.randaugment_m > 0 and n.dropout > 0 and n.drop_path > 0
    assert p.student.init == "scratch" and p.select.balance is True and p.student.batch_ratio >= 1 and p.train.ema_decay > 0
