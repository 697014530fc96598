#!/usr/bin/env python3
"""echolab's models against the reference C servers of ../shared/bench, on this machine,
in one sitting.

Usage: scripts/bench-models.py [--preset fast|lecture|uring|budget] [--quick] [--runs N] [--secs S] [--echolab PATH]

- `--preset fast` (default): issue 4's targets. The fast models (reactor, uring, async) and
  the event model against `ref_epoll`, every row with its ratio and PASS or FALL SHORT.
- `--preset lecture`: the lecture's models (iterative, process, event, thread,
  prethreaded) beside `ref_epoll -t 1` and `ref_threads`: loadgen, 64 connections (the
  iterative server: 1, since it serves one at a time), 64-byte messages; messages/s, p99
  and server CPU per message (the process model's children included).
- `--preset uring`: issue 12's targets for the io_uring model: server CPU per 64-byte
  message against `ref_epoll -t 1` (both one loop) and `ref_epoll -t CORES` (default
  workers) at 64 and 512 connections, messages/s and p99 beside them, MB/s at 16 KiB x 64
  connections, CPU per connection under churn; the load average is printed with the table.
- `--preset budget`: what the reactor's read budget (4 reads per connection per turn,
  issue 9) costs. `reactor -w 1` with the budget, without it (the environment variable
  ECHOLAB_BENCH_READS_PER_TURN=0, for benchmarks only) and `ref_epoll -t 1`: one
  full-speed two-way streamer (loadgen, 1 connection, 64 messages of 16 KiB in flight)
  and 64 connections of 16 KiB ping-pong; MB/s, with the budget >= 0.90x without.

- Builds the reference tools (scripts/build-ref.sh) and `echolab` (cargo, release).
- Every figure is the median of N runs (default 5; --quick: 2 runs of 1.5 s). The
  candidates of a group run alternately (A B C A B C ...), each on a fresh server.
- Server CPU is utime+stime of the server process from /proc/PID/stat over the whole
  load run (loadgen with no warm-up, so every message counted was served in the window),
  divided by the messages (or connections) loadgen counted.
- Client and server share this machine's cores: every figure is "on a loaded machine".
- Memory per idle connection: (RSS while loadgen -m hold keeps N connections) minus (RSS
  before they connected), over N; PSS summed over the processes for the process model.

Prints every row of issue 4's table with the measured ratio and PASS or FALL SHORT.
Exit status 0 whether or not rows fall short (the table is the result); 1 on errors.
Every server and client it starts is stopped by its PID; every wait has a deadline.
"""

import argparse
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time

