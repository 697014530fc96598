#!/usr/bin/env bash
# Builds the reference C tools of ../shared/bench (loadgen, ref_epoll, ref_threads,
# pingpong, and for UDP ref_udp and udpgen) into target/ref/ (shared/ is read-only in
# CI) and prints that folder.
# Usage: scripts/build-ref.sh            -> prints the folder on stdout
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src=${ECHOLAB_SHARED_BENCH:-$root/../shared/bench}
out=$root/target/ref
if [ ! -d "$src" ]; then
  echo "build-ref: cannot find the reference sources at $src (set ECHOLAB_SHARED_BENCH)" >&2
  exit 2
fi
mkdir -p "$out"
for tool in loadgen ref_epoll ref_threads pingpong ref_udp udpgen; do
  if [ ! -x "$out/$tool" ] || [ "$src/$tool.c" -nt "$out/$tool" ]; then
    gcc -O2 -pthread -o "$out/$tool" "$src/$tool.c"
  fi
done
echo "$out"
