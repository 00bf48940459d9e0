"""Generated style images: deterministic bytes, distinct looks."""

from __future__ import annotations

import numpy as np
import pytest

from stylepipe.data.generate import KINDS, generate, save_generated

SIZE = 128  # the default is 512; small keeps the test fast


@pytest.fixture(scope="module")
def images():
    return {kind: np.asarray(generate(kind, SIZE, seed=42)).astype(float) for kind in KINDS}


def test_kinds_match_the_params_schema():
    import yaml
    from importlib import resources

    schema = yaml.safe_load(resources.files("stylepipe").joinpath("params.schema.yaml").read_text())
    assert list(KINDS) == schema["$defs"]["image_source"]["properties"]["generate"]["enum"]


def test_same_seed_same_bytes_other_seed_other_image(tmp_path):
    a = save_generated("waves", tmp_path / "a.png", SIZE, seed=1).read_bytes()
    b = save_generated("waves", tmp_path / "b.png", SIZE, seed=1).read_bytes()
    c = save_generated("waves", tmp_path / "c.png", SIZE, seed=2).read_bytes()
    assert a == b and a != c
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "c.png"]


def test_styles_are_textured_and_distinct(images):
    for kind, img in images.items():
        assert img.shape == (SIZE, SIZE, 3)
        assert img.std() > 30, f"{kind} is too flat to be a style"
        # strong local texture: neighbouring pixels differ often
        assert np.abs(np.diff(img, axis=1)).mean() > 4, kind
    means = {k: img.reshape(-1, 3).mean(0) for k, img in images.items()}
    assert means["waves"][2] > means["waves"][0] + 40  # blue
    assert means["stripes"][0] > means["stripes"][2] + 40  # warm
    for a in KINDS:
        for b in KINDS:
            if a < b:
                assert np.abs(images[a] - images[b]).mean() > 40, (a, b)


def test_unknown_kind_names_the_choices():
    with pytest.raises(ValueError, match="waves, mosaic, stripes, dots"):
        generate("plaid")
