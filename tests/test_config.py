"""params.yaml validation: bad values stop with a message naming the key."""

from __future__ import annotations

import pytest
import yaml

from conftest import REPO, tiny_params_dict
from stylepipe.config import ParamsError, load_params, train_params, style_source


def _write(tmp_path, params):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_shipped_params_are_valid():
    params = load_params([REPO / "params.yaml"])
    assert list(params["styles"]) == ["candy", "mosaic", "rain-princess", "udnie"]
    assert params["train"]["content_weight"] == 1e5 and params["train"]["style_weight"] == 1e10
    load_params([REPO / "config/demo.yaml", REPO / "config/offline.yaml"])


def test_overlay_merges_in_order():
    params = load_params([REPO / "config/demo.yaml", REPO / "config/offline.yaml"])
    assert params["loss_network"]["weights"] == "random"
    assert params["loss_network"]["url"].endswith("vgg16-397923af.pth")


def test_style_overrides_apply_to_one_style(tmp_path):
    params = tiny_params_dict()
    params["styles"]["waves"]["style_weight"] = 5.0e+9
    loaded = load_params([_write(tmp_path, params)])
    assert train_params(loaded, "waves")["style_weight"] == 5.0e+9
    assert train_params(loaded, "mosaic")["style_weight"] == params["train"]["style_weight"]
    assert style_source(loaded, "waves") == {"generate": "waves"}


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda p: p["train"].update(batch_sise=4), "train.batch_sise"),
        (lambda p: p["train"].update(batch_size="four"), "train.batch_size"),
        (lambda p: p.update(extra=1), "extra"),
        (lambda p: p["train"].pop("lr"), "lr"),
        (lambda p: p["loss_network"].update(weights="imagenett"), "loss_network.weights"),
        (lambda p: p["styles"]["waves"].update(style_wieght=1.0), "styles.waves.style_wieght"),
        (lambda p: p["styles"]["waves"].update(style_weight="big"), "styles.waves.style_weight"),
        (lambda p: p["styles"].update(missing={"file": "no/such/style.jpg"}), "styles.missing.file"),
    ],
)
def test_bad_params_name_the_key(tmp_path, mutate, key):
    params = tiny_params_dict()
    mutate(params)
    with pytest.raises(ParamsError) as err:
        load_params([_write(tmp_path, params)])
    assert key in str(err.value)
