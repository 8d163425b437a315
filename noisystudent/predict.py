"""Using a trained model on image files: any of the pipeline's checkpoints (they carry their
architecture, data config and class names), files and folders in, top-k class names and
probabilities out. Files are decoded by the rules `prepare` uses (images.py), so a file the
pipeline would refuse is reported here with the same reason, and the run goes on."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from .images import BadImage, decode
from .io import InputError
from .transforms import Preprocess, eval_transform


def image_files(paths: list[Path]) -> list[Path]:
    """The files named, and every file under the folders named (sorted, hidden ones left out);
    a path that does not exist is an error, before anything runs."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise InputError(f"no such file or folder: {', '.join(missing)}")
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts))
        else:
            out.append(p)
    return list(dict.fromkeys(out))  # a file named twice is predicted once


def file_transform(data_config: dict) -> Preprocess:
    """The model's eval transform for files of any size: resized (and centre-cropped) to its
    input size. A file already at that size is left as it is (PIL returns a copy for an equal
    size), so the prepared images of an array dataset, saved as files, predict as in evaluate."""
    return eval_transform({**data_config, "native_size": None})


class _Files(Dataset):
    def __init__(self, files: list[Path], mode: str, tf: Preprocess):
        self.files, self.mode, self.tf = files, mode, tf

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return i, self.tf.pixels(decode(self.files[i], self.mode)[0]), ""
        except BadImage as e:
            return i, None, str(e)


def predict_files(model: torch.nn.Module, ckpt: dict, files: list[Path], top_k: int = 3, batch_size: int = 256,
                  workers: int = 0, desc: str | None = "predict") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(predictions: path, then label_i / prob_i for i = 1..top_k, most probable first; bad files:
    path, reason). The model must be in eval mode (checkpoint.load_model returns it so)."""
    from .progress import progress

    names = ckpt.get("class_names") or [str(c) for c in range(ckpt["num_classes"])]
    k = min(top_k, len(names))
    tf = file_transform(ckpt["data_config"])
    mode = "L" if ckpt["in_chans"] == 1 else "RGB"
    loader = DataLoader(_Files(files, mode, tf), batch_size=batch_size, num_workers=workers, collate_fn=list)
    rows, bad = [], []
    with progress(desc or "", total=len(files), enabled=desc is not None, unit="img") as bar, torch.inference_mode():
        for batch in loader:
            good = [(i, px) for i, px, why in batch if not why]
            bad += [(str(files[i]), why) for i, _, why in batch if why]
            if good:
                probs = torch.softmax(model(tf.batch(np.stack([px for _, px in good]))).float(), 1)
                p, c = probs.topk(k, 1)
                for (i, _), pi, ci in zip(good, p.tolist(), c.tolist()):
                    row = {"path": str(files[i])}
                    for j in range(k):
                        row[f"label_{j + 1}"], row[f"prob_{j + 1}"] = names[ci[j]], round(pi[j], 6)
                    rows.append(row)
            bar.advance(len(batch))
    columns = ["path", *[f"{x}_{j + 1}" for j in range(k) for x in ("label", "prob")]]
    return pd.DataFrame(rows, columns=columns), pd.DataFrame(bad, columns=["path", "reason"])
