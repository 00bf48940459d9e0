"""params.yaml: loading, merging overlays, validating, per-style views.

params.yaml is the only home of values. Every command takes ``--params FILE
[FILE ...]``: the files are deep-merged in order (:func:`merge_params`), then
validated against ``params.schema.yaml``.

Sources are the exception to the deep merge: an overlay that names a source
(``url``, ``file``, ``folder``, ``skimage`` or ``generate``) under
``data.content`` or ``styles.<name>`` replaces the base's source keys (its
checksum included) instead of being mixed with them; a style's other keys
(train overrides, ``resources``) still merge. A source key set to null is
removed.
"""

from __future__ import annotations

import copy
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import yaml

# What names a source, per kind of mapping; md5/sha256 go with url.
IMAGE_SOURCE_KINDS = ("url", "file", "skimage", "generate")  # styles.<name>, data.eval[i]
CONTENT_SOURCE_KINDS = ("url", "folder", "skimage")  # data.content
CHECKSUM_KEYS = ("md5", "sha256")
SOURCE_KEYS = ("url", "md5", "sha256", "file", "skimage", "generate")  # of a style entry
_ALL_SOURCE_KEYS = IMAGE_SOURCE_KINDS + CONTENT_SOURCE_KINDS + CHECKSUM_KEYS


class ParamsError(ValueError):
    """A params file is wrong; the message names the file, the key and the fix."""


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but reading numbers in exponent form as YAML 1.2 does.

    YAML 1.1 (PyYAML) reads ``1e-05`` and ``5e10`` as text; DVC writes
    params.yaml with a YAML 1.2 library, so ``dvc exp run -S
    train.tv_weight=1.0e-05`` stores ``tv_weight: 1e-05``, a number to DVC.
    """


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def parse_yaml(text: str | bytes) -> Any:
    """A params file's values, numbers as DVC reads them (see :class:`ParamsLoader`)."""
    return yaml.load(text, Loader=ParamsLoader)


def _schema() -> dict:
    text = resources.files("stylepipe").joinpath("params.schema.yaml").read_text()
    return yaml.safe_load(text)


def deep_merge(base: Mapping, overlay: Mapping) -> dict:
    """Merge ``overlay`` onto ``base`` recursively (mappings merge, the rest is replaced)."""
    merged = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _source_mappings(params: Any) -> Iterator[tuple[str, dict, tuple[str, ...]]]:
    """``(key, mapping, kinds)`` for every source mapping present in ``params``."""
    if not isinstance(params, Mapping):
        return
    data = params.get("data")
    if isinstance(data, Mapping):
        if isinstance(data.get("content"), Mapping):
            yield "data.content", data["content"], CONTENT_SOURCE_KINDS
        if isinstance(data.get("eval"), list):
            for i, item in enumerate(data["eval"]):
                if isinstance(item, Mapping):
                    name = f" ({item['name']})" if isinstance(item.get("name"), str) else ""
                    yield f"data.eval[{i}]{name}", item, IMAGE_SOURCE_KINDS
    styles = params.get("styles")
    if isinstance(styles, Mapping):
        for name, entry in styles.items():
            if isinstance(entry, Mapping):
                yield f"styles.{name}", entry, IMAGE_SOURCE_KINDS


def _names_source(mapping: Mapping, kinds: tuple[str, ...]) -> list[str]:
    return [k for k in kinds if mapping.get(k) is not None]


def _drop_null_sources(params: dict) -> dict:
    """``params`` with every source key whose value is null removed (in place)."""
    for _, mapping, _ in _source_mappings(params):
        for key in [k for k, v in mapping.items() if k in _ALL_SOURCE_KEYS and v is None]:
            del mapping[key]
    return params


def merge_params(base: Mapping, overlay: Mapping) -> dict:
    """Merge the params ``overlay`` onto ``base``: :func:`deep_merge`, except that a
    source named in the overlay replaces the base's source (module docstring)."""
    base = copy.deepcopy(dict(base))
    overlay_sources = {key: (mapping, kinds) for key, mapping, kinds in _source_mappings(overlay)}
    for key, mapping, kinds in _source_mappings(base):
        if key.startswith("data.eval"):
            continue  # a list: the overlay's replaces it whole anyway
        new = overlay_sources.get(key)
        if new is not None and _names_source(new[0], kinds):
            for k in [k for k in mapping if k in _ALL_SOURCE_KEYS]:
                del mapping[k]
    return _drop_null_sources(deep_merge(base, overlay))


