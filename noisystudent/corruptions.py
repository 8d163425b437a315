"""The 15 ImageNet-C corruptions, carried from imagecorruptions 1.1.2.

Origin: imagecorruptions 1.1.2 (https://github.com/bethgelab/imagecorruptions; its
imagecorruptions/corruptions.py and the `corrupt` of its __init__.py) by Evgenia Rusak and
Benjamin Mitzkus (Bethge lab, University of Tuebingen), itself an extension of Dan Hendrycks'
ImageNet-C code (https://github.com/hendrycks/robustness). Licensed under the Apache License,
Version 2.0: the licence text is in LICENSES/imagecorruptions-Apache-2.0.txt. The frost images
in noisystudent/frost/ come from the same package, unchanged.

Changed from 1.1.2 (Apache-2.0 section 4(b)), so that the package and the run-time patches
robustness.py made to it are no longer needed, with every output byte for byte as before
(tests/test_corruptions.py checks 375 of them against digests made with the package):
- only the 15 common corruptions and their helpers; the four validation corruptions
  (speckle_noise, gaussian_blur, spatter, saturate) and get_corruption_names are left out;
- only RGB uint8 images (H, W, 3), which is all robustness.corrupt_image passes: the grayscale
  branches and rgb2gray are left out;
- randomness comes from an explicit `rng`, a seeded legacy `np.random.RandomState`, instead
  of numpy's global state: RandomState(seed) draws exactly what the package drew after
  np.random.seed(seed), and the global state is left alone. impulse_noise hands
  scikit-image's random_noise a seed drawn from `rng` (the package passed none, so that one
  corruption was not reproducible; robustness.py's patch drew it the same way);
- numpy 2: plasma_fractal's `np.float_` (removed in numpy 2) is np.float64;
- scikit-image >= 0.19: gaussian's removed `multichannel=True` is `channel_axis=-1`;
- scipy: map_coordinates is imported from scipy.ndimage (scipy.ndimage.interpolation is
  deprecated);
- frost: the images are found with importlib.resources instead of pkg_resources (removed
  from setuptools 81) and decoded once (cv2.imdecode, the decoder cv2.imread uses) and
  cached; frost6.jpg is not carried since randint(5) never picks it;
- zoom_blur no longer prints when its zoomed layer is smaller than the image (same result);
- code reformatted, comments added.

OpenCV (cv2, opencv-python, which the package required) stays: disk's GaussianBlur,
defocus_blur's filter2D, frost's decoding and bicubic resize and snow's RGB-to-gray go
through it. Its results there depend on the build's SIMD and IPP code paths (switching IPP
off changes the filter2D, resize and cvtColor outputs), which numpy, scipy or PIL do not
reproduce bit for bit: PIL decodes the frost images identically and scipy's correlate gave
defocus_blur's bytes on every image tried, but a numpy bicubic resize is one grey level off
on about 0.01 % of the rescaled frost pixels and a float32 gray conversion differs in the
last bit on about 20 % of pixels, so frost and snow would change; OpenCV is kept instead.
"""
from __future__ import annotations

import functools
import math
from importlib.resources import files
from io import BytesIO

import cv2
import numpy as np
import skimage as sk
from PIL import Image
from scipy.ndimage import map_coordinates
from scipy.ndimage import zoom as scizoom
from skimage.filters import gaussian

MIN_SIZE = 32  # imagecorruptions refuses images under 32 px (robustness.py upsamples them)

# ---- helpers --------------------------------------------------------------------------


def disk(radius, alias_blur=0.1, dtype=np.float32):
    if radius <= 8:
        L = np.arange(-8, 8 + 1)
        ksize = (3, 3)
    else:
        L = np.arange(-radius, radius + 1)
        ksize = (5, 5)
    X, Y = np.meshgrid(L, L)
    aliased_disk = np.array((X**2 + Y**2) <= radius**2, dtype=dtype)
    aliased_disk /= np.sum(aliased_disk)
    # supersample disk to antialias
    return cv2.GaussianBlur(aliased_disk, ksize=ksize, sigmaX=alias_blur)


