"""What each stage does, as plain functions of (params, paths). `stages/*.py` are thin CLIs
over these; tests call them directly."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from . import data as D
from . import plots
from .evaluate import classification_metrics, confusion_matrix
from .io import atomic_save_torch, atomic_write_csv, atomic_write_json, file_sha256, load_checkpoint
from .models import create_model, num_params
from .params import Params
from .progress import progress
from .runtime import Runtime, runtime
from .tracking import StageRun
from .train import FitConfig, Resume, fit, predict_logits, sample_seed, stream_soft_labels
from .transforms import data_config, eval_transform, pixels_to_model_input, randaugment_config, train_transform


def _tracker(p: Params, stage: str, enabled: bool = True) -> StageRun:
    # stages about one model (train_student@s1, evaluate@s1, robustness@s1) carry its name as a
    # tag, so MLflow can group a model's training, test and robustness runs
    model = {"train_teacher": "teacher", "robustness_teacher": "teacher", "train_baseline": "baseline"}.get(stage, stage.partition("@")[2])
    return StageRun(stage, p.mlflow.experiment, p.model_dump(), enabled=p.mlflow.enabled and enabled, tags={"ns.model": model} if model else None)


def _threads(p: Params) -> None:
    if p.train.num_threads:
        torch.set_num_threads(p.train.num_threads)


def prepare_stage(p: Params, out: Path, metrics_out: Path | None = None) -> dict:
    """Load `data.name`, refuse unusable files (listed in bad_files.csv, counted in the
    metrics), split, write the prepared folder."""
    with _tracker(p, "prepare") as run:
        run.log_params({"data": p.data.model_dump()})
        meta = D.prepare(out, p.data)
        figures = {**{f"n_{k}": v for k, v in meta["counts"].items()}, "bad_files": meta["bad_files"],
                   "converted": sum(meta["converted_by_mode"].values())}
        if metrics_out is not None:
            atomic_write_json(metrics_out, {**figures, "in_chans": meta["in_chans"], "num_classes": meta["num_classes"],
                                            "bad_by_reason": meta["bad_by_reason"], "converted_by_mode": meta["converted_by_mode"],
                                            "bad_files_report": str(out / "bad_files.csv")})
        run.log_metrics(figures)
        run.log_artifact(out / "bad_files.csv")
    return meta


def _load_data(p: Params, data_dir: Path) -> D.Prepared:
    return D.Prepared.load(data_dir, p.data.max_pixels)


def _loader(p: Params, data: D.Prepared, ids: np.ndarray, tf, batch_size: int, rt: Runtime) -> DataLoader:
    """Un-shuffled, id-keyed batches for labeling and evaluation; workers decode."""
    return D.loader(D.ImageDataset(data.images, ids, None, tf), batch_size=batch_size, num_workers=p.data.num_workers,
                    persistent_workers=False, pin_memory=rt.pin_memory)


def inference_runtime(p: Params, precision: str = "fp32") -> Runtime:
    """Labeling and evaluation: train.device, no process group (ranks label apart)."""
    return runtime(p.train.device, precision, p.train.channels_last, group=False)


def _accuracy(p: Params, model: torch.nn.Module, data: D.Prepared, split: str, tf, batch_size: int = 256) -> float:
    frame = data.split(split)
    was = model.training
    rt = Runtime.of(model)
    logits, _ = predict_logits(model, _loader(p, data, frame["id"].to_numpy(), tf, batch_size, rt), desc=None, rt=rt)
    acc = float((logits.argmax(1).numpy() == frame["label"].to_numpy()).mean())
    model.train(was)
    return acc


def _pseudo_targets(selected: pd.DataFrame, num_classes: int, mode: str, smoothing: float) -> np.ndarray:
    if mode == "soft":
        return np.stack(selected["probs"].to_numpy()).astype(np.float32)
    # hard pseudo labels get the same label smoothing as labels (official code)
    return D.one_hot(selected["label"].to_numpy(), num_classes, smoothing)


def train_stage(p: Params, name: str, data_dir: Path, out: Path, metrics_out: Path, selected: Path | None = None,
                history_out: Path | None = None) -> dict:
    """Train the teacher (name 'teacher') or the supervised baseline ('baseline': the teacher's
    recipe in the baseline's architecture), on the labeled data only, or student `name`
    (labeled + selected pseudo-labeled data, with the student noise). `history_out`: the training curves
    (CSV per log step, and a PNG beside it)."""
    _threads(p)
    data = _load_data(p, data_dir)
    supervised = name in ("teacher", "baseline")
    noise = p.teacher if supervised else p.noise
    arch = p.arch_of(name)
    steps = p.teacher.steps if supervised else p.student.steps
    seed = p.train.seed + (0 if supervised else list(p.iterations).index(name) + 1)  # baseline: the teacher's draws
    dcfg = data_config(arch, data.in_chans, p.data.image_size, data.image_size)
    tf = train_transform(dcfg, randaugment_config(noise.randaugment_n, noise.randaugment_m))
    tf_eval = eval_transform(dcfg)

    lab = data.split("labeled")
    labeled = D.ImageDataset(data.images, lab["id"].to_numpy(), D.one_hot(lab["label"].to_numpy(), data.num_classes, p.train.label_smoothing), tf)
    pseudo_ds = None
    if not supervised:
        if selected is None:
            raise ValueError(f"student {name} needs --selected (the pseudo-labeled set)")
        sel = pd.read_parquet(selected)
        if len(sel) == 0:
            raise ValueError(f"{selected}: no pseudo-labeled image survived selection; lower select.threshold")
        # canonical order (class, id), then duplicates: training never depends on shard layout
        sel = sel.sort_values(["label", "id"], kind="stable", ignore_index=True)
        sel = sel.loc[sel.index.repeat(sel["copies"])]
        targets = _pseudo_targets(sel, data.num_classes, p.student.targets, p.train.label_smoothing)
        pseudo_ds = D.ImageDataset(data.images, sel["id"].to_numpy(), targets, tf)

    torch.manual_seed(seed)
    model = create_model(arch, data.num_classes, data.in_chans, noise.dropout, noise.drop_path)
    init_from = None
    if not supervised and p.student.init == "teacher":  # the ablation; the paper trains students from scratch
        init_from = out.parent / f"{p.iterations[name].teacher}.pt"
        model.load_state_dict(load_checkpoint(init_from)["state_dict"])
    cfg = FitConfig(
        steps=steps, batch_size=p.train.batch_size, lr=p.train.lr, momentum=p.train.momentum,
        weight_decay=p.train.weight_decay, warmup_steps=p.train.warmup_steps,
        batch_ratio=1 if supervised else p.student.batch_ratio, seed=seed, checkpoint_every=p.train.checkpoint_every,
        ema_decay=p.train.ema_decay,
    )
    t = p.train
    rt = runtime(t.device, t.precision, t.channels_last, t.workers, t.compile)  # joins torchrun's group, if any
    resume = Resume(resume_path(out), _resume_fingerprint(name, arch, noise.model_dump(), cfg, dcfg, rt,
                                                          [data.root / "meta.json", data.root / "labeled.parquet", selected, init_from]))
    stage = f"train_{name}" if supervised else f"train_student@{name}"
    # rank 0 alone writes the checkpoint, the metrics and the MLflow records
    with _tracker(p, stage, enabled=rt.main) as run:
        run.log_params({"arch": arch, "role": name if supervised else "student", "num_params": num_params(model),
                        "noise": noise.model_dump(), "fit": cfg.__dict__, "runtime": rt.describe(),
                        "n_pseudo": 0 if pseudo_ds is None else len(pseudo_ds)})

        def on_log(step: int, figs: dict, predictor: torch.nn.Module) -> dict:
            val = {"val_acc": _accuracy(p, predictor, data, "val", tf_eval)}
            run.log_metrics({**figs, **val}, step)
            return val

        t0 = time.perf_counter()
        predictor, history = fit(model, labeled, cfg, pseudo_ds, on_log=on_log, desc=stage, resume=resume, rt=rt)
        seconds = time.perf_counter() - t0
        if not rt.main:
            return {}
        imgs = steps * cfg.batch_size * (1 + (0 if pseudo_ds is None else cfg.batch_ratio))
        result = {"val_acc": _accuracy(p, predictor, data, "val", tf_eval), "train_seconds": round(seconds, 2),
                  "images_per_second": round(imgs / seconds, 1), "num_params": num_params(model), "steps": steps}
        # the weights that predict (EMA when train.ema_decay > 0); the raw ones kept beside them
        ckpt = {"arch": arch, "num_classes": data.num_classes, "in_chans": data.in_chans, "name": name,
                "data_config": dcfg, "state_dict": _cpu_state(predictor), "params": json.loads(p.model_dump_json())}
        if predictor is not model:
            ckpt["state_dict_raw"] = _cpu_state(model)
        atomic_save_torch(out, ckpt)
        # timings go to MLflow only: the DVC metrics stay identical across identical runs
        atomic_write_json(metrics_out, {k: v for k, v in result.items() if k not in ("train_seconds", "images_per_second")})
        if history_out is not None:  # drawn by the report stage: how a curve looks must not retrain a model
            atomic_write_csv(history_out, pd.DataFrame(history))
            run.log_artifact(history_out)
        resume.path.unlink(missing_ok=True)  # outputs complete: nothing left to resume
        run.log_metrics(result)
        run.log_artifact(metrics_out)
    return result


def _cpu_state(model: torch.nn.Module) -> dict:
    # plain contiguous CPU tensors: a checkpoint loads anywhere, whatever device / memory format trained it
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def resume_path(out: Path) -> Path:
    """Resume checkpoints live beside the model, in `.resume/`: not a DVC output, so DVC
    neither deletes them before a re-run nor caches them."""
    return out.parent / ".resume" / out.name


def _resume_fingerprint(name: str, arch: str, noise: dict, cfg: FitConfig, dcfg: dict, rt: Runtime, inputs: list[Path | None]) -> dict:
    fit_cfg = {k: v for k, v in cfg.__dict__.items() if k != "checkpoint_every"}  # how often to save changes no result
    return {"model": name, "arch": arch, "noise": noise, "fit": fit_cfg, "data_config": dcfg, "runtime": rt.describe(),
            "inputs": {str(f): file_sha256(f) for f in inputs if f is not None}}


def load_model(path: Path) -> tuple[torch.nn.Module, dict]:
    ckpt = load_checkpoint(path)
    model = create_model(ckpt["arch"], ckpt["num_classes"], ckpt["in_chans"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def _labeling_shards(shard: int | None, num_shards: int) -> list[int]:
    """Which shards this process labels: the one asked for; else, under torchrun, its rank's
    share; else all of them, one after another."""
    if shard is not None:
        return [shard]
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    return list(range(rank, num_shards, world))


def pseudo_label_stage(
    p: Params, iteration: str, data_dir: Path, teacher_ckpt: Path, out: Path, shard: int | None = None, num_shards: int | None = None
) -> int:
    """The teacher, not noised (eval mode, eval transform), labels every unlabeled image,
    streaming into bounded, resumable Parquet parts under `out` (see shards.py)."""
    from .shards import ids_digest, label_shard, open_labels_dir

    _threads(p)
    num_shards = num_shards or p.pseudo.num_shards
    data = _load_data(p, data_dir)
    model, ckpt = load_model(teacher_ckpt)
    rt = inference_runtime(p, p.pseudo.precision)
    rt.model(model)
    tf = eval_transform(ckpt["data_config"])  # the teacher's own preprocessing, never noised
    if p.pseudo.noised:  # the ablation: the teacher's own training noise (the teacher's or the students')
        own = p.teacher if ckpt["name"] == "teacher" else p.noise
        tf = train_transform(ckpt["data_config"], randaugment_config(own.randaugment_n, own.randaugment_m))
    ids = data.split("unlabeled")["id"].to_numpy()
    fingerprint = {"teacher_sha256": file_sha256(teacher_ckpt), "ids_sha256": ids_digest(ids), "num_ids": int(len(ids)),
                   "temperature": p.pseudo.temperature, "batch_size": p.pseudo.batch_size, "num_shards": num_shards,
                   "rows_per_file": p.pseudo.rows_per_file, "precision": p.pseudo.precision, "noised": p.pseudo.noised}
    # under torchrun every rank labels its own shards into one folder; rank 0 sets it up
    open_labels_dir(out, fingerprint, leader=shard is not None or int(os.environ.get("RANK", "0")) == 0)

    def predict(chunk: np.ndarray):
        if not p.pseudo.noised:
            return stream_soft_labels(model, _loader(p, data, chunk, tf, p.pseudo.batch_size, rt), p.pseudo.temperature, rt)
        # noised: every image's augmentation and the dropout masks seeded by the image id, so a
        # re-run (or a resumed shard) gives the same labels
        keys = [(i, sample_seed(p.train.seed, 3, int(i))) for i in range(len(chunk))]
        batches = [keys[k : k + p.pseudo.batch_size] for k in range(0, len(keys), p.pseudo.batch_size)]
        torch.manual_seed(p.train.seed * 7919 + int(chunk[0]) if len(chunk) else 0)
        ds = D.ImageDataset(data.images, chunk, None, tf)
        dl = D.loader(ds, batch_sampler=batches, num_workers=p.data.num_workers, pin_memory=rt.pin_memory)
        return stream_soft_labels(model, dl, p.pseudo.temperature, rt, noised=True)

    written = 0
    with _tracker(p, f"pseudo_label@{iteration}") as run:
        run.log_params({"teacher": ckpt["name"], "teacher_arch": ckpt["arch"], "pseudo": p.pseudo.model_dump()})
        mine = _labeling_shards(shard, num_shards)
        with progress(f"pseudo_label@{iteration}", total=len(ids), unit="img") as bar:
            for s in mine:
                written += label_shard(ids, s, num_shards, out, p.pseudo.rows_per_file, predict, on_rows=bar.advance)
        run.log_metrics({"rows_written": written, "num_ids": len(ids)})
    return written


def select_stage(p: Params, iteration: str, data_dir: Path, labels: Path, out: Path, metrics_out: Path,
                 confidence_out: Path | None = None, classes_out: Path | None = None) -> dict:
    """Threshold + balancing; `confidence_out` / `classes_out`: the confidence histogram and
    the per-class counts before and after balancing (CSV for DVC plots, a PNG beside each)."""
    from .shards import select_dataset

    data = _load_data(p, data_dir)
    with _tracker(p, f"select@{iteration}") as run:
        run.log_params({"select": p.select.model_dump()})
        truth = pd.read_parquet(data.root / "unlabeled_truth.parquet").set_index("id")["label"]  # where known
        s = p.select
        stats, tables = select_dataset(labels, out, s.threshold, s.per_class, data.num_classes, s.seed, truth=truth,
                                       balance=s.balance, fraction=s.unlabeled_fraction)
        atomic_write_json(metrics_out, stats)
        run.log_metrics({k: v for k, v in stats.items() if not isinstance(v, dict)})
        run.log_artifact(metrics_out)
        title = f"{iteration}, labels by {p.iterations[iteration].teacher}"
        if confidence_out is not None:
            hist = tables["confidence"]
            atomic_write_csv(confidence_out, hist)
            edges = [*hist["bin_left"], hist["bin_right"].iloc[-1]]
            run.log_artifact(plots.confidence_histogram(hist["images"], edges, p.select.threshold, confidence_out.with_suffix(".png"), title))
        if classes_out is not None:
            atomic_write_csv(classes_out, tables["classes"])
            run.log_artifact(plots.class_counts(tables["classes"], classes_out.with_suffix(".png"), title))
    return stats


def evaluate_stage(p: Params, model_name: str, data_dir: Path, ckpt_path: Path, metrics_out: Path, predictions_out: Path) -> dict:
    _threads(p)
    data = _load_data(p, data_dir)
    model, ckpt = load_model(ckpt_path)
    rt = inference_runtime(p)
    rt.model(model)
    test = data.split("test")
    with _tracker(p, f"evaluate@{model_name}") as run:
        tf = eval_transform(ckpt["data_config"])
        logits, _ = predict_logits(model, _loader(p, data, test["id"].to_numpy(), tf, p.eval.batch_size, rt), desc=f"evaluate@{model_name}", rt=rt)
        labels = test["label"].to_numpy()
        m = classification_metrics(logits.numpy(), labels, data.num_classes, p.eval.ece_bins)
        m = {"model": model_name, "arch": ckpt["arch"], "num_params": num_params(model), **m}
        preds = pd.DataFrame({"actual": labels, "predicted": logits.argmax(1).numpy()})
        atomic_write_csv(predictions_out, preds)
        atomic_write_json(metrics_out, m)
        run.log_metrics({f"test_{k}": v for k, v in m.items() if isinstance(v, float)})
        run.log_artifact(metrics_out)
        cm = confusion_matrix(preds["actual"].to_numpy(), preds["predicted"].to_numpy(), data.num_classes)
        run.log_artifact(plots.confusion(cm, predictions_out.with_suffix(".png"), model_name))
    return m


def gallery_stage(p: Params, iteration: str, data_dir: Path, teacher_ckpt: Path, student_ckpt: Path, out: Path) -> dict:
    """The paper's Figure 1 for one iteration: a seeded sample of the unlabeled pool, predicted
    by the teacher and by its student (each un-noised, with its own preprocessing); the images
    where they disagree (the student's corrections first, where the hidden label is known) as
    a PNG grid, and every shown prediction in a CSV beside it."""
    from .evaluate import gallery_kinds, gallery_rows, softmax

    g = p.eval.gallery
    data = _load_data(p, data_dir)
    pool = data.split("unlabeled")["id"].to_numpy()
    ids = np.sort(np.random.default_rng(g.seed).permutation(pool)[: g.pool])
    rt = inference_runtime(p)
    preds = {}
    with _tracker(p, f"gallery@{iteration}") as run:
        for role, ckpt_path in (("teacher", teacher_ckpt), ("student", student_ckpt)):
            model, ckpt = load_model(ckpt_path)
            rt.model(model)
            logits, _ = predict_logits(model, _loader(p, data, ids, eval_transform(ckpt["data_config"]), p.eval.batch_size, rt),
                                       desc=f"gallery@{iteration} {role}", rt=rt)
            probs = softmax(logits.numpy())
            preds[role], preds[f"{role}_conf"] = probs.argmax(1), probs.max(1)
        truth = pd.read_parquet(data.root / "unlabeled_truth.parquet").set_index("id")["label"]
        frame = pd.DataFrame({"id": ids, **preds, "truth": truth.reindex(ids).fillna(-1).astype(int).to_numpy()})
        shown = gallery_rows(frame, g.images)
        kinds = pd.Series(gallery_kinds(frame)).value_counts()
        counts = {k: int(kinds.get(k, 0)) for k in ("corrected", "regressed", "disagree")}
        atomic_write_csv(out.with_suffix(".csv"), shown)
        images = np.stack([_hwc(data.images[int(i)]) for i in shown["id"]])
        title = (f"T: {p.iterations[iteration].teacher}'s label, S: {iteration}'s, on {len(ids)} unlabeled images: "
                 + ", ".join(f"{k} {v}" for k, v in counts.items())
                 + "\ngreen = right, red = wrong (hidden label); the student's corrections first, then its regressions")
        run.log_metrics({f"gallery_{k}": v for k, v in counts.items()})
        run.log_artifact(out.with_suffix(".csv"))
        run.log_artifact(plots.prediction_grid(images, shown, out, title))
    return counts


def _hwc(img) -> np.ndarray:
    a = np.asarray(img)
    return a[..., None] if a.ndim == 2 else a


def summary_stage(p: Params, eval_dir: Path, out: Path, table_out: Path, png_out: Path, rob_dir: Path | None = None) -> dict:
    rows = []
    for i, name in enumerate(p.eval.models):
        f = eval_dir / f"{name}.json"
        if not f.exists():
            raise FileNotFoundError(f"{f} is missing: evaluate@{name} has not run")
        m = json.loads(f.read_text())
        rows.append({"iteration": None if name == "baseline" else i, "model": name, "arch": m["arch"], "test_acc": m["top1"], "test_top5": m["top5"], "test_ece": m["ece"]})
    table = pd.DataFrame(rows).astype({"iteration": "Int64"})  # the baseline is no iteration: left empty
    if rob_dir is not None:  # mCE per model, where robustness has scored it
        table["mce"] = [json.loads(f.read_text())["mce"] if (f := rob_dir / f"{m}.json").exists() else None for m in table["model"]]
    students = table[table["model"].isin(list(p.iterations))]
    acc = table.set_index("model")["test_acc"]
    best = float(students["test_acc"].max())
    summary = {
        "teacher_test_acc": float(acc["teacher"]),
        "student_test_acc": [float(a) for a in students["test_acc"]],
        "best_student_test_acc": best,
        "best_student": str(students.loc[students["test_acc"].idxmax(), "model"]),
        "gain_over_teacher": round(best - float(acc["teacher"]), 6),
        # the paper's comparison: the same architecture, trained without the unlabeled images
        "baseline_test_acc": float(acc["baseline"]),
        "gain_over_baseline": round(best - float(acc["baseline"]), 6),
    }
    if rob_dir is not None:  # teacher vs best student (by test accuracy), as the paper compares them
        rob = {}
        for name in ("teacher", summary["best_student"]):
            f = rob_dir / f"{name}.json"
            if not f.exists():
                raise FileNotFoundError(f"{f} is missing: robustness@{name} has not run")
            rob[name] = json.loads(f.read_text())
        best = rob[summary["best_student"]]
        summary.update({
            "teacher_mce": rob["teacher"]["mce"], "best_student_mce": best["mce"],
            "teacher_relative_mce": rob["teacher"]["relative_mce"], "best_student_relative_mce": best["relative_mce"],
            "teacher_mfr": rob["teacher"]["mfr"], "best_student_mfr": best["mfr"],
            "fgsm_epsilon": best["fgsm_epsilon"],
            "teacher_fgsm_acc": rob["teacher"]["fgsm_acc"], "best_student_fgsm_acc": best["fgsm_acc"],
        })
    with _tracker(p, "summary") as run:
        atomic_write_json(out, summary)
        atomic_write_csv(table_out, table)
        chain = table[table["model"] != "baseline"]
        plots.accuracy_per_iteration(chain, png_out, baseline=(f"supervised baseline ({p.arch_of('baseline')})", summary["baseline_test_acc"]))
        run.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)})
        for f in (out, table_out, png_out):
            run.log_artifact(f)
    return summary


def report_stage(p: Params, metrics: Path, out: Path) -> Path:
    """The run's report page (see report.py), logged to MLflow with its figures. Its title is
    the DVC experiment's name, so each experiment's page says which it is."""
    from . import report

    title = os.environ.get("DVC_EXP_NAME") or "workspace run"
    with _tracker(p, "report") as run:
        page = report.build(p, metrics, out, title)
        for f in sorted(out.iterdir()):
            run.log_artifact(f)
    for f in report.missing_figures(p, metrics):
        print(f"WARNING: {f} not found: left out of {page}", flush=True)
    return page


# ---- robustness (the paper's ImageNet-C / -P / FGSM measurements; see robustness.py) -----


def corrupt_stage(p: Params, data_dir: Path, out: Path) -> dict:
    """The robustness test images, made once so every model is scored on identical ones:
    `num_images` test images (seeded, class-stratified order) at the teacher's input size,
    every corruption x severity, and every perturbation sequence."""
    from . import robustness as R
    from .io import atomic_dir
    from .transforms import resize_transform

    rp = p.eval.robustness
    data = _load_data(p, data_dir)
    test = data.split("test")
    take = test.iloc[_round_robin(test["label"].to_numpy(), rp.seed)[: rp.num_images]]
    cfg = data_config(p.teacher.arch, data.in_chans, p.data.image_size, data.image_size)
    resize = resize_transform(cfg)
    clean = np.stack([np.asarray(resize(data.images[int(i)])) for i in take["id"]])
    n = len(clean)
    with _tracker(p, "corrupt") as run, atomic_dir(out) as tmp:
        corrupted = np.lib.format.open_memmap(tmp / "corrupted.npy", "w+", np.uint8, (len(rp.corruptions), len(rp.severities), *clean.shape))
        total = len(rp.corruptions) * len(rp.severities) * n + len(rp.perturbations) * n
        with progress("corrupt", total=total, unit="img") as bar:
            for ci, c in enumerate(rp.corruptions):
                for si, s in enumerate(rp.severities):
                    for k in range(n):
                        corrupted[ci, si, k] = R.corrupt_image(clean[k], c, s, R.image_seed(rp.seed, ci, s, k))
                    bar.advance(n)
            corrupted.flush()
            perturbed = np.lib.format.open_memmap(tmp / "perturbed.npy", "w+", np.uint8, (len(rp.perturbations), n, rp.frames, *clean.shape[1:]))
            for pi, name in enumerate(rp.perturbations):
                for k in range(n):
                    perturbed[pi, k] = R.perturb_sequence(clean[k], name, rp.frames, R.image_seed(rp.seed, 1000 + pi, k))
                bar.advance(n)
            perturbed.flush()
        del corrupted, perturbed
        np.save(tmp / "clean.npy", clean)
        np.save(tmp / "labels.npy", take["label"].to_numpy().astype(np.int64))
        meta = {"num_images": n, "image_size": list(clean.shape[1:3]), "in_chans": data.in_chans,
                "corruptions": list(rp.corruptions), "severities": list(rp.severities),
                "perturbations": list(rp.perturbations), "frames": rp.frames, "seed": rp.seed,
                "adapted": "images under 32 px are upsampled to 32 px for imagecorruptions and downsampled back"
                if min(clean.shape[1:3]) < R.MIN_SIZE else ""}
        atomic_write_json(tmp / "meta.json", meta)
        run.log_params({"robustness": rp.model_dump()})
    return meta


def _round_robin(labels: np.ndarray, seed: int) -> np.ndarray:
    """Positions ordered class by class in turns (a seeded order within each class), so the
    first k hold the classes in equal numbers."""
    rng = np.random.default_rng(seed)
    per = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    rank = np.empty(len(labels), dtype=np.int64)
    for idx in per:
        rank[idx] = np.arange(len(idx))
    cls = np.searchsorted(np.unique(labels), labels)
    return np.lexsort((cls, rank))


def _predict_arrays(model: torch.nn.Module, images: np.ndarray, cfg: dict, batch_size: int) -> np.ndarray:
    """Predicted classes of uint8 images (already at the robustness size), preprocessed as the
    model's own config says (resized only when its input size differs)."""
    preds = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x, normalize = pixels_to_model_input(np.asarray(images[i : i + batch_size]), cfg)
            preds.append(model(normalize(x)).argmax(1).numpy())
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def robustness_stage(p: Params, model_name: str, rob_dir: Path, ckpt_path: Path, out: Path, baseline: Path | None = None) -> dict:
    """Errors under every corruption, flip probabilities under every perturbation, FGSM
    accuracy per epsilon; normalised by the baseline's (the supervised teacher's) figures."""
    from . import robustness as R

    rp = p.eval.robustness
    model, ckpt = load_model(ckpt_path)
    cfg = ckpt["data_config"]
    meta = json.loads((rob_dir / "meta.json").read_text())
    labels = np.load(rob_dir / "labels.npy")
    clean = np.load(rob_dir / "clean.npy")
    corrupted = np.load(rob_dir / "corrupted.npy", mmap_mode="r")
    perturbed = np.load(rob_dir / "perturbed.npy", mmap_mode="r")
    n, bs = len(labels), p.eval.batch_size
    # run names are DVC's stage names: the baseline has its own stage
    with _tracker(p, "robustness_teacher" if baseline is None else f"robustness@{model_name}") as run:
        clean_err = float((_predict_arrays(model, clean, cfg, bs) != labels).mean())
        C, S = corrupted.shape[:2]
        preds = _predict_arrays(model, np.asarray(corrupted).reshape(C * S * n, *clean.shape[1:]), cfg, bs).reshape(C, S, n)
        err = (preds != labels).mean(2)  # [C, S]
        P, F = perturbed.shape[0], perturbed.shape[2]
        pp = _predict_arrays(model, np.asarray(perturbed).reshape(P * n * F, *clean.shape[1:]), cfg, bs).reshape(P, n, F)
        flips = {name: R.flip_probability(pp[i], name in R.NOISE_SEQUENCES) for i, name in enumerate(meta["perturbations"])}
        x, normalize = pixels_to_model_input(clean, cfg)
        y = torch.from_numpy(labels)
        fgsm_acc = {}
        for eps in rp.epsilons:
            accs = []
            for i in range(0, n, bs):
                xa = R.fgsm(model, x[i : i + bs], y[i : i + bs], eps / 255.0, normalize)
                with torch.inference_mode():
                    accs.append((model(normalize(xa)).argmax(1) == y[i : i + bs]).float())
            fgsm_acc[f"{eps:g}"] = float(torch.cat(accs).double().mean())

        if baseline is None:  # this model is the baseline
            base = {"clean_error": clean_err, "corruption_error": _by_name(err, meta), "flip_probability": flips}
        else:
            base = json.loads(Path(baseline).read_text())
        ce, rce = {}, {}
        for ci, c in enumerate(meta["corruptions"]):
            b = np.array([base["corruption_error"][c][f"{s}"] for s in meta["severities"]])
            ce[c] = R.corruption_error(err[ci], b)
            rce[c] = R.relative_corruption_error(err[ci], clean_err, b, base["clean_error"])
        fr = {k: (None if base["flip_probability"][k] == 0 else v / base["flip_probability"][k]) for k, v in flips.items()}
        mce, rmce, mfr = R.mean_defined(ce.values()), R.mean_defined(rce.values()), R.mean_defined(fr.values())
        m = {
            "model": model_name, "baseline": "teacher (the supervised model; CE and FR are relative to it)",
            "num_images": n, "clean_error": clean_err,
            "mce": None if mce is None else 100 * mce, "relative_mce": None if rmce is None else 100 * rmce,
            "mfr": None if mfr is None else 100 * mfr,
            "fgsm_epsilon": rp.fgsm_epsilon, "fgsm_acc": fgsm_acc[f"{rp.fgsm_epsilon:g}"],
            "ce": ce, "relative_ce": rce, "fr": fr,
            "corruption_error": _by_name(err, meta), "flip_probability": flips, "fgsm_accuracy": fgsm_acc,
            "notes": meta["adapted"],
        }
        atomic_write_json(out, m)
        rows = [{"corruption": c, "severity": s, "accuracy": 1 - float(err[ci, si])}
                for ci, c in enumerate(meta["corruptions"]) for si, s in enumerate(meta["severities"])]
        atomic_write_csv(out.with_name(f"{model_name}_corruptions.csv"), pd.DataFrame(rows))
        fgsm = pd.DataFrame({"epsilon": [float(e) for e in fgsm_acc], "accuracy": list(fgsm_acc.values())})
        atomic_write_csv(out.with_name(f"{model_name}_fgsm.csv"), fgsm)
        png = plots.robustness(pd.DataFrame(rows), fgsm, out.with_suffix(".png"), model_name)
        run.log_metrics({k: v for k, v in m.items() if isinstance(v, float)})
        for f in (out, png):
            run.log_artifact(f)
    return m


def _by_name(err: np.ndarray, meta: dict) -> dict:
    return {c: {f"{s}": float(err[ci, si]) for si, s in enumerate(meta["severities"])} for ci, c in enumerate(meta["corruptions"])}
