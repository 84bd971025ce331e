"""The engine-set manifest: one JSON per artefact folder (docs/manifest.md).

For each network it records the I/O table, the export options baked into the graph, the ONNX
graph (file, external-data files, sha256, the key it was exported under), when TensorRT built
one, the engine (file, sha256, precision and the key of ENGINE_KEY_FIELDS) and, when asked for,
the AOTInductor package (file, sha256 and its key: weights, shapes, options, device, dtype,
torch version). The layout is defined
by `manifest.schema.json` beside this file, which C++ hosts read too.

Everything a runtime needs to refuse an unusable set is checked here, from the JSON alone and the
files' sha256, before any ONNX Runtime session or TensorRT engine is created: a deserialiser fed
a corrupt or foreign engine crashes or silently computes garbage, so it must never see one.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from ort3d.export.atomic import atomic_write
from ort3d.export.cache import artefact_sha256, entry_files
from ort3d.export.errors import ExportError
from ort3d.models.version import __version__

MANIFEST_NAME = "manifest.json"
FORMAT = "ort3d-engine-set"
FORMAT_VERSION = 1
# Fields of an engine key that describe the machine and software it was built for.
IDENTITY_FIELDS = ("tensorrt_version", "gpu_name", "compute_capability")


def load_schema() -> dict:
    text = resources.files("ort3d.export").joinpath("manifest.schema.json").read_text()
    return json.loads(text)


def new_manifest(preset: str, precision: str, schedule: dict) -> dict:
    """schedule: {"sigma_min", "sigma_max", "timestep_spacing"} of the model set."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "ort3d_version": __version__,
            "preset": preset, "precision": precision, "schedule": dict(schedule), "networks": {}}