# The reactor with its read budget lifted (ECHOLAB_BENCH_READS_PER_TURN=0).
UNBUDGETED = "reactor-no-budget"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def raise_nofile():
    """Runs in each child before exec: as many descriptors as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, deadline_s=10.0):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port} after {deadline_s} s")


class Server:
    """One server process: `echolab serve` or `ref_epoll`, stopped by PID."""

    def __init__(self, args, candidate):
        self.candidate = candidate
        kind, opts = candidate
        if kind in ("ref_epoll", "ref_threads"):
            self.port = free_port()
            cmd = [os.path.join(args.ref, kind), "-p", str(self.port)]
            if kind == "ref_epoll":
                cmd += ["-t", str(opts)]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, preexec_fn=raise_nofile)
            wait_listening(self.port)
        else:
            env = None
            if kind == UNBUDGETED:
                kind, env = "reactor", dict(os.environ, ECHOLAB_BENCH_READS_PER_TURN="0")
            cmd = [args.echolab, "serve", "--model", kind, "--listen", "127.0.0.1:0", "--quiet"]
            if opts:
                cmd += ["--workers", str(opts)]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True, preexec_fn=raise_nofile,
                                         env=env)
            line = self.proc.stderr.readline()  # The first line, printed once bound.
            m = re.search(r"listening on \S+:(\d+) \(model", line)
            if not m:
                self.stop()
                raise RuntimeError(f"{kind}: no 'listening on' line, got {line!r}")
            self.port = int(m.group(1))

    @property
    def pid(self):
        return self.proc.pid

    def cpu_ticks(self):
        """utime+stime of the server, plus its children: those reaped (cutime, cstime) and
        those still running (the process model forks one per connection)."""
        fields = read_stat(self.pid)
        ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
        for kid in descendants(self.pid):
            try:
                kid_fields = read_stat(kid)
            except OSError:
                continue  # Exited between the listing and the read; counted once reaped.
            ticks += int(kid_fields[11]) + int(kid_fields[12])
        return ticks

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stderr:
            self.proc.stderr.close()


def read_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2:].split()  # fields from 3 (state) on


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pss_kib_tree(pid):
    """PSS of a process and all its descendants (the process model forks per connection)."""
    total = 0
    for p in [pid] + descendants(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def descendants(pid):
    out = []
    try:
        kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        return out
    for kid in kids:
        out.append(int(kid))
        out += descendants(int(kid))
    return out


def loadgen(args, port, extra, timeout):
    cmd = [os.path.join(args.ref, "loadgen"), "-p", str(port), "-q"] + extra
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=raise_nofile)
    m = re.search(r"^RESULT .*$", done.stdout, re.M)
    if done.returncode != 0 or not m:
        raise RuntimeError(f"loadgen {' '.join(extra)} failed ({done.returncode}): {done.stdout}{done.stderr}")
    return dict(kv.split("=", 1) for kv in m.group(0).split()[1:])


def measure(args, candidate, load):
    """One run: a fresh server, one loadgen run, the server's CPU over it."""
    server = Server(args, candidate)
    try:
        before = server.cpu_ticks()
        result = loadgen(args, server.port, load + ["-d", str(args.secs), "-w", "0"], timeout=args.secs + 60)
        cpu_s = (server.cpu_ticks() - before) / CLK_TCK
    finally:
        server.stop()
    msgs = int(result["msgs"])
    return {
        "rate": float(result["rate"]),
        "mbps": float(result["mbps"]),
        "p99": float(result["p99_us"]),
        "cpu_us": cpu_s * 1e6 / max(msgs, 1),
    }


def run_group(args, name, candidates, load):
    """Runs every candidate `runs` times, alternating, and returns their medians."""
    samples = {c: [] for c in candidates}
    for run_idx in range(args.runs):
        for c in candidates:
            samples[c].append(measure(args, c, load))
        log(f"  {name}: round {run_idx + 1}/{args.runs} done")
    medians = {}
    for c, runs in samples.items():
        medians[c] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        m = medians[c]
        log(f"  {label(c):>16}  rate {m['rate']:>9.0f}/s  {m['mbps']:>8.2f} MB/s  p99 {m['p99']:>8.1f} us  "
            f"server CPU {m['cpu_us']:.2f} us/msg")
    return medians


def label(c):
    kind, opts = c
    if kind == UNBUDGETED:
        return f"reactor -w {opts} (no budget)"
    if kind == "ref_epoll":
        return f"ref_epoll -t {opts}"
    if kind == "ref_threads":
        return kind
    return f"{kind} -w {opts}" if opts else kind


def idle_memory(args, candidate, n_conns):
    """Server memory per idle connection, KiB: (while holding n - before) / n."""
    kind = candidate[0]
    use_pss = kind == "process"
    server = Server(args, candidate)
    hold = None
    try:
        time.sleep(0.2)
        measure_mem = (lambda: pss_kib_tree(server.pid)) if use_pss else (lambda: rss_kib(server.pid))
        before = measure_mem()
        cmd = [os.path.join(args.ref, "loadgen"), "-p", str(server.port), "-m", "hold", "-c", str(n_conns),
               "-T", "120"]
        hold = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                preexec_fn=raise_nofile)
        line = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = hold.stdout.readline()
            if not line or line.startswith("HOLDING"):
                break
        m = re.search(r"HOLDING ok=(\d+)", line)
        if not m:
            raise RuntimeError(f"{label(candidate)}: loadgen hold said {line!r}")
        ok = int(m.group(1))
        time.sleep(0.5)
        during = measure_mem()
        return (during - before) / max(ok, 1), ok, "PSS" if use_pss else "RSS"
    finally:
        if hold is not None:
            hold.send_signal(signal.SIGTERM)
            try:
                hold.wait(timeout=10)
            except subprocess.TimeoutExpired:
                hold.kill()
                hold.wait(timeout=5)
        server.stop()


