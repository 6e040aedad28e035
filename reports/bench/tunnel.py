#!/usr/bin/env python3
"""beam's tunnel side by side with raw TCP and bore, on loopback. Run by tunnel.sh.

Cases: (a) straight to the origin, (b) through bore (server and client local), (c) a direct beam
tunnel, (d) a beam tunnel through one relay (--strategy geographic), (e) a multi-hop beam tunnel
through two relays (--strategy multi-hop). Each tunnel case gets fresh processes, so its memory
and CPU figures are its own. For each: throughput of BYTES in 1 and in 8 streams, `GET /`
latency at a fixed rate, the most requests/s with 64 connections, CPU seconds per GiB and peak
memory of the tunnel's processes, and for beam the time from `beam connect` start to first byte
(cold) and for a later connection (warm).

Environment: BEAM, BEAM_BENCH, BORE, OHA (the programs), BENCH_BYTES (1 GiB), BENCH_RATE (200
req/s), BENCH_SECONDS (10), BENCH_CSV (where the table goes as CSV).
"""

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

BEAM = os.environ["BEAM"]
BENCH = os.environ["BEAM_BENCH"]
BORE = os.environ["BORE"]
OHA = os.environ["OHA"]
BYTES = int(os.environ.get("BENCH_BYTES", 1 << 30))
RATE = int(os.environ.get("BENCH_RATE", 200))
SECONDS = int(os.environ.get("BENCH_SECONDS", 10))
CSV = os.environ.get("BENCH_CSV", "")
GIB = 1 << 30
TICK = os.sysconf("SC_CLK_TCK")
LOOPBACK = "/ip4/127.0.0.1/tcp/0"

