"""The router's trained head: request text → calibrated probabilities over labels (math, code, …).

Features are TF-IDF n-grams and, when the offline MiniLM package is installed, MiniLM sentence embeddings
whose top layers are fine-tuned on the labels. A multinomial logistic regression reads both; its temperature
is fitted on a held-out tenth of the training data (unseen by fine-tuning) so the probabilities
are calibrated, then the regression is refitted on all of it. Where the head is right on every held-out request
(or on none), they cannot pin a temperature down: it stays 1 until `mor route calibrate` fits one on a labeled
sample of the traffic the router serves. That tenth must hold every label, so training needs
at least two examples of each label and about ten per label in all (10 × (labels − 1) + 1); less is refused with
an error saying how many. Everything saves to a folder as JSON + safetensors (no pickles), written whole into a
temporary folder and renamed into place, so an interrupted save leaves the previous router; loading checks that
the files belong together.
"""

import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from mor.durable import check_folder, sync, write_json
from mor.errors import ConfigError, MorError, check
from mor.system.calibration import MIN_REQUESTS, at_bound, fit_temperature, report
from mor.system.encoders import MiniLMEncoder, TfidfEncoder, minilm_path
from mor.system.minilm import MiniLMRouting, inference_dtype
from mor.system.options import without_options
from mor.system.router_files import read_json, read_tensors, unusable
from mor.system.style import plain
from mor.system.tuning import fine_tune

HELD_OUT = 0.1  # the share of the training data the temperature is fitted on
UNFITTED = 1.0  # the temperature kept where the held-out tenth cannot fit one
log = logging.getLogger(__name__)
ROUTER_FILES = frozenset({"head.json", ".head.json.tmp", "head.safetensors", *TfidfEncoder.files, *MiniLMEncoder.files})


@dataclass
class HeadConfig:
    """How the head is built and trained."""

    encoder: str = "auto"  # auto: minilm+tfidf when the MiniLM package is installed, else tfidf
    layers: int = 4  # MiniLM layers kept: 4 of 6 route about as well and a third faster
    tune_layers: int | None = None  # the top 3, or every layer kept when fewer
    tune_epochs: int = 3
    tune_lr: float = 2e-4
    max_tokens: int = 128
    precision: str = "auto"  # MiniLM routing: bf16 where the CPU computes it natively (a third faster), else fp32
    c: float = 10.0
    strip_options: bool = False  # read a multiple-choice request without its answer options (see mor.system.options)
    plain_copies: bool = False  # also train on a plain copy of each request (see mor.system.style)
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.encoder in {"auto", "tfidf", "minilm", "minilm+tfidf"},
              f"router.encoder: {self.encoder!r} is not one of auto, tfidf, minilm, minilm+tfidf")
        check(1 <= self.layers <= 6, f"router.layers: {self.layers} is outside 1–6")
        self.tune_layers = min(3, self.layers) if self.tune_layers is None else self.tune_layers
        check(0 <= self.tune_layers <= self.layers,
              f"router.tune_layers: {self.tune_layers} is outside 0–{self.layers} (router.layers)")
        check(self.tune_epochs >= 1 or not self.tune_layers,
              f"router.tune_epochs: {self.tune_epochs} epochs cannot fine-tune; give 1 or more, or tune_layers 0")
        inference_dtype(self.precision)
        check(self.c > 0, f"router.c: the inverse regularisation strength must be > 0, got {self.c}")

    def parts(self) -> list[str]:
        if self.encoder != "auto":
            return self.encoder.split("+")
        return ["minilm", "tfidf"] if minilm_path() is not None else ["tfidf"]


