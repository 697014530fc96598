#!/usr/bin/env python3
"""Does --metrics cost the echo path anything? (issue 11)

Runs `echolab serve --model reactor` with and without `--metrics`, alternately, under the
same `echolab bench` load (closed loop, and connection churn, which touches the counters
at every open and close); with metrics on, a scraper GETs /metrics 10 times a second
throughout. Prints per-round figures, the medians and the on/off ratios, with the load
average beside them. Server CPU per message (utime+stime from /proc) is the figure to
trust on a shared machine; messages/s moves with the neighbours.

    scripts/bench-metrics.py [--echolab target/release/echolab] [--rounds 3] [--secs 3]
"""
import argparse, json, os, re, statistics, subprocess, threading, time, urllib.request

def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])

def serve(echolab, metrics):
    cmd = [echolab, "serve", "--model", "reactor", "--listen", "127.0.0.1:0", "--quiet", "--workers", "1"]
    if metrics:
        cmd += ["--metrics", "127.0.0.1:0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    addr, url = None, None
    while addr is None:
        line = proc.stderr.readline()
        if not line:
            raise SystemExit("server exited: " + (proc.stderr.read() or ""))
        m = re.match(r"metrics on (http://\S+)", line)
        if m:
            url = m.group(1)
        m = re.match(r"listening on (\S+)", line)
        if m:
            addr = m.group(1)
    return proc, addr, url

def scrape(url, stop, count):
    while not stop.is_set():
        with urllib.request.urlopen(url, timeout=5) as r:
            r.read()
        count[0] += 1
        stop.wait(0.1)

def run(echolab, metrics, workload, secs):
    proc, addr, url = serve(echolab, metrics)
    stop, count = threading.Event(), [0]
    scraper = threading.Thread(target=scrape, args=(url, stop, count)) if url else None
    if scraper:
        scraper.start()
    before = cpu_ticks(proc.pid)
    extra = ["--churn", "-c", "16"] if workload == "churn" else ["-c", "64"]
    out = subprocess.run([echolab, "bench", addr, "-d", str(secs), "-w", "0.5", "--json", "-t", "1"] + extra,
                         capture_output=True, text=True)
    ticks = cpu_ticks(proc.pid) - before
    stop.set()
    if scraper:
        scraper.join()
    proc.terminate(); proc.wait()
    doc = json.loads(out.stdout)
    rate = doc.get("connections_per_sec") if workload == "churn" else None
    rate = rate or doc.get("messages_per_sec") or doc.get("rate") or doc["throughput"]["messages_per_sec"]
    done = rate * secs
    hz = os.sysconf("SC_CLK_TCK")
    return rate, ticks / hz / done * 1e6, count[0]

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--echolab", default="target/release/echolab")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secs", type=float, default=3)
    args = ap.parse_args()
    for workload in ["closed", "churn"]:
        results = {False: [], True: []}
        for rnd in range(args.rounds):
            for metrics in [False, True]:
                rate, us, scrapes = run(args.echolab, metrics, workload, args.secs)
                results[metrics].append((rate, us))
                print(f"{workload} round {rnd + 1} metrics {'on ' if metrics else 'off'}: {rate:,.0f}/s, server CPU {us:.2f} us per {'connection' if workload == 'churn' else 'message'}, {scrapes} scrapes", flush=True)
        med = {m: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for m, v in results.items()}
        print(f"ROW {workload}: metrics off {med[False][0]:,.0f}/s {med[False][1]:.2f} us; on {med[True][0]:,.0f}/s {med[True][1]:.2f} us; "
              f"on/off rate {med[True][0] / med[False][0]:.3f}, CPU {med[True][1] / med[False][1]:.3f}; load average {os.getloadavg()[0]:.2f}")

main()