def read_manifest(path: str | Path) -> dict:
    """Parse and schema-check a manifest; any problem -> ExportError naming the file and field."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise ExportError(f"{path}: no engine-set manifest here (build one with "
                          f"`ort3d-build --out {path.parent}`)")
    try:
        document = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{path}: not valid JSON ({err})") from None
    problem = first_schema_error(document, load_schema())
    if problem:
        raise ExportError(f"{path}: {problem}")
    return document


def write_manifest(path: str | Path, document: dict) -> None:
    problem = first_schema_error(document, load_schema())
    if problem:   # a bug in the writer, not bad user input: fail loudly before writing
        raise ValueError(f"refusing to write an invalid manifest: {problem}")
    atomic_write(path, (json.dumps(document, indent=2, sort_keys=False) + "\n").encode())


# ----------------------------------------------------------------------------- checks

def check_version(document: dict, path: Path) -> None:
    if document["ort3d_version"] != __version__:
        raise ExportError(f"{path}: field ort3d_version is {document['ort3d_version']!r} but this "
                          f"is ort3d {__version__}; rebuild the set with this version")


def check_networks(document: dict, path: Path, required) -> None:
    for name in required:
        if name not in document["networks"]:
            raise ExportError(f"{path}: field networks.{name} is missing: the set has no "
                              f"{name!r} network (has {sorted(document['networks'])})")


def _check_files(entry: dict, directory: Path, field: str, verify_hashes: bool) -> None:
    files = entry_files(entry)
    for name in files:
        if not (directory / name).is_file():
            raise ExportError(f"{directory / name}: file named by {field} is missing")
    if verify_hashes and artefact_sha256(directory, files) != entry["sha256"]:
        with_data = f" (with {', '.join(files[1:])})" if files[1:] else ""
        raise ExportError(f"{directory / files[0]}{with_data}: sha256 does not match "
                          f"{field}.sha256 (file corrupt or replaced; rebuild the set)")


def check_onnx_set(document: dict, directory: Path, required, verify_hashes: bool = True) -> None:
    """What the ONNX Runtime backend needs: this ort3d version, every network, intact graphs."""
    path = directory / MANIFEST_NAME
    check_version(document, path)
    check_networks(document, path, required)
    for name in required:
        onnx = document["networks"][name]["onnx"]
        if onnx is None:
            raise ExportError(f"{path}: field networks.{name}.onnx is null: the set was built "
                              f"without an ONNX graph for {name!r}; rebuild it with --formats onnx")
        _check_files(onnx, directory, f"networks.{name}.onnx", verify_hashes)


def check_aoti_set(document: dict, directory: Path, required, device: str, torch_version: str,
                   verify_hashes: bool = True) -> None:
    """What the AOTInductor backend needs: packages built by this ort3d version, by this torch
    version (the package loader refuses others), for this device, with their files intact."""
    path = directory / MANIFEST_NAME
    check_version(document, path)
    check_networks(document, path, required)
    for name in required:
        package = document["networks"][name].get("aoti")
        field = f"networks.{name}.aoti"
        if package is None:
            raise ExportError(f"{path}: field {field} is missing: no AOTInductor package was "
                              f"built for {name!r}; rebuild the set with --formats aoti")
        key = package["key"]
        for item, wanted in (("ort3d_version", __version__), ("device", device),
                             ("torch_version", torch_version)):
            if key[item] != wanted:
                raise ExportError(f"{path}: field {field}.key.{item} is {key[item]!r} but this "
                                  f"run needs {wanted!r}; rebuild the set here")
        _check_files(package, directory, field, verify_hashes)


def check_engine_set(document: dict, directory: Path, required, identity: dict,
                     verify_hashes: bool = True) -> None:
    """What the TensorRT backend needs: engines built by this ort3d version, for this TensorRT
    version and this GPU, for every network, with their files intact.

    identity: {"tensorrt_version", "gpu_name", "compute_capability"} of this process."""
    path = directory / MANIFEST_NAME
    check_version(document, path)
    check_networks(document, path, required)
    for name in required:
        engine = document["networks"][name]["engine"]
        field = f"networks.{name}.engine"
        if engine is None:
            raise ExportError(f"{path}: field {field} is null: no TensorRT engine was built for "
                              f"{name!r} (ONNX only); build on a host with TensorRT")
        key = engine["key"]
        if key["ort3d_version"] != __version__:
            raise ExportError(f"{path}: field {field}.key.ort3d_version is "
                              f"{key['ort3d_version']!r} but this is ort3d {__version__}")
        for item in IDENTITY_FIELDS:
            if key[item] != identity[item]:
                raise ExportError(f"{path}: field {field}.key.{item} is {key[item]!r} but this "
                                  f"host has {identity[item]!r}; rebuild the engines here")
        _check_files(engine, directory, field, verify_hashes)


# ----------------------------------------------------------------------------- schema subset

def first_schema_error(value, schema: dict, root: dict | None = None, where: str = "") -> str | None:
    """The first violation of `schema` as 'field X: problem', or None.

    A small interpreter of the JSON-Schema keywords manifest.schema.json uses ($ref, type, const,
    enum, required, properties, additionalProperties, minProperties, items, minItems, minLength,
    minimum, pattern, oneOf), so reading a manifest needs no extra package; the tests check the
    same documents with the `jsonschema` package too."""
    root = schema if root is None else root
    name = where or "(top level)"
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return first_schema_error(value, target, root, where)
    if "oneOf" in schema:
        matches = [s for s in schema["oneOf"] if first_schema_error(value, s, root, where) is None]
        if len(matches) != 1:
            errors = [first_schema_error(value, s, root, where) for s in schema["oneOf"]]
            return errors[-1] or f"field {name}: matches more than one allowed form"
    if "type" in schema and not _has_type(value, schema["type"]):
        return f"field {name}: expected {schema['type']}, got {type(value).__name__} {_brief(value)}"
    if "const" in schema and value != schema["const"]:
        return f"field {name}: expected {schema['const']!r}, got {_brief(value)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"field {name}: {_brief(value)} is not one of {schema['enum']}"
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            return f"field {name}: empty string"
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return f"field {name}: {_brief(value)} does not match {schema['pattern']}"
    if _is_number(value) and "minimum" in schema and value < schema["minimum"]:
        return f"field {name}: {value} is below {schema['minimum']}"
    if isinstance(value, dict):
        return _object_error(value, schema, root, where)
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            return f"field {name}: needs at least {schema['minItems']} item(s)"
        for i, item in enumerate(value):
            if "items" in schema:
                problem = first_schema_error(item, schema["items"], root, f"{where}[{i}]")
                if problem:
                    return problem
    return None


def _object_error(value: dict, schema: dict, root: dict, where: str) -> str | None:
    prefix = f"{where}." if where else ""
    for key in schema.get("required", []):
        if key not in value:
            return f"field {prefix}{key}: missing"
    if len(value) < schema.get("minProperties", 0):
        return f"field {where or '(top level)'}: needs at least {schema['minProperties']} entry"
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in properties:
            sub = properties[key]
        elif extra is False:
            return f"field {prefix}{key}: not allowed here"
        elif isinstance(extra, dict):
            sub = extra
        else:
            continue
        problem = first_schema_error(item, sub, root, f"{prefix}{key}")
        if problem:
            return problem
    return None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _has_type(value, expected) -> bool:
    if isinstance(expected, list):
        return any(_has_type(value, t) for t in expected)
    checks = {"object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
              "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
              "null": lambda v: v is None, "number": _is_number,
              "integer": lambda v: _is_number(v) and float(v).is_integer()}
    return checks[expected](value)


def _brief(value) -> str:
    text = json.dumps(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."