# modification of https://github.com/FLHerne/mapgen/blob/master/diamondsquare.py
def plasma_fractal(rng, mapsize=256, wibbledecay=3):
    """A square heightmap (diamond-square algorithm), side `mapsize` (a power of two), values in 0..1."""
    assert mapsize & (mapsize - 1) == 0
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)  # 1.1.2: np.float_
    maparray[0, 0] = 0
    stepsize = mapsize
    wibble = 100

    def wibbledmean(array):
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    def fillsquares():
        """For each square of points stepsize apart, the middle value is the mean of the points + wibble."""
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(squareaccum)

    def filldiamonds():
        """For each diamond of points stepsize apart, the middle value is the mean of the points + wibble."""
        mapsize = maparray.shape[0]
        drgrid = maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize]
        ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        ldrsum = drgrid + np.roll(drgrid, 1, axis=0)
        lulsum = ulgrid + np.roll(ulgrid, -1, axis=1)
        ltsum = ldrsum + lulsum
        maparray[0:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(ltsum)
        tdrsum = drgrid + np.roll(drgrid, 1, axis=1)
        tulsum = ulgrid + np.roll(ulgrid, -1, axis=0)
        ttsum = tdrsum + tulsum
        maparray[stepsize // 2:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)

    while stepsize >= 2:
        fillsquares()
        filldiamonds()
        stepsize //= 2
        wibble /= wibbledecay

    maparray -= maparray.min()
    return maparray / maparray.max()


def clipped_zoom(img, zoom_factor):
    # clipping along the width dimension:
    ch0 = int(np.ceil(img.shape[0] / float(zoom_factor)))
    top0 = (img.shape[0] - ch0) // 2
    # clipping along the height dimension:
    ch1 = int(np.ceil(img.shape[1] / float(zoom_factor)))
    top1 = (img.shape[1] - ch1) // 2
    return scizoom(img[top0:top0 + ch0, top1:top1 + ch1], (zoom_factor, zoom_factor, 1), order=1)


def getOptimalKernelWidth1D(radius, sigma):
    return radius * 2 + 1


def gauss_function(x, mean, sigma):
    return (np.exp(-x**2 / (2 * (sigma**2)))) / (np.sqrt(2 * np.pi) * sigma)


def getMotionBlurKernel(width, sigma):
    k = gauss_function(np.arange(width), 0, sigma)
    Z = np.sum(k)
    return k / Z


def shift(image, dx, dy):
    if dx < 0:
        shifted = np.roll(image, shift=image.shape[1] + dx, axis=1)
        shifted[:, dx:] = shifted[:, dx - 1:dx]
    elif dx > 0:
        shifted = np.roll(image, shift=dx, axis=1)
        shifted[:, :dx] = shifted[:, dx:dx + 1]
    else:
        shifted = image

    if dy < 0:
        shifted = np.roll(shifted, shift=image.shape[0] + dy, axis=0)
        shifted[dy:, :] = shifted[dy - 1:dy, :]
    elif dy > 0:
        shifted = np.roll(shifted, shift=dy, axis=0)
        shifted[:dy, :] = shifted[dy:dy + 1, :]
    return shifted


def _motion_blur(x, radius, sigma, angle):
    width = getOptimalKernelWidth1D(radius, sigma)
    kernel = getMotionBlurKernel(width, sigma)
    point = (width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle)))
    hypot = math.hypot(point[0], point[1])

    blurred = np.zeros_like(x, dtype=np.float32)
    for i in range(width):
        dy = -math.ceil(((i * point[0]) / hypot) - 0.5)
        dx = -math.ceil(((i * point[1]) / hypot) - 0.5)
        if np.abs(dy) >= x.shape[0] or np.abs(dx) >= x.shape[1]:
            # simulated motion exceeded image borders
            break
        shifted = shift(x, dx, dy)
        blurred = blurred + kernel[i] * shifted
    return blurred


def next_power_of_2(x):
    return 1 if x == 0 else 2 ** (x - 1).bit_length()


_FROST = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")


@functools.lru_cache(maxsize=None)
def _frost_image(name: str) -> np.ndarray:
    """A frost image as cv2.imread gives it (BGR uint8), decoded once, read-only."""
    data = files(__package__).joinpath("frost", name).read_bytes()
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise RuntimeError(f"frost image {name} could not be decoded")
    img.flags.writeable = False
    return img


# ---- corruptions: x is a PIL RGB image, rng a np.random.RandomState -------------------------


def gaussian_noise(x, severity, rng):
    c = [.08, .12, 0.18, 0.26, 0.38][severity - 1]

    x = np.array(x) / 255.
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x, severity, rng):
    c = [60, 25, 12, 5, 3][severity - 1]

    x = np.array(x) / 255.
    return np.clip(rng.poisson(x * c) / float(c), 0, 1) * 255


def impulse_noise(x, severity, rng):
    c = [.03, .06, .09, 0.17, 0.27][severity - 1]

    # 1.1.2 passed no seed (skimage then draws from fresh entropy); one drawn from rng instead
    x = sk.util.random_noise(np.array(x) / 255., mode='s&p', amount=c, rng=rng.randint(0, 2**31 - 1))
    return np.clip(x, 0, 1) * 255


