"""The downstream study's augmentation: one policy (`evaluate.augmentation`), the same for every strategy.

A synthetic corpus is, by construction, the real patients' masks after affine and elastic perturbation:
a real-only baseline trained without geometric augmentation is denied exactly what the synthetic rows
add by construction, and a "synthetic gain" is then partly an augmentation gain. So every strategy's
training batches — real, synthetic, warped, and their mixtures — go through this one policy.

The default policy follows Echo from noise's downstream U-Net (rotation ±10°, translation, scaling,
gamma) within nnU-Net's default ranges (docs/references.md): rotation ±10°, translation ±10 % of the
frame side, isotropic scale 0.9–1.1, gamma 0.7–1.5, gain 0.85–1.15, Gaussian noise (std up to 0.03 of
full scale). No flips and no large rotations: apical views have a fixed layout (apex at the top, 4CH
right heart on the left), which a flip would turn into anatomy that never occurs. Every transform is
applied to every frame (nnU-Net applies each with a probability instead; at these ranges a frame
without any jitter adds nothing).

MONAI does the work, seeded explicitly from the training loop's numpy Generator: the geometry is MONAI's
`AffineTransform` (one batched resampling for the frames, bilinear, and one for the label maps,
nearest), with each frame's matrix composed by `monai.transforms.utils.create_rotate / create_scale /
create_translate` from parameters drawn by that Generator (MONAI's `RandAffine` draws a separate scale
per axis, and resamples one frame at a time, ~5x slower here); the intensity part is MONAI's
`RandAdjustContrast`, `RandScaleIntensity` and `RandGaussianNoise`, per frame, with a `RandomState`
seeded from the same Generator. Noise is added inside the (moved) ultrasound sector only: outside it
a scanner shows black, as the real and generated frames do.
"""

from __future__ import annotations

import numpy as np

from synthecho.errors import SynthechoError

MAX_SEED = 2**32  # numpy RandomState seeds (MONAI's randomisable transforms draw from a RandomState)


class Augmentation:
    """`evaluate.augmentation` as a callable on one training batch: (frames, label maps) -> moved copies."""

    def __init__(self, config):
        from monai.transforms import RandAdjustContrast, RandGaussianNoise, RandScaleIntensity

        self.config = config
        self.geometric = bool(
            config.rotation_degrees or config.translate or tuple(config.scale) != (1.0, 1.0)
        )
        intensity = []
        if config.gamma is not None and tuple(config.gamma) != (1.0, 1.0):
            intensity.append(RandAdjustContrast(prob=1.0, gamma=tuple(config.gamma)))
        if config.gain is not None and tuple(config.gain) != (1.0, 1.0):
            low, high = config.gain
            intensity.append(RandScaleIntensity(factors=(low - 1.0, high - 1.0), prob=1.0))
        self.intensity = intensity
        self.noise = RandGaussianNoise(prob=1.0, std=config.noise_std) if config.noise_std else None

    @property
    def identity(self) -> bool:
        return not (self.geometric or self.intensity or self.noise)

    def describe(self) -> dict:
        """What a run records about its augmentation (the policy and how it is applied)."""
        return {
            **self.config.model_dump(mode="json"),
            "applied": "every frame of every strategy's training batches; MONAI AffineTransform "
            "(bilinear frames, nearest labels), RandAdjustContrast, RandScaleIntensity, "
            "RandGaussianNoise inside the sector; no flips",
        }

    def matrices(self, count: int, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """(count, 3, 3) pixel-space affines about the frame centre (rows, cols), drawn from `rng`."""
        from monai.transforms.utils import create_rotate, create_scale, create_translate

        config = self.config
        angles = np.deg2rad(rng.uniform(-config.rotation_degrees, config.rotation_degrees, size=count))
        shifts = rng.uniform(-config.translate, config.translate, size=(count, 2)) * np.asarray(shape)
        scales = rng.uniform(*config.scale, size=count)
        out = np.empty((count, 3, 3))
        for i in range(count):
            forward = (
                create_translate(2, shifts[i])
                @ create_rotate(2, angles[i])
                @ create_scale(2, [scales[i]] * 2)
            )
            # AffineTransform maps output coordinates to the input they are sampled from: the inverse.
            out[i] = np.linalg.inv(forward)
        return out

    def __call__(
        self, images: np.ndarray, masks: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Float frames in [0, 1] (B, H, W) and their uint8 label maps (or None) -> augmented copies."""
        import torch
        from monai.networks.layers import AffineTransform

        if images.ndim != 3:
            raise SynthechoError(
                f"augmentation expects a (B, H, W) batch of frames, got shape {images.shape}"
            )
        if self.identity:
            return images, masks
        frames = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
        if self.geometric:
            theta = torch.from_numpy(self.matrices(len(images), images.shape[1:], rng)[:, :2]).float()
            warp = {
                mode: AffineTransform(normalized=False, zero_centered=True, mode=mode, padding_mode="zeros")
                for mode in ("bilinear", "nearest")
            }
            frames = warp["bilinear"](frames, theta)
            if masks is not None:
                labels = torch.from_numpy(masks.astype(np.float32))[:, None]
                masks = warp["nearest"](labels, theta)[:, 0].round().numpy().astype(np.uint8)
        inside = frames > 0  # the moved sector: outside it a frame stays black
        per_frame = [*self.intensity, *([self.noise] if self.noise is not None else [])]
        if per_frame:
            from monai.data import get_track_meta, set_track_meta

            state = np.random.RandomState(int(rng.integers(0, MAX_SEED)))
            for transform in per_frame:
                transform.set_random_state(state=state)
            tracking = get_track_meta()
            set_track_meta(False)  # plain tensors: MONAI's metadata bookkeeping costs more than the maths
            try:
                out = []
                for frame in frames:
                    for transform in per_frame:
                        frame = transform(frame)
                    out.append(frame)
            finally:
                set_track_meta(tracking)
            frames = torch.stack(out)
        frames = torch.where(inside, frames.clamp(0.0, 1.0), 0.0)
        return frames[:, 0].numpy().astype(np.float32), masks
