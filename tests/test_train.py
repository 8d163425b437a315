import pytest
import numpy as np
import torch
from torch.utils.data import TensorDataset

from noisystudent.inference import predict_logits
from noisystudent.train import CycleBatchSampler, FitConfig, fit, lr_at


def test_cross_entropy_on_probability_targets_is_the_soft_loss():
    """The loop's loss (F.cross_entropy given probabilities) is -sum_c t_c log p_c, averaged."""
    logits, t = torch.randn(6, 4), torch.softmax(torch.randn(6, 4), 1)
    want = -(t * torch.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(torch.nn.functional.cross_entropy(logits, t), want, atol=1e-6)

def test_cycle_sampler_covers_every_image_evenly():
    batches = list(CycleBatchSampler(n=10, batch_size=4, steps=5, seed=0, stream=0))
    assert len(batches) == 5 and all(len(b) == 4 for b in batches)
    seen = np.bincount([i for b in batches for i, _ in b], minlength=10)
    assert seen.tolist() == [2] * 10  # 20 draws = two full permutations
    seeds = [s for b in batches for _, s in b]
    assert len(set(seeds)) == 20  # every draw its own augmentation seed


def test_sampler_when_batch_larger_than_dataset():
    (b,) = list(CycleBatchSampler(n=3, batch_size=7, steps=1, seed=0, stream=0))
    assert len(b) == 7 and {i for i, _ in b} == {0, 1, 2}


def test_sampler_start_skips_exactly_the_first_batches():
    full = list(CycleBatchSampler(n=7, batch_size=3, steps=9, seed=4, stream=1))
    assert list(CycleBatchSampler(n=7, batch_size=3, steps=9, seed=4, stream=1, start=5)) == full[5:]
    other = list(CycleBatchSampler(n=7, batch_size=3, steps=9, seed=4, stream=0))
    assert other != full  # streams (labeled, pseudo) draw independently


def test_lr_schedule_warmup_then_cosine():
    cfg = FitConfig(steps=100, batch_size=1, lr=1.0, warmup_steps=10)
    assert lr_at(0, cfg) == 0.1 and lr_at(9, cfg) == 1.0
    assert lr_at(10, cfg) == 1.0 and lr_at(99, cfg) < 0.01


def _toy(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = (x[:, 0] > 0).long()
    return x, y


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 2)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.fc(self.drop(x))


def test_one_loop_learns_teacher_and_student_roles():
    x, y = _toy()
    onehot = torch.nn.functional.one_hot(y, 2).float()
    cfg = FitConfig(steps=150, batch_size=16, lr=0.5, warmup_steps=5, batch_ratio=3, seed=0)
    teacher = Linear()
    fit(teacher, TensorDataset(x, onehot), cfg)
    t_logits, _ = predict_logits(teacher, torch.utils.data.DataLoader(TensorDataset(x, y), batch_size=32))
    assert (t_logits.argmax(1) == y).float().mean() > 0.9
    # the student trains on soft targets from the teacher through the same function
    xu, _ = _toy(128, seed=1)
    soft = torch.softmax(teacher.eval()(xu), 1).detach()
    student = Linear()
    _, history = fit(student, TensorDataset(x, onehot), cfg, pseudo=TensorDataset(xu, soft))
    assert history[-1]["loss_pseudo"] > 0 and history[-1]["step"] == cfg.steps
    s_logits, _ = predict_logits(student, torch.utils.data.DataLoader(TensorDataset(x, y), batch_size=32))
    assert (s_logits.argmax(1) == y).float().mean() > 0.9


def test_fit_is_deterministic_for_a_seed():
    x, y = _toy()
    ds = TensorDataset(x, torch.nn.functional.one_hot(y, 2).float())
    cfg = FitConfig(steps=20, batch_size=8, lr=0.1, seed=3)
    a, b = Linear(), Linear()
    b.load_state_dict(a.state_dict())
    fit(a, ds, cfg)
    fit(b, ds, cfg)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_predict_is_unnoised():
    model = Linear()
    model.train()
    loader = torch.utils.data.DataLoader(TensorDataset(torch.randn(8, 2), torch.arange(8)), batch_size=4)
    a, ids = predict_logits(model, loader)
    b, _ = predict_logits(model, loader)
    assert torch.equal(a, b) and not model.training  # dropout off: identical twice
    assert ids.tolist() == list(range(8))


def test_sampler_ranks_split_each_global_batch():
    """DDP: rank r keeps r::world of every global batch; together the ranks draw exactly the
    single-process batches, keys and augmentation seeds included."""
    one = list(CycleBatchSampler(n=10, batch_size=4, steps=6, seed=1, stream=0))
    ranks = [list(CycleBatchSampler(n=10, batch_size=4, steps=6, seed=1, stream=0, rank=r, world=2)) for r in (0, 1)]
    for step, batch in enumerate(one):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(batch)
        assert not set(ranks[0][step]) & set(ranks[1][step])


def test_ema_weights_predict_and_lag_the_raw_ones():
    x, y = _toy()
    ds = TensorDataset(x, torch.nn.functional.one_hot(y, 2).float())
    model = Linear()
    predictor, _ = fit(model, ds, FitConfig(steps=30, batch_size=8, lr=0.5, seed=0, ema_decay=0.9))
    assert predictor is not model and not predictor.training
    assert not torch.equal(predictor.fc.weight, model.fc.weight)  # an average of past weights
    plain = Linear()
    same, _ = fit(plain, ds, FitConfig(steps=30, batch_size=8, lr=0.5, seed=0))
    assert same is plain  # ema_decay 0: the trained model itself predicts


@pytest.mark.parametrize("precision", ["bf16", "fp16", "mixed"])
def test_mixed_precision_loop_learns_on_cpu(precision):
    """autocast in the one loop (fp16 with a gradient scaler): it still learns the toy task."""
    from noisystudent.runtime import Runtime, amp_dtype

    rt = Runtime(torch.device("cpu"), amp_dtype(precision, torch.device("cpu")))
    assert rt.amp in (torch.bfloat16, torch.float16)
    x, y = _toy()
    model = Linear()
    predictor, _ = fit(model, TensorDataset(x, torch.nn.functional.one_hot(y, 2).float()),
                          FitConfig(steps=150, batch_size=16, lr=0.5, warmup_steps=5, seed=0), rt=rt)
    logits, _ = predict_logits(predictor, torch.utils.data.DataLoader(TensorDataset(x, y), batch_size=32), rt=rt)
    assert logits.dtype == torch.float32 and (logits.argmax(1) == y).float().mean() > 0.9


def test_channels_last_conv_training_matches_contiguous():
    """channels-last changes the memory layout, not the maths: same model, same batches,
    weights equal up to float rounding."""
    from noisystudent.models import create_model
    from noisystudent.runtime import Runtime

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
    ds = TensorDataset(x, torch.nn.functional.one_hot(y, 3).float())
    cfg = FitConfig(steps=5, batch_size=8, lr=0.1, seed=0)
    a = create_model("ns_resnet_xs", 3, 1)
    b = create_model("ns_resnet_xs", 3, 1)
    b.load_state_dict(a.state_dict())
    fit(a, ds, cfg)
    fit(b, ds, cfg, rt=Runtime(channels_last=True))
    assert b.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-5)


