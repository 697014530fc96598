#!/usr/bin/env python3
"""The scale curve: how many idle connections each model holds, and what each costs.

Per model, holds 1k, 10k, 100k and 1,000,000 idle loopback connections (each verified by
one echo), stopping a model at the first step it cannot hold and saying why (descriptors,
memory, pids, or what the hold reported). At each step it records:

  - time to establish the connections, and the connect rate;
  - the server's user-space memory per connection: RSS and anonymous PSS summed over its
    processes (supervisor and workers), minus the same before the connections, divided by
    the count;
  - kernel memory: Slab from /proc/meminfo and TCP from /proc/net/sockstat, before and after;
  - the server's CPU while the connections sit idle (2 s);
  - the p99 of 64 active ping-pong connections beside the idle ones, and its ratio to the
    p99 with none held (the issue's target: at most 2x): p99/none against the model's
    one-process server, p99/empty against the step's own server (same --processes)
    measured just before the hold;
  - the growth of TcpExt ListenOverflows and ListenDrops (/proc/net/netstat) while
    establishing: SYNs or handshakes dropped because a listen queue was full (they count
    for the whole network namespace: other programs' listeners too).

One process may open at most RLIMIT_NOFILE descriptors (hard limit 20,000 here, and not
raisable without CAP_SYS_RESOURCE): reactor and uring are run with `--processes`
(ceil(N / 15,000) workers, one event loop each) past that; the clients are several
`echolab bench --hold` processes of at most 19,000 connections each, each on source
addresses of its own (127.S.K.1-2, so 56,000 ports), and their results are merged.

Thread and process models stop before they hurt the machine: a pid guard (tasks in use
plus N must stay 4,000 under kernel.pid_max) and a memory guard (the step's estimated
kernel and user memory must fit in 60% of MemAvailable).

As root, sets net.ipv4.ip_local_port_range to "1024 65535" and net.core.somaxconn to
65535 for the run and restores them after (printed); without root it uses what is set.

Writes OUT/scale.json and OUT/scale.svg (memory per connection and active p99 against
idle connections, log scales, one line per model).

  python3 scripts/scale.py                          # every model, up to 1,000,000
  python3 scripts/scale.py --max 2000 --out target/scale-ci   # CI: 1,000 and 2,000
  python3 scripts/scale.py --models reactor,uring --steps 1000,10000
  python3 scripts/scale.py --vs-ref 10000 --rounds 5   # establish rate vs ref_epoll
  python3 scripts/scale.py --self-test                 # the parsers, on known text

--vs-ref N alternates echolab serve (reactor, uring; one process, --workers 1) and the C
reference ../shared/bench's ref_epoll (-t 1) holding N idle connections (one
`echolab bench --hold N --active 0` each time), --rounds times, and reports each
contender's median establish rate, its ratio to ref_epoll's, the listen-queue drops and
the load average (OUT/vs-ref.json). The issue's target: at least 0.9x for N <= 19,000.

Exit status: 0 when the curve was measured (a model stopping at its limit is a result);
1 when a server failed to start (io_uring refused is not a failure), or, with --max, when
an event-driven model (event, reactor, uring, async) did not hold every step; 2 for bad
arguments.
"""

import argparse
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

MODELS = ["iterative", "process", "event", "thread", "prethreaded", "reactor", "uring", "async"]
STEPS = [1_000, 10_000, 100_000, 1_000_000]
PER_HOLDER = 19_000
PER_WORKER = 15_000
MULTI_PROCESS = {"reactor", "uring"}
EVENT_DRIVEN = {"event", "reactor", "uring", "async"}
# What one connection costs the kernel here (both ends, measured: ~5 KB per socket), and
# a generous user-space figure per model, for the memory guard.
KERNEL_PER_CONN = 10_000
USER_PER_CONN = {"process": 120_000, "thread": 90_000}
SYSCTLS = {
    "/proc/sys/net/ipv4/ip_local_port_range": "1024\t65535",
    "/proc/sys/net/core/somaxconn": "65535",
}