class LabelHead:
    """Encoders + logistic regression + temperature; `proba(texts)` gives calibrated label probabilities."""

    def __init__(self, labels: list[str], config: HeadConfig, encoders: dict, weight: np.ndarray,
                 bias: np.ndarray, temperature: float) -> None:
        self.labels, self.config, self.encoders = labels, config, encoders
        self.weight, self.bias, self.temperature = weight, bias, temperature
        self._blocks = _blocks(weight, [e.dim for e in encoders.values()])

    @classmethod
    def fit(cls, texts: list[str], labels: list[str], config: HeadConfig | None = None,
            report: Callable[[str], None] | None = None) -> "LabelHead":
        """Train on labeled texts; a held-out tenth, unseen by fine-tuning and regression, fits the temperature
        (see `_held_out_temperature`). `report` hears how far training is (fine-tuning takes minutes on a CPU)."""
        config = config or HeadConfig()
        check_labels(labels)
        names = sorted(set(labels))
        y = np.array([names.index(label) for label in labels])
        texts = _read(texts, config)
        fit_idx, cal_idx = train_test_split(np.arange(len(y)), test_size=HELD_OUT, stratify=y,
                                            random_state=config.seed)
        copied = [i for i, t in enumerate(texts) if config.plain_copies and plain(t) != t]
        copy_of = dict(zip(copied, range(len(texts), len(texts) + len(copied)), strict=True))
        fit_idx = np.array([*fit_idx, *(copy_of[i] for i in fit_idx if i in copy_of)])  # copies stay on their side
        texts, y = texts + [plain(texts[i]) for i in copied], np.concatenate([y, y[copied]])
        encoders = {}
        for part in config.parts():
            if part == "tfidf":
                encoders[part] = TfidfEncoder().fit(texts)
                continue
            encoders[part] = MiniLMEncoder(max_tokens=config.max_tokens, layers=config.layers,
                                           precision=config.precision)
            if config.tune_layers:
                fine_tune(encoders[part], [texts[i] for i in fit_idx], y[fit_idx].tolist(), len(names),
                          layers=config.tune_layers, epochs=config.tune_epochs, lr=config.tune_lr, seed=config.seed,
                          report=report)
        if report:
            report(f"encoding {len(texts)} requests and fitting the classifier and its temperature")
        parts = {name: sparse.csr_matrix(e.encode(texts)) for name, e in encoders.items()}
        features = sparse.hstack(list(parts.values()), format="csr")
        if "tfidf" in parts:  # the temperature's rows stay unseen by the vocabulary and IDF too, not only the weights
            parts["tfidf"] = sparse.csr_matrix(TfidfEncoder().fit([texts[i] for i in fit_idx]).encode(texts))
        held = sparse.hstack(list(parts.values()), format="csr")
        weight, bias = _linear(_regression(config).fit(held[fit_idx], y[fit_idx]))
        temperature = _held_out_temperature(np.asarray(held[cal_idx] @ weight.T) + bias, y[cal_idx], report)
        return cls(names, config, encoders, *_linear(_regression(config).fit(features, y)), temperature)

    def logits(self, texts: list[str]) -> np.ndarray:
        """(n, labels) uncalibrated logits: each encoder's features times its own block of the weights."""
        check(bool(texts), "router: no texts to encode")
        texts = _read(texts, self.config)
        return sum(e.project(texts, w) for e, w in zip(self.encoders.values(), self._blocks, strict=True)) + self.bias

    def proba(self, texts: list[str]) -> np.ndarray:
        """(n, labels) calibrated probabilities."""
        z = self.logits(texts) / self.temperature
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def calibrate(self, texts: list[str], labels: list[str]) -> dict[str, dict[str, float]]:
        """Refit the temperature on labeled texts, e.g. a sample of the traffic the router serves: training's
        held-out tenth comes from the training sources, and on other sources the head is over-confident. The
        head's top label does not change. Returns its accuracy, log-loss, calibration error and temperature on
        those texts, before and after; a sample too small or too one-sided to fit one (fewer than two of the
        router's labels, or a head right on all or none of it) is refused, unchanged."""
        unknown = sorted(set(labels) - set(self.labels))
        check(not unknown, f"router calibration data: labels {unknown} are not the router's "
                           f"({', '.join(self.labels)}); relabel those lines or leave them out", MorError)
        check(len(set(labels)) >= 2, f"router calibration data: every request is labeled {sorted(set(labels))}, so "
                                     "they cannot tell how sure the head should be between labels; the router is "
                                     f"unchanged: calibrate on a sample with at least two of its labels "
                                     f"({', '.join(self.labels)})", MorError)
        check(len(labels) >= MIN_REQUESTS, f"router calibration data: {len(labels)} requests are too few to fit a "
                                           f"temperature; give at least {MIN_REQUESTS} from the traffic the router "
                                           "serves", MorError)
        logits, y = self.logits(texts), np.array([self.labels.index(x) for x in labels])
        before = {**report(logits, y, self.temperature), "temperature": self.temperature}
        check(0 < before["accuracy"] < 1, f"router calibration data: the head is right on {before['accuracy']:.0%} "
                                          "of these requests, so they cannot tell how sure it should be; the router "
                                          "is unchanged: calibrate on a larger, more varied sample", MorError)
        fitted = fit_temperature(logits, y)
        check(not at_bound(fitted), f"router calibration data: the temperature fit ran to the edge of its range "
                                    f"({fitted:.2f}), as the head is right on {before['accuracy']:.0%} of these "
                                    "requests; the router is unchanged: calibrate on a larger, more varied sample",
              MorError)
        self.temperature = fitted
        return {"before": before, "after": {**report(logits, y, fitted), "temperature": fitted}}

    def save_temperature(self, folder: Path) -> None:
        """Write the temperature into the router saved at `folder`, replacing its head.json atomically."""
        path = Path(folder) / "head.json"
        check(path.is_file() or not (_aside(Path(folder)) / "head.json").is_file(),
              f"router {folder}: an interrupted save left the router in {_aside(Path(folder))}; move it back to "
              f"{folder} (or train again), then calibrate", MorError)
        meta = read_json(path)
        check(isinstance(meta, dict), unusable(path, "is not a JSON object"), MorError)
        try:
            write_json(path, {**meta, "temperature": self.temperature}, indent=1)
        except OSError as e:
            raise MorError(f"router {folder}: cannot write head.json ({e}); the router there is unchanged") from None
        sync(path.parent)

    def save(self, folder: Path) -> None:
        """Write the router to `folder` whole or not at all: into a temporary folder beside it, then renamed."""
        folder = Path(folder).resolve()
        check_out(folder)
        tmp = folder.with_name(f".{folder.name}.tmp")
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            self._write(tmp)
            for path in [*tmp.rglob("*"), tmp]:
                sync(path)
            _replace(tmp, folder)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise MorError(f"router {folder}: cannot save it ({e}); the router there, if any, is unchanged; free "
                           "space or choose another --out") from None

    def _write(self, folder: Path) -> None:
        """Every file of the router into an empty `folder`."""
        for encoder in self.encoders.values():
            encoder.save(folder)
        save_file({"weight": torch.from_numpy(self.weight), "bias": torch.from_numpy(self.bias)},
                  folder / "head.safetensors")
        (folder / "head.json").write_text(json.dumps(
            {"labels": self.labels, "config": asdict(self.config), "temperature": self.temperature,
             "encoders": list(self.encoders)}, indent=1))

    @classmethod
    def load(cls, folder: Path) -> "LabelHead":
        """A saved router; a missing, malformed or mismatched file is a one-line MorError naming it. Where a save
        was killed between its two renames, the router it was replacing is read from where it was moved aside."""
        folder = Path(folder)
        if not (folder / "head.json").is_file() and (_aside(folder) / "head.json").is_file():
            folder = _aside(folder)
        check((folder / "head.json").is_file(), f"router {folder}: not a trained router folder (no head.json); "
                                                f"train one with `mor route train --data FILE.jsonl --out {folder}`",
              MorError)
        meta = _read_meta(folder / "head.json")
        config = meta["config"]
        loaders = {"tfidf": TfidfEncoder.load,
                   "minilm": lambda f: MiniLMRouting.load(f, config.max_tokens, config.precision)}
        encoders = {part: loaders[part](folder) for part in meta["encoders"]}
        weight, bias = _read_linear(folder / "head.safetensors", len(meta["labels"]),
                                    sum(e.dim for e in encoders.values()))
        return cls(meta["labels"], config, encoders, weight, bias, meta["temperature"])


