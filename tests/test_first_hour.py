"""A new user's first hour (issue 24): status lines and step timings, weights missing offline,
an images/ folder adopted by embed, names people have for items, honest training, busy ports."""

from __future__ import annotations

import io
import json
import socket

import pytest

from stylesearch.progress import LineProgress, StepTimes, step

from .conftest import TINY, make_dataset


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


# -- 1. every slow step shows a line, and --json reports its seconds

def test_step_times_record_each_step_and_forward_to_the_display():
    clock, out = FakeClock(), io.StringIO()
    times = StepTimes(LineProgress(out, "ss: ", clock=clock), clock=clock)
    with step(times, "loading model X"):
        clock.now += 2.5
    times.start("embedding images", 4)
    times.advance(4)
    clock.now += 0.5
    times.start("exporting", None)  # a start without finish closes the step before
    clock.now += 1.25
    times.finish()
    assert times.seconds == {"loading model X": 2.5, "embedding images": 0.5, "exporting": 1.25}
    assert out.getvalue().splitlines() == [
        "ss: loading model X...", "ss: loading model X: done in 2.5 s",
        "ss: embedding images (4)...", "ss: embedding images: done in 0.5 s, 4 done",
        "ss: exporting...", "ss: exporting: done in 1.2 s"]


def test_atlas_json_reports_step_seconds_and_verbose_prints_status_lines(cli, root):
    make_dataset(root, "at", 6)
    cli("transform", "at", "--workers", "0")
    out = cli.json("atlas", "at", "--json")
    assert [s["step"] for s in out["steps"]] == ["atlas"] and out["steps"][0]["seconds"] >= 0
    quiet = cli("atlas", "at")
    assert "atlas (6)..." not in quiet.stderr  # not a terminal and no -v: no status lines
    loud = cli("-v", "atlas", "at")
    lines = loud.stderr.splitlines()
    assert lines[0] == "stylesearch: atlas (6)..." and lines[1].startswith("stylesearch: atlas: done in ")


@pytest.mark.slow
def test_embed_json_times_model_loading_and_embedding(cli, root):
    make_dataset(root, "em", 4)
    out = cli.json("embed", "em", "--create", "-m", TINY, "-p", "random", "--workers", "0", "--json")
    assert [s["step"] for s in out["steps"]] == [f"loading model {TINY}", "embedding images"]
    make_dataset(root, "em2", 4)
    loud = cli("-v", "embed", "em2", "--create", "-m", TINY, "-p", "random", "--workers", "0")
    assert [line.split(":")[1] for line in loud.stderr.splitlines()[:4]] == [
        f" loading model {TINY}...", f" loading model {TINY}", " embedding images (4)...", " embedding images"]


# -- 2. missing weights offline: found out at once, the file and the cache named, `random` suggested

def _no_network(*args, **kwargs):
    raise AssertionError("a download was attempted")


def test_missing_hub_file_offline_names_file_and_cache_without_downloading(tmp_path, monkeypatch):
    import huggingface_hub

    from stylesearch.embed.models import _hub_file

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_network)
    path, why = _hub_file("laion/CLIP-ViT-B-32", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"],
                          str(cache))
    assert path is None
    assert why == (f"open_clip_model.safetensors or open_clip_pytorch_model.bin of laion/CLIP-ViT-B-32 is not in the "
                   f"Hugging Face cache ({cache}), and HF_HUB_OFFLINE is set.")


def test_unreachable_hub_is_detected_by_a_probe_not_by_download_retries(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    from stylesearch.embed import models

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there: connection refused at once
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_network)
    path, why = models._hub_file("org/repo", ["w.bin"], str(tmp_path))
    assert path is None and "127.0.0.1 cannot be reached" in why and "w.bin of org/repo" in why


def test_cached_hub_file_is_found_without_any_download(tmp_path, monkeypatch):
    import huggingface_hub

    from stylesearch.embed.models import _hub_file

    snap = tmp_path / "models--org--repo" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (tmp_path / "models--org--repo" / "refs").mkdir()
    (tmp_path / "models--org--repo" / "refs" / "main").write_text("a" * 40)
    (snap / "w.bin").write_bytes(b"x")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_network)
    assert _hub_file("org/repo", ["w.safetensors", "w.bin"], str(tmp_path)) == (str(snap / "w.bin"), "")


