"""Learned attribute heads (`tag --learn`) vs the majority-class baseline and zero-shot `tag`, one planted run.

A planted collection: 512-d unit vectors around one centre per class (6 classes, unequal sizes), with a
shared "style" subspace of larger variance and isotropic noise, so the classes overlap. 20% of the items
carry their class as metadata `category` (the user's labels); the other 80% are scored against the
planted truth:

- learned head: `learn.attributes.learn_fields` (the code `tag --learn` runs), its FIELD_pred/FIELD_prob;
- majority baseline: the most frequent labelled class for every item, with its labelled share as confidence;
- zero-shot: `maps.tags.tag_dataset` (the code `tag -a` runs) with the class names as labels. It needs a
  text tower; with the tests' random tiny model its text vectors mean nothing and zero-shot is at chance.
  Here the text vectors are planted through the same code path (`label_vectors` over the prompt templates):
  each class name's vector is its class centre plus an offset shared by all text (CLIP's modality gap), a
  per-class prompt error of norm --prompt-error, and a little noise per template. The zero-shot figures
  therefore depend on that planted error; they show how softmax at CLIP's logit scale calibrates, not how a
  real CLIP model would score these classes.

Then the time to train at --scale-items (fit on its 20% labelled items, then predictions written for every
item), and to give 1,000 new items predictions without refitting.

    python benchmarks/attribute_heads.py                  # 10k items for quality, 100k for time
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stylesearch.embed.models import ModelSpec  # noqa: E402
from stylesearch.learn.attributes import apply_heads, learn_fields  # noqa: E402
from stylesearch.learn.fit import wilson_interval  # noqa: E402
from stylesearch.learn.heads import expected_calibration_error  # noqa: E402
from stylesearch.maps.tags import TEMPLATES, tag_dataset  # noqa: E402
from stylesearch.store.catalog import open_catalog  # noqa: E402
from stylesearch.store.paths import dataset_paths  # noqa: E402

CLASSES = ["dress", "shirt", "trousers", "shoes", "bag", "hat"]
SHARES = [0.30, 0.22, 0.16, 0.13, 0.11, 0.08]
SPEC = ModelSpec("planted", "none")


class Collection:
    """Planted class centres, style subspace and text vectors (one seed)."""

    def __init__(self, dim: int, seed: int, separation: float, prompt_error: float):
        rng = np.random.default_rng(seed)
        self.dim, self.separation = dim, separation
        self.centres = _unit(rng.normal(size=(len(CLASSES), dim)))
        self.style = np.linalg.qr(rng.normal(size=(dim, 16)))[0].T  # 16 directions of "style", not class
        gap = 2.0 * _unit(rng.normal(size=dim))
        errors = prompt_error * _unit(rng.normal(size=(len(CLASSES), dim)))
        self.text = {name: self.centres[k] + gap + errors[k] for k, name in enumerate(CLASSES)}
        self.rng = np.random.default_rng(seed + 1)

    def items(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        truth = self.rng.choice(len(CLASSES), n, p=SHARES)
        style = self.rng.normal(size=(n, 16)) @ self.style * 0.6
        noise = self.rng.normal(size=(n, self.dim)) / np.sqrt(self.dim)
        return _unit(self.separation * self.centres[truth] + style + noise).astype(np.float32), truth


class PlantedText:
    """A text encoder for zero-shot `tag`: a prompt's vector is its class name's planted vector plus noise."""

    def __init__(self, collection: Collection, seed: int):
        self.collection, self.rng = collection, np.random.default_rng(seed)

    def encode_text(self, prompts: list[str]) -> np.ndarray:
        out = []
        for prompt in prompts:
            name = next(n for n in CLASSES if n in prompt)
            out.append(self.collection.text[name] + 0.05 * self.rng.normal(size=self.collection.dim))
        return _unit(np.array(out)).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_dataset(root: Path, name: str, vectors: np.ndarray, truth: np.ndarray, labelled: float, seed: int):
    """Catalog rows with the vectors; a random `labelled` share of items gets `category` metadata."""
    paths = dataset_paths(name, root)
    n = len(vectors)
    chosen = np.random.default_rng(seed).random(n) < labelled
    with open_catalog(paths, create=True) as cat, cat.transaction():
        cat.vectors.ensure_model(SPEC.key, SPEC.name, SPEC.pretrained, vectors.shape[1], "float32")
        cat.conn.executemany("INSERT INTO items(path, content_hash, status) VALUES(?,?, 'ok')",
                             [(f"{i}.jpg", f"{i:064d}") for i in range(n)])
        cat.vectors.put(SPEC.key, [f"{i:064d}" for i in range(n)], vectors, "float32")
        for i in np.flatnonzero(chosen):
            cat.set_metadata(int(i) + 1, {"category": CLASSES[truth[i]]})
    return paths, chosen


def _score(name: str, predicted: list[str], confidence: np.ndarray, truth: np.ndarray) -> dict:
    correct = np.array(predicted) == np.array([CLASSES[t] for t in truth])
    accuracy = float(correct.mean())
    lo, hi = wilson_interval(accuracy, len(correct))
    return {"method": name, "accuracy": accuracy, "ci": (lo, hi), "correct": correct,
            "ece": expected_calibration_error(confidence, correct), "mean_confidence": float(np.mean(confidence))}


def quality(args, root: Path) -> list[dict]:
    collection = Collection(args.dim, args.seed, args.separation, args.prompt_error)
    vectors, truth = collection.items(args.items)
    paths, chosen = make_dataset(root, "quality", vectors, truth, args.labelled, args.seed)
    start = time.perf_counter()
    report = learn_fields(paths, SPEC.key, ["category"])["category"]
    learn_seconds = time.perf_counter() - start
    tag_dataset(paths, SPEC, {"zero_shot": CLASSES}, encoder=PlantedText(collection, args.seed))
    with open_catalog(paths, readonly=True) as cat:
        meta = cat.metadata(range(1, args.items + 1))
    rows = np.flatnonzero(~chosen)  # score only items without a label
    held = [meta[int(i) + 1] for i in rows]
    labelled_counts = np.bincount(truth[chosen], minlength=len(CLASSES))
    majority = int(labelled_counts.argmax())
    confidences = [np.array([m["category_prob"] for m in held]),
                   np.full(len(rows), labelled_counts[majority] / labelled_counts.sum()),
                   np.array([m["zero_shot_prob"] for m in held])]
    results = [_score("learned head", [m["category_pred"] for m in held], confidences[0], truth[rows]),
               _score("majority class", [CLASSES[majority]] * len(rows), confidences[1], truth[rows]),
               _score("zero-shot tag", [m["zero_shot"] for m in held], confidences[2], truth[rows])]
    print(f"planted collection: {args.items} items, {args.dim}-d, {len(CLASSES)} classes, "
          f"{int(chosen.sum())} labelled ({args.labelled:.0%}), scored on the {len(rows)} unlabelled items")
    print(f"learn_fields: {learn_seconds:.1f} s; its own held-out report (labelled test split, {report['test']} "
          "items): "
          f"accuracy {report['accuracy']:.3f} (95% CI {report['accuracy_ci'][0]:.3f}-{report['accuracy_ci'][1]:.3f}), "
          f"majority {report['majority_accuracy']:.3f}, ECE {report['ece']:.3f} (uncalibrated "
          f"{report['ece_uncalibrated']:.3f}), C={report['C']:g}, temperature {report['temperature']:.3f}")
    print(f"{'method':16} {'accuracy':>9} {'95% CI':>15} {'ECE':>7} {'mean conf':>10}")
    for r in results:
        print(f"{r['method']:16} {r['accuracy']:9.3f} {r['ci'][0]:7.3f}-{r['ci'][1]:.3f} {r['ece']:7.3f} "
              f"{r['mean_confidence']:10.3f}")
    for r, probs in zip(results, confidences):
        sure = probs > 0.8
        if sure.any():
            print(f"{r['method']}: {sure.mean():.1%} of items have probability > 0.8; {r['correct'][sure].mean():.3f} "
                  f"of those are right")
    print(f"(zero-shot: {len(TEMPLATES)} prompt templates per class name; text vectors planted with prompt error "
          f"{args.prompt_error} and a shared modality offset)")
    return results


def timing(args, root: Path) -> None:
    collection = Collection(args.dim, args.seed + 10, args.separation, args.prompt_error)
    vectors, truth = collection.items(args.scale_items)
    start = time.perf_counter()
    paths, chosen = make_dataset(root, "scale", vectors, truth, args.labelled, args.seed)
    build = time.perf_counter() - start
    start = time.perf_counter()
    report = learn_fields(paths, SPEC.key, ["category"])["category"]
    total = time.perf_counter() - start
    extra, _ = collection.items(1000)
    n = args.scale_items
    with open_catalog(paths) as cat, cat.transaction():
        cat.conn.executemany("INSERT INTO items(path, content_hash, status) VALUES(?,?, 'ok')",
                             [(f"new/{i}.jpg", f"new{i:061d}") for i in range(1000)])
        cat.vectors.put(SPEC.key, [f"new{i:061d}" for i in range(1000)], extra, "float32")
    start = time.perf_counter()
    applied = apply_heads(paths, SPEC.key)
    incremental = time.perf_counter() - start
    print(f"\nscale: {n} items ({int(chosen.sum())} labelled; catalog built in {build:.0f} s)")
    print(f"tag --learn (learn_fields): {total:.1f} s in all: the fit {report['fit_seconds']:.1f} s (C chosen by "
          f"5-fold cross-validation on 5,000 of the {report['train']} training items, calibration, refit), the rest "
          f"loading vectors and writing {report['written']} items' predictions; held-out accuracy "
          f"{report['accuracy']:.3f} vs majority {report['majority_accuracy']:.3f}, ECE {report['ece']:.3f}")
    print(f"1,000 new items given predictions without refitting (apply_heads): {incremental:.2f} s "
          f"({applied['category']['written']} written)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--scale-items", type=int, default=100_000, help="0 skips the timing run")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--labelled", type=float, default=0.2)
    parser.add_argument("--separation", type=float, default=0.16, help="class centre weight (smaller: more overlap)")
    parser.add_argument("--prompt-error", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=None, help="where to build the datasets (default: a temp dir)")
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="attribute-heads-"))
    try:
        quality(args, root)
        if args.scale_items:
            timing(args, root)
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
