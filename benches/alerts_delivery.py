#!/usr/bin/env python3
"""Alert delivery benchmark: the agent as a process, a webhook receiver here.

1. Latency: 100 tcp probes watch 100 loopback ports; each port is closed in
   turn, so each probe's alert fires once. For each alert: the time from the
   status change the agent believed (the transition's time in the events
   table of the history file) to the webhook receiving the notification.
   Prints p50 and p99.
2. Drain: with the receiver down, the 100 probes go down and up 5 times
   (1,000 notifications queued in the outbox); then the receiver comes back.
   Prints the time to drain, notifications per second, and the agent's RSS
   and CPU while it drains.

Usage: benches/alerts_delivery.py [path/to/upkeep]   (default target/debug/upkeep)
Only the standard library; every file lives in a temporary directory.
"""

import http.server
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

N = 100
CYCLES = 5


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Receiver:
    def __init__(self, port):
        self.port, self.got, self.server = port, [], None

    def start(self):
        got = self.got

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(n))
                got.append((time.time(), body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class Targets:
    def __init__(self, n):
        # Held open from the start, so that the ports are distinct.
        self.socks = []
        for _ in range(n):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            s.listen(64)
            self.socks.append(s)
        self.ports = [s.getsockname()[1] for s in self.socks]

    def up(self, i):
        if self.socks[i] is None:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", self.ports[i]))
            s.listen(64)
            self.socks[i] = s

    def down(self, i):
        if self.socks[i] is not None:
            self.socks[i].close()
            self.socks[i] = None


def proc_figures(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return ticks / os.sysconf("SC_CLK_TCK"), rss


def wait(what, limit, cond):
    end = time.time() + limit
    while time.time() < end:
        if cond():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/debug/upkeep"
    tmp = tempfile.TemporaryDirectory(prefix="upkeep-bench-alerts-")
    d = tmp.name
    api, hook = free_port(), free_port()
    targets = Targets(N)
    cfg = [
        '[agent]\ninterval = "1s"\nfailure_threshold = 1\nsuccess_threshold = 1\n',
        f'[api]\nlisten = "127.0.0.1:{api}"\n',
        '[host]\nenabled = false\n',
        '[alerts]\nretry_max = "1s"\nmax_outbox = 2000\n',
        f'[notify.hook]\nkind = "webhook"\nurl = "http://127.0.0.1:{hook}/hook"\n',
        '[alert.down]\nwhen = "probe"\nnotify = ["hook"]\n',
    ]
    for i, p in enumerate(targets.ports):
        cfg.append(f'[probe.t{i}]\nkind = "tcp"\naddress = "127.0.0.1:{p}"\ntimeout = "500ms"\n')
    with open(f"{d}/agent.toml", "w") as f:
        f.write("\n".join(cfg))
    log = open(f"{d}/agent.log", "w")
    agent = subprocess.Popen(
        [binary, "run", "--config", f"{d}/agent.toml", "--data-dir", f"{d}/data"],
        stdout=subprocess.DEVNULL, stderr=log, env=dict(os.environ, UPKEEP_LOG="warn"),
    )
    receiver = Receiver(hook)
    receiver.start()
    try:
        db = f"{d}/data/history.db"
        wait("the agent", 30, lambda: os.path.exists(db))
        time.sleep(3)
        # 1. Latency over 100 alerts.
        for i in range(N):
            targets.down(i)
            time.sleep(0.1)
        wait("100 firing notifications", 120, lambda: len(receiver.got) >= N)
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        believed = {}
        for probe, ts in conn.execute(
            "SELECT probe, max(ts_ms) FROM events WHERE kind = 'status' AND to_status = 'unhealthy' GROUP BY probe"
        ):
            believed[probe] = ts / 1000.0
        lat = []
        for at, body in receiver.got[:N]:
            probe = body["labels"]["probe"]
            lat.append(at - believed[probe])
        lat.sort()
        p50 = statistics.median(lat)
        p99 = lat[min(len(lat) - 1, int(round(0.99 * len(lat))) - 1)]
        print(f"latency, status change believed -> webhook received, {len(lat)} alerts: "
              f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms")
        # 2. Drain after an outage with 1,000 queued notifications.
        for i in range(N):
            targets.up(i)
        wait("100 resolved notifications", 120, lambda: len(receiver.got) >= 2 * N)
        receiver.stop()
        outage = time.time()
        for c in range(CYCLES):
            for i in range(N):
                targets.down(i)
            time.sleep(3)
            for i in range(N):
                targets.up(i)
            time.sleep(3)

        def queued():
            return sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute(
                "SELECT count(*) FROM outbox").fetchone()[0]

        wait("1,000 queued notifications", 120, lambda: queued() >= 2 * N * CYCLES)
        queued_n = queued()
        before = len(receiver.got)
        cpu0, rss0 = proc_figures(agent.pid)
        print(f"outage: {time.time() - outage:.0f} s, {queued_n} notifications queued, "
              f"agent RSS {rss0 / 2**20:.1f} MiB")
        receiver = Receiver(hook)
        receiver.start()
        t0 = time.time()
        rss_max, samples = rss0, 0
        while queued() > 0:
            _, rss = proc_figures(agent.pid)
            rss_max = max(rss_max, rss)
            samples += 1
            time.sleep(0.2)
            if time.time() - t0 > 600:
                raise SystemExit("the outbox did not drain within 10 minutes")
        took = time.time() - t0
        cpu1, rss1 = proc_figures(agent.pid)
        print(f"drain: {queued_n} notifications in {took:.1f} s ({queued_n / took:.0f}/s), "
              f"agent CPU {cpu1 - cpu0:.2f} s ({100 * (cpu1 - cpu0) / took:.0f} % of one core), "
              f"RSS max {rss_max / 2**20:.1f} MiB")
        ids = [b["id"] for _, b in receiver.got]
        print(f"received {len(ids)} ({len(set(ids))} distinct ids) after the outage")
    finally:
        agent.terminate()
        agent.wait(timeout=20)
        receiver.stop()
        for i in range(N):
            targets.down(i)
        tmp.cleanup()


if __name__ == "__main__":
    main()