def read(path, default=""):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def meminfo_kib(key):
    m = re.search(rf"^{key}:\s+(\d+) kB", read("/proc/meminfo"), re.M)
    return int(m.group(1)) if m else 0


def sockstat():
    out = {}
    for line in read("/proc/net/sockstat").splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        out[name] = {fields[i]: int(fields[i + 1]) for i in range(0, len(fields) - 1, 2)}
    return out


def listen_counters(text=None):
    """TcpExt ListenOverflows and ListenDrops from /proc/net/netstat's text (a line of
    names, then a line of values), or None when either is missing."""
    if text is None:
        text = read("/proc/net/netstat")
    lines = text.splitlines()
    for names, values in zip(lines, lines[1:]):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            pairs = dict(zip(names.split()[1:], values.split()[1:]))
            try:
                return {"ListenOverflows": int(pairs["ListenOverflows"]),
                        "ListenDrops": int(pairs["ListenDrops"])}
            except (KeyError, ValueError):
                return None
    return None


def growth(before, after):
    """Per-counter growth from before to after (None when either is unknown)."""
    if before is None or after is None:
        return None
    return {k: after[k] - before[k] for k in before}


def ratio(p99, p99_none):
    """The active p99 beside the idle connections over the p99 with none held."""
    if not p99 or not p99_none:
        return None
    return round(p99 / p99_none, 2)


def tasks_in_use():
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                n += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return n


def family(pid):
    """pid and its descendants."""
    out, i = [pid], 0
    while i < len(out):
        p = out[i]
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                out += [int(c) for c in read(f"/proc/{p}/task/{task}/children").split()]
        except OSError:
            pass
        i += 1
    return out


def mem_kib(pids):
    rss = pss = 0
    for p in pids:
        text = read(f"/proc/{p}/smaps_rollup")
        m = re.search(r"^Rss:\s+(\d+)", text, re.M)
        rss += int(m.group(1)) if m else 0
        # Anonymous PSS: the holders run the same executable, and its shared text would
        # otherwise be divided among more processes after than before.
        m = re.search(r"^Pss_Anon:\s+(\d+)", text, re.M) or re.search(r"^Pss:\s+(\d+)", text, re.M)
        pss += int(m.group(1)) if m else 0
    return rss, pss