def is_router(folder: Path) -> bool:
    """Whether `folder` holds a trained router, or had one that an interrupted save moved aside (`load` reads it)."""
    return (folder / "head.json").is_file() or (_aside(folder) / "head.json").is_file()


def check_labels(labels: list[str]) -> None:
    """A one-line error unless the labels can train a head: two or more, and enough of each (`_check_split`)."""
    names = sorted(set(labels))
    check(len(names) >= 2, f"router training data: needs at least two labels, found {names}")
    _check_split(names, np.array([names.index(label) for label in labels]))


def check_out(folder: Path) -> None:
    """A one-line error unless a router can be saved to `folder`: checked before training, so a bad --out costs no
    training time, and again when saving."""
    check_folder(folder, "--out")
    _check_replaceable(folder)
    existing = next(p for p in folder.parents if p.exists())
    check(os.access(existing, os.W_OK | os.X_OK), f"--out: cannot save the router into '{folder}': '{existing}' is "
                                                   "not writable; give a folder you can write to", MorError)


def _read(texts: list[str], config: HeadConfig) -> list[str]:
    """The texts as the head reads them: without multiple-choice options, unless the config keeps them."""
    return [without_options(t) for t in texts] if config.strip_options else list(texts)


def _held_out_temperature(logits: np.ndarray, y: np.ndarray, report: Callable[[str], None] | None) -> float:
    """The temperature fitted on the held-out tenth's `logits` and labels `y`, or UNFITTED where they cannot pin one
    down: a head right on every row (or on none) has a log-loss that only falls (rises) with the temperature, so the
    fit would land on an arbitrary extreme, making the router sure of everything and a min_confidence fallback never
    fire. That case is said through `report`, else logged."""
    accuracy = float(np.mean(logits.argmax(axis=1) == y))
    fitted = fit_temperature(logits, y) if 0 < accuracy < 1 else None
    if fitted is not None and not at_bound(fitted):
        return fitted
    (report or log.warning)(f"temperature not fitted: the head is right on {accuracy:.0%} of the {len(y)} held-out "
                            f"requests, which cannot tell how sure it should be; kept at {UNFITTED:g}: fit it with "
                            "`mor route calibrate` on a labeled sample of the traffic the router serves")
    return UNFITTED


