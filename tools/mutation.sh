#!/usr/bin/env bash
# Mutation testing of the core with mutmut 3 (not part of CI; install with `pip install -e '.[mutation]'`).
#
#   tools/mutation.sh PACKAGE [PACKAGE...]     e.g. tools/mutation.sh store scan
#   tools/mutation.sh list                     the packages, their source files and test files
#   MUTATION_FRESH=1 tools/mutation.sh ...     forget earlier verdicts (otherwise a rerun is incremental)
#   MUTATION_SAMPLE=200 tools/mutation.sh ...  run a seeded random sample of 200 mutants per package
#                                              (MUTATION_SEED, default 1): ~2-6 minutes a package
#   MUTATION_RETRY=1 MUTATION_SAMPLE=200 ...   run again only the sampled mutants no test failed on yet
#                                              (survived, unreached, timed out, not run), e.g. after
#                                              adding tests; the report still covers the whole sample
#                                              (mutmut's map of tests to functions is the first run's:
#                                              MUTATION_FRESH=1 for the exact figure with new tests)
#
# For each package, the checkout as it is now (stylesearch/, tests/, pyproject.toml) is copied to
# $MUTATION_DIR/PACKAGE (default /tmp/stylesearch-mutation), mutmut is configured there to mutate only
# that package's files, and every mutant is run against `pytest -m "not slow"` on the package's test
# files (only the tests that reach the mutated function run; one process: MUTATION_CHILDREN=1).
# A rerun keeps the killed and timed-out verdicts of functions whose code did not change and tries the
# rest again (survivors, and mutants no test reached), so tests added since are given their chance.
# A mutant times out after 2 x MUTATION_TIMEOUT_FACTOR (default 4) x (its tests' clean time +
# MUTATION_TIMEOUT_CONSTANT, default 15 s) of CPU: each mutant's run also collects the package's test
# files (~5 s of CPU), which mutmut's default of 1 s left out, so mutants reached only by fast tests
# "timed out" during collection. Changing either setting sends the timed-out mutants round again.
# Prints killed/survived/other counts and the wall time per package, then the surviving mutants;
# `cd $MUTATION_DIR/PACKAGE && mutmut show NAME` shows one as a diff.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
mutmut="${MUTMUT:-$repo/.venv/bin/mutmut}"
python="${PYTHON:-$repo/.venv/bin/python}"
base="${MUTATION_DIR:-/tmp/stylesearch-mutation}"
children="${MUTATION_CHILDREN:-1}"
timeout_factor="${MUTATION_TIMEOUT_FACTOR:-4}"
timeout_constant="${MUTATION_TIMEOUT_CONSTANT:-15}"

# package -> "source globs|test files"
declare -A PACKAGES=(
  [store]="stylesearch/store/*|tests/test_foundation.py tests/test_dataset_boundary.py tests/test_shards.py tests/test_images.py tests/test_ingest_faults.py tests/test_damaged_state.py tests/test_weak_spots.py"
  [scan]="stylesearch/ingest/scan.py|tests/test_mutation_kills.py tests/test_weak_spots.py tests/test_ingest_faults.py tests/test_shards.py tests/test_dataset_boundary.py tests/test_faults.py"
  [query]="stylesearch/query/search.py stylesearch/query/filters.py|tests/test_attribute_heads.py tests/test_metadata_search.py tests/test_embed_index_search.py tests/test_cli_terms.py tests/test_user_input_properties.py tests/test_metric_index.py tests/test_weak_spots.py tests/test_mutation_kills.py"
  [index]="stylesearch/index/*|tests/test_index_plan.py tests/test_embed_index_search.py tests/test_metric_index.py tests/test_damaged_state.py tests/test_weak_spots.py tests/test_mutation_kills.py"
  [learn]="stylesearch/learn/*|tests/test_attribute_heads.py tests/test_label_tui.py tests/test_metric.py tests/test_metric_train.py tests/test_metric_index.py tests/test_user_input_properties.py tests/test_damaged_state.py tests/test_mutation_kills.py"
  [judgments]="stylesearch/learn/judgments.py stylesearch/server/labels.py|tests/test_metric.py tests/test_user_input_properties.py tests/test_faults.py tests/test_server.py tests/test_weak_spots.py tests/test_mutation_kills.py"
  [guards]="stylesearch/server/guards.py stylesearch/server/config.py|tests/test_server_config.py tests/test_server.py tests/test_hostile_small.py tests/test_server_routes_auth.py tests/test_clip_compat.py tests/test_server_flood.py tests/test_mutation_kills.py"
)

toml_list() {  # words -> a TOML array of strings
  local out="" w
  for w in "$@"; do out+="\"$w\", "; done
  echo "[${out%, }]"
}

