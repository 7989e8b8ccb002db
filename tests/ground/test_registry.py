import pytest

from pipeline.ground.registry import Registry, check_path_safe, normalise_name


def test_lookup_normalises_and_suggests():
    reg = Registry("method", "cmh list methods")

    @reg.register("ucmfh", aliases=("UCMFH_v1",))
    def build():
        """Unsupervised contrastive multi-modal fusion hashing."""

    assert reg.resolve("UCMFH") == "ucmfh"
    assert reg.resolve("ucmfh-v1") == "ucmfh"
    assert reg.get("ucmfh").summary.startswith("Unsupervised")
    with pytest.raises(KeyError, match="did you mean 'ucmfh'.*cmh list methods"):
        reg.resolve("ucmhf")


def test_duplicate_and_unsafe_names_fail():
    reg = Registry("encoder", "cmh list encoders")
    reg.register("bow")(lambda: None)
    with pytest.raises(ValueError, match="twice"):
        reg.register("bow")(lambda: None)
    with pytest.raises(ValueError, match="path-safe"):
        check_path_safe("../etc")
    assert normalise_name("ViT_B/32") == "vit-b-32"


def test_deprecated_alias_warns():
    reg = Registry("method", "x")
    reg.register("cca-itq")(lambda: None)
    reg.deprecate("ccaitq", "cca-itq")
    with pytest.warns(DeprecationWarning):
        assert reg.resolve("ccaitq") == "cca-itq"


def test_natural_sort():
    reg = Registry("x", "x")
    for n in ("m10", "m2", "m1"):
        reg.register(n)(lambda: None)
    assert reg.names() == ["m1", "m2", "m10"]
