#!/usr/bin/env bash
# Runs a small `echolab compare --quick` and checks that its index.html renders in headless
# Chromium: every chart results.json lists must be a section with a picture in the rendered
# DOM, every workload a table, and a screenshot of the whole page (measured first, then
# captured at that height) is kept for a human to look at.
#
# Usage: scripts/check-compare.sh [OUT_DIR]     (default: target/compare-report)
# Environment: ECHOLAB_BIN=path to an echolab binary (default: a debug build made here);
#              COMPARE_ARGS=extra compare arguments (default: three models, one repeat).
# Without Chromium the check prints SKIPPED and why, and exits 0 (CI installs Debian's
# chromium first: see .ci/run).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# Absolute, so the file:// URLs below work for a relative OUT_DIR too.
out=$(realpath -m "${1:-$root/target/compare-report}")

browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
  echo "check-compare: SKIPPED: no chromium or chromium-browser on PATH (apt-get install chromium)" >&2
  exit 0
fi

if [ -z "${ECHOLAB_BIN:-}" ]; then
  cargo build -q -p echolab --manifest-path "$root/Cargo.toml"
  ECHOLAB_BIN=${CARGO_TARGET_DIR:-$root/target}/debug/echolab
fi
ECHOLAB_BIN=$(realpath "$ECHOLAB_BIN")
rm -rf "$out"
mkdir -p "$out"
# prethreaded (8 workers) leaves connections of the 64-connection run unserved: the page
# must show it marked.
# shellcheck disable=SC2086
(cd "$root" && "$ECHOLAB_BIN" compare --quick --out "$out" ${COMPARE_ARGS:---models event,reactor,prethreaded --repeats 1}) > "$out.log" 2>&1 || {
  status=$?
  # 1 is "some runs had errors": the page is still written and still checked.
  if [ "$status" -ne 1 ] || [ ! -s "$out/index.html" ]; then
    echo "check-compare: echolab compare failed ($status); its output:" >&2
    cat "$out.log" >&2
    exit 1
  fi
}

# shellcheck source=lib/page.sh
source "$root/scripts/lib/page.sh"
render_page "$out" "section.tables" check-compare

fail=0
charts=$(python3 -c 'import json,sys; print(" ".join(c["file"][:-4] for c in json.load(open(sys.argv[1]))["charts"]))' "$out/results.json")
n_charts=0
for chart in $charts; do
  n_charts=$((n_charts + 1))
  if ! grep -q "<section class=\"chart\" id=\"$chart\"" "$out/dom.html"; then
    echo "check-compare: chart $chart is missing from the rendered page" >&2
    fail=1
  fi
done
n_workloads=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["workloads"]))' "$out/results.json")
n_svgs=$(grep -o '<svg' "$out/dom.html" | wc -l)
n_tables=$(grep -o '<table' "$out/dom.html" | wc -l)
if [ "$n_charts" -lt 5 ] || [ "$n_svgs" -lt "$n_charts" ] || [ "$n_tables" -lt "$n_workloads" ]; then
  echo "check-compare: rendered $n_svgs pictures for $n_charts charts and $n_tables tables for $n_workloads workloads" >&2
  fail=1
fi
if grep -q '"served": "served' "$out/results.json" && ! grep -q 'served [0-9]*/[0-9]*' "$out/dom.html"; then
  echo "check-compare: results.json marks unserved connections but the page does not show them" >&2
  fail=1
fi
if [ ! -s "$out/screenshot.png" ]; then
  echo "check-compare: no screenshot was written" >&2
  fail=1
elif [ "$shot_height" -lt "$height" ] || [ "$last" -gt "$shot_height" ]; then
  echo "check-compare: the screenshot is $shot_height px tall, the page $height px (the tables end at $last px)" >&2
  fail=1
fi
if [ "$fail" -ne 0 ]; then
  exit 1
fi
echo "check-compare: ok: $n_charts charts, $n_svgs pictures, $n_tables tables rendered; page $out/index.html ($height px), screenshot $out/screenshot.png (${width}x$shot_height, the whole page)"