def load_params(paths: Iterable[str | Path]) -> dict:
    """Read, merge and validate params files; raises ParamsError naming the bad key."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ParamsError("no params file given: pass --params params.yaml")
    merged: dict = {}
    for path in paths:
        if not path.is_file():
            raise ParamsError(f"{path}: params file not found")
        try:
            data = parse_yaml(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ParamsError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(data, Mapping):
            raise ParamsError(f"{path}: must be a mapping of keys to values")
        merged = merge_params(merged, data)
    validate(merged, source=" + ".join(str(p) for p in paths))
    return merged


def _key_path(error: "jsonschema.ValidationError") -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


_NUMBER_LIKE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _hint(error: "jsonschema.ValidationError") -> str:
    if error.validator == "pattern" and "description" in error.schema:
        return f" ({error.schema['description']})"
    # every unquoted number is read as one (ParamsLoader), so this one was quoted
    if isinstance(error.instance, str) and _NUMBER_LIKE.match(error.instance):
        return " (a number in quotes is text: remove the quotes)"
    if isinstance(error.instance, float) and not math.isfinite(error.instance):
        return " (.nan and .inf are no values here: give a finite number)"
    expected = error.schema.get("type", [])
    if (isinstance(error.instance, float) and error.instance.is_integer()
            and "integer" in ([expected] if isinstance(expected, str) else expected)):
        return f" (write a whole number without a dot or an exponent: {int(error.instance)})"
    return ""


def _validator(schema: dict) -> "jsonschema.protocols.Validator":
    """A validator of ``schema`` whose integers are whole numbers as YAML reads them, not floats such as 4e4
    or 16.0 (JSON Schema counts those as integers; Lightning and the data loaders refuse or misread them),
    and whose numbers are finite."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine_many({
        "integer": lambda _, value: isinstance(value, int) and not isinstance(value, bool),
        # .nan passes every bound (each comparison with it is false), .inf most: no value is either
        "number": lambda _, value: (isinstance(value, (int, float)) and not isinstance(value, bool)
                                    and math.isfinite(value)),
    })
    return jsonschema.validators.extend(base, type_checker=checker)(schema)


def _describe(error: "jsonschema.ValidationError") -> str:
    key = _key_path(error)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        names = ", ".join(f"{key}.{e}" if key != "<top level>" else e for e in extra)
        return f"unknown key {names}: remove it or fix its spelling"
    if error.validator == "required":
        return f"key {key}: {error.message}"
    return f"key {key}: {error.message}{_hint(error)}"


def _one_source(key: str, mapping: Mapping, kinds: tuple[str, ...]) -> str | None:
    """What is wrong with a source mapping that does not give exactly one source."""
    given = _names_source(mapping, kinds)
    if len(given) > 1:
        both = " and ".join(given) if len(given) == 2 else f"{', '.join(given[:-1])} and {given[-1]}"
        return (f"key {key} gives {'both ' if len(given) == 2 else ''}{both}: give one source "
                f"(setting a key to null removes it)")
    if not given:
        return f"key {key} gives no source: give one of {', '.join(kinds)}"
    for checksum in CHECKSUM_KEYS:
        if mapping.get(checksum) is not None and given != ["url"]:
            return f"key {key}.{checksum}: a checksum goes with a url, not with {given[0]}; remove it"
    return None