@pytest.mark.slow
def test_embed_without_weights_offline_fails_fast_with_the_random_hint(cli, root, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_network)
    make_dataset(root, "nw", 3)
    hf_home = tmp_path / "empty-hf"
    (hf_home / "hub").mkdir(parents=True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hf_home / "hub"))
    proc = cli("embed", "nw", check=False, env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    first = proc.stderr.splitlines()[0]
    assert first.startswith("error: Pretrained weights for ViT-B-32 (laion2b_s34b_b79k) are not on this machine")
    assert f"open_clip_model.safetensors or open_clip_pytorch_model.bin of laion/CLIP-ViT-B-32-laion2B-s34B-b79K " \
           f"is not in the Hugging Face cache ({hf_home / 'hub'}), and HF_HUB_OFFLINE is set." in first
    assert "pretrained tag 'random'" in proc.stderr and "`-p random`" in proc.stderr


# -- 3. a folder of images just works

def test_embed_adopts_an_existing_images_folder_and_says_so(cli, root, monkeypatch):
    from stylesearch.ingest.samples import write_samples
    from stylesearch.store.paths import dataset_paths

    paths = dataset_paths("p2", root)
    write_samples(paths.images, 3)
    seen = {}

    def fake_embed(paths_, spec, files, options, progress, create=False):
        seen.update(create=create, catalog=paths_.catalog)
        raise SystemExit(0)

    monkeypatch.setattr("stylesearch.embed.run.embed_dataset", fake_embed)
    proc = cli("embed", "p2", "-m", TINY, "-p", "random", check=False)
    assert proc.stderr.splitlines()[0] == f"embed: adopting the images in {paths.images} as the new dataset 'p2'"
    assert seen["create"] is True


def test_embed_of_a_name_without_images_still_says_what_to_run(cli, root):
    proc = cli("embed", "nothing", check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0].startswith("error: No dataset named 'nothing'")
    assert "put images in its images/ folder and run `stylesearch embed nothing`." in proc.stderr


# -- 5. items are found by the names people have

def named_catalog(root):
    """Catalog rows named as downloads and folders name them, with vectors of model 'm' (no model)."""
    from stylesearch.store.catalog import open_catalog
    from stylesearch.store.paths import dataset_paths

    from .conftest import unit_rows

    names = ["shots/photo-042.jpg", "shots/photo-043.jpg", "a/dup.jpg", "b/dup.jpg", "x/from-url.jpg", "y/k.png"]
    paths = dataset_paths("named", root)
    vectors = unit_rows(len(names), 8, 5)
    with open_catalog(paths, create=True) as cat, cat.transaction():
        cat.vectors.ensure_model("m", "m", "t", 8, "float32")
        for i, name in enumerate(names):
            item = cat.upsert_item(name, content_hash=f"{i:064d}", status="ok",
                                   source_url="https://example.org/img?id=77" if name == "x/from-url.jpg" else None)
            if name == "y/k.png":
                cat.set_metadata(item, {"key": "000000042"})
        cat.vectors.put("m", [f"{i:064d}" for i in range(len(names))], vectors, "float32")
    return paths


@pytest.mark.parametrize("ref, path", [("1", "shots/photo-042.jpg"), ("shots/photo-043.jpg", "shots/photo-043.jpg"),
                                       ("photo-042", "shots/photo-042.jpg"),
                                       ("https://example.org/img?id=77", "x/from-url.jpg"),
                                       ("000000042", "y/k.png"), ("photo_04%", None)])
def test_resolve_item_by_id_path_stem_source_and_key(root, ref, path):
    from stylesearch.errors import ItemNotFound
    from stylesearch.query.items import resolve_item
    from stylesearch.store.catalog import open_catalog

    with open_catalog(named_catalog(root), readonly=True) as cat:
        if path is None:  # LIKE wildcards in a name are literal characters
            with pytest.raises(ItemNotFound):
                resolve_item(cat, ref)
        else:
            assert resolve_item(cat, ref).path == path


def test_like_by_stem_through_the_cli_and_suggestions_for_a_near_miss(cli, root):
    named_catalog(root)
    rows = cli.json("search", "named", "--like", "photo-042", "--format", "json", "-k", "2")
    assert "shots/photo-042.jpg" not in [r["path"] for r in rows] and len(rows) == 2  # the query item is left out
    term = cli.json("search", "named", "like:photo-043", "--format", "json", "-k", "9")
    assert "shots/photo-043.jpg" not in [r["path"] for r in term] and len(term) == 5
    miss = cli("search", "named", "--like", "photo-04", check=False)
    assert miss.returncode == 2
    assert miss.stderr.splitlines()[0] == "error: No item 'photo-04' in dataset 'named'."
    assert miss.stderr.splitlines()[1].startswith("Did you mean photo-042 (id 1), photo-043 (id 2)")
    dup = cli("search", "named", "--like", "dup", check=False)
    assert dup.returncode == 2 and "'dup' names 2 items in dataset 'named': a/dup.jpg (id 3), b/dup.jpg (id 4)." \
        in dup.stderr


# -- 6. train tells the truth

def test_train_without_a_reliable_gain_keeps_the_previous_metric_and_index(cli, root):
    from stylesearch.store.files import append_jsonl
    from stylesearch.learn.judgments import new_judgment

    from .test_metric import planted_dataset, simulate

    paths, vectors, hidden = planted_dataset(root, n=80, name="honest")
    simulate(paths, vectors, hidden, 200)
    cli("index", "honest")
    first = cli.json("train", "honest", "--json")
    assert first["saved"] is True and "index" in first
    saved = paths.metric_meta("m").read_text()
    index_stamp = paths.index_sidecar("m").stat().st_mtime_ns
    paths.triplets.unlink()
    rng = __import__("numpy").random.default_rng(9)
    for _ in range(30):  # coin flips: nothing to learn
        a, l, r = rng.choice(80, 3, replace=False)
        append_jsonl(paths.triplets, new_judgment("honest", f"img{a}.jpg", f"img{l}.jpg", f"img{r}.jpg",
                                                  "left" if rng.random() < 0.5 else "right", "m", "coin"))
    human = cli("train", "honest")
    words = human.stderr.splitlines()[-1]
    assert words.startswith("train: The learned metric agrees with ") and "held-out judgments" in words
    assert "the raw embedding: " in words and "no reliable gain over the raw embedding yet" in words
    assert words.endswith("it was not saved (the previous metric stays). (`--force` saves it anyway)")
    assert "index rebuilt" not in human.stderr
    assert paths.metric_meta("m").read_text() == saved  # the previous metric kept
    assert paths.index_sidecar("m").stat().st_mtime_ns == index_stamp  # and its index not rebuilt
    forced = cli.json("train", "honest", "--json", "--force")
    assert forced["saved"] is True and "index" in forced
    assert json.loads(paths.metric_meta("m").read_text())["judgments_used"] == 30


def test_judgments_to_beat_estimates_how_many_more_are_needed():
    from stylesearch.learn.train import judgments_to_beat

    report = {"agreement_after": 0.38, "agreement_before": 0.20, "train_triplets": 24, "val_triplets": 6}
    assert judgments_to_beat(report, 0.2) == 110  # 28 held out at 0.38 vs 0.20 -> 140 in all, 30 had
    assert judgments_to_beat({**report, "agreement_after": 0.2}, 0.2) is None


# -- 7. download merges metadata by one rule, and counts the conflicts

def test_duplicate_url_rows_that_disagree_are_counted_and_the_later_row_wins(tmp_path):
    from stylesearch.ingest.download import DownloadOptions, download
    from stylesearch.store.catalog import open_catalog
    from stylesearch.store.paths import dataset_paths

    from .test_download import Server
    from .test_download_metadata import _entries

    server = Server(count=3)
    try:
        rows = (f'{{"url": "{server.url}/img/0.jpg", "id": "p", "orientation": "landscape", "k": 1}}\n'
                f'{{"url": "{server.url}/img/0.jpg", "orientation": "portrait", "k": 1}}\n'
                f'{{"url": "{server.url}/img/1.jpg", "orientation": "square"}}\n')
        paths = dataset_paths("dupurl", tmp_path)
        result = download(paths, _entries(rows, "jsonl"), DownloadOptions(workers=2, retries=0, timeout=5.0))
        again = download(paths, _entries(rows, "jsonl"), DownloadOptions(workers=2, retries=0, timeout=5.0))
    finally:
        server.close()
    assert (result.ok, result.metadata_conflicts, result.as_dict()["metadata_conflicts"]) == (2, 1, 1)
    assert "p.jpg: rows disagree on orientation 'landscape' -> 'portrait'; the later row's value is kept" \
        in result.warnings
    with open_catalog(paths, readonly=True) as cat:
        meta = {it.path: cat.metadata([it.id])[it.id] for it in cat.items()}
    assert meta["p.jpg"] == {"orientation": "portrait", "k": 1}
    assert (again.skipped_done, again.metadata_conflicts, again.metadata_updated) == (2, 1, 0)


# -- 8. serve on a busy port: one message, exit 1, before claiming to serve

def test_serve_on_a_busy_port_says_so_before_serving(cli, root):
    make_dataset(root, "srv", 3)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        proc = cli("serve", "--port", str(port), "--lazy", check=False)
    finally:
        busy.close()
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"error: Cannot listen on 127.0.0.1:{port}: Address already in use.",
        "Another program (another stylesearch serve?) may be using that port: stop it, or choose another port.",
        "On the command line: --port N (or --host ADDRESS)."]
    assert proc.stdout == ""


