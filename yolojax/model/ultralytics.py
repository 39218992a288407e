"""Import of Ultralytics YOLOv8 weights: from a state_dict `.npz`, or from an Ultralytics `.pt` checkpoint.

The `.pt` reader needs neither torch nor ultralytics and executes no pickled code: a restricted unpickler
rebuilds tensors (storage + offset + size + stride) and the module tree's parameter and buffer names, and
refuses every other global with a clear error. Sizes, strides and dtypes come from the file, so each tensor's
extent is checked against its storage before any view is made: a crafted file must not read past a buffer.
"""
from __future__ import annotations

import collections
import io
import operator
import pickle
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import UserError
from .arch import ARCHS, SCALES
from .graph import Conv, Part, Split, initial_widths, lower
from .spec import Spec, yolov8_spec


class StateDictError(UserError, KeyError):
    """A state_dict whose names are not those of an Ultralytics YOLOv8 (or lack some the spec needs)."""

    def __str__(self) -> str:  # KeyError quotes its message
        return str(self.args[0]) if self.args else ""


# -- key mapping ----------------------------------------------------------------------------------------

_LEAF = {
    ("conv", "weight"): ("params", "conv", "kernel"),
    ("bn", "weight"): ("params", "bn", "scale"),
    ("bn", "bias"): ("params", "bn", "bias"),
    ("bn", "running_mean"): ("batch_stats", "bn", "mean"),
    ("bn", "running_var"): ("batch_stats", "bn", "var"),
    ("weight",): ("params", "kernel"),
    ("bias",): ("params", "bias"),
}


def ultralytics_key_to_path(key: str) -> tuple[str, tuple[str, ...]] | None:
    """`model.2.m.0.cv1.conv.weight` -> ('params', ('model_2','m_0','cv1','conv','kernel')).

    None for entries with no Flax counterpart (num_batches_tracked, the fixed DFL conv).
    """
    parts = key.split(".")
    if len(parts) < 3 or parts[0] != "model" or not parts[1].isdigit():
        raise StateDictError(f"not an Ultralytics YOLOv8 state_dict key: {key!r}")
    if parts[-1] == "num_batches_tracked" or parts[2] == "dfl":
        return None
    path, rest = [f"model_{parts[1]}"], parts[2:]
    if rest[0] in ("cv2", "cv3", "cv4") and len(rest) > 2 and rest[1].isdigit() and rest[2].isdigit():  # Detect
        path.append(f"{rest[0]}_{rest[1]}_{rest[2]}")
        rest = rest[3:]
    else:
        while rest and rest[0] in ("cv1", "cv2", "m"):
            if rest[0] == "m":
                path.append(f"m_{rest[1]}")
                rest = rest[2:]
            else:
                path.append(rest[0])
                rest = rest[1:]
    leaf = _LEAF.get(tuple(rest))
    if leaf is None:
        raise StateDictError(f"unexpected Ultralytics key {key!r}")
    return leaf[0], tuple(path) + leaf[1:]