def glass_blur(x, severity, rng):
    # sigma, max_delta, iterations
    c = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][severity - 1]

    x = np.uint8(gaussian(np.array(x) / 255., sigma=c[0], channel_axis=-1) * 255)
    x_shape = np.array(x).shape

    # locally shuffle pixels
    for i in range(c[2]):
        for h in range(x_shape[0] - c[1], c[1], -1):
            for w in range(x_shape[1] - c[1], c[1], -1):
                dx, dy = rng.randint(-c[1], c[1], size=(2,))
                h_prime, w_prime = h + dy, w + dx
                # "swap", as in 1.1.2: with numpy views this copies pixel (h', w') onto (h, w)
                # and leaves (h', w') as it was; kept so that the outputs stay the same
                x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]

    return np.clip(gaussian(x / 255., sigma=c[0], channel_axis=-1), 0, 1) * 255


def defocus_blur(x, severity, rng):
    c = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)][severity - 1]

    x = np.array(x) / 255.
    kernel = disk(radius=c[0], alias_blur=c[1])

    channels = []
    for d in range(3):
        channels.append(cv2.filter2D(x[:, :, d], -1, kernel))
    channels = np.array(channels).transpose((1, 2, 0))  # 3x224x224 -> 224x224x3

    return np.clip(channels, 0, 1) * 255


def motion_blur(x, severity, rng):
    c = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)][severity - 1]
    x = np.array(x)

    angle = rng.uniform(-45, 45)
    x = _motion_blur(x, radius=c[0], sigma=c[1], angle=angle)
    return np.clip(x, 0, 255)


def zoom_blur(x, severity, rng):
    c = [np.arange(1, 1.11, 0.01),
         np.arange(1, 1.16, 0.01),
         np.arange(1, 1.21, 0.02),
         np.arange(1, 1.26, 0.02),
         np.arange(1, 1.31, 0.03)][severity - 1]

    x = (np.array(x) / 255.).astype(np.float32)
    out = np.zeros_like(x)

    for zoom_factor in c:
        zoom_layer = clipped_zoom(x, zoom_factor)
        zoom_layer = zoom_layer[:x.shape[0], :x.shape[1], :]
        try:
            out += zoom_layer
        except ValueError:  # the zoomed layer came out smaller than the image (1.1.2 printed a line here)
            out[:zoom_layer.shape[0], :zoom_layer.shape[1]] += zoom_layer

    x = (x + out) / (len(c) + 1)
    return np.clip(x, 0, 1) * 255


def snow(x, severity, rng):
    c = [(0.1, 0.3, 3, 0.5, 10, 4, 0.8),
         (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
         (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
         (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
         (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)][severity - 1]

    x = np.array(x, dtype=np.float32) / 255.
    snow_layer = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])  # [:2] for monochrome

    snow_layer = clipped_zoom(snow_layer[..., np.newaxis], c[2])
    snow_layer[snow_layer < c[3]] = 0

    snow_layer = np.clip(snow_layer.squeeze(), 0, 1)
    snow_layer = _motion_blur(snow_layer, radius=c[4], sigma=c[5], angle=rng.uniform(-135, -45))

    # The snow layer is rounded and cropped to the img dims
    snow_layer = np.round(snow_layer * 255).astype(np.uint8) / 255.
    snow_layer = snow_layer[..., np.newaxis]
    snow_layer = snow_layer[:x.shape[0], :x.shape[1], :]

    x = c[6] * x + (1 - c[6]) * np.maximum(
        x, cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).reshape(x.shape[0], x.shape[1], 1) * 1.5 + 0.5)
    try:
        return np.clip(x + snow_layer + np.rot90(snow_layer, k=2), 0, 1) * 255
    except ValueError:  # the snow layer came out smaller than the image
        x[:snow_layer.shape[0], :snow_layer.shape[1]] += snow_layer + np.rot90(snow_layer, k=2)
        return np.clip(x, 0, 1) * 255


