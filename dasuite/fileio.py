"""Files written atomically, and checkpoints read back safely.

``atomic_write(path, write)`` hands ``write`` an open temp file ``.<name>.<random>.tmp`` in the target's folder and
renames it over ``path`` only once it is complete: a killed process never leaves a partial file under the final
name, and a full disk raises ``DiskFullError`` naming the file, with the temp file removed. ``remove_stale_temps``
deletes the temp files of writes killed outright (SIGKILL, power loss). Every writer of the suite goes through it.

Checkpoints are read with ``torch.load(weights_only=True)`` or safetensors only (no arbitrary unpickling); a missing,
empty, truncated or foreign file is a one-line DasuiteError naming it.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Union

import yaml

from dasuite.errors import ConfigError, DasuiteError, DiskFullError, is_disk_full

PathLike = Union[str, Path]
TEMP_SUFFIX = ".tmp"


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None], *, durable: bool = False) -> None:
    """Write ``path`` through ``write(file)`` via a temp file and a rename (``durable``: fsync before the rename)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as err:
        _raise_disk_full(err, path)
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, Exception):
            _raise_disk_full(err, path)
        raise


def _raise_disk_full(err: Exception, path: Path) -> None:
    if is_disk_full(err):
        raise DiskFullError(f"no space left on device while writing {path} (nothing was replaced)") from None


def atomic_write_text(path: PathLike, text: str) -> None:
    """A text file, atomically (UTF-8)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(obj: Any, path: PathLike) -> None:
    """A JSON file, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2))


def read_json(path: PathLike) -> Any:
    """A JSON file, with an error naming the file when it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise DasuiteError(f"{path}: not valid JSON ({err}); delete it to regenerate it") from None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, except that ``1e-4`` is a float (YAML 1.2; YAML 1.1 wants ``1.0e-4`` and would give the
    string "1e-4", which the schema refuses as a quoted number)."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """YAML text with the safe loader (``1e-4`` is a float)."""
    return yaml.load(text, Loader=_Loader)


def read_yaml(path: PathLike) -> dict:
    """A YAML mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file {str(path)!r} does not exist")
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def remove_stale_temps(folder: PathLike, recursive: bool = False) -> int:
    """Delete the temp files of killed writes (``.<name>.*.tmp``) in ``folder``; returns how many were removed.
    Call it only where no other process is writing."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = (folder.rglob if recursive else folder.glob)(f".*{TEMP_SUFFIX}")
    count = 0
    for tmp in stale:
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            count += 1
    return count


# ------------------------------------------------------------------------------------------------- checkpoints
def save_torch(obj: Any, path: PathLike) -> None:
    """``torch.save`` to ``path`` atomically and durably."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f), durable=True)


def load_torch(path: PathLike) -> Any:
    """``torch.load(weights_only=True)`` on the CPU; a missing, empty, truncated or foreign file is a DasuiteError."""
    import torch

    path = _existing(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, or a pickle that is not plain tensors/containers
        raise DasuiteError(f"cannot read checkpoint {str(path)!r}: {_torch_load_problem(path, err)}") from None


def _torch_load_problem(path: Path, err: Exception) -> str:
    head = path.open("rb").read(4)
    text = " ".join(str(err).split())
    if "weights_only" in text or "Unsupported global" in text:
        return ("it holds pickled Python objects that are not loaded for safety (weights_only=True); save plain "
                "tensors, e.g. torch.save(model.state_dict(), ...)")
    if head[:4] == b"PK\x03\x04":
        return f"truncated or damaged PyTorch archive ({text[:160]})"
    if _looks_like_safetensors(path):
        return "it is a safetensors file with another extension: rename it to *.safetensors"
    return f"not a PyTorch checkpoint ({text[:160]})"


def save_weights(state: dict, path: PathLike, metadata: Optional[dict] = None) -> None:
    """Model weights as safetensors, atomically and durably (tensors contiguous on the CPU, shared storage cloned);
    ``metadata`` values are stored as JSON strings."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().clone().cpu() for k, v in state.items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    atomic_write(path, lambda f: f.write(save(tensors, metadata=meta)), durable=True)


def read_weights_metadata(path: PathLike) -> dict:
    """The JSON metadata ``save_weights`` stored in a safetensors file (``{}`` when there is none)."""
    header = _safetensors_header(_existing(path))
    return {k: json.loads(v) for k, v in (header.get("__metadata__") or {}).items()}


def load_weights(path: PathLike) -> dict:
    """Model weights from a ``.safetensors`` file or from the ``model`` entry of a ``.pt`` checkpoint."""
    path = _existing(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        _safetensors_header(path)  # a clear error for truncated / foreign files before the library's own
        try:
            return load_file(str(path))
        except Exception as err:
            raise DasuiteError(f"cannot read weights {str(path)!r}: {' '.join(str(err).split())[:200]}") from None
    state = load_torch(path)
    if isinstance(state, dict) and "model" in state:
        return state["model"]
    if isinstance(state, dict) and state and all(hasattr(v, "shape") for v in state.values()):
        return state  # a plain state dict
    raise DasuiteError(f"checkpoint {str(path)!r} has no 'model' entry (expected a dasuite checkpoint or a state dict)")


def _existing(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DasuiteError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise DasuiteError(f"checkpoint {str(path)!r} is empty (0 bytes): an interrupted write or copy?")
    return path


def _looks_like_safetensors(path: Path) -> bool:
    try:
        _safetensors_header(path)
        return True
    except DasuiteError:
        return False


def _safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, checked against the file's size (truncation)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        raw = f.read(length) if 0 < length <= min(size - 8, 100_000_000) else b""
    kind = ("a PyTorch .pt/.pth archive" if head[:4] == b"PK\x03\x04" else
            "a pickle" if head[:1] == b"\x80" else "not a safetensors file")
    try:
        header = json.loads(raw) if raw else None
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise DasuiteError(f"cannot read weights {str(path)!r}: {kind} (no safetensors header)"
                           + ("; rename it to .pt to load it as a PyTorch checkpoint" if kind.startswith("a ") else ""))
    end = max((int(v["data_offsets"][1]) for k, v in header.items()
               if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
    if 8 + length + end > size:
        raise DasuiteError(f"cannot read weights {str(path)!r}: truncated ({size} bytes, the header describes "
                           f"{8 + length + end}); an interrupted copy or write?")
    return header
