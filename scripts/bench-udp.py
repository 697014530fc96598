#!/usr/bin/env python3
"""echolab's UDP server and UDP load generator against the reference C tools of
../shared/bench (ref_udp, udpgen), on this machine, in one sitting (issue 10).

Usage: scripts/bench-udp.py [--runs N] [--secs S] [--echolab PATH] [--only cpu|gen]
                            [--models reactor,uring] [--also LABEL=PATH ...]

Two groups, each run alternately (A B A B ...), N runs each (default 3), medians:

1. Server CPU per datagram: `echolab serve --udp-only --model reactor|uring --workers 1
   --udp-rate-per-source off` against `ref_udp -t 1` (one loop each), all loaded by the
   same `udpgen -c 8 -s 64` (no warm-up). `--also LABEL=PATH` adds rows for another echolab
   binary (say, the build before a change), alternated with the others. CPU is the time the
   server's threads ran over the run (/proc/PID/task/*/schedstat, nanoseconds: finer than
   utime+stime's clock ticks, 10 ms each), divided by the echoes udpgen counted. Where the kernel
   refuses io_uring the uring row says so.
2. Load generator: `echolab bench --udp -c 8 -s 64 -t 1` against `udpgen -c 8 -s 64 -t 1`,
   both against the same `ref_udp -t 1`: echoes/s and the loss counts of each.

Client and server share this machine's cores (and other people's work): every figure is
"on a loaded machine". The targets of issue 10 are printed beside each ratio
(CPU ≤ 1.00× ref_udp; echoes/s ≥ 0.95× udpgen), with PASS or FALL SHORT computed from
the figures. Exit status 0 whether or not a row falls short (the table is the result);
1 on errors. Every process it starts is stopped by its PID; every wait has a deadline.
"""

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ns(pid):
    """Nanoseconds the threads of `pid` have run (the first field of each schedstat)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass  # a thread that ended meanwhile: the servers' loops do not
    return total


class Server:
    """A server process, started and waited for by its "listening" line, stopped by PID."""

    def __init__(self, argv, ready):
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        said = ""
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                self.proc.wait(timeout=5)
                raise RuntimeError(f"{os.path.basename(argv[0])} exited before listening: {said.strip()}")
            said = line
            if ready in line:
                return
        self.stop()
        raise RuntimeError(f"{argv[0]} did not say {ready!r} within 20 s")

    def cpu(self):
        return cpu_ns(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc.stderr.close()


def udpgen(ref, port, secs):
    out = subprocess.run([f"{ref}/udpgen", "-p", str(port), "-c", "8", "-s", "64", "-d", str(secs),
                          "-w", "0", "-t", "1", "-T", "200", "-q"],
                         capture_output=True, text=True, timeout=secs + 30)
    m = re.search(r"msgs=(\d+) rate=([\d.]+) lost=(\d+) late=(\d+) bad=(\d+)", out.stdout)
    if not m:
        raise RuntimeError(f"udpgen printed no RESULT: {out.stdout} {out.stderr}")
    msgs, rate, lost, late, bad = m.groups()
    return {"msgs": int(msgs), "rate": float(rate), "lost": int(lost), "late": int(late), "bad": int(bad)}


def echolab_bench(echolab, port, secs):
    out = subprocess.run([echolab, "bench", "--udp", f"127.0.0.1:{port}", "-c", "8", "-s", "64",
                          "-d", str(secs), "-t", "1", "--timeout", "0.2", "--max-loss", "100", "--json"],
                         capture_output=True, text=True, timeout=secs + 30)
    if out.returncode not in (0, 1):
        raise RuntimeError(f"echolab bench --udp exited {out.returncode}: {out.stderr}")
    doc = json.loads(out.stdout)
    return {"msgs": doc["echoed"], "rate": doc["echoes_per_sec"], "lost": doc["lost"],
            "late": doc["late"], "bad": doc["corrupt"]}


def echolab_server(echolab, port, model):
    return Server([echolab, "serve", "--udp-only", "--model", model, "--workers", "1",
                   "--udp-rate-per-source", "off", "--quiet", "--listen", f"127.0.0.1:{port}"],
                  "udp listening on")


def ref_server(ref, port):
    return Server([f"{ref}/ref_udp", "-p", str(port), "-t", "1"], "listening on")


def verdict(ratio, target, higher_is_better):
    ok = ratio >= target if higher_is_better else ratio <= target
    return "PASS" if ok else "FALL SHORT"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--secs", type=float, default=3.0)
    ap.add_argument("--echolab", default=os.path.join(ROOT, "target/release/echolab"))
    ap.add_argument("--only", choices=["cpu", "gen"], help="run one group only")
    ap.add_argument("--models", default="reactor,uring", help="echolab models of group 1")
    ap.add_argument("--also", action="append", default=[], metavar="LABEL=PATH",
                    help="rows for another echolab binary in group 1")
    ap.add_argument("--self-test", action="store_true",
                    help="check the verdicts and ratios against known figures, run nothing")
    args = ap.parse_args()
    if args.self_test:
        self_test()
        print("bench-udp: self-test ok")
        return 0
    models = [m for m in args.models.split(",") if m]
    binaries = {"echolab": args.echolab}
    for spec in args.also:
        label, _, path = spec.partition("=")
        if not label or not os.access(path, os.X_OK):
            log(f"bench-udp: --also wants LABEL=PATH of an executable, got {spec!r}")
            return 2
        binaries[label] = path
    if any(m not in ("reactor", "uring") for m in models):
        log(f"bench-udp: --models takes reactor and/or uring, got {args.models!r}")
        return 2
    if not (1 <= args.runs <= 50) or not (0.5 <= args.secs <= 60):
        log(f"bench-udp: --runs must be 1..50 and --secs 0.5..60, got {args.runs} and {args.secs}")
        return 2
    if not os.access(args.echolab, os.X_OK):
        log(f"bench-udp: no echolab at {args.echolab} (cargo build --release -p echolab)")
        return 1
    ref = subprocess.run([os.path.join(ROOT, "scripts/build-ref.sh")], capture_output=True,
                         text=True, check=True).stdout.strip()

    # Group 1: server CPU per datagram, one loop each, the same udpgen load.
    cpu = {f"{label} {m} (1 loop)": [] for label in binaries for m in models}
    cpu["ref_udp -t 1"] = []
    binary_of = {f"{label} {m} (1 loop)": (path, m) for label, path in binaries.items() for m in models}
    refused = {}
    loss1 = {k: [] for k in cpu}
    for run in range(args.runs if args.only != "gen" else 0):
        for name in cpu:
            if name in refused:
                continue
            port = free_udp_port()
            try:
                server = echolab_server(binary_of[name][0], port, binary_of[name][1]) \
                    if name in binary_of else ref_server(ref, port)
            except RuntimeError as err:
                refused[name] = str(err)
                log(f"  {name}: {err}")
                continue
            try:
                before = server.cpu()
                res = udpgen(ref, port, args.secs)
                ns = server.cpu() - before
            finally:
                server.stop()
            per = ns / max(res["msgs"], 1)
            cpu[name].append(per)
            loss1[name].append(res["lost"] + res["late"])
            log(f"  run {run + 1} {name}: {res['msgs']} echoes, {res['rate']:.0f}/s, "
                f"server CPU {per:.0f} ns/datagram, lost {res['lost']}, late {res['late']}")

    # Group 2: the two load generators against the same reference server.
    gens = {"echolab bench --udp": [], "udpgen": []}
    losses = {k: [] for k in gens}
    for run in range(args.runs if args.only != "cpu" else 0):
        for name in gens:
            port = free_udp_port()
            server = ref_server(ref, port)
            try:
                res = echolab_bench(args.echolab, port, args.secs) if name.startswith("echolab") \
                    else udpgen(ref, port, args.secs)
            finally:
                server.stop()
            gens[name].append(res["rate"])
            losses[name].append(res["lost"])
            log(f"  run {run + 1} {name}: {res['rate']:.0f} echoes/s, lost {res['lost']}, "
                f"late {res['late']}, bad {res['bad']}")

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"UDP, 8 sockets × 64 B, {args.runs} alternated runs of {args.secs} s each, medians; "
          f"client and server share this machine's {os.cpu_count()} cores; load average at the end {load}.")
    print()
    if args.only != "gen":
        cpu_table(cpu, refused, loss1)
    if args.only != "cpu":
        gen_table(gens, losses)
    return 0


def paired(values, ref_values):
    """Each run's ratio to the reference's figure of the same run (the runs alternate, so
    both saw the same machine): their median, least and greatest."""
    ratios = [v / r for v, r in zip(values, ref_values) if r]
    if not ratios:
        return "—"
    return f"{statistics.median(ratios):.3f}× [{min(ratios):.3f}–{max(ratios):.3f}]"


def cpu_table(cpu, refused, loss1):
    print("| server (loaded by udpgen) | CPU ns/datagram | ratio to ref_udp -t 1 | target "
          "| per-run ratio, median [least–greatest] | lost+late per run |")
    print("|---|---|---|---|---|---|")
    ref_values = cpu["ref_udp -t 1"]
    ref_cpu = statistics.median(ref_values)
    for name, values in cpu.items():
        if name in refused:
            print(f"| {name} | — | — | no row: {refused[name]} | — | — |")
            continue
        med = statistics.median(values)
        ratio = med / ref_cpu if ref_cpu else float("nan")
        target = "—" if name.startswith("ref") else f"≤ 1.00× {verdict(ratio, 1.0, False)}"
        spread = "—" if name.startswith("ref") else paired(values, ref_values)
        print(f"| {name} | {med:.0f} | {ratio:.3f}× | {target} | {spread} | {loss1[name]} |")
    print()


def gen_table(gens, losses):
    print("| load generator (against ref_udp -t 1) | echoes/s | ratio to udpgen | target | lost per run |")
    print("|---|---|---|---|---|")
    ref_rate = statistics.median(gens["udpgen"])
    for name, values in gens.items():
        med = statistics.median(values)
        ratio = med / ref_rate if ref_rate else float("nan")
        target = "—" if name == "udpgen" else f"≥ 0.95× {verdict(ratio, 0.95, True)}"
        print(f"| {name} | {med:.0f} | {ratio:.3f}× | {target} | {losses[name]} |")


def self_test():
    """The sentences the tables print, against figures whose answers are known."""
    assert verdict(1.0, 1.0, False) == "PASS"
    assert verdict(1.001, 1.0, False) == "FALL SHORT"
    assert verdict(0.95, 0.95, True) == "PASS"
    assert verdict(0.949, 0.95, True) == "FALL SHORT"
    # Runs 1.1×, 0.9×, 1.0× of the same run's reference: median 1.0, least 0.9, greatest 1.1.
    assert paired([110, 90, 300], [100, 100, 300]) == "1.000× [0.900–1.100]"
    assert paired([], []) == "—"


if __name__ == "__main__":
    sys.exit(main())
