"""Encoder ``clip``: an open_clip model's image tower and text tower (CCAH, UCMFH, CFRH inputs).

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021;
code mlfoundations/open_clip (``create_model_and_transforms``, ``get_tokenizer``). Any open_clip model
name works; the papers use ViT-B/32 (512-d). Images go through the model's
own inference preprocessing (open_clip's ``preprocess_val``), not ImageNet's (CCAH's code normalises CLIP inputs with ImageNet's statistics, a mismatch).

Weights (``pretrained``): an open_clip tag (downloaded by open_clip on a machine with internet, or
read from its cache), or a local weights file (also via the ``CLIP_WEIGHTS`` environment variable).
No CLIP weights ship with any package, so without internet a file is needed.

Texts [inferred, UCMFH's text construction is unreleased]:

* tags: joined with ", " into ``tag_template`` (default ``"{}"``, i.e. "sunset, beach, sea"),
  truncated to the model's context length by its tokenizer;
* captions (``caption_mode``): ``mean`` encodes each caption and averages the L2-normalised
  embeddings (so the result is not unit-length); ``first`` uses the first caption; ``join`` joins
  them into one string (truncated).

Stored embeddings are the raw tower outputs (UCMFH feeds raw embeddings); ``normalize=True``
L2-normalises both columns.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from pipeline.ground.item_table import ItemTable
from pipeline.ground.errors import ConfigError, WeightsError
from pipeline.ground.paths import expand_home
from pipeline.ground.store.features import ColumnSpec
from pipeline.ground.provenance import file_sha256
from stages.extract.base import Encoder, column_array, register_encoder, safe_id

log = logging.getLogger(__name__)

#: Environment variable naming a local weights file, used when ``pretrained`` is not given.
WEIGHTS_ENV = "CLIP_WEIGHTS"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
CAPTION_MODES = ("mean", "first", "join")

#: Encoder id -> settings (model name and open_clip tag, as open_clip's pretrained table spells them).
CLIP_PRESETS: Mapping[str, Mapping[str, Any]] = {
    "clip-vit-b-32.openai": {"model": "ViT-B-32", "pretrained": "openai"},
    "clip-vit-b-16.openai": {"model": "ViT-B-16", "pretrained": "openai"},
    "clip-vit-l-14.openai": {"model": "ViT-L-14", "pretrained": "openai"},
    "clip-rn50.openai": {"model": "RN50", "pretrained": "openai"},
    "clip-vit-b-32.laion2b-s34b-b79k": {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"},
}


@dataclass(frozen=True)
class ClipConfig:
    model: str = "ViT-B-32"  # open_clip model name; ViT-B/32 as in CCAH's code
    pretrained: str | None = None  # open_clip tag or a weights file; None: $CLIP_WEIGHTS if set, else "openai"
    quick_gelu: bool | None = None  # None: the tag's own setting (openai: True); a local file: False unless set
    tag_template: str = "{}"  # [inferred] tags joined by ", " then put into this template
    caption_mode: str = "mean"  # [inferred] mean | first | join: how several captions become one vector
    normalize: bool = False  # L2-normalise stored embeddings; raw by default as UCMFH uses them




def _is_path(value: str) -> bool:
    return os.sep in value or value.endswith(WEIGHT_SUFFIXES) or expand_home(value).exists()


def _how_to_supply(model: str) -> str:
    return (f"supply weights with {WEIGHTS_ENV}=/path/to/file.pt (or the setting pretrained=/path/to/file.pt), "
            f"or run once on a machine with internet so open_clip caches the tag, e.g. "
            f"python -c \"import open_clip; open_clip.create_model('{model}', pretrained='openai')\"")


@register_encoder("clip", config=ClipConfig, variants=CLIP_PRESETS)
class ClipEncoder(Encoder):
    """open_clip image and text embeddings (any model; an open_clip tag or a local weights file)."""

    inputs = frozenset({"image", "text"})

    def __init__(self, cfg: ClipConfig) -> None:
        import open_clip

        if cfg.caption_mode not in CAPTION_MODES:
            raise ConfigError(f"clip caption_mode must be one of {', '.join(CAPTION_MODES)}, got {cfg.caption_mode!r}")
        if "{}" not in cfg.tag_template:
            raise ConfigError(f"clip tag_template must contain '{{}}' where the tags go, got {cfg.tag_template!r}")
        if cfg.model not in open_clip.list_models():
            import difflib

            close = difflib.get_close_matches(cfg.model, open_clip.list_models(), n=3)
            raise ConfigError(f"unknown open_clip model {cfg.model!r}; close: {', '.join(close) or 'none'} "
                              f"(all: python -c 'import open_clip; print(open_clip.list_models())')")
        pretrained = cfg.pretrained or os.environ.get(WEIGHTS_ENV) or "openai"
        self.cfg = cfg
        quick_gelu = cfg.quick_gelu
        if _is_path(pretrained):
            path = expand_home(pretrained)
            if not path.is_file():
                raise WeightsError(f"CLIP weights file {path} does not exist; {_how_to_supply(cfg.model)}")
            self.tag: str | None = None
            self.weights = {"source": "file", "path": str(path), "sha256": file_sha256(path)}
            checkpoint = str(path)
            if quick_gelu is None:
                log.warning("clip: weights file %s with quick_gelu=False; OpenAI-trained CLIP weights need the "
                            "setting quick_gelu=true (or a '-quickgelu' model name)", path)
        else:
            tags = open_clip.list_pretrained_tags_by_model(cfg.model)
            if pretrained not in tags:
                raise ConfigError(f"unknown open_clip tag {pretrained!r} for {cfg.model}; tags: "
                                  f"{', '.join(tags) or 'none'}; or give a weights file path")
            tag_cfg = open_clip.get_pretrained_cfg(cfg.model, pretrained)
            if quick_gelu is None:
                quick_gelu = bool(tag_cfg.get("quick_gelu", False))
            self.tag = pretrained
            self.weights = {"source": "open_clip-tag", "tag": pretrained,
                            "hf_hub": tag_cfg.get("hf_hub", ""), "url": tag_cfg.get("url", "")}
            checkpoint = pretrained
        self.quick_gelu = bool(quick_gelu)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                cfg.model, pretrained=checkpoint, device="cpu", force_quick_gelu=self.quick_gelu)
        except Exception as exc:  # download/IO/state-dict errors of many types; all mean "no usable weights"
            where = f"tag {pretrained!r} (not cached, and the download failed)" if self.tag else f"file {checkpoint}"
            raise WeightsError(f"cannot load CLIP {cfg.model} weights from {where}: {type(exc).__name__}: {exc}. "
                               f"{_how_to_supply(cfg.model)}") from exc
        log.info("clip %s weights: %s (quick_gelu=%s)", cfg.model, self.weights, self.quick_gelu)
        self.model = model.eval()
        self.preprocess = preprocess
        self.preprocess_cfg = {k: (list(v) if isinstance(v, tuple) else v)
                               for k, v in open_clip.get_model_preprocess_cfg(model).items()}
        self.tokenizer = open_clip.get_tokenizer(cfg.model)
        self.context_length = int(getattr(self.tokenizer, "context_length", 77))
        self.device = torch.device("cpu")
        self.text_kind = "tags"
        with torch.inference_mode():
            dim = int(self.model.encode_text(self.tokenizer([""])).shape[1])  # the model's embedding width
        self.id = f"clip-{safe_id(cfg.model)}.{safe_id(self.tag) if self.tag else 'local'}"
        self.columns = {"image": ColumnSpec(dim, "float16", "image"), "text": ColumnSpec(dim, "float16", "text")}
        self.default_columns = {"image": ["image"], "text": ["text"]}

    # -- settings ---------------------------------------------------------------------------------
    def prepare(self, items: ItemTable, splits: Mapping[str, np.ndarray]) -> None:
        self.text_kind = items.text_kind

    def config(self) -> dict[str, Any]:
        cfg = dataclasses.asdict(self.cfg)
        cfg["pretrained"] = self.tag if self.tag else f"file:sha256:{self.weights['sha256']}"
        cfg["quick_gelu"] = self.quick_gelu
        return {"kind": "clip", **cfg, "text_kind": self.text_kind, "context_length": self.context_length,
                "preprocess": self.preprocess_cfg}

    def provenance(self) -> dict[str, Any]:
        return {"weights": self.weights, "model": self.cfg.model, "preprocess": self.preprocess_cfg,
                "context_length": self.context_length,
                "text": (f"tags joined by ', ' into {self.cfg.tag_template!r}" if self.text_kind == "tags"
                         else f"captions, caption_mode={self.cfg.caption_mode}")}

    def image_transform(self) -> Callable[[Any], Tensor]:
        return self.preprocess

    def to(self, device: torch.device) -> "ClipEncoder":
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    # -- encoding ---------------------------------------------------------------------------------
    def _texts(self, texts: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray]:
        """Strings to encode and, for each, the batch row it belongs to."""
        strings: list[str] = []
        owner: list[int] = []
        for r, item in enumerate(texts):
            if self.text_kind == "tags":
                parts = [self.cfg.tag_template.format(", ".join(t.strip() for t in item if t.strip()))]
            elif self.cfg.caption_mode == "mean":
                parts = list(item) or [""]
            elif self.cfg.caption_mode == "first":
                parts = [item[0] if item else ""]
            else:
                parts = [" ".join(item)]
            strings += parts
            owner += [r] * len(parts)
        return strings, np.asarray(owner, dtype=np.int64)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[Sequence[str]]) -> Tensor:
        """(m,) items' tags or captions -> (m, D) float32 text embeddings."""
        strings, owner = self._texts(texts)
        tokens = self.tokenizer(strings).to(self.device)       # (n_strings, context_length)
        emb = self.model.encode_text(tokens).float()           # (n_strings, D)
        if self.text_kind == "captions" and self.cfg.caption_mode == "mean":
            emb = torch.nn.functional.normalize(emb, dim=-1)
            idx = torch.from_numpy(owner).to(self.device)
            sums = torch.zeros(len(texts), emb.shape[1], device=self.device).index_add_(0, idx, emb)
            counts = torch.bincount(idx, minlength=len(texts)).clamp_min(1).unsqueeze(1)
            emb = sums / counts                                # (m, D) mean of unit vectors
        return emb

    def encode(self, images: Tensor | None, texts: Sequence[Sequence[str]] | None,
               item_ids: np.ndarray) -> dict[str, np.ndarray]:
        if images is None or texts is None:
            raise ValueError("the clip encoder needs images and texts")
        with torch.inference_mode():
            image = self.model.encode_image(images).float()    # (m, D)
        text = self.encode_texts(texts)
        if self.cfg.normalize:
            image = torch.nn.functional.normalize(image, dim=-1)
            text = torch.nn.functional.normalize(text, dim=-1)
        return {"image": column_array(image, self.columns["image"]), "text": column_array(text, self.columns["text"])}