def validate(params: Mapping, source: str = "params") -> None:
    """Validate merged params against the schema and the per-style rules.

    Source keys set to null count as absent (as :func:`merge_params` drops them).
    """
    import jsonschema  # here: code that only builds a Trainer from params (benchmarks) runs without it

    params = _drop_null_sources(copy.deepcopy(dict(params)))
    for key, mapping, kinds in _source_mappings(params):
        problem = _one_source(key, mapping, kinds)
        if problem:
            raise ParamsError(f"{source}: {problem}")

    schema = _schema()
    errors = sorted(_validator(schema).iter_errors(params), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        # the deepest error is usually the most specific one
        best = jsonschema.exceptions.best_match(errors)
        raise ParamsError(f"{source}: {_describe(best)}")

    train_schema = {"$defs": schema["$defs"], **schema["$defs"]["train_overridable"]}
    source_schema = {"$defs": schema["$defs"], **schema["$defs"]["image_source"]}
    resources_schema = {"$defs": schema["$defs"], **schema["$defs"]["step_resources"]}
    for name, entry in params["styles"].items():
        if isinstance(name, bool):
            # YAML 1.1 reads unquoted yes/no/on/off/true/false as booleans
            raise ParamsError(f"{source}: key styles: a style name reads as {str(name).lower()} (YAML's reading of an "
                              "unquoted yes, no, on, off, true or false); quote the name, e.g. 'on':")
        if not isinstance(name, str):
            # YAML reads an unquoted 1 or 2024 as a number; file names and Snakemake wildcards need text
            raise ParamsError(f"{source}: key styles: style name {name!r} is a number; quote it: '{name}':")
        src = {k: v for k, v in entry.items() if k in SOURCE_KEYS}
        overrides = {k: v for k, v in entry.items() if k not in SOURCE_KEYS and k != "resources"}
        for sub, sub_schema, what, prefix in (
            (src, source_schema, "image source (one of url, file, skimage, generate)", f"styles.{name}"),
            (overrides, train_schema, "override of a train value", f"styles.{name}"),
            (entry.get("resources", {}), resources_schema, "resources", f"styles.{name}.resources"),
        ):
            errs = list(_validator(sub_schema).iter_errors(sub))
            if errs:
                err = jsonschema.exceptions.best_match(errs)
                inner = _key_path(err)
                key = prefix + ("" if inner == "<top level>" else f".{inner}")
                if err.validator == "additionalProperties":
                    extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
                    allowed = ("an image source key nor a train value" if what != "resources" else
                               f"a resource ({', '.join(err.schema.get('properties', {}))})")
                    raise ParamsError(
                        f"{source}: unknown key {prefix}.{extra[0]}: not {allowed}; remove it or fix its spelling"
                    )
                raise ParamsError(f"{source}: key {key}: {err.message}{_hint(err)} (expected a valid {what})")
        if "file" in src and not Path(src["file"]).is_file():
            raise ParamsError(
                f"{source}: key styles.{name}.file: style image {src['file']} does not exist; "
                "fix the path or give a url instead"
            )
    for name, entry in params["styles"].items():
        if entry.get("image_size", params["train"]["image_size"]) != params["train"]["image_size"]:
            raise ParamsError(
                f"{source}: key styles.{name}.image_size: {entry['image_size']} differs from train.image_size "
                f"({params['train']['image_size']}), but the content set is resized once, at train.image_size, "
                "for every style; remove the override, or change train.image_size"
            )
        # combinations the schema cannot express, checked here so that a plan (`snakemake -n`,
        # `dvc repro`) fails before hours of download and resize rather than at training
        try:
            check_train_values(train_params(params, name))
        except ValueError as err:
            overridden = set(params["styles"][name]) - {*SOURCE_KEYS, "resources"}
            where = f" (style {name}: train with its overrides)" if overridden else ""
            raise ParamsError(f"{source}: {err}{where}") from None
    if "cpus_per_task" not in params.get("resources", {}).get("train", {}):
        raise ParamsError(
            f"{source}: key resources.train.cpus_per_task is missing: training computes with that many CPU "
            "threads, and on a CPU its weights depend on the count, so both runners track it; add it, e.g. "
            "resources: {train: {cpus_per_task: 8}}"
        )
    _check_eval(params["data"]["eval"], source)
    content = params["data"]["content"]
    if "folder" in content and not Path(content["folder"]).is_dir():
        raise ParamsError(f"{source}: key data.content.folder: folder {content['folder']} does not exist")


def _check_eval(items: list, source: str) -> None:
    """Evaluation images: one file per name, and the local files there (else only `fetch eval` would tell)."""
    seen: set[str] = set()
    for i, item in enumerate(items):
        name = item["name"]
        if name in seen:
            raise ParamsError(f"{source}: key data.eval[{i}].name: {name!r} is used twice; each evaluation "
                              "image is saved as <name>.png, so give every one its own name")
        seen.add(name)
        if "file" in item and not Path(item["file"]).is_file():
            raise ParamsError(f"{source}: key data.eval[{i}] ({name}).file: {item['file']} does not exist; "
                              "fix the path or give a url instead")


def check_train_values(tp: dict) -> None:
    """Refuse combinations the schema cannot see that would train nothing or ignore a setting."""
    if tp.get("style_layer_weights") and len(tp["style_layer_weights"]) != len(tp["style_layers"]):
        raise ValueError(f"train.style_layer_weights has {len(tp['style_layer_weights'])} entries but "
                         f"train.style_layers has {len(tp['style_layers'])}: give one weight per style layer")
    if tp["max_steps"] == 0:
        raise ValueError("train.max_steps is 0, which trains nothing: give a number of optimizer steps, "
                         "or -1 to run train.epochs epochs")
    if tp["early_stopping_patience"] and 0 < tp["max_steps"] < tp["val_check_interval"]:
        raise ValueError(f"train.early_stopping_patience is set but train.val_check_interval "
                         f"({tp['val_check_interval']}) exceeds train.max_steps ({tp['max_steps']}): the run would "
                         "never validate, so never stop early; lower val_check_interval or set the patience to null")


def canonical(value: Any) -> str:
    """``value`` as text that two equal values share: keys sorted, every number a float (``0`` is ``0.0``)."""
    def numbers_as_floats(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {str(k): numbers_as_floats(x) for k, x in v.items()}
        if isinstance(v, list):
            return [numbers_as_floats(x) for x in v]
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

    return json.dumps(numbers_as_floats(value), sort_keys=True)


def style_names(params: Mapping) -> list[str]:
    return list(params["styles"])


def style_source(params: Mapping, style: str) -> dict:
    """The image source of one style (url/checksum, file, skimage or generate)."""
    return {k: v for k, v in _style(params, style).items() if k in SOURCE_KEYS}


def train_params(params: Mapping, style: str) -> dict:
    """The training values of one style: ``train`` with the style's overrides applied."""
    entry = _style(params, style)
    overrides = {k: v for k, v in entry.items() if k not in SOURCE_KEYS and k != "resources"}
    return {**params["train"], **overrides}


def style_resources(params: Mapping, style: str, rule: str = "train") -> dict:
    """Cluster resources for one rule and style (``resources.<rule>`` + the style's own)."""
    base = dict(params.get("resources", {}).get(rule, {}))
    if rule == "train":
        base.update(_style(params, style).get("resources", {}))
    return base


def _style(params: Mapping, style: str) -> Mapping:
    try:
        return params["styles"][style]
    except KeyError:
        known = ", ".join(params["styles"]) or "none"
        raise ParamsError(f"unknown style {style!r}: params define {known}") from None