work = tempfile.mkdtemp(prefix="beam-bench-")
procs = []


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name, argv):
    """Starts argv with its output in WORK/name.log; returns (Popen, log path)."""
    path = os.path.join(work, f"{name}.log")
    p = subprocess.Popen(argv, stdout=open(path, "w"), stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    procs.append(p)
    return p, path


def wait_for(path, pattern, timeout=60):
    """The first line of the log at `path` matching `pattern` (a regex)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(path) as f:
            for line in f:
                if re.search(pattern, line):
                    return line.strip()
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for /{pattern}/ in {path}:\n" + open(path).read())


def stop(ps):
    for p in ps:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in ps:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def mem_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def oha(port, extra):
    out = subprocess.run(
        [OHA, "--no-tui", "--output-format", "json", "-z", f"{SECONDS}s", *extra,
         f"http://127.0.0.1:{port}/"],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def measure(name, port, named):
    """Every figure of one case whose local entry point is `port`; `named` maps a role to the
    pid of each process the traffic may go through (none for the straight case)."""
    pids = list(named.values())
    row = {"case": name}
    idle = {role: mem_kib(pid, "VmRSS") / 1024 for role, pid in named.items()}
    if pids:
        row["idle_rss_mib"] = round(max(idle.values()), 1)
    cpu0 = cpu_seconds(pids)
    log(f"  {name}: {BYTES >> 20} MiB, one stream")
    one = json.loads(subprocess.run([BENCH, "get", "--port", str(port), "--bytes", str(BYTES),
                                     "--streams", "1"], check=True, capture_output=True,
                                    text=True).stdout)
    cpu1 = cpu_seconds(pids)
    row["mib_s_1"] = round(one["mib_per_s"], 1)
    row["cpu_s_per_gib"] = round((cpu1 - cpu0) / (BYTES / GIB), 2) if pids else ""
    log(f"  {name}: {BYTES >> 20} MiB, 8 streams")
    eight = json.loads(subprocess.run([BENCH, "get", "--port", str(port), "--bytes", str(BYTES),
                                       "--streams", "8"], check=True, capture_output=True,
                                      text=True).stdout)
    row["mib_s_8"] = round(eight["mib_per_s"], 1)
    log(f"  {name}: GET / at {RATE}/s for {SECONDS} s")
    lat = oha(port, ["-q", str(RATE), "-c", "4"])
    pct = lat["latencyPercentiles"]
    row["p50_ms"] = round(pct["p50"] * 1e3, 3)
    row["p99_ms"] = round(pct["p99"] * 1e3, 3)
    row["ok_share"] = round(lat["summary"]["successRate"], 4)
    log(f"  {name}: GET / flat out, 64 connections, {SECONDS} s")
    rps = oha(port, ["-c", "64"])
    row["max_rps"] = round(rps["summary"]["requestsPerSec"])
    if pids:
        row["peak_rss_mib"] = round(max(mem_kib(p, "VmHWM") for p in pids) / 1024, 1)
        row["memory"] = "; ".join(
            f"{role} {idle[role]:.1f} idle / {mem_kib(pid, 'VmHWM') / 1024:.1f} peak"
            for role, pid in named.items())
    return row


def beam_common(state):
    return ["--allow-private-addrs", "--no-mdns", "--listen", LOOPBACK,
            "--state-dir", os.path.join(work, state)]


def beam_case(name, strategy, origin):
    """A fresh beam network (bootstrap peer, two relays, the service), then `beam connect`."""
    tag = name
    boot, boot_log = start(f"{tag}-boot", [BEAM, "node", "--p2p-full", "--relay-rate", "0",
                                           *beam_common(f"{tag}-boot")])
    boot_addr = wait_for(boot_log, r"^listening /ip4/127\.0\.0\.1/.*/p2p/").split()[1]
    relays = []
    for i in range(2):
        r, r_log = start(f"{tag}-relay{i}", [BEAM, "node", "--p2p-routing", "--relay-rate", "0",
                                             "--bootstrap", boot_addr,
                                             *beam_common(f"{tag}-relay{i}")])
        wait_for(r_log, "joined the network")
        relays.append(r)
    svc, svc_log = start(f"{tag}-service", [BEAM, str(origin), "--name", "bench",
                                            "--relay-rate", "0", "--bootstrap", boot_addr,
                                            *beam_common(f"{tag}-service")])
    wait_for(svc_log, "published name bench")
    port = free_port()
    out = subprocess.run(
        [BENCH, "first-byte", "--port", str(port), "--log", os.path.join(work, f"{tag}-client.log"),
         "--", BEAM, "connect", "bench", "--port", str(port), "--strategy", strategy,
         "--no-tor", "--relay-rate", "0", "--bootstrap", boot_addr,
         *beam_common(f"{tag}-client")],
        check=True, capture_output=True, text=True).stdout
    fb = json.loads(out)
    route = wait_for(os.path.join(work, f"{tag}-client.log"), r"^route ")
    log(f"  {name}: {route}; cold first byte {fb['cold_ms']:.1f} ms, warm {fb['warm_ms']:.2f} ms")
    client_pid = fb["pid"]
    named = {"client": client_pid, "service": svc.pid, "bootstrap": boot.pid,
             "relay 1": relays[0].pid, "relay 2": relays[1].pid}
    # The service and client idle: what `beam <PORT>` costs doing nothing.
    time.sleep(2)
    svc_idle = mem_kib(svc.pid, "VmRSS") / 1024
    row = measure(name, port, named)
    row["service_idle_rss_mib"] = round(svc_idle, 1)
    row["cold_first_byte_ms"] = round(fb["cold_ms"], 1)
    row["warm_first_byte_ms"] = round(fb["warm_ms"], 2)
    row["route"] = route.removeprefix("route ")
    os.kill(client_pid, signal.SIGTERM)
    stop([svc, *relays, boot])
    return row


def bore_case(origin):
    """bore's server (control port 7835, tunnels on loopback) and `bore local` to it."""
    server, s_log = start("bore-server", [BORE, "server", "--bind-addr", "127.0.0.1",
                                          "--min-port", "20000", "--max-port", "29999"])
    wait_for(s_log, "server listening")
    remote = free_port_in(20000, 29999)
    client, c_log = start("bore-local", [BORE, "local", str(origin), "--local-host", "127.0.0.1",
                                         "--to", "127.0.0.1", "--port", str(remote)])
    wait_for(c_log, "listening at")
    row = measure("bore", remote, {"bore server": server.pid, "bore local": client.pid})
    stop([client, server])
    return row


def free_port_in(lo, hi):
    for port in range(lo, hi):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise SystemExit("no free port")


def main():
    origin = free_port()
    o, o_log = start("origin", [BENCH, "serve", "--port", str(origin)])
    wait_for(o_log, "serving on")
    rows = []
    try:
        log("(a) straight to the origin")
        rows.append(measure("raw TCP", origin, {}))
        log("(b) bore")
        rows.append(bore_case(origin))
        for name, strategy in [("beam direct", "direct"), ("beam 1 relay", "geographic"),
                               ("beam 2 relays", "multi-hop")]:
            log(f"({'cde'[len(rows) - 2]}) {name}")
            rows.append(beam_case(name, strategy, origin))
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)
    report(rows)


