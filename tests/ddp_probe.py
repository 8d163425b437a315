"""Run under torchrun by test_distributed.py: the real training stage (stages/train.py), with every training
batch each rank reads and every file each rank writes recorded in trace-rank<r>.json.

    torchrun --nproc_per_node 2 tests/ddp_probe.py <work dir>
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import noisystudent.data as D  # noqa: E402
import noisystudent.checkpoint as C  # noqa: E402
import stages.train as T  # noqa: E402
from noisystudent.params import load_params  # noqa: E402

work = Path(sys.argv[1])
trace = {"world_size": int(os.environ["WORLD_SIZE"]), "keys": [], "writes": []}

read = D.ImageDataset.__getitems__


def spy_read(self, keys):
    if keys and isinstance(keys[0], tuple):  # the training sampler's (position, seed) keys
        trace["keys"].extend([int(self.ids[i]), int(seed)] for i, seed in keys)
    return read(self, keys)


def spy_write(fn):
    def wrapped(path, *a, **kw):
        trace["writes"].append(str(path))
        return fn(path, *a, **kw)
    return wrapped


D.ImageDataset.__getitems__ = spy_read
C.atomic_save_torch = spy_write(C.atomic_save_torch)  # save_model writes through it
import noisystudent.io as IO  # noqa: E402
IO.atomic_write_json = spy_write(IO.atomic_write_json)  # the stage imports it at run time
p = load_params(work / "params.yaml")
T.run(p, "teacher", work / "data", work / "teacher.pt", work / "teacher.json")
(work / f"trace-rank{os.environ['RANK']}.json").write_text(json.dumps(trace))
