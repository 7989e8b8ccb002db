"""CLIP encoder on a tiny random open_clip model loaded through the local-weights path."""
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.ground.images import load_image
from pipeline.ground.errors import ConfigError, WeightsError
from stages.extract import create_encoder, list_encoders
from stages.extract.base import safe_id
from stages.extract.factory import _find
from tests.extract.conftest import TINY_CLIP


def test_ids_are_path_safe_and_presets_resolve():
    assert safe_id("ViT-B/32") == "vit-b-32" and safe_id("laion2b_s34b_b79k") == "laion2b-s34b-b79k"
    entry, preset = _find("clip-vit-b-32.openai")
    assert entry.name == "clip" and preset == {"model": "ViT-B-32", "pretrained": "openai"}
    assert _find("CLIP")[0].name == "clip" and _find("alexnet.imagenet")[0].name == "alexnet"
    assert {"clip", "clip-vit-b-32.openai", "alexnet", "alexnet.imagenet", "bow"} <= set(list_encoders())
    with pytest.raises(ConfigError, match="encoder ids"):
        _find("clop")


def test_tiny_clip_from_a_local_file(tiny_clip_weights: Path, make_items):
    enc = create_encoder("clip", model=TINY_CLIP, pretrained=str(tiny_clip_weights))
    assert enc.id == "clip-cmh-tiny-clip.local"
    assert {k: (v.dim, v.dtype, v.modality) for k, v in enc.columns.items()} == {
        "image": (16, "float16", "image"), "text": (16, "float16", "text")}
    cfg = enc.config()
    assert cfg["pretrained"].startswith("file:sha256:") and cfg["quick_gelu"] is False
    assert enc.provenance()["preprocess"]["size"] in (32, [32, 32])
    items = make_items(3)
    images = torch.stack([enc.image_transform()(load_image(p)) for p in items.image])
    assert images.shape == (3, 3, 32, 32)
    out = enc.encode(images, items.texts, items.item_id)
    assert out["image"].shape == (3, 16) and out["text"].shape == (3, 16)
    # tags become one phrase "a, b, c" in the template
    direct = enc.model.encode_text(enc.tokenizer([", ".join(items.texts[0])])).detach().numpy()
    np.testing.assert_allclose(out["text"][:1], direct, rtol=2e-3, atol=2e-3)  # stored dtype float16


def test_weights_file_from_environment(tiny_clip_weights: Path, monkeypatch):
    monkeypatch.setenv("CLIP_WEIGHTS", str(tiny_clip_weights))
    assert create_encoder("clip", model=TINY_CLIP).weights["path"] == str(tiny_clip_weights)
    monkeypatch.setenv("CLIP_WEIGHTS", "/nowhere/clip.pt")
    with pytest.raises(WeightsError, match="CLIP_WEIGHTS=/path/to/file.pt"):
        create_encoder("clip", model=TINY_CLIP)


def test_uncached_tag_without_network_says_how_to_supply_weights(monkeypatch):
    import open_clip.factory

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.delenv("CLIP_WEIGHTS", raising=False)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)  # never touch the network in tests
    with pytest.raises(WeightsError, match="CLIP_WEIGHTS=/path/to/file.pt.*internet"):
        create_encoder("clip")  # the alias: ViT-B-32, tag openai


def test_unknown_tag_and_model_list_the_choices():
    with pytest.raises(ConfigError, match="tags: .*openai"):
        create_encoder("clip", pretrained="no-such-tag")
    with pytest.raises(ConfigError, match="ViT-B-32"):
        create_encoder("clip", model="ViT-B-33")


def test_caption_mean_averages_normalised_embeddings(tiny_clip_weights: Path):
    enc = create_encoder("clip", model=TINY_CLIP, pretrained=str(tiny_clip_weights))
    enc.text_kind = "captions"  # what prepare() takes from a caption dataset
    caps = [["a dog on grass", "a brown dog"], ["a red car"]]
    got = enc.encode_texts(caps).numpy()
    single = torch.nn.functional.normalize(
        enc.model.encode_text(enc.tokenizer(["a dog on grass", "a brown dog", "a red car"])), dim=-1).detach().numpy()
    np.testing.assert_allclose(got, np.stack([single[:2].mean(0), single[2]]), rtol=1e-5, atol=1e-6)
    first = create_encoder("clip", model=TINY_CLIP, pretrained=str(tiny_clip_weights), caption_mode="first")
    first.text_kind = "captions"
    np.testing.assert_allclose(torch.nn.functional.normalize(first.encode_texts(caps), dim=-1).numpy()[0],
                               single[0], rtol=1e-5, atol=1e-6)
