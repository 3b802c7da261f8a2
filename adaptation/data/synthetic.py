"""Generated and bundled domain-shift data: Transformed Moons, shifted sklearn digits, sensor subjects."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

DomainArrays = dict[str, tuple[np.ndarray, np.ndarray]]


def _rotation2d(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def transformed_moons(n: int = 2500, angle: float = 50.0, scale: float = 1.3, noise: float = 0.1,
                      seed: int = 0) -> DomainArrays:
    """Two-moons source and a target drawn the same way, then rotated by ``angle`` degrees and scaled by ``scale``
    about the data centre (the toy of the IWA paper). Returns {"source": (x, y), "target": (x, y)}."""
    from sklearn.datasets import make_moons

    xs, ys = make_moons(n, noise=noise, random_state=seed)
    xt, yt = make_moons(n, noise=noise, random_state=seed + 10_000)
    centre = np.array([0.5, 0.25])
    xt = (xt - centre) @ _rotation2d(angle).T * scale + centre
    return {"source": (xs.astype(np.float32), ys), "target": (xt.astype(np.float32), yt)}


def _digit_shift(images: np.ndarray, shift: str, rng: np.random.Generator) -> np.ndarray:
    """Apply one realistic shift to 8x8 digit images with values in [0, 16]."""
    if shift == "rotate":
        out = np.stack([ndimage.rotate(im, rng.uniform(20, 35) * rng.choice([-1, 1]), reshape=False, order=1)
                        for im in images])
    elif shift == "scale":
        centre = np.array([3.5, 3.5])

        def shrink(im: np.ndarray) -> np.ndarray:
            s = rng.uniform(0.65, 0.8)
            return ndimage.affine_transform(im, np.eye(2) / s, offset=centre - centre / s, order=1)

        out = np.stack([shrink(im) for im in images])
    elif shift == "stroke":
        out = np.stack([ndimage.grey_dilation(im, size=(2, 2)) for im in images])
    elif shift == "noise":
        out = images + rng.normal(0.0, 4.0, images.shape)
    else:
        raise ValueError(f"digit shift: expected one of ['noise', 'rotate', 'scale', 'stroke'], got {shift!r}")
    return np.clip(out, 0.0, 16.0)


def shifted_digits(shift: str, seed: int = 0) -> DomainArrays:
    """scikit-learn's bundled 8x8 digits: the source is one half of the images, the target the other half with
    ``shift`` applied ("rotate", "scale", "stroke" or "noise"). Inputs are flattened to 64 values in [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    src, tgt = order[: len(order) // 2], order[len(order) // 2:]
    images = digits.images.astype(np.float64)
    target_images = _digit_shift(images[tgt], shift, rng)
    flat = lambda a: (a.reshape(len(a), -1) / 16.0).astype(np.float32)
    return {"source": (flat(images[src]), digits.target[src]), "target": (flat(target_images), digits.target[tgt])}


SENSOR_PROFILES = {
    # name: (channels, window length, classes) as in the published windowed versions of the sets
    "uci_har": (9, 128, 6),
    "hhar": (3, 128, 6),
    "wisdm": (3, 128, 6),
}


def _random_rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = np.deg2rad(rng.uniform(-max_degrees, max_degrees))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def sensor_subjects(profile: str = "hhar", n_subjects: int = 4, per_class: int = 60, max_rotation: float = 40.0,
                    gain_std: float = 0.2, rate_jitter: float = 0.15, seed: int = 0) -> DomainArrays:
    """Multichannel activity windows (channels, T) with subject shift; each subject is a domain.

    Every class has, per tri-axial sensor group, a gravity direction and a periodic motion (fundamental + harmonic).
    A subject rotates each sensor group (device orientation, up to ``max_rotation`` degrees), scales each channel
    (gain), and moves at its own pace (sampling-rate factor within +-``rate_jitter``). Returns {"subject_i": (x, y)}.
    """
    if profile not in SENSOR_PROFILES:
        raise ValueError(f"profile: expected one of {sorted(SENSOR_PROFILES)}, got {profile!r}")
    channels, length, n_classes = SENSOR_PROFILES[profile]
    groups = channels // 3
    rng = np.random.default_rng(seed)
    gravity = rng.normal(size=(n_classes, groups, 3))
    motion = rng.normal(size=(n_classes, groups, 3)) * rng.uniform(0.2, 1.5, size=(n_classes, 1, 1))
    freq = rng.uniform(1.0, 6.0, size=n_classes)
    t = np.arange(length) / length
    out: DomainArrays = {}
    for s in range(n_subjects):
        rotations = [_random_rotation(rng, max_rotation) for _ in range(groups)]
        gain = 1.0 + gain_std * rng.normal(size=(groups, 3))
        rate = 1.0 + rng.uniform(-rate_jitter, rate_jitter)
        xs, ys = [], []
        for c in range(n_classes):
            for _ in range(per_class):
                phase = rng.uniform(0, 2 * np.pi)
                f = freq[c] * rate * rng.uniform(0.95, 1.05)
                wave = np.sin(2 * np.pi * f * t + phase) + 0.4 * np.sin(4 * np.pi * f * t + 2 * phase)
                window = []
                for g in range(groups):
                    sig = gravity[c, g][:, None] + motion[c, g][:, None] * rng.uniform(0.8, 1.2) * wave[None, :]
                    sig = gain[g][:, None] * (rotations[g] @ sig) + rng.normal(0.0, 0.3, (3, length))
                    window.append(sig)
                xs.append(np.concatenate(window))
                ys.append(c)
        out[f"subject_{s}"] = (np.stack(xs).astype(np.float32), np.array(ys))
    return out
