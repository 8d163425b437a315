"""The ImageNet-C corruptions carried in noisystudent/corruptions.py give what the
imagecorruptions 1.1.2 package (with robustness.py's former shims) gave: every corruption x
severity on five fixed images, recorded with the package before it was dropped
(tests/data/corruption_outputs.npz; on the machine that recorded them the carried code matched
all 375 byte for byte). The comparison allows one grey level on a few pixels: OpenCV and numpy
take CPU-specific paths (IPP, AVX-512) that may move a rounding on another machine; a changed
constant or step moves far more. And the carried code needs none of the old patches: no
`np.float_` alias, no imagecorruptions, no pkg_resources."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from noisystudent import robustness as R

GOLDEN = dict(np.load(Path(__file__).parent / "data" / "corruption_outputs.npz"))
SEED = 7  # corrupt_image's seed: R.image_seed(SEED, corruption index, severity)


def images() -> dict[str, np.ndarray]:
    """The five images the recorded outputs were made from (changing this voids them)."""
    rng = np.random.default_rng(20240601)
    flat = np.zeros((48, 48, 3), np.uint8)  # flat areas, saturated and black, and a ramp
    flat[:24, :24] = 255
    flat[:24, 24:] = (128, 64, 200)
    flat[24:, :24] = 0
    flat[24:, 24:] = np.linspace(0, 255, 24, dtype=np.uint8)[None, :, None]
    return {
        "gray8": rng.integers(0, 256, (8, 8), dtype=np.uint8),  # grayscale, upsampled x4
        "rgb40x36": rng.integers(0, 256, (40, 36, 3), dtype=np.uint8),  # non-square, as is
        "rgb32": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),  # the smallest taken as is
        "rgb20x28": rng.integers(0, 256, (20, 28, 3), dtype=np.uint8),  # non-square, upsampled x2
        "flat48": flat,
    }


IMAGES = images()


def test_the_recorded_outputs_cover_every_corruption_severity_and_image():
    want = {f"{c}/{s}/{i}" for c in R.CORRUPTIONS for s in range(1, 6) for i in IMAGES}
    assert set(GOLDEN) == want and len(want) == 375


@pytest.mark.parametrize("name", R.CORRUPTIONS)
def test_outputs_match_the_package(name):
    ci = R.CORRUPTIONS.index(name)
    wrong = []
    for s in range(1, 6):
        for iname, img in IMAGES.items():
            out = R.corrupt_image(img, name, s, R.image_seed(SEED, ci, s))
            assert out.shape == img.shape and out.dtype == np.uint8
            diff = np.abs(out.astype(np.int16) - GOLDEN[f"{name}/{s}/{iname}"])
            if diff.max() > 1 or (diff > 0).mean() > 0.01:
                wrong.append(f"{name}/{s}/{iname} (max {diff.max()}, {100 * (diff > 0).mean():.1f} % of values differ)")
    assert not wrong, f"differ from imagecorruptions 1.1.2: {wrong}"


def test_corruptions_leave_numpys_global_random_state_alone():
    np.random.seed(5)
    before = np.random.get_state()[1].copy()
    R.corrupt_image(IMAGES["rgb32"], "gaussian_noise", 3, 1)
    assert np.array_equal(np.random.get_state()[1], before)


CHECK = """
import sys
import numpy as np
from noisystudent import corruptions as C
img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
for name in C.FUNCTIONS:
    for s in range(1, 6):
        C.corrupt(img, name, s, np.random.RandomState(1))
print(sorted(m for m in ("imagecorruptions", "pkg_resources") if any(k == m or k.startswith(m + ".") for k in sys.modules)))
print(sorted(C.FUNCTIONS) == sorted(sys.argv[1:]), hasattr(np, "float_"), np.__version__)
"""


def test_no_old_patches_and_no_imagecorruptions_or_pkg_resources():
    """In a fresh interpreter (without torch, so fast), after every corruption at every
    severity: neither module was imported and numpy 2 has no `np.float_` (the old shim made one)."""
    r = subprocess.run([sys.executable, "-c", CHECK, *R.CORRUPTIONS], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    imported, (all_names, has_float_, version) = r.stdout.splitlines()[-2], r.stdout.splitlines()[-1].split()
    assert imported == "[]", f"imported: {imported}"
    assert all_names == "True"  # corruptions.py carries exactly the names params.yaml may use
    if int(version.split(".")[0]) >= 2:
        assert has_float_ == "False"


def test_neither_module_imports_them_nor_patches_numpy_by_its_code():
    import ast

    for f in ("corruptions.py", "robustness.py"):
        tree = ast.parse((ROOT / "noisystudent" / f).read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"imagecorruptions", "pkg_resources", "setuptools"}, (f, imported)
        attributes = {ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not attributes & {"np.float_", "np.random.seed"}, f  # no alias, no global seeding


def test_frost_images_are_package_data():
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["noisystudent"]
    frost = sorted(p.name for p in (ROOT / "noisystudent" / "frost").iterdir())
    assert frost == ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"]
    assert {"frost/*.png", "frost/*.jpg"} <= set(data)
    assert (ROOT / "LICENSES" / "imagecorruptions-Apache-2.0.txt").read_text().lstrip().startswith("Apache License")