COLUMNS = [
    ("case", "case"), ("mib_s_1", "MiB/s 1 stream"), ("mib_s_8", "MiB/s 8 streams"),
    ("p50_ms", f"p50 ms @{RATE}/s"), ("p99_ms", f"p99 ms @{RATE}/s"),
    ("max_rps", "max req/s (64 conn)"), ("cold_first_byte_ms", "cold first byte ms"),
    ("warm_first_byte_ms", "warm first byte ms"), ("service_idle_rss_mib", "idle beam <PORT> MiB"),
    ("peak_rss_mib", "peak RSS MiB"), ("cpu_s_per_gib", "CPU s/GiB"),
]


def report(rows):
    print("| " + " | ".join(h for _, h in COLUMNS) + " |")
    print("|" + "|".join("---" if k == "case" else "---:" for k, _ in COLUMNS) + "|")
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k, _ in COLUMNS) + " |")
    print()
    for r in rows:
        if "route" in r:
            print(f"{r['case']}: route {r['route']}")
    for r in rows:
        if "memory" in r:
            print(f"{r['case']}, resident MiB: {r['memory']}")
    if CSV:
        keys = [k for k, _ in COLUMNS] + ["idle_rss_mib", "ok_share", "route", "memory"]
        with open(CSV, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    by = {r["case"]: r for r in rows}
    raw, bore, d = by["raw TCP"], by["bore"], by["beam direct"]
    one, two = by["beam 1 relay"], by["beam 2 relays"]
    checks = [
        ("direct throughput ≥ 1.0× bore's (aim; floor 0.5×)", d["mib_s_1"] / bore["mib_s_1"], 1.0),
        ("relayed ≥ 0.5× direct", one["mib_s_1"] / d["mib_s_1"], 0.5),
        ("multi-hop ≥ 0.3× direct", two["mib_s_1"] / d["mib_s_1"], 0.3),
        ("max req/s ≥ bore's", d["max_rps"] / bore["max_rps"], 1.0),
    ]
    print()
    for r in rows:
        if r["ok_share"] < 1:
            print(f"FAIL  {r['case']}: only {r['ok_share'] * 100:.2f} % of the latency run's requests succeeded")
    for what, ratio, target in checks:
        print(f"{'met ' if ratio >= target else 'MISS'}  {what}: {ratio:.2f}×")
    added = d["p50_ms"] - raw["p50_ms"]
    print(f"{'met ' if added <= 1.0 else 'MISS'}  added p50 latency ≤ 1 ms: {added:.3f} ms")
    print(f"{'met ' if d['cold_first_byte_ms'] <= 500 else 'MISS'}  cold first byte ≤ 500 ms: "
          f"{d['cold_first_byte_ms']} ms")
    print(f"{'met ' if d['warm_first_byte_ms'] <= 5 else 'MISS'}  warm first byte ≤ 5 ms: "
          f"{d['warm_first_byte_ms']} ms")
    print(f"{'met ' if d['service_idle_rss_mib'] <= 30 else 'MISS'}  idle beam <PORT> ≤ 30 MiB: "
          f"{d['service_idle_rss_mib']} MiB")
    print(f"beam/bore throughput ratio: {d['mib_s_1'] / bore['mib_s_1']:.2f}")


if __name__ == "__main__":
    main()
