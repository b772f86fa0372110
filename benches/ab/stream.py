#!/usr/bin/env python3
"""A/B comparison of allium binaries: 100 MB single-stream throughput and the node processes'
CPU seconds per GB, through a fresh `allium testnet` per binary and round, the binaries taking
turns (interleaved, so that drift in the machine's speed hits all of them alike).

usage: python3 benches/ab/stream.py ROUNDS BIN...   e.g. 3 /tmp/allium-old target/release/allium

Each round and binary: start the test network (SOCKS on a free port), one warm-up GET, then three
100 MB GETs through curl from a local server on 127.0.0.1; prints each run and, at the end, the
median per binary. Everything stays on 127.0.0.0/8; each GET is bounded to 60 s."""
import os, sys, subprocess, socket, threading, time, tempfile, shutil, signal, statistics

SIZE = 100_000_000
def server():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0)); s.listen(16)
    data = b"x" * (4 << 20)
    def serve(c):
        try:
            c.recv(4096)
            c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % SIZE)
            left = SIZE
            while left:
                n = min(left, len(data)); c.sendall(data[:n]); left -= n
        except Exception: pass
        finally: c.close()
    def loop():
        while True:
            c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
    return s.getsockname()[1]

def kids(pid):
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                st = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
                if int(st[1]) == pid: out.append(int(p))
            except Exception: pass
    return out

def cpu(pids):
    t = 0
    for p in pids:
        try:
            st = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            t += int(st[11]) + int(st[12])
        except Exception: pass
    return t / os.sysconf("SC_CLK_TCK")

def run(binary, port):
    d = tempfile.mkdtemp(prefix="tput-")
    p = subprocess.Popen([binary, "testnet", "--dir", d, "--socks-port", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        env = os.path.join(d, "testnet.env")
        t0 = time.time()
        while not os.path.exists(env):
            if time.time() - t0 > 60: raise SystemExit("no testnet.env")
            time.sleep(0.1)
        time.sleep(0.3)
        vals = dict(l.strip().split("=", 1) for l in open(env) if "=" in l)
        socks = f"{vals['SOCKS_HOST']}:{vals['SOCKS_PORT']}"
        url = f"http://127.0.0.1:{port}/"
        subprocess.run(["curl", "-s", "-o", "/dev/null", "--socks5-hostname", socks, url, "--max-time", "60"])  # warm
        res = []
        for _ in range(3):
            nodes = kids(p.pid)
            c0 = cpu(nodes); t = time.time()
            out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}", "--socks5-hostname", socks, url, "--max-time", "60"], capture_output=True, text=True).stdout
            el = time.time() - t; c1 = cpu(nodes)
            if int(out or 0) != SIZE: print("short", out); continue
            res.append((SIZE / el / 1e6, (c1 - c0) / (SIZE / 1e9)))
        return res
    finally:
        p.send_signal(signal.SIGINT)
        try: p.wait(10)
        except Exception: p.kill(); p.wait()
        shutil.rmtree(d, ignore_errors=True)

rounds = int(sys.argv[1]); bins = sys.argv[2:]
port = server()
allr = {b: [] for b in bins}
for r in range(rounds):
    for b in bins:
        res = run(b, port)
        allr[b] += res
        print(f"round {r} {os.path.basename(b)}: " + ", ".join(f"{m:.1f} MB/s {c:.1f} CPU-s/GB" for m, c in res), flush=True)
for b in bins:
    m = [x[0] for x in allr[b]]; c = [x[1] for x in allr[b]]
    print(f"{os.path.basename(b)}: median {statistics.median(m):.1f} MB/s, {statistics.median(c):.2f} CPU-s/GB (n={len(m)})")