def frost(x, severity, rng):
    c = [(1, 0.4),
         (0.8, 0.6),
         (0.7, 0.7),
         (0.65, 0.7),
         (0.6, 0.75)][severity - 1]

    idx = rng.randint(5)  # 1.1.2 lists six images but draws from the first five
    frost = _frost_image(_FROST[idx])
    frost_shape = frost.shape
    x_shape = np.array(x).shape

    # resize the frost image so it fits to the image dimensions
    scaling_factor = 1
    if frost_shape[0] >= x_shape[0] and frost_shape[1] >= x_shape[1]:
        scaling_factor = 1
    elif frost_shape[0] < x_shape[0] and frost_shape[1] >= x_shape[1]:
        scaling_factor = x_shape[0] / frost_shape[0]
    elif frost_shape[0] >= x_shape[0] and frost_shape[1] < x_shape[1]:
        scaling_factor = x_shape[1] / frost_shape[1]
    elif frost_shape[0] < x_shape[0] and frost_shape[1] < x_shape[1]:
        # If both dims are too small, pick the bigger scaling factor
        scaling_factor_0 = x_shape[0] / frost_shape[0]
        scaling_factor_1 = x_shape[1] / frost_shape[1]
        scaling_factor = np.maximum(scaling_factor_0, scaling_factor_1)

    scaling_factor *= 1.1
    new_shape = (int(np.ceil(frost_shape[1] * scaling_factor)),
                 int(np.ceil(frost_shape[0] * scaling_factor)))
    frost_rescaled = cv2.resize(frost, dsize=new_shape, interpolation=cv2.INTER_CUBIC)

    # randomly crop
    x_start, y_start = (rng.randint(0, frost_rescaled.shape[0] - x_shape[0]),
                        rng.randint(0, frost_rescaled.shape[1] - x_shape[1]))

    frost_rescaled = frost_rescaled[x_start:x_start + x_shape[0], y_start:y_start + x_shape[1]][..., [2, 1, 0]]
    return np.clip(c[0] * np.array(x) + c[1] * frost_rescaled, 0, 255)


def fog(x, severity, rng):
    c = [(1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4)][severity - 1]

    shape = np.array(x).shape
    max_side = np.max(shape)
    map_size = next_power_of_2(int(max_side))

    x = np.array(x) / 255.
    max_val = x.max()

    x += c[0] * plasma_fractal(rng, mapsize=map_size, wibbledecay=c[1])[:shape[0], :shape[1]][..., np.newaxis]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


def brightness(x, severity, rng):
    c = [.1, .2, .3, .4, .5][severity - 1]

    x = np.array(x) / 255.
    x = sk.color.rgb2hsv(x)
    x[:, :, 2] = np.clip(x[:, :, 2] + c, 0, 1)
    x = sk.color.hsv2rgb(x)

    return np.clip(x, 0, 1) * 255


def contrast(x, severity, rng):
    c = [0.4, .3, .2, .1, .05][severity - 1]

    x = np.array(x) / 255.
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def elastic_transform(image, severity, rng):
    # mod of https://gist.github.com/erniejunior/601cdf56d2b424757de5
    image = np.array(image, dtype=np.float32) / 255.
    shape = image.shape
    shape_size = shape[:2]

    sigma = np.array(shape_size) * 0.01
    alpha = [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12][severity - 1]
    max_dx = shape[0] * 0.005
    max_dy = shape[0] * 0.005

    dx = (gaussian(rng.uniform(-max_dx, max_dx, size=shape[:2]), sigma, mode='reflect', truncate=3) * alpha).astype(np.float32)
    dy = (gaussian(rng.uniform(-max_dy, max_dy, size=shape[:2]), sigma, mode='reflect', truncate=3) * alpha).astype(np.float32)

    dx, dy = dx[..., np.newaxis], dy[..., np.newaxis]
    x, y, z = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    indices = np.reshape(y + dy, (-1, 1)), np.reshape(x + dx, (-1, 1)), np.reshape(z, (-1, 1))
    return np.clip(map_coordinates(image, indices, order=1, mode='reflect').reshape(shape), 0, 1) * 255


def pixelate(x, severity, rng):
    c = [0.6, 0.5, 0.4, 0.3, 0.25][severity - 1]

    x_shape = np.array(x).shape
    x = x.resize((int(x_shape[1] * c), int(x_shape[0] * c)), Image.BOX)
    return x.resize((x_shape[1], x_shape[0]), Image.NEAREST)


def jpeg_compression(x, severity, rng):
    c = [25, 18, 15, 10, 7][severity - 1]

    output = BytesIO()
    x.save(output, 'JPEG', quality=c)
    return Image.open(output)


# the 15 common corruptions, in imagecorruptions' order
FUNCTIONS = {f.__name__: f for f in (
    gaussian_noise, shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur,
    snow, frost, fog, brightness, contrast, elastic_transform, pixelate, jpeg_compression)}


def corrupt(image: np.ndarray, name: str, severity: int, rng: np.random.RandomState) -> np.ndarray:
    """`image` (uint8 [H, W, 3], H and W >= MIN_SIZE) under corruption `name` at `severity`
    (1..5), drawing from `rng`; uint8, same shape (imagecorruptions' `corrupt`, RGB only)."""
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        raise ValueError("expecting a uint8 RGB image [H, W, 3]")
    if min(image.shape[:2]) < MIN_SIZE:
        raise ValueError(f"image width and height must be at least {MIN_SIZE} pixels")
    if severity not in (1, 2, 3, 4, 5):
        raise ValueError("severity must be an integer in [1, 5]")
    if name not in FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r}")
    return np.uint8(FUNCTIONS[name](Image.fromarray(image), severity, rng))
