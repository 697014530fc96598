# Sourced by scripts/check-report.sh (the lab's page) and scripts/check-compare.sh
# (compare's page): render an index.html in headless Chromium and screenshot all of it.
#
# render_page DIR SELECTOR TAG
#   $browser must name Chromium. Writes DIR/dom.html (the rendered DOM) and
#   DIR/screenshot.png of DIR/index.html at the page's full height, and sets `height` (the
#   rendered page's height), `last` (where the last SELECTOR element ends) and
#   `shot_height` (the PNG's own height). Exits 1, naming TAG, when the height cannot be
#   measured.

chrome() {
  timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" "$@" 2>/dev/null
}

render_page() {
  local dir=$1 selector=$2 tag=$3 measured measure
  width=1280
  profile=$(mktemp -d)
  trap 'rm -rf "$profile"' EXIT
  chrome --dump-dom "file://$dir/index.html" > "$dir/dom.html"
  # The whole page, not its first screenful: a copy of the page with a script that writes
  # the rendered height (and where the last section ends) into its title tells how tall a
  # window the screenshot needs.
  measure="$dir/measure.html"
  sed "s|</body>|<script>document.title = \"HEIGHT \" + document.documentElement.scrollHeight + \" LAST \" + Math.ceil(document.querySelector(\"$selector\").getBoundingClientRect().bottom + window.scrollY);</script></body>|" \
    "$dir/index.html" > "$measure"
  measured=$(chrome --window-size=$width,1000 --dump-dom "file://$measure" | grep -o 'HEIGHT [0-9]* LAST [0-9]*' | head -1)
  rm -f "$measure"
  height=$(echo "$measured" | awk '{print $2}')
  last=$(echo "$measured" | awk '{print $4}')
  if [ -z "$height" ] || [ -z "$last" ]; then
    echo "$tag: could not measure the rendered page's height" >&2
    exit 1
  fi
  chrome --screenshot="$dir/screenshot.png" --window-size=$width,"$height" --hide-scrollbars "file://$dir/index.html" > /dev/null
  # The PNG's own header says how tall the screenshot is (bytes 20-23 of the IHDR chunk).
  shot_height=$(od -An -tu1 -j20 -N4 "$dir/screenshot.png" | awk '{print $1*16777216 + $2*65536 + $3*256 + $4}')
}