# -- 9. completions offer dataset and model names, without heavy imports

HEAVY = ("torch", "open_clip", "faiss", "umap", "textual", "fastapi", "uvicorn", "ray", "onnxruntime", "numpy",
         "sklearn", "pyarrow", "httpx")
COMPLETE = ("import sys\nfrom stylesearch.cli.main import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            f"sys.stderr.write('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n")


def _complete(root, shell: str, words: str, cword: str = "") -> list[str]:
    """Candidates as each shell's script asks for them: bash through COMP_WORDS/COMP_CWORD, typer's zsh and
    fish scripts through _TYPER_COMPLETE_ARGS (see completions/)."""
    import os
    import subprocess
    import sys

    asks = ({"COMP_WORDS": words, "COMP_CWORD": cword} if shell == "bash" else
            {"_TYPER_COMPLETE_ARGS": words, "_TYPER_COMPLETE_FISH_ACTION": "get-args"})
    env = {**os.environ, "STYLESEARCH_HOME": str(root), "_STYLESEARCH_COMPLETE": f"complete_{shell}", **asks}
    proc = subprocess.run([sys.executable, "-c", COMPLETE], capture_output=True, text=True, env=env)
    assert proc.stderr.strip().endswith("HEAVY="), proc.stderr
    return proc.stdout.splitlines()


@pytest.fixture
def two_models(root):
    from stylesearch.store.catalog import open_catalog
    from stylesearch.store.paths import dataset_paths

    for name, model, tag in (("photos", TINY, "random"), ("pets", "ViT-B-32", "laion2b_s34b_b79k")):
        with open_catalog(dataset_paths(name, root), create=True) as cat, cat.transaction():
            cat.vectors.ensure_model(f"{model}__{tag}", model, tag, 64, "float32")
    return root


def test_bash_completes_dataset_names_and_the_named_datasets_models(two_models):
    assert _complete(two_models, "bash", "stylesearch embed p", "2") == ["pets", "photos"]
    assert _complete(two_models, "bash", "stylesearch search -d ph", "3") == ["photos"]
    assert _complete(two_models, "bash", "stylesearch serve pe", "2") == ["pets"]
    assert _complete(two_models, "bash", "stylesearch index photos -m ", "4") == [TINY]
    assert _complete(two_models, "bash", "stylesearch index photos -p ", "4") == ["random"]
    assert _complete(two_models, "bash", "stylesearch search -m ", "3") == ["ViT-B-32", TINY]  # every dataset's


def test_zsh_and_fish_complete_the_same_names(two_models):
    assert _complete(two_models, "zsh", "stylesearch label p") == ["_arguments '*: :((\"pets\"", "\"photos\"))'"]
    assert _complete(two_models, "zsh", "stylesearch train pets -m V") == ["_arguments '*: :((\"ViT-B-32\"))'"]
    assert _complete(two_models, "fish", "stylesearch label p") == ["pets", "photos"]
    assert _complete(two_models, "fish", "stylesearch umap-export photos -p ") == ["random"]


def test_completion_functions_in_process(two_models):
    import click

    from stylesearch.cli.completion import complete_datasets, complete_models

    root_ctx = click.Context(click.Command("stylesearch"))
    root_ctx.params = {"root": str(two_models)}
    ctx = click.Context(click.Command("train"), parent=root_ctx)
    ctx.params = {"dataset": "pets"}
    assert complete_datasets(ctx, "") == ["pets", "photos"]
    assert complete_models(ctx, "") == ["ViT-B-32"]
    ctx.params = {"dataset": "no-such"}
    assert complete_models(ctx, "") == []


def test_preferred_weights_missing_offline_are_reported_before_torch_is_imported(tmp_path):
    import os
    import subprocess
    import sys

    script = ("import sys\nfrom stylesearch.embed.models import ModelSpec, check_preferred_weights\n"
              "from stylesearch.errors import ModelWeightsMissing\n"
              "try:\n    check_preferred_weights(ModelSpec())\nexcept ModelWeightsMissing as exc:\n"
              "    print(exc.message)\nprint('torch' in sys.modules, 'open_clip' in sys.modules)\n")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env).stdout.splitlines()
    assert out[0].startswith("Pretrained weights for ViT-B-32 (laion2b_s34b_b79k) are not on this machine")
    assert f"({tmp_path / 'hf' / 'hub'}), and HF_HUB_OFFLINE is set." in out[0]
    assert out[1] == "False False"


@pytest.mark.slow
def test_preferred_hub_repos_match_open_clips_table():
    from open_clip.pretrained import get_pretrained_cfg

    from stylesearch.embed.models import PREFERRED_HUB, PREFERRED_TAGS

    for name, repo in PREFERRED_HUB.items():
        assert get_pretrained_cfg(name, PREFERRED_TAGS[name])["hf_hub"].rstrip("/") == repo


@pytest.mark.slow
def test_demo_json_lists_every_step_in_order(cli):
    report = cli.json("demo", "--count", "12", "--no-map", "--json")
    steps = [s["step"] for s in report["steps"]]
    assert steps[:3] == ["thumbnails", "atlas", f"loading model {report['model'].split('__')[0]}"]
    assert steps[3:] == ["embedding images", "exporting the text tower to ONNX (once per model)", "indexing (flat)"]