def _as_flax(leaf: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    return array.transpose(2, 3, 1, 0) if leaf == "kernel" else array  # OIHW -> HWIO


# -- spec inference -------------------------------------------------------------------------------------

def _ultralytics_prefix(path: str) -> str:
    """Flax module path -> Ultralytics module name: model_2/m_0/cv1 -> model.2.m.0.cv1,
    model_22/cv3_1_0 -> model.22.cv3.1.0."""
    out = []
    for part in path.split("/"):
        if part.startswith("model_"):
            out += ["model", part[len("model_"):]]
        elif part.startswith("m_"):
            out += ["m", part[2:]]
        else:
            out += part.split("_")
    return ".".join(out)


def spec_from_state_dict(state: Mapping[str, np.ndarray], *, names=()) -> Spec:
    """Build the spec (architecture, variant, nc, task, every width, C2f splits) from tensor shapes alone.

    Works for pruned models too: widths are read off the weights, not assumed from a scale. The architecture
    is the one whose Detect layer index the keys show (22: yolov8, 28: yolov8-p2); its graph, lowered with
    the depths the keys show, says which conv each width belongs to."""
    def weight(prefix: str) -> np.ndarray:
        key = f"{prefix}.conv.weight" if f"{prefix}.conv.weight" in state else f"{prefix}.weight"
        if key not in state:
            raise StateDictError(f"state_dict has no {key!r}: not a YOLOv8 detection checkpoint")
        return state[key]

    heads = {int(m.group(1)) for k in state if (m := re.fullmatch(r"model\.(\d+)\.cv3\.0\.2\.weight", k))}
    arch = next((a for a in ARCHS.values() if {a.detect} == heads), None)
    if arch is None:
        raise StateDictError(f"state_dict has a Detect head at layer(s) {sorted(heads) or 'none'}; the known "
                             f"architectures have it at {sorted({a.detect: a.name for a in ARCHS.values()}.items())}")
    d = arch.detect
    task = "obb" if f"model.{d}.cv4.0.0.conv.weight" in state else "detect"
    nc = int(np.shape(weight(f"model.{d}.cv3.0.2"))[0])
    reg_max = int(np.shape(weight(f"model.{d}.cv2.0.2"))[0]) // 4

    def repeats(L) -> int:
        j = 0
        while f"model.{L.index}.m.{j}.cv1.conv.weight" in state:
            j += 1
        if j == 0:
            raise StateDictError(f"model.{L.index} has no Bottleneck weights")
        return j

    widths, splits = initial_widths(arch, lambda c: 8, repeats, nc=nc, reg_max=reg_max, task=task)
    skeleton = Spec(variant="custom", nc=nc, reg_max=reg_max, task=task, arch=arch.name,
                    widths=tuple(sorted(widths.items())), splits=tuple(sorted(splits.items())))
    g = lower(skeleton)
    for n in g.convs(bn=True):
        widths[n.path] = int(np.shape(weight(_ultralytics_prefix(n.path)))[0])
    for n in g.nodes:
        if isinstance(n, Split):  # the last part's size: what the first Bottleneck conv reading it takes in
            last = next(g.nodes[c] for c in g.consumers[n.id]
                        if isinstance(g.nodes[c], Part) and g.nodes[c].index == len(n.sizes) - 1)
            reader = next(g.nodes[c] for c in g.consumers[last.id] if isinstance(g.nodes[c], Conv))
            b = int(np.shape(weight(_ultralytics_prefix(reader.path)))[1])
            splits[n.key] = (widths[g.nodes[n.inputs[0]].name] - b, b)
    variant = _guess_variant(widths, nc, reg_max, task, arch.name)
    spec = Spec(variant=variant, nc=nc, reg_max=reg_max, task=task, names=tuple(names), arch=arch.name,
                widths=tuple(sorted(widths.items())), splits=tuple(sorted(splits.items())))
    spec.validate()
    return spec


def _guess_variant(widths: dict, nc: int, reg_max: int, task: str, arch: str) -> str:
    """The named scale whose unpruned spec has the same stem width and depths (exact match or closest)."""
    refs = {v: yolov8_spec(v, nc, reg_max=reg_max, task=task, arch=arch) for v in SCALES}
    for v, ref in refs.items():
        if ref.width_map.keys() == widths.keys() and ref.width("model_0") == widths["model_0"]:
            return v
    for v, ref in refs.items():  # pruned: same layer structure (depth) as a scale
        if ref.width_map.keys() == widths.keys():
            return v
    return "custom"


# -- import ---------------------------------------------------------------------------------------------

def import_state_dict(spec: Spec | None, state: Mapping[str, np.ndarray], *, strict: bool = True) -> dict:
    """Ultralytics state_dict (numpy arrays) -> Flax {'params', 'batch_stats'} for `spec`.

    With spec=None the spec is inferred from the shapes (see `spec_from_state_dict`) and returned as
    `(spec, variables)`. Every variable of the spec must be filled, with the right shape.
    """
    from .yolov8 import variable_shapes  # local: keeps this module importable without jax for the reader
    import jax  # (as above)

    infer = spec is None
    if infer:
        spec = spec_from_state_dict(state)
    expected = variable_shapes(spec)
    flat_expected = {(c,) + tuple(k.key for k in path): leaf.shape
                     for c in ("params", "batch_stats")
                     for path, leaf in jax.tree_util.tree_flatten_with_path(expected[c])[0]}
    out: dict[tuple, np.ndarray] = {}
    for key, value in state.items():
        if key.endswith("dfl.conv.weight"):
            v = np.asarray(value, np.float32).reshape(-1)
            if not np.allclose(v, np.arange(v.size)):
                raise ValueError(f"{key}: the DFL conv must hold arange({v.size}); this is not a YOLOv8 head")
            continue
        mapped = ultralytics_key_to_path(key)
        if mapped is None:
            continue
        coll, path = mapped
        full = (coll,) + path
        arr = _as_flax(path[-1], value)
        if full not in flat_expected:
            if strict:
                raise StateDictError(f"{key} -> {'/'.join(full)} has no counterpart in the {spec.variant} spec")
            continue
        if arr.shape != tuple(flat_expected[full]):
            raise ValueError(f"{key}: shape {tuple(np.shape(value))} (Flax {arr.shape}) does not fit the spec, "
                             f"which expects {tuple(flat_expected[full])} at {'/'.join(full)}")
        out[full] = arr
    missing = sorted(set(flat_expected) - set(out))
    if missing:
        raise StateDictError(f"state_dict lacks {len(missing)} tensors the spec needs, first: {'/'.join(missing[0])}")
    variables: dict = {"params": {}, "batch_stats": {}}
    for full, arr in out.items():
        node = variables
        for k in full[:-1]:
            node = node.setdefault(k, {})
        node[full[-1]] = arr
    return (spec, variables) if infer else variables


def export_state_dict(spec: Spec, variables: Mapping) -> dict[str, np.ndarray]:
    """Inverse of `import_state_dict`: Flax variables -> Ultralytics state_dict names (numpy, OIHW)."""
    import jax  # (as above)

    inv = {(leaf[0],) + leaf[1:]: k for k, leaf in _LEAF.items()}
    state: dict[str, np.ndarray] = {}
    for coll in ("params", "batch_stats"):
        for path, leaf in jax.tree_util.tree_flatten_with_path(variables[coll])[0]:
            keys = [k.key for k in path]
            i = keys[0].split("_")[1]
            mods, tail = [], keys[1:]
            while tail and tail[0] not in ("conv", "bn", "kernel", "bias"):
                m = tail.pop(0)
                if m.startswith("m_"):
                    mods += ["m", m[2:]]
                elif re.fullmatch(r"cv\d_\d_\d", m):
                    mods += m.split("_")
                else:
                    mods.append(m)
            ukey = inv[(coll,) + tuple(tail)]
            arr = np.asarray(leaf, np.float32)
            if tail[-1] == "kernel":
                arr = arr.transpose(3, 2, 0, 1)
            state[".".join(["model", i] + mods + list(ukey))] = arr
    dfl = np.arange(spec.reg_max, dtype=np.float32).reshape(1, -1, 1, 1)
    state[f"model.{lower(spec).detect_layer}.dfl.conv.weight"] = dfl
    return state


def load_npz_state(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k.startswith("model.")}


# -- the restricted .pt reader --------------------------------------------------------------------------

class UnsafeCheckpointError(UserError, pickle.UnpicklingError):
    """A checkpoint's pickle asked for something other than tensors and module trees."""


class MalformedCheckpointError(UserError, ValueError):
    """A checkpoint's tensors do not fit their storage (sizes, strides, offset, dtype): damaged or crafted."""


_STORAGE_DTYPES = {
    "HalfStorage": np.float16, "FloatStorage": np.float32, "DoubleStorage": np.float64,
    "BFloat16Storage": None, "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_TORCH_DTYPES = {"float16": np.float16, "half": np.float16, "float32": np.float32, "float": np.float32,
                 "float64": np.float64, "int64": np.int64, "long": np.int64, "int32": np.int32,
                 "uint8": np.uint8, "int8": np.int8, "bool": np.bool_, "bfloat16": None}
# Module classes from these packages are rebuilt as inert records of their attributes.
_MODULE_PREFIXES = ("ultralytics.nn.", "torch.nn.modules.")
# Plain containers used in Ultralytics checkpoints' metadata.
_RECORD_GLOBALS = {("ultralytics.utils", "IterableSimpleNamespace"), ("types", "SimpleNamespace"),
                   ("argparse", "Namespace")}


class _Record:
    """Inert stand-in for a pickled object (an nn.Module, a namespace): its state, nothing else."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)


_record_types: dict[tuple[str, str], type] = {}


def _record_type(module: str, name: str) -> type:
    key = (module, name)
    if key not in _record_types:
        _record_types[key] = type(name, (_Record,), {"_qualname": f"{module}.{name}"})
    return _record_types[key]


class _StorageType:
    def __init__(self, name: str, dtype):
        self.name, self.dtype = name, dtype


# The element types a storage may hold (little-endian on disk; `read_pt` refuses other byte orders).
_ALLOWED_DTYPES = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int64, np.int32, np.int16,
                                                  np.int8, np.uint8, np.bool_))


class _Storage:
    """One storage of the archive: a read-only 1-D array of its elements. Only `persistent_load` makes these,
    so `_rebuild_tensor` knows its first argument is a real buffer and not something the pickle built."""

    def __init__(self, array: np.ndarray, key: str):
        self.array, self.key = array, key


def _ints(value, what: str, key: str) -> tuple[int, ...]:
    try:
        out = tuple(operator.index(v) for v in value)
    except TypeError:
        raise MalformedCheckpointError(f"tensor on storage {key}: {what} {value!r} is not a sequence of "
                                       f"integers") from None
    if any(v < 0 for v in out):
        raise MalformedCheckpointError(f"tensor on storage {key}: negative {what} {out}")
    return out


def _rebuild_tensor(storage, offset, size, stride, *args, **kwargs):
    if not isinstance(storage, _Storage):
        raise MalformedCheckpointError(f"a tensor is rebuilt from {type(storage).__name__}, not from a storage")
    array, key = storage.array, storage.key
    (offset,) = _ints((offset,), "offset", key)
    size, stride = _ints(size, "size", key), _ints(stride, "stride", key)
    if len(size) != len(stride):
        raise MalformedCheckpointError(f"tensor on storage {key}: size {size} and stride {stride} differ in rank")
    numel = int(np.prod(size, dtype=object))
    if numel == 0:
        return np.zeros(size, array.dtype.newbyteorder("="))
    # the last element a view would touch must lie inside the storage; and no tensor of a checkpoint is larger
    # than its storage (torch saves no broadcast views), which also bounds the copy below
    last = offset + sum((n - 1) * st for n, st in zip(size, stride))
    if last >= array.size or numel > array.size:
        reach = (f"reaches element {last} of" if last >= array.size else f"has {numel} elements, more than")
        raise MalformedCheckpointError(f"tensor on storage {key} (offset {offset}, size {size}, stride {stride}) "
                                       f"{reach} a storage of {array.size}: the checkpoint is damaged or crafted")
    item = array.itemsize
    view = np.lib.stride_tricks.as_strided(array[offset:], shape=size, strides=tuple(st * item for st in stride),
                                           writeable=False)
    return np.array(view, dtype=array.dtype.newbyteorder("="))  # copy: no aliasing of the storage buffer


def _rebuild_parameter(data, *args, **kwargs):
    return data


def _numpy_scalar(dtype, data=None):
    dtype = np.dtype(dtype)
    if dtype not in _ALLOWED_DTYPES and dtype.newbyteorder("=") not in _ALLOWED_DTYPES:
        raise MalformedCheckpointError(f"numpy scalar of dtype {dtype} is not a plain number")
    if data is None:
        return np.zeros((), dtype)
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
        raise MalformedCheckpointError(f"numpy scalar of dtype {dtype}: its data is not {dtype.itemsize} bytes")
    return np.frombuffer(data, dtype=dtype)[0]


_SAFE_FUNCTIONS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set, ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset, ("__builtin__", "frozenset"): frozenset,
    ("torch", "Size"): tuple,
    ("pathlib", "PosixPath"): str, ("pathlib", "WindowsPath"): str, ("pathlib", "Path"): str,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar, ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, zf: zipfile.ZipFile, prefix: str, source: str):
        super().__init__(file)
        self._zf, self._prefix, self._source = zf, prefix, source
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_FUNCTIONS:
            return _SAFE_FUNCTIONS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return _TORCH_DTYPES[name]
        if module.startswith(_MODULE_PREFIXES) or (module, name) in _RECORD_GLOBALS:
            return _record_type(module, name)
        raise UnsafeCheckpointError(
            f"{self._source}: refusing to load global '{module}.{name}': an Ultralytics checkpoint holds only "
            f"tensors and module trees, so this file may run code when unpickled. It was not executed.")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"{self._source}: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else storage_type
        if dtype is None:
            raise MalformedCheckpointError(f"{self._source}: bfloat16 tensors are not supported by the reader")
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            dtype = None
        if dtype not in _ALLOWED_DTYPES:
            raise MalformedCheckpointError(f"{self._source}: storage {key!r} has element type {storage_type!r}, "
                                           f"not one of torch's numeric storages")
        if not isinstance(key, str):
            raise MalformedCheckpointError(f"{self._source}: storage key {key!r} is not a string")
        if key not in self._storages:
            name = f"{self._prefix}data/{key}"
            try:
                raw = self._zf.read(name)
            except KeyError:
                raise MalformedCheckpointError(f"{self._source}: storage {name} is missing from the archive") from None
            if len(raw) % dtype.itemsize or (isinstance(numel, int) and len(raw) < numel * dtype.itemsize):
                raise MalformedCheckpointError(
                    f"{self._source}: storage {name} holds {len(raw)} bytes, not {numel} x {dtype.itemsize}-byte "
                    f"{dtype.name} elements: the checkpoint is damaged or crafted")
            array = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
            self._storages[key] = _Storage(array, key)
        storage = self._storages[key]
        if storage.array.dtype.newbyteorder("=") != dtype.newbyteorder("="):
            raise MalformedCheckpointError(f"{self._source}: storage {key} is read as {storage.array.dtype} and as "
                                           f"{dtype}")
        return storage


def read_pt(path: str | Path) -> dict:
    """Unpickle an Ultralytics `.pt` safely. Returns the checkpoint dict with modules as inert records."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise MalformedCheckpointError(f"{path}: not a zip-format PyTorch checkpoint (legacy torch.save "
                                       f"format?)") from None
    with zf:
        pkls = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if len(pkls) != 1:
            raise MalformedCheckpointError(f"{path}: expected one data.pkl in the archive, found {len(pkls)}")
        prefix = pkls[0][: -len("data.pkl")]
        byteorder = zf.read(prefix + "byteorder").decode(errors="replace").strip() \
            if prefix + "byteorder" in zf.namelist() else "little"
        if byteorder != "little":
            raise MalformedCheckpointError(f"{path}: byte order {byteorder[:20]!r}: only little-endian checkpoints "
                                           f"are supported")
        try:
            return _RestrictedUnpickler(io.BytesIO(zf.read(pkls[0])), zf, prefix, str(path)).load()
        except MalformedCheckpointError as e:
            if str(e).startswith(str(path)):
                raise
            raise MalformedCheckpointError(f"{path}: {e}") from None
        except (UserError, MemoryError):
            raise
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, zlib.error, ValueError, TypeError,
                AttributeError, IndexError, KeyError) as e:
            # a truncated or garbled pickle: say which file, not where in the unpickler it broke
            raise MalformedCheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e


def _module_state(module: _Record, prefix: str = "") -> dict[str, np.ndarray]:
    state: dict[str, np.ndarray] = {}
    for attr in ("_parameters", "_buffers"):
        for k, v in (getattr(module, attr, None) or {}).items():
            if v is not None:
                state[prefix + k] = v
    for k, child in (getattr(module, "_modules", None) or {}).items():
        if child is not None:
            state.update(_module_state(child, f"{prefix}{k}."))
    return state


def state_dict_from_pt(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """(state_dict as float32 numpy, metadata {names, yaml, version, date}) of an Ultralytics `.pt`."""
    ckpt = read_pt(path)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, got {type(ckpt).__name__}")
    model = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(model, _Record):
        raise ValueError(f"{path}: no 'model' or 'ema' module in the checkpoint")
    state = {k: np.asarray(v, np.float32) if np.issubdtype(np.asarray(v).dtype, np.floating) else np.asarray(v)
             for k, v in _module_state(model).items()}
    names = getattr(model, "names", None)
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    meta = {"names": list(names) if names else [], "yaml": getattr(model, "yaml", None),
            "version": ckpt.get("version"), "date": ckpt.get("date")}
    return state, meta