def _check_split(names: list[str], y: np.ndarray) -> None:
    """Refuse data too small for a stratified held-out tenth: it needs two examples of each label, and the tenth
    must have room for one of each."""
    counts = np.bincount(y, minlength=len(names))
    rarest, need = int(counts.argmin()), 10 * (len(names) - 1) + 1
    check(counts[rarest] >= 2, f"router training data: label {names[rarest]!r} has only {counts[rarest]} example; "
                               "every label needs at least 2 (one is held out to calibrate); add examples")
    check(math.ceil(HELD_OUT * len(y)) >= len(names),
          f"router training data: {len(y)} examples are too few for {len(names)} labels; the tenth held out to "
          f"calibrate needs one of each, so at least {need} are needed; add examples")


def _check_replaceable(folder: Path) -> None:
    """Refuse to save over a folder that holds more than a router: saving replaces the whole folder."""
    if not folder.exists():
        return
    check(folder.is_dir(), f"router {folder}: exists and is not a folder; choose another --out", MorError)
    others = sorted(p.name for p in folder.iterdir() if p.name not in ROUTER_FILES)
    check(not others, f"router {folder}: holds files that are not a router's ({', '.join(others[:3])}); saving "
                      "replaces the whole folder, so choose a new or empty one for --out", MorError)


