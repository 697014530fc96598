#!/usr/bin/env bash
# Generates the lab report and checks that it renders in headless Chromium: every
# experiment's section and picture must be in the rendered DOM, and a screenshot of the
# whole page (measured first, then captured at that height) is kept for a human to look at.
#
# Usage: scripts/check-report.sh [OUT_DIR]     (default: target/lab-report)
# Installs Debian's chromium if it is missing (needs root and the package mirror).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/target/lab-report}
experiments=(counter thread-arg thread-leak signal-handler deadlock progress-graph livelock starvation spawn-cost backlog zombies fd-refcount)

browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
  echo "check-report: installing chromium" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
  browser=$(command -v chromium)
fi

cargo build -q -p echolab --manifest-path "$root/Cargo.toml"
echolab=${CARGO_TARGET_DIR:-$root/target}/debug/echolab
rm -rf "$out"
"$echolab" lab all --timeout 30 --report "$out" > "$out.log" 2>&1 || {
  echo "check-report: echolab lab all failed; its output:" >&2
  cat "$out.log" >&2
  exit 1
}

# shellcheck source=lib/page.sh
source "$root/scripts/lib/page.sh"
render_page "$out" "section.experiment:last-of-type" check-report

fail=0
for name in "${experiments[@]}"; do
  if ! grep -q "<section class=\"experiment\" id=\"$name\"" "$out/dom.html"; then
    echo "check-report: section $name is missing from the rendered page" >&2
    fail=1
  fi
done
n_sections=$(grep -o '<section class="experiment"' "$out/dom.html" | wc -l)
n_svgs=$(grep -o '<svg' "$out/dom.html" | wc -l)
n_rects=$(grep -o '<rect' "$out/dom.html" | wc -l)
if [ "$n_sections" -ne "${#experiments[@]}" ] || [ "$n_svgs" -lt "${#experiments[@]}" ] || [ "$n_rects" -lt 50 ]; then
  echo "check-report: rendered $n_sections sections, $n_svgs pictures, $n_rects bars; expected ${#experiments[@]} of each and bars in them" >&2
  fail=1
fi
if [ ! -s "$out/screenshot.png" ]; then
  echo "check-report: no screenshot was written" >&2
  fail=1
elif [ "$shot_height" -lt "$height" ] || [ "$last" -gt "$shot_height" ]; then
  echo "check-report: the screenshot is $shot_height px tall, the page $height px (last section ends at $last px)" >&2
  fail=1
fi
if [ "$fail" -ne 0 ]; then
  exit 1
fi
echo "check-report: ok: $n_sections sections, $n_svgs pictures rendered; page $out/index.html ($height px), screenshot $out/screenshot.png (${width}x$shot_height, the whole page)"
