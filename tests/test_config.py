"""params.yaml validation: bad values stop with a message naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import REPO, tiny_params_dict
from stylepipe.config import ParamsError, load_params, style_source, train_params, validate


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
        (lambda p: p["styles"]["waves"].update(resources={"gpu": -1}), "key styles.waves.resources.gpu:"),
        (lambda p: p["styles"]["waves"].update(resources={"gpus": 1}), "key styles.waves.resources.gpus: not a resource"),
        (lambda p: p["styles"].update({1: {"generate": "waves"}}), "style name 1 is a number; quote it"),
        (lambda p: p.update(seed=2**40), "key seed:"),
        # combinations the schema cannot see: refused when the params are read (a plan fails), not at training
        (lambda p: p["train"].update(style_layer_weights=[1.0]), "train.style_layer_weights has 1 entries"),
        (lambda p: p["train"].update(max_steps=0), "train.max_steps is 0"),
        (lambda p: p["styles"]["waves"].update(max_steps=0), "(style waves: train with its overrides)"),
        (lambda p: p["styles"]["waves"].update(image_size=128), "key styles.waves.image_size: 128 differs"),
        # the thread count changes CPU-trained weights, so both runners track it: it must be there
        (lambda p: p["resources"]["train"].pop("cpus_per_task"), "key resources.train.cpus_per_task is missing"),
        (lambda p: p.pop("resources"), "key resources.train.cpus_per_task is missing"),
        # names that become file names and command-line values: a hidden file, an option
        (lambda p: p["data"]["eval"][0].update(name=".x"), "key data.eval.0.name: '.x' does not match"),
        (lambda p: p["styles"].update({"-x": {"generate": "waves"}}), "not starting with -"),
        (lambda p: p["styles"].update({True: {"generate": "waves"}}), "a style name reads as true"),
        # a misspelt step would leave that step with the default resources
        (lambda p: p["resources"].update(stylise={"gpu": 1}), "unknown key resources.stylise"),
        (lambda p: p["loss_network"].update(url="notaurl"), "key loss_network.url: 'notaurl' does not match"),
        (lambda p: p["data"].update(content={"url": "https://example.org/c.zip", "md5": "a" * 64}),
         "key data.content.md5: 'aaaa"),
        # evaluation images: checked when the params are read, not when `fetch eval` runs
        (lambda p: p["data"]["eval"].append(dict(p["data"]["eval"][0])), "is used twice"),
        (lambda p: p["data"]["eval"].__setitem__(0, {"name": "x", "file": "no/such/e.jpg"}),
         "key data.eval[0] (x).file: no/such/e.jpg does not exist"),
    ],
)
def test_bad_params_name_the_key(tmp_path, mutate, key):
    params = tiny_params_dict()
    mutate(params)
    with pytest.raises(ParamsError) as err:
        load_params([_write(tmp_path, params)])
    assert key in str(err.value)


def _overlay(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_overlay_naming_a_source_replaces_the_base_source(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    over = _overlay(tmp_path, "over.yaml", {"data": {"content": {"folder": str(photos)}}})
    params = load_params([REPO / "params.yaml", over])
    assert params["data"]["content"] == {"folder": str(photos)}  # no url/md5 of params.yaml mixed in

    # the other way round: a url (with its checksum) replaces skimage
    over = _overlay(tmp_path, "url.yaml", {"data": {"content": {"url": "file:///d/train.zip", "md5": "0" * 32}}})
    params = load_params([REPO / "config/demo.yaml", over])
    assert params["data"]["content"] == {"url": "file:///d/train.zip", "md5": "0" * 32}

    # a checksum alone names no source: it merges into the base's url source
    over = _overlay(tmp_path, "md5.yaml", {"data": {"content": {"md5": "1" * 32}}})
    params = load_params([REPO / "params.yaml", over])
    assert params["data"]["content"] == {"url": "http://images.cocodataset.org/zips/train2014.zip", "md5": "1" * 32}


def test_overlay_switching_a_style_source_keeps_its_overrides(tmp_path):
    style = tmp_path / "waves.png"
    style.write_bytes(b"not read here")
    base = tiny_params_dict()
    base["styles"]["waves"].update(style_weight=5.0e+9, resources={"mem_mb": 1000})
    base_file = _overlay(tmp_path, "base.yaml", base)
    over = _overlay(tmp_path, "over.yaml", {"styles": {"waves": {"file": str(style), "tv_weight": 1.0e-6}}})
    params = load_params([base_file, over])
    assert style_source(params, "waves") == {"file": str(style)}
    assert params["styles"]["waves"]["resources"] == {"mem_mb": 1000}
    tp = train_params(params, "waves")
    assert tp["style_weight"] == 5.0e+9 and tp["tv_weight"] == 1.0e-6
    assert style_source(params, "mosaic") == {"generate": "mosaic"}  # other styles untouched

    # over the shipped demo config, as README suggests
    params = load_params([REPO / "config/demo.yaml", over])
    assert style_source(params, "waves") == {"file": str(style)}


def test_null_removes_a_source_key(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    over = _overlay(tmp_path, "over.yaml",
                    {"data": {"content": {"url": None, "md5": None, "folder": str(photos)}},
                     "styles": {"candy": {"url": None, "generate": "dots"}}})
    params = load_params([REPO / "params.yaml", over])
    assert params["data"]["content"] == {"folder": str(photos)}
    assert style_source(params, "candy") == {"generate": "dots"}
    # the same merged by hand (as Snakemake merges --configfile overlays) validates too
    merged = yaml.safe_load((REPO / "params.yaml").read_text())
    merged["data"]["content"].update(url=None, md5=None, folder=str(photos))
    validate(merged)


@pytest.mark.parametrize(
    "where, value, message",
    [
        ("content", {"url": "http://h/a.zip", "md5": "0" * 32, "folder": "/x"},
         "key data.content gives both url and folder: give one source"),
        ("content", {"skimage": ["astronaut"], "folder": "/x", "url": "http://h/a.zip"},
         "key data.content gives url, folder and skimage: give one source"),
        ("content", {"md5": "0" * 32}, "key data.content gives no source: give one of url, folder, skimage"),
        ("content", {"folder": "/x", "md5": "0" * 32}, "key data.content.md5: a checksum goes with a url"),
        ("style", {"generate": "waves", "file": "w.png"}, "key styles.waves gives both file and generate"),
        ("style", {"generate": None, "style_weight": 1.0}, "key styles.waves gives no source"),
        ("eval", {"name": "x", "skimage": "astronaut", "url": "http://h/x.jpg"},
         "key data.eval[0] (x) gives both url and skimage"),
    ],
)
def test_two_sources_or_none_say_so(tmp_path, where, value, message):
    params = tiny_params_dict()
    if where == "content":
        params["data"]["content"] = value
    elif where == "style":
        params["styles"]["waves"] = value
    else:
        params["data"]["eval"][0] = value
    with pytest.raises(ParamsError) as err:
        load_params([_write(tmp_path, params)])
    assert message in str(err.value)
    assert str(tmp_path / "p.yaml") in str(err.value)


def _params_with(tmp_path, key: str, text: str) -> Path:
    """The tiny params with ``key`` (train.X or styles.waves.X) written as the YAML ``text``."""
    params = tiny_params_dict()
    section, *_, name = key.split(".")
    (params["train"] if section == "train" else params["styles"]["waves"])[name] = "PLACEHOLDER"
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(params).replace("PLACEHOLDER", text))
    return path


@pytest.mark.parametrize("key, text", [("train.max_steps", "4e4"), ("train.val_images", "16.0"),
                                       ("styles.waves.val_check_interval", "2e3")])
def test_a_count_written_as_a_float_is_refused_naming_the_key(tmp_path, key, text):
    """Integer values must be whole numbers as YAML reads them: 4e4 (YAML 1.2, as `dvc exp run -S` writes it)
    and 16.0 are floats, which Lightning and the data loaders refuse or misread far from the params."""
    path = _params_with(tmp_path, key, text)
    with pytest.raises(ParamsError, match=rf"key {key}: .*not of type 'integer' \(write a whole number .*\)"):
        load_params([path])


@pytest.mark.parametrize("key, text", [("train.lr", "0.0"), ("train.content_weight", "-1.0")])
def test_a_float_out_of_range_gets_no_whole_number_hint(tmp_path, key, text):
    with pytest.raises(ParamsError, match=rf"key {key}: ") as err:
        load_params([_params_with(tmp_path, key, text)])
    assert "whole number" not in str(err.value)


@pytest.mark.parametrize("key, text", [("train.lr", ".nan"), ("train.style_weight", ".inf"),
                                       ("styles.waves.content_weight", "-.inf"), ("train.max_steps", ".inf")])
def test_nan_and_infinity_are_refused_naming_the_key(tmp_path, key, text):
    """.nan passes every bound of the schema (each comparison with it is false): a run would train on NaN."""
    path = _params_with(tmp_path, key, text)
    with pytest.raises(ParamsError, match=rf"key {key}: .*not of type .*\(\.nan and \.inf are no values here"):
        load_params([path])