retry_unkilled() {  # earlier survivors and unreached mutants: tried again (new tests may reach them)
  [[ -d "$1/mutants" ]] || return 0
  "$python" - "$1/mutants" <<'EOF'
import json, pathlib, sys
for meta in pathlib.Path(sys.argv[1]).rglob("*.py.meta"):
    data = json.loads(meta.read_text())
    codes = data.get("exit_code_by_key", {})
    retried = [key for key, code in codes.items() if code in (0, 5, 33)]  # survived, no tests
    if retried:
        codes.update(dict.fromkeys(retried))
        meta.write_text(json.dumps(data))
EOF
}

run_package() {
  local name="$1" spec="${PACKAGES[$1]:-}"
  if [[ -z "$spec" ]]; then echo "unknown package '$name' (see: tools/mutation.sh list)" >&2; return 2; fi
  local sources="${spec%%|*}" tests="${spec#*|}" work="$base/$name" existing=()
  for t in $tests; do [[ -f "$repo/$t" ]] && existing+=("$t"); done
  [[ -n "${MUTATION_FRESH:-}" ]] && rm -rf "$work"
  mkdir -p "$work" && rm -rf "$work/stylesearch" "$work/tests"
  rm -rf "$work/completions" "$work/README.md"
  cp -rp "$repo/stylesearch" "$repo/tests" "$repo/completions" "$repo/README.md" "$work/"  # times kept: mutmut
  # remakes mutants of changed files only; completions/ and README.md are read by tests
  find "$work" -name __pycache__ -prune -exec rm -rf {} +
  retry_unkilled "$work"
  # mutmut reads [tool.mutmut] from the copy's pyproject.toml
  { cat "$repo/pyproject.toml"; cat <<EOF

[tool.mutmut]
source_paths = ["stylesearch"]
only_mutate = $(toml_list $sources)
pytest_add_cli_args_test_selection = $(toml_list "${existing[@]}")
pytest_add_cli_args = ["-m", "not slow", "-p", "no:cacheprovider", "-q", "-x", "--hypothesis-seed=0"]
use_git_change_detection = false
also_copy = ["completions", "README.md"]
timeout_multiplier = $timeout_factor
timeout_constant = $timeout_constant
EOF
  } > "$work/pyproject.toml"
  echo "== $name: mutating $sources; tests: ${existing[*]}" >&2
  local start=$SECONDS names=() sample_file=""
  if [[ -n "${MUTATION_SAMPLE:-}" && -n "${MUTATION_RETRY:-}" && -s "$work/sample.txt" ]]; then
    sample_file="$work/sample.txt"
    mapfile -t names < <("$python" "$repo/tools/mutation_report.py" unkilled "$work" "$sample_file")
    [[ ${#names[@]} -gt 0 ]] || { "$python" "$repo/tools/mutation_report.py" report "$work" "$name" 0 "$sample_file"; return 0; }
  elif [[ -n "${MUTATION_SAMPLE:-}" ]]; then
    # mutants are made and the tests mapped to them by a run that matches no mutant (it then stops)
    (cd "$work" && mutmut_in "$work" run --max-children "$children" "no-such-mutant" >"$work/list.log" 2>&1) || true
    sample_file="$work/sample.txt"
    "$python" "$repo/tools/mutation_report.py" sample "$work" "$MUTATION_SAMPLE" "${MUTATION_SEED:-1}" >"$sample_file"
    [[ -s "$sample_file" ]] || { echo "no mutants made for $name; see $work/list.log" >&2; tail -20 "$work/list.log" >&2; return 1; }
    mapfile -t names <"$sample_file"
  fi
  mutmut_in "$work" run --max-children "$children" "${names[@]}" >"$work/run.log" 2>&1 || {
    echo "mutmut failed for $name; see $work/run.log" >&2; tail -20 "$work/run.log" >&2; return 1; }
  "$python" "$repo/tools/mutation_report.py" report "$work" "$name" "$((SECONDS - start))" $sample_file
}

mutmut_in() {  # mutmut in the package's copy, with the venv's python first on PATH
  local work="$1"; shift
  # One thread per BLAS/OpenMP pool: mutmut forks each mutant's run from a process whose OpenMP (FAISS)
  # threads are already started, and a forked child's first parallel region can hang; such a mutant
  # "timed out" though its tests passed (query: Searcher._all_vectors mutants survive in 22 s this way)
  (cd "$work" && PATH="$(dirname "$python"):$PATH" OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \
    "$mutmut" "$@")
}

if [[ $# -eq 0 ]]; then echo "usage: tools/mutation.sh PACKAGE... | list" >&2; exit 2; fi
if [[ "$1" == "list" ]]; then
  for name in "${!PACKAGES[@]}"; do echo "$name: ${PACKAGES[$name]/|/ -- tests: }"; done | sort
  exit 0
fi
for name in "$@"; do run_package "$name"; done