def _aside(folder: Path) -> Path:
    """Where a save moves the router it replaces until the new one is in place."""
    return folder.with_name(f".{folder.name}.old")


def _replace(new: Path, folder: Path) -> None:
    """Rename `new` to `folder`; an existing `folder` is moved aside first and deleted once `new` is in place
    (interrupted in between, it is moved back)."""
    old = _aside(folder)
    if not folder.exists() and old.is_dir():  # an earlier save was killed between the renames: that is the router
        os.replace(old, folder)
    shutil.rmtree(old, ignore_errors=True)
    moved = folder.exists()
    if moved:
        os.replace(folder, old)
    try:
        os.replace(new, folder)
    except BaseException:
        if moved:
            os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)
    sync(folder.parent)


def _read_meta(path: Path) -> dict:
    """head.json, checked: distinct string labels, a valid config, a positive temperature, known encoders."""
    meta = read_json(path)
    types = {"labels": list, "config": dict, "temperature": (int, float), "encoders": list}
    check(isinstance(meta, dict) and all(isinstance(meta.get(k), t) for k, t in types.items()),
          unusable(path, f"needs {', '.join(types)} of the right types"), MorError)
    labels, parts = meta["labels"], meta["encoders"]
    check(all(isinstance(label, str) for label in labels) and len(set(labels)) == len(labels) >= 2,
          unusable(path, f"needs two or more distinct string labels, has {labels}"), MorError)
    check(bool(parts) and all(part in ("tfidf", "minilm") for part in parts),
          unusable(path, f"names encoders {parts}; known ones are tfidf and minilm"), MorError)
    check(math.isfinite(meta["temperature"]) and meta["temperature"] > 0,
          unusable(path, f"needs a positive temperature, has {meta['temperature']}"), MorError)
    try:
        meta["config"] = HeadConfig(**{"strip_options": False, **meta["config"]})  # saved before it existed: kept
    except (TypeError, ConfigError) as e:
        raise MorError(unusable(path, f"has an invalid config ({e})")) from None
    return meta


def _read_linear(path: Path, labels: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """head.safetensors' (labels, width) weight and (labels,) bias, checked against head.json and the encoders."""
    tensors = read_tensors(path)
    weight, bias = tensors.get("weight"), tensors.get("bias")
    check(weight is not None and bias is not None, unusable(path, "lacks the weight or the bias"), MorError)
    check(tuple(weight.shape) == (labels, width) and tuple(bias.shape) == (labels,),
          unusable(path, f"holds a {tuple(weight.shape)} weight and a {tuple(bias.shape)} bias where head.json and "
                         f"the encoders need ({labels}, {width}) and ({labels},): the files are from different "
                         "training runs"), MorError)
    return weight.numpy(), bias.numpy()


def _regression(config: HeadConfig) -> LogisticRegression:
    return LogisticRegression(C=config.c, max_iter=3000)


def _linear(model: LogisticRegression) -> tuple[np.ndarray, np.ndarray]:
    """(labels, dim) weights and (labels,) biases of the softmax; two labels become logits (0, z)."""
    weight, bias = model.coef_, model.intercept_
    if weight.shape[0] == 1:
        weight, bias = np.vstack([np.zeros_like(weight), weight]), np.concatenate([[0.0], bias])
    return np.ascontiguousarray(weight, dtype=np.float32), np.ascontiguousarray(bias, dtype=np.float32)


def _blocks(weight: np.ndarray, dims: list[int]) -> list[np.ndarray]:
    """Each encoder's (dim, labels) slice of the weights, transposed and contiguous: a sparse row times it costs its
    non-zeros, where the whole (labels, dim) transpose would be copied on every request."""
    edges = np.cumsum([0, *dims])
    return [np.ascontiguousarray(weight[:, a:b].T) for a, b in pairwise(edges)]