class Table:
    def __init__(self):
        self.rows = []

    def ratio(self, figure, a, b, limit, higher_is_better, note=""):
        r = a / b if b else float("inf")
        ok = r >= limit if higher_is_better else r <= limit
        target = f"{'>=' if higher_is_better else '<='} {limit:.2f}x"
        self.rows.append((figure, f"{a:.3g} / {b:.3g}", f"{r:.3f}x", target, "PASS" if ok else "FALL SHORT", note))

    def absolute(self, figure, value, limit, unit, note=""):
        ok = value <= limit
        self.rows.append((figure, f"{value:.3g} {unit}", "", f"<= {limit:g} {unit}", "PASS" if ok else "FALL SHORT", note))

    def info(self, figure, value, note=""):
        self.rows.append((figure, value, "", "", "(reported)", note))

    def print(self):
        widths = [max(len(str(r[i])) for r in self.rows) for i in range(5)]
        for r in self.rows:
            cells = [str(r[i]).ljust(widths[i]) for i in range(5)]
            print("  ".join(cells) + (f"  {r[5]}" if r[5] else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=["fast", "lecture", "uring", "budget"], default="fast",
                    help="fast: issue 4's targets (default); lecture: the lecture's models beside the C references; "
                         "uring: issue 12's targets for the io_uring model; budget: the reactor's read budget against none (issue 9)")
    ap.add_argument("--quick", action="store_true", help="2 runs of 1.5 s, 2,000 idle connections")
    ap.add_argument("--runs", type=int, help="runs per candidate (default 5)")
    ap.add_argument("--secs", type=float, help="seconds per run (default 4)")
    ap.add_argument("--idle-conns", type=int, help="idle connections for the memory row (default 10000)")
    ap.add_argument("--echolab", help="a prebuilt echolab binary (skips cargo build)")
    args = ap.parse_args()
    args.runs = args.runs or (2 if args.quick else 5)
    args.secs = args.secs or (1.5 if args.quick else 4.0)
    args.idle_conns = args.idle_conns or (2000 if args.quick else 10000)

    args.ref = subprocess.run([os.path.join(ROOT, "scripts", "build-ref.sh")], check=True,
                              capture_output=True, text=True).stdout.strip()
    if not args.echolab:
        log("building echolab (release)...")
        subprocess.run(["cargo", "build", "-q", "-p", "echolab", "--release"], cwd=ROOT, check=True)
        args.echolab = os.path.join(ROOT, "target", "release", "echolab")
    cores = os.cpu_count()
    log(f"{cores} cores, shared by the load generator and the server; {args.runs} runs of {args.secs} s each")

    if args.preset == "lecture":
        return lecture(args)
    if args.preset == "uring":
        return uring_targets(args, cores)
    if args.preset == "budget":
        return budget(args)
    ref1, ref_all = ("ref_epoll", 1), ("ref_epoll", cores)
    reactor1, reactor = ("reactor", 1), ("reactor", None)
    uring, async_, event = ("uring", None), ("async", None), ("event", None)
    table = Table()
    groups = {}
    for conns in (64, 512):
        candidates = [ref1, reactor1, ref_all, reactor, async_, uring] + ([event] if conns == 64 else [])
        log(f"ping-pong, 64-byte messages, {conns} connections:")
        groups[conns] = run_group(args, f"{conns} conns", candidates, ["-c", str(conns), "-s", "64"])
    for conns in (64, 512):
        g = groups[conns]
        table.ratio(f"CPU/msg reactor -w 1 vs ref_epoll -t 1, {conns} conns", g[reactor1]["cpu_us"], g[ref1]["cpu_us"], 1.00, False)
        table.ratio(f"msgs/s  reactor -w 1 vs ref_epoll -t 1, {conns} conns", g[reactor1]["rate"], g[ref1]["rate"], 0.95, True)
    for conns in (64, 512):
        g = groups[conns]
        table.ratio(f"CPU/msg reactor vs ref_epoll -t {cores}, {conns} conns", g[reactor]["cpu_us"], g[ref_all]["cpu_us"], 1.00, False)
        table.ratio(f"msgs/s  reactor vs ref_epoll -t {cores}, {conns} conns", g[reactor]["rate"], g[ref_all]["rate"], 0.95, True)
        table.ratio(f"p99     reactor vs ref_epoll -t {cores}, {conns} conns", g[reactor]["p99"], g[ref_all]["p99"], 1.10, False)
    for conns in (64, 512):
        g = groups[conns]
        table.ratio(f"CPU/msg reactor vs async, {conns} conns", g[reactor]["cpu_us"], g[async_]["cpu_us"], 0.85, False)
        table.ratio(f"msgs/s  reactor vs async, {conns} conns", g[reactor]["rate"], g[async_]["rate"], 1.00, True)
    g = groups[512]
    table.ratio("CPU/msg uring vs reactor, 512 conns", g[uring]["cpu_us"], g[reactor]["cpu_us"], 1.00, False)

    log("16 KiB messages, 64 connections:")
    big = run_group(args, "16 KiB", [ref_all, reactor, uring, async_], ["-c", "64", "-s", "16384"])
    for c in (reactor, uring, async_):
        table.ratio(f"MB/s    {label(c)} vs ref_epoll -t {cores}, 16 KiB, 64 conns", big[c]["mbps"], big[ref_all]["mbps"], 0.95, True)

    log("connection churn (connect, one echo, close), 16 at a time:")
    churn = run_group(args, "churn", [ref_all, reactor], ["-m", "connect", "-c", "16", "-s", "64"])
    table.ratio(f"CPU/conn reactor vs ref_epoll -t {cores}, churn", churn[reactor]["cpu_us"], churn[ref_all]["cpu_us"], 1.00, False)
    table.ratio(f"conns/s  reactor vs ref_epoll -t {cores}, churn", churn[reactor]["rate"], churn[ref_all]["rate"], 0.95, True)

    n = args.idle_conns
    log(f"{n} idle connections (process model: {min(n, 1000)}):")
    for c in [reactor, uring, ("ref_epoll", 1), async_, ("thread", None), ("process", None)]:
        n_c = min(n, 1000) if c[0] == "process" else n
        per_conn, ok, what = idle_memory(args, c, n_c)
        log(f"  {label(c):>16}  {per_conn * 1024:8.0f} bytes {what} per connection ({ok} held)")
        if c in (reactor, uring):
            table.absolute(f"memory per idle conn, {label(c)}, {ok} conns", per_conn * 1024, 1024, "B")
        else:
            table.info(f"memory per idle conn, {label(c)}, {ok} conns", f"{per_conn * 1024:.0f} B {what}")

    g = groups[64]
    table.ratio("CPU/msg event vs ref_epoll -t 1, 64 conns", g[event]["cpu_us"], g[ref1]["cpu_us"], 1.10, False)

    print(f"\n# issue 4 targets: medians of {args.runs} runs x {args.secs} s, alternated; {cores} cores shared by client and server")
    table.print()
    return 0


def uring_targets(args, cores):
    """Issue 12's rows: the io_uring model against ref_epoll, ratios with PASS/FALL SHORT."""
    ref1, ref_all = ("ref_epoll", 1), ("ref_epoll", cores)
    uring1, uring = ("uring", 1), ("uring", None)
    load_before = os.getloadavg()
    table = Table()
    for conns in (64, 512):
        log(f"ping-pong, 64-byte messages, {conns} connections:")
        g = run_group(args, f"{conns} conns", [ref1, uring1, ref_all, uring], ["-c", str(conns), "-s", "64"])
        for (a, b) in ((uring1, ref1), (uring, ref_all)):
            what = f"{label(a)} vs {label(b)}, {conns} conns"
            table.ratio(f"CPU/msg  {what}", g[a]["cpu_us"], g[b]["cpu_us"], 0.80, False)
            table.ratio(f"msgs/s   {what}", g[a]["rate"], g[b]["rate"], 1.00, True)
            table.ratio(f"p99      {what}", g[a]["p99"], g[b]["p99"], 1.10, False)
    log("16 KiB messages, 64 connections:")
    big = run_group(args, "16 KiB", [ref_all, uring], ["-c", "64", "-s", "16384"])
    table.ratio(f"MB/s     uring vs ref_epoll -t {cores}, 16 KiB, 64 conns", big[uring]["mbps"], big[ref_all]["mbps"], 1.30, True)
    log("connection churn (connect, one echo, close), 16 at a time:")
    churn = run_group(args, "churn", [ref_all, uring], ["-m", "connect", "-c", "16", "-s", "64"])
    table.ratio(f"CPU/conn uring vs ref_epoll -t {cores}, churn", churn[uring]["cpu_us"], churn[ref_all]["cpu_us"], 1.00, False)
    load_after = os.getloadavg()
    print(f"\n# issue 12 targets: medians of {args.runs} runs x {args.secs} s, alternated; {cores} cores shared by "
          f"client and server; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    table.print()
    return 0


def budget(args):
    """The reactor's read budget against none, and both against ref_epoll -t 1."""
    ref1, budgeted, unbudgeted = ("ref_epoll", 1), ("reactor", 1), (UNBUDGETED, 1)
    candidates = [ref1, budgeted, unbudgeted]
    table = Table()
    loads = [("streamer, 1 conn, 64 x 16 KiB in flight", ["-c", "1", "-P", "64", "-s", "16384"]),
             ("16 KiB ping-pong, 64 conns", ["-c", "64", "-s", "16384"])]
    for name, load in loads:
        log(f"{name}:")
        g = run_group(args, name, candidates, load)
        table.ratio(f"MB/s  reactor -w 1, budget vs none, {name}", g[budgeted]["mbps"], g[unbudgeted]["mbps"], 0.90, True)
        table.ratio(f"MB/s  reactor -w 1 vs ref_epoll -t 1, {name}", g[budgeted]["mbps"], g[ref1]["mbps"], 0.95, True)
        table.ratio(f"MB/s  reactor -w 1 (no budget) vs ref_epoll -t 1, {name}", g[unbudgeted]["mbps"], g[ref1]["mbps"], 0.95, True)
    print(f"\n# the reactor's read budget (issue 9): medians of {args.runs} runs x {args.secs} s, alternated; "
          f"{os.cpu_count()} cores shared by client and server; load average {os.getloadavg()[0]:.2f}")
    table.print()
    return 0


def lecture(args):
    """The lecture's models beside the C references: one table, no targets."""
    load = ["-c", "64", "-s", "64"]
    candidates = [("ref_epoll", 1), ("ref_threads", None), ("process", None), ("event", None),
                  ("thread", None), ("prethreaded", None)]
    log("ping-pong, 64-byte messages, 64 connections:")
    medians = run_group(args, "64 conns", candidates, load)
    log("ping-pong, 64-byte messages, 1 connection (the iterative server serves one at a time):")
    single = run_group(args, "1 conn", [("ref_epoll", 1), ("iterative", None)], ["-c", "1", "-s", "64"])
    print(f"\n# the lecture's models: loadgen, 64-byte ping-pong, medians of {args.runs} runs x {args.secs} s; "
          f"{os.cpu_count()} cores shared by client and server")
    print(f"{'server':<18}{'conns':>6}{'msgs/s':>11}{'p99 us':>10}{'CPU us/msg':>12}{'CPU vs ref_epoll':>18}")
    for group, conns in ((medians, 64), (single, 1)):
        ref = group[("ref_epoll", 1)]["cpu_us"]
        for c, m in group.items():
            print(f"{label(c):<18}{conns:>6}{m['rate']:>11.0f}{m['p99']:>10.1f}{m['cpu_us']:>12.2f}{m['cpu_us'] / ref:>17.2f}x")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        print(f"bench-models: {err}", file=sys.stderr)
        sys.exit(1)