def cpu_ticks(pids):
    total = 0
    for p in pids:
        stat = read(f"/proc/{p}/stat")
        if stat:
            fields = stat[stat.rfind(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
    return total


class Server:
    def __init__(self, binary, model, max_conns, processes, workers=None):
        args = [binary, "serve", "--model", model, "--listen", "127.0.0.1:0", "--quiet",
                "--idle-timeout", "0", "--max-conns", str(max_conns)]
        if processes:
            args += ["--processes", str(processes), "--workers", "1"]
        elif workers:
            args += ["--workers", str(workers)]
        # The log goes to a file: a pipe nobody reads would stop the server when full.
        self.log_file = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.log_file, text=True)
        self.addr = None
        self.log = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.addr is None:
            self.log_file.seek(0)
            self.log = self.log_file.read().splitlines()
            for line in self.log:
                if line.startswith("listening on "):
                    self.addr = line.split()[2]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if self.addr is None:
            self.stop()
            raise RuntimeError("server did not start: " + " | ".join(self.log[-3:]))

    def pids(self):
        return family(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RefServer(Server):
    """The C reference server (ref_epoll -p PORT -t THREADS) on a free loopback port."""

    def __init__(self, path, threads):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.log_file = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([path, "-p", str(port), "-t", str(threads)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.log_file)
        self.addr = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{path} did not listen on {self.addr}")


def hold_once(binary, addr, n, sources):
    """One `bench --hold n --active 0`: its hold document, or None and why."""
    out = subprocess.run([binary, "bench", addr, "--hold", str(n), "--active", "0",
                          "--duration", "0.2", "--connect-timeout", "30", "--json",
                          "--source-ip", sources],
                         capture_output=True, text=True, timeout=300)
    try:
        doc = json.loads(out.stdout)
    except ValueError:
        return None, out.stderr.strip()[-300:]
    hold = doc.get("hold")
    if not hold:
        return None, doc.get("error") or "no hold in the report"
    return hold, None


def vs_ref(args):
    """Alternates reactor, uring and ref_epoll holding args.vs_ref idle connections."""
    contenders = ["reactor", "uring", "ref_epoll"]
    rates = {c: [] for c in contenders}
    drops = {c: [] for c in contenders}
    round_of = {c: [] for c in contenders}
    notes = {}
    loads = [read("/proc/loadavg").split()[:3]]
    for rnd in range(args.rounds):
        for ci, c in enumerate(contenders):
            if c in notes:
                continue
            try:
                if c == "ref_epoll":
                    server = RefServer(args.ref, 1)
                else:
                    server = Server(args.bin, c, args.vs_ref + 1_000, None, workers=1)
            except RuntimeError as err:
                notes[c] = f"did not start: {err}"
                continue
            try:
                # Addresses of this round's and contender's own: no TIME_WAIT in the way.
                sources = f"127.{10 + rnd}.{1 + ci}.1-127.{10 + rnd}.{1 + ci}.2"
                hold, err = hold_once(args.bin, server.addr, args.vs_ref, sources)
            finally:
                server.stop()
            if hold is None or hold.get("established") != args.vs_ref:
                notes[c] = f"round {rnd + 1}: " + (err or f"held {hold.get('established')} of {args.vs_ref}: {hold.get('first_error')}")
                continue
            rates[c].append(hold["connect_rate"])
            round_of[c].append(rnd)
            drops[c].append((hold.get("listen_overflows"), hold.get("listen_drops")))
            print(f"round {rnd + 1} {c:9} {hold['connect_rate']:>9.0f} connections/s "
                  f"(listen overflows {hold.get('listen_overflows')}, drops {hold.get('listen_drops')})",
                  file=sys.stderr)
            time.sleep(0.5)
        loads.append(read("/proc/loadavg").split()[:3])
    ref = statistics.median(rates["ref_epoll"]) if rates["ref_epoll"] else None
    ref_by_round = dict(zip(round_of["ref_epoll"], rates["ref_epoll"]))
    rows = []
    for c in contenders:
        med = statistics.median(rates[c]) if rates[c] else None
        # Paired: each round's rate over ref_epoll's of the same round (the machine's
        # load drifts between rounds more than within one).
        paired = [r / ref_by_round[k] for k, r in zip(round_of[c], rates[c]) if k in ref_by_round]
        rows.append({"contender": c, "rounds": len(rates[c]), "rates": [round(r) for r in rates[c]],
                     "median_connections_per_sec": med and round(med),
                     "ratio_to_ref_epoll": round(med / ref, 3) if med and ref else None,
                     "paired_ratios": [round(r, 3) for r in paired],
                     "median_paired_ratio": round(statistics.median(paired), 3) if paired else None,
                     "listen_overflows_drops": drops[c], "note": notes.get(c)})
    doc = {"idle": args.vs_ref, "rounds": args.rounds, "load_average": loads, "rows": rows,
           "target": "ratio_to_ref_epoll >= 0.9 (one process, <= 19,000 connections)"}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "vs-ref.json"), "w") as f:
        json.dump(doc, f, indent=2)
    print(f"establish rate holding {args.vs_ref} idle connections, {args.rounds} alternations "
          f"(load average {' -> '.join('/'.join(l) for l in (loads[0], loads[-1]))})")
    for row in rows:
        print(f"  {row['contender']:9} median {row['median_connections_per_sec'] or '-'!s:>8} connections/s  "
              f"ratio to ref_epoll {row['ratio_to_ref_epoll'] or '-'!s:>6} (median of the rounds' "
              f"ratios {row['median_paired_ratio'] or '-'!s})  rates {row['rates']}"
              + (f"  ({row['note']})" if row["note"] else ""))
    print(f"wrote {args.out}/vs-ref.json")
    # uring may be refused here (no io_uring): that is a note, not a failure.
    return 0 if rates["ref_epoll"] and rates["reactor"] else 1


def self_test():
    """The parsers and ratios on known text; exit 1 on the first wrong answer."""
    text = ("TcpExt: SyncookiesSent TW ListenOverflows ListenDrops TCPHPHits\n"
            "TcpExt: 123 5671280 4131 4132 289653897\n"
            "IpExt: InNoRoutes ListenOverflows\n"
            "IpExt: 0 77\n")
    checks = [
        (listen_counters(text), {"ListenOverflows": 4131, "ListenDrops": 4132}),
        (listen_counters("IpExt: ListenOverflows ListenDrops\nIpExt: 1 2\n"), None),
        (listen_counters("TcpExt: ListenOverflows\nTcpExt: 5\n"), None),
        (listen_counters("TcpExt: ListenOverflows ListenDrops\n"), None),
        (growth({"ListenOverflows": 4131, "ListenDrops": 4132},
                {"ListenOverflows": 4200, "ListenDrops": 4132}),
         {"ListenOverflows": 69, "ListenDrops": 0}),
        (growth(None, {"ListenOverflows": 1, "ListenDrops": 1}), None),
        (ratio(300.0, 150.0), 2.0),
        (ratio(None, 150.0), None),
        (ratio(300.0, 0), None),
        (listen_counters() is not None, os.path.exists("/proc/net/netstat")),
    ]
    for i, (got, want) in enumerate(checks):
        if got != want:
            print(f"scale.py --self-test: check {i}: got {got!r}, want {want!r}", file=sys.stderr)
            return 1
    print(f"scale.py --self-test: {len(checks)} checks passed")
    return 0


def active_p99(binary, addr, secs):
    out = subprocess.run([binary, "bench", addr, "--conns", "64", "--threads", "1",
                          "--duration", str(secs), "--warmup", "0.3", "--interval", "0", "--json"],
                         capture_output=True, text=True, timeout=120)
    try:
        doc = json.loads(out.stdout)
    except ValueError:
        return None, out.stderr.strip()[-200:]
    return doc.get("p99_us"), doc.get("error")


def hold(binary, addr, n, step_idx, timeout):
    """Starts holder processes for n connections; returns (holders, seconds, failure)."""
    holders = []
    t0 = time.monotonic()
    count = math.ceil(n / PER_HOLDER)
    for k in range(count):
        share = n // count + (1 if k < n % count else 0)
        # Addresses of this holder's own: no two holders (or steps) share a port space.
        o2, o3 = 1 + step_idx % 100 + 100 * (k // 254), k % 254 + 1
        sources = f"127.{o2}.{o3}.1-127.{o2}.{o3}.2"
        p = subprocess.Popen([binary, "bench", addr, "--hold", str(share), "--active", "0",
                              "--duration", "86400", "--connect-timeout", "30", "--json",
                              "--source-ip", sources],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        holders.append((p, share))
    failure = None
    deadline = time.monotonic() + timeout
    for p, share in holders:
        while True:
            if time.monotonic() > deadline:
                failure = f"not established within {timeout:.0f} s"
                break
            line = p.stderr.readline()
            if not line:
                failure = "a holder exited: " + (p.stdout.read() or "")[-300:].replace("\n", " ")
                break
            m = re.match(r"held (\d+) of (\d+) connections \((\d+) failed\)", line)
            if m:
                if int(m.group(1)) != share:
                    failure = line.strip()
                break
        if failure:
            break
    return holders, time.monotonic() - t0, failure


def release(holders):
    docs = []
    for p, _ in holders:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p, _ in holders:
        try:
            out, _ = p.communicate(timeout=120)
            docs.append(json.loads(out).get("hold", {}))
        except (subprocess.TimeoutExpired, ValueError):
            p.kill()
            p.wait()
    return docs


def guard(model, n, processes):
    """Why step n must not run for model, or None."""
    avail = meminfo_kib("MemAvailable") * 1024
    need = n * (KERNEL_PER_CONN + USER_PER_CONN.get(model, 2_000))
    if need > avail * 0.6:
        return f"memory: about {need / 2**30:.1f} GiB needed, {avail / 2**30:.1f} GiB available (guard: 60%)"
    pid_max = int(read("/proc/sys/kernel/pid_max", "32768"))
    if model in ("thread", "process"):
        in_use = tasks_in_use()
        if in_use + n > pid_max - 4_000:
            return f"pids: {n} more tasks beside {in_use} in use exceed kernel.pid_max {pid_max} less 4000"
    if not processes:
        soft = int(subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True, text=True).stdout or 0)
        if n + 100 > soft:
            return f"descriptors: one process may open {soft} (hard RLIMIT_NOFILE), {n} connections need more"
    return None


def set_sysctls():
    saved = {}
    if os.geteuid() != 0:
        print("not root: sysctls left as they are", file=sys.stderr)
        return saved
    for path, value in SYSCTLS.items():
        old = read(path).strip()
        try:
            with open(path, "w") as f:
                f.write(value)
            saved[path] = old
            print(f"set {path} = {value!r} (was {old!r})", file=sys.stderr)
        except OSError as err:
            print(f"cannot set {path}: {err}", file=sys.stderr)
    return saved


def restore_sysctls(saved):
    for path, old in saved.items():
        try:
            with open(path, "w") as f:
                f.write(old)
            print(f"restored {path} = {old!r}", file=sys.stderr)
        except OSError as err:
            print(f"cannot restore {path}: {err}", file=sys.stderr)


def run_model(args, model):
    result = {"model": model, "steps": [], "held_up_to": 0, "stopped": None}
    try:
        base_server = Server(args.bin, model, 1_000, None)
    except RuntimeError as err:
        result["stopped"] = f"did not start: {err}"
        return result
    p99, err = active_p99(args.bin, base_server.addr, args.active_secs)
    result["active_p99_us_none_held"] = p99
    base_server.stop()
    for step_idx, n in enumerate(args.steps):
        processes = math.ceil(n / PER_WORKER) if model in MULTI_PROCESS and n > PER_WORKER else None
        why = guard(model, n, processes)
        if why:
            result["stopped"] = f"at {n}: {why}"
            break
        print(f"{model}: {n} idle connections{f' ({processes} processes)' if processes else ''}...",
              file=sys.stderr)
        max_conns = min(int(n * 1.2) + 1_000, 1 << 20)
        try:
            server = Server(args.bin, model, max_conns, processes)
        except RuntimeError as err:
            result["stopped"] = f"at {n}: {err}"
            break
        time.sleep(0.3)
        pids = server.pids()
        rss0, pss0 = mem_kib(pids)
        slab0, sock0 = meminfo_kib("Slab"), sockstat()
        # The same server empty first: with --processes its workers split the 64 active
        # connections differently from the one-process baseline, which a ratio to that
        # baseline would blame on the idle connections.
        p99_empty, _ = active_p99(args.bin, server.addr, args.active_secs)
        listen0 = listen_counters()
        holders, secs, failure = hold(args.bin, server.addr, n, step_idx, 60 + n / 2_000)
        listen = growth(listen0, listen_counters())
        step = {"idle": n, "processes": processes or 1, "establish_secs": round(secs, 3),
                "connect_rate": round(n / secs, 1) if secs > 0 else None,
                "listen_overflows": listen and listen["ListenOverflows"],
                "listen_drops": listen and listen["ListenDrops"],
                "active_p99_us_same_server_empty": p99_empty}
        if failure is None:
            pids = server.pids()
            rss1, pss1 = mem_kib(pids)
            slab1, sock1 = meminfo_kib("Slab"), sockstat()
            t0, c0 = time.monotonic(), cpu_ticks(pids)
            time.sleep(args.idle_secs)
            c1, t1 = cpu_ticks(pids), time.monotonic()
            hz = os.sysconf("SC_CLK_TCK")
            p99, err = active_p99(args.bin, server.addr, args.active_secs)
            step.update({
                "server_processes": len(pids),
                "rss_bytes_per_conn": round((rss1 - rss0) * 1024 / n, 1),
                "pss_anon_bytes_per_conn": round((pss1 - pss0) * 1024 / n, 1),
                "server_rss_kib": rss1, "server_pss_kib": pss1,
                "slab_kib_before": slab0, "slab_kib_after": slab1,
                "slab_bytes_per_conn": round((slab1 - slab0) * 1024 / n, 1),
                "sockstat_before": sock0, "sockstat_after": sock1,
                "idle_cpu_percent": round(100 * (c1 - c0) / hz / (t1 - t0), 2),
                "active_p99_us": p99,
                "active_p99_ratio_to_none": ratio(p99, result["active_p99_us_none_held"]),
                "active_p99_ratio_to_same_server_empty": ratio(p99, p99_empty),
                "active_error": err,
            })
        docs = release(holders)
        # "held" sums the holders' final JSON; a holder that did not report in time is
        # counted in holders_unreported (its "held N of N" line was checked above).
        step["holders"] = len(holders)
        step["holders_unreported"] = len(holders) - len(docs)
        step["held"] = sum(d.get("established", 0) for d in docs)
        step["failed"] = sum(d.get("failed", 0) for d in docs)
        step["still_open"] = sum(d.get("still_open", 0) for d in docs)
        server.stop()
        result["steps"].append(step)
        if failure is not None:
            kinds = {}
            for d in docs:
                for k, v in (d.get("failed_by_kind") or {}).items():
                    kinds[k] = kinds.get(k, 0) + v
            first = next((d["first_error"] for d in docs if d.get("first_error")), None)
            result["stopped"] = f"at {n}: {failure}; failed by kind {kinds}; first: {first}"
            break
        result["held_up_to"] = n
        # Let the closed connections' TIME_WAIT and the server's exit settle.
        time.sleep(1)
    return result


def svg(results, path):
    """Two log-log panels: user memory per connection and active p99, against idle count."""
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    w, h, pad = 460, 320, 60
    panels = [("pss_anon_bytes_per_conn", "server anonymous PSS per idle connection (bytes)"),
              ("active_p99_us", "p99 of 64 active conns (us)")]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{h + 40}" font-family="sans-serif" font-size="11">']
    xs = [1e3, 1e6]
    for pi, (key, title) in enumerate(panels):
        ox = pi * w
        values = [s[key] for r in results for s in r["steps"] if s.get(key) and s[key] > 0]
        lo = 10 ** math.floor(math.log10(min(values))) if values else 1
        hi = 10 ** math.ceil(math.log10(max(values))) if values else 10
        if hi <= lo:
            hi = lo * 10

        def px(x):
            return ox + pad + (math.log10(x) - 3) / 3 * (w - 2 * pad)

        def py(y):
            return h - pad + 20 - (math.log10(y) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * (h - 2 * pad)

        parts.append(f'<text x="{ox + w / 2}" y="16" text-anchor="middle" font-size="13">{title}</text>')
        parts.append(f'<rect x="{ox + pad}" y="{py(hi)}" width="{w - 2 * pad}" height="{py(lo) - py(hi)}" fill="none" stroke="#999"/>')
        for e in range(3, 7):
            x = px(10 ** e)
            parts.append(f'<line x1="{x}" y1="{py(lo)}" x2="{x}" y2="{py(hi)}" stroke="#eee"/>')
            parts.append(f'<text x="{x}" y="{py(lo) + 14}" text-anchor="middle">{10 ** e:,}</text>')
        e = math.log10(lo)
        while e <= math.log10(hi) + 1e-9:
            y = py(10 ** e)
            parts.append(f'<text x="{ox + pad - 4}" y="{y + 4}" text-anchor="end">{10 ** e:g}</text>')
            e += 1
        parts.append(f'<text x="{ox + w / 2}" y="{h + 10}" text-anchor="middle">idle connections (log)</text>')
        for mi, r in enumerate(results):
            pts = [(s["idle"], s[key]) for s in r["steps"] if s.get(key) and s[key] > 0]
            c = colors[mi % len(colors)]
            if len(pts) > 1:
                d = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
                parts.append(f'<polyline points="{d}" fill="none" stroke="{c}" stroke-width="2"/>')
            for x, y in pts:
                parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{c}"/>')
            if pi == 0:
                parts.append(f'<text x="{ox + pad + 6}" y="{h + 26 - 0}" fill="{c}" transform="translate({mi * 55},0)">{r["model"]}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS),
                    help="comma-separated models to measure (default: %(default)s)")
    ap.add_argument("--steps", default=",".join(map(str, STEPS)),
                    help="idle connection counts, ascending; a model stops at the first it cannot hold "
                         "(default: %(default)s)")
    ap.add_argument("--max", type=int, help="small mode: steps 1000 and this (e.g. 2000 for CI)")
    ap.add_argument("--out", default="target/scale",
                    help="folder for scale.json and scale.svg (default: %(default)s)")
    ap.add_argument("--bin", default="target/release/echolab",
                    help="the echolab binary for server and holders (default: %(default)s)")
    ap.add_argument("--active-secs", type=float, default=3.0,
                    help="seconds the 64 active ping-pong connections are measured at each step (default: %(default)s)")
    ap.add_argument("--idle-secs", type=float, default=2.0,
                    help="seconds the idle server's CPU is sampled at each step (default: %(default)s)")
    ap.add_argument("--vs-ref", type=int, metavar="N",
                    help="instead of the curve: establish rate holding N idle connections, "
                         "reactor and uring against ref_epoll, alternated --rounds times")
    ap.add_argument("--rounds", type=int, default=5,
                    help="alternations for --vs-ref (default: %(default)s)")
    ap.add_argument("--ref", default="target/ref/ref_epoll",
                    help="the ref_epoll binary for --vs-ref (scripts/build-ref.sh builds it; "
                         "default: %(default)s)")
    ap.add_argument("--self-test", action="store_true",
                    help="check the /proc parsers on known text and exit")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        print(f"scale.py: unknown model {bad[0]!r} (models: {', '.join(MODELS)})", file=sys.stderr)
        return 2
    try:
        args.steps = sorted({int(s) for s in args.steps.split(",")})
    except ValueError:
        print(f"scale.py: --steps {args.steps!r}: not a list of whole numbers", file=sys.stderr)
        return 2
    if args.max is not None:
        if not 1 <= args.max <= 2_000_000:
            print(f"scale.py: --max {args.max}: between 1 and 2000000", file=sys.stderr)
            return 2
        args.steps = sorted({min(1_000, args.max), args.max})
        args.active_secs, args.idle_secs = 1.0, 1.0
    if any(n < 1 or n > 2_000_000 for n in args.steps):
        print("scale.py: --steps: each between 1 and 2000000", file=sys.stderr)
        return 2
    if not os.access(args.bin, os.X_OK):
        print(f"scale.py: {args.bin} is not built (cargo build --release -p echolab)", file=sys.stderr)
        return 2
    if args.vs_ref is not None:
        if not 1 <= args.vs_ref <= 19_000:
            print(f"scale.py: --vs-ref {args.vs_ref}: between 1 and 19000 (one process each)", file=sys.stderr)
            return 2
        if not 1 <= args.rounds <= 100:
            print(f"scale.py: --rounds {args.rounds}: between 1 and 100", file=sys.stderr)
            return 2
        if not os.access(args.ref, os.X_OK):
            print(f"scale.py: --ref {args.ref} is not an executable (scripts/build-ref.sh)", file=sys.stderr)
            return 2
        return vs_ref(args)
    os.makedirs(args.out, exist_ok=True)
    saved = set_sysctls()
    results = []
    try:
        for model in models:
            r = run_model(args, model)
            results.append(r)
            print(f"{model}: held up to {r['held_up_to']}; stopped: {r['stopped'] or 'no (every step held)'}",
                  file=sys.stderr)
    finally:
        restore_sysctls(saved)
    doc = {
        "machine": {"cores": os.cpu_count(), "mem_total_kib": meminfo_kib("MemTotal"),
                    "pid_max": int(read("/proc/sys/kernel/pid_max", "0") or 0),
                    "load_average": read("/proc/loadavg").split()[:3]},
        "sysctls_set": {p: SYSCTLS[p] for p in saved},
        "steps": args.steps,
        "models": results,
    }
    with open(os.path.join(args.out, "scale.json"), "w") as f:
        json.dump(doc, f, indent=2)
    svg(results, os.path.join(args.out, "scale.svg"))
    print(f"{'model':12} {'idle':>8} {'procs':>5} {'estab s':>8} {'conn/s':>8} {'RSS B/c':>8} {'PSSa B/c':>8} {'slab B/c':>8} {'idle cpu%':>9} {'p99 us':>8} {'p99/none':>8} {'p99/empty':>9} {'ovflows':>7} {'drops':>7}")
    for r in results:
        for s in r["steps"]:
            def dash(v):
                return "-" if v is None else v
            print(f"{r['model']:12} {s['idle']:>8} {s['processes']:>5} {s['establish_secs']:>8} "
                  f"{s.get('connect_rate') or 0:>8.0f} {s.get('rss_bytes_per_conn', '-')!s:>8} "
                  f"{s.get('pss_anon_bytes_per_conn', '-')!s:>8} {s.get('slab_bytes_per_conn', '-')!s:>8} "
                  f"{s.get('idle_cpu_percent', '-')!s:>9} {s.get('active_p99_us') or '-'!s:>8} "
                  f"{dash(s.get('active_p99_ratio_to_none'))!s:>8} "
                  f"{dash(s.get('active_p99_ratio_to_same_server_empty'))!s:>9} {dash(s.get('listen_overflows'))!s:>7} "
                  f"{dash(s.get('listen_drops'))!s:>7}")
        print(f"{r['model']:12} p99 with none held: {r.get('active_p99_us_none_held')} us; "
              f"held up to {r['held_up_to']}; stopped: {r['stopped'] or '-'}")
        last = next((s for s in reversed(r["steps"]) if s.get("active_p99_us")), None)
        if last:
            print(f"{r['model']:12} active p99 with {last['idle']} idle: {last['active_p99_us']} us = "
                  f"{last.get('active_p99_ratio_to_none')}x the p99 with none held, "
                  f"{last.get('active_p99_ratio_to_same_server_empty')}x the same server's empty "
                  f"(target: at most 2x)")
    print(f"wrote {args.out}/scale.json and {args.out}/scale.svg")
    failed = [r for r in results if r["stopped"] and "did not start" in r["stopped"]
              and "cannot run here" not in r["stopped"]]
    if args.max is not None:
        # Small mode is a check: every event-driven model holds every step.
        failed += [r for r in results if r["model"] in EVENT_DRIVEN and r["stopped"]
                   and "cannot run here" not in r["stopped"]]
    for r in failed:
        print(f"scale.py: {r['model']} failed: {r['stopped']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