def test_ema_equals_timms_model_ema_step_for_step():
    """The loop's EMA gathers its tensor lists once; the averages are timm's ModelEmaV3's."""
    from timm.utils import ModelEmaV3

    from noisystudent.models import create_model
    from noisystudent.train import _ema

    torch.manual_seed(0)
    model = create_model("ns_resnet_xs", 10, 1)
    ref, ours = ModelEmaV3(model, decay=0.99, use_warmup=True), _ema(model, 0.99)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, 20):
        loss = model(torch.randn(8, 1, 8, 8)).pow(2).mean()  # train mode: BN running stats move too
        opt.zero_grad()
        loss.backward()
        opt.step()
        ref.update(model, step=step)
        ours.update(model, step=step)
    a, b = ref.module.state_dict(), ours.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["fc.weight"], model.fc.weight)


@pytest.mark.slow
def test_compiled_loop_trains_like_eager():
    """train.compile: torch.compile (inductor, ~30 s on CPU) runs the same maths as eager."""
    from noisystudent.models import create_model
    from noisystudent.runtime import Runtime

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    ds = TensorDataset(x, torch.nn.functional.one_hot(y, 3).float())
    cfg = FitConfig(steps=6, batch_size=16, lr=0.1, seed=0)
    eager, compiled = create_model("ns_resnet_xs", 3, 1), create_model("ns_resnet_xs", 3, 1)
    compiled.load_state_dict(eager.state_dict())
    start = [p.detach().clone() for p in eager.parameters()]
    fit(eager, ds, cfg)
    fit(compiled, ds, cfg, rt=Runtime(compile=True))
    for a, b in zip(eager.parameters(), compiled.parameters()):
        assert torch.allclose(a, b, atol=1e-4)
    assert any(not torch.equal(a, b) for a, b in zip(eager.parameters(), start))  # it did train
