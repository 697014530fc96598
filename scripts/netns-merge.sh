#!/usr/bin/env bash
# Two load machines, one server, results merged: the real path of `echolab merge`.
#
# Creates three network namespaces (a server and two "load hosts"), joined by veth pairs
# (10.77.1.0/24 and 10.77.2.0/24), runs `echolab serve` in the server's and one
# `echolab bench --hdr-log --json` in each load host's at the same time, merges the two
# interval logs with `echolab merge`, and checks the merge against a histogram of both:
# the merge of the two runs' whole-window histograms (carried in --json) must be the
# same histogram, bit for bit, with the two runs' counts added, and the merged rate the
# sum of the two rates.
#
# Needs root and `ip` (iproute2). Where the kernel or the container refuses namespaces,
# prints "SKIPPED: <reason>" and exits 0. Exit 1 when a check fails.
#
#   scripts/netns-merge.sh [target/release/echolab] [OUTDIR]
set -u
BIN=${1:-target/release/echolab}
OUT=${2:-target/netns-merge}
TAG=elx$$
SRV=$TAG-srv L1=$TAG-l1 L2=$TAG-l2

skip() { echo "SKIPPED: $*"; exit 0; }
[ -x "$BIN" ] || { echo "netns-merge: $BIN is not built (cargo build --release -p echolab)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || skip "not root: network namespaces need CAP_SYS_ADMIN"
command -v ip >/dev/null || skip "no ip command (apt-get install iproute2)"
ip netns add "$SRV" 2>/tmp/$TAG.err || skip "the kernel refused a network namespace: $(cat /tmp/$TAG.err)"

SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  for ns in "$SRV" "$L1" "$L2"; do ip netns del "$ns" 2>/dev/null; done
  rm -f /tmp/$TAG.err
}
trap cleanup EXIT

set -e
ip netns add "$L1"
ip netns add "$L2"
for i in 1 2; do
  ns=$TAG-l$i
  ip link add "$TAG-s$i" type veth peer name "$TAG-c$i"
  ip link set "$TAG-s$i" netns "$SRV"
  ip link set "$TAG-c$i" netns "$ns"
  ip -n "$SRV" addr add 10.77.$i.1/24 dev "$TAG-s$i"
  ip -n "$ns" addr add 10.77.$i.2/24 dev "$TAG-c$i"
  ip -n "$SRV" link set "$TAG-s$i" up
  ip -n "$ns" link set "$TAG-c$i" up
  ip -n "$ns" link set lo up
done
ip -n "$SRV" link set lo up
set +e

mkdir -p "$OUT"
ip netns exec "$SRV" "$BIN" serve --model reactor --listen 0.0.0.0:7007 --quiet 2>"$OUT/server.log" &
SERVER_PID=$!
for _ in $(seq 100); do grep -q "listening on" "$OUT/server.log" && break; sleep 0.05; done
grep -q "listening on" "$OUT/server.log" || { echo "netns-merge: the server did not start: $(cat "$OUT/server.log")"; exit 1; }

ARGS=(--conns 16 --duration 3 --warmup 0.5 --interval 0.5 --json)
ip netns exec "$L1" "$BIN" bench 10.77.1.1:7007 "${ARGS[@]}" --hdr-log "$OUT/host1.hlog" >"$OUT/host1.json" 2>"$OUT/host1.err" &
B1=$!
ip netns exec "$L2" "$BIN" bench 10.77.2.1:7007 "${ARGS[@]}" --hdr-log "$OUT/host2.hlog" >"$OUT/host2.json" 2>"$OUT/host2.err" &
B2=$!
wait $B1; R1=$?
wait $B2; R2=$?
[ $R1 = 0 ] && [ $R2 = 0 ] || { echo "netns-merge: a bench failed ($R1, $R2): $(cat "$OUT"/host*.err)"; exit 1; }

"$BIN" merge --json "$OUT/host1.hlog" "$OUT/host2.hlog" >"$OUT/merged-logs.json" || exit 1
"$BIN" merge --json "$OUT/host1.json" "$OUT/host2.json" >"$OUT/merged-json.json" || exit 1
"$BIN" merge "$OUT/host1.hlog" "$OUT/host2.hlog" | tee "$OUT/merged.txt"

python3 - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
load = lambda name: json.load(open(f"{out}/{name}"))
h1, h2, logs, both = load("host1.json"), load("host2.json"), load("merged-logs.json"), load("merged-json.json")
checks = [
    ("the merged logs are the histogram of both runs, bit for bit", logs["histogram"] == both["histogram"]),
    ("messages add up", logs["messages"] == h1["messages"] + h2["messages"]),
    ("rates add up", abs(logs["messages_per_sec"] - h1["messages_per_sec"] - h2["messages_per_sec"]) < 1e-6 * logs["messages_per_sec"]),
    ("percentiles agree", all(logs[k] == both[k] for k in ("p50_us", "p90_us", "p99_us", "p999_us", "max_us"))),
    ("every host sent load", h1["messages"] > 0 and h2["messages"] > 0),
]
for what, ok in checks:
    print(("ok    " if ok else "FAILED"), what)
print(f"host1 p99 {h1['p99_us']} us, host2 p99 {h2['p99_us']} us, merged p99 {logs['p99_us']} us; "
      f"{logs['messages']} messages, {logs['messages_per_sec']:.0f}/s")
sys.exit(0 if all(ok for _, ok in checks) else 1)
EOF
