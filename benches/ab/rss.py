#!/usr/bin/env python3
"""A/B comparison of allium binaries: each relay's RSS right after a 100 MB download and 8
parallel 25 MB downloads on 8 isolation classes, through a fresh `allium testnet` per binary and
round, the binaries taking turns.

usage: python3 benches/ab/rss.py ROUNDS BIN...

Prints each round's node RSS (MiB) and, at the end, the relays' median per round and binary.
Everything stays on 127.0.0.0/8; each GET is bounded to 60 s."""
import os, sys, subprocess, time, tempfile, shutil, signal, statistics, threading, socket
SIZE=100_000_000
def server():
    s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1",0)); s.listen(32)
    d=b"x"*(4<<20)
    def sv(c):
        try:
            req=c.recv(4096); n=SIZE if b"/big" in req else 25_000_000
            c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n"%n)
            while n: k=min(n,len(d)); c.sendall(d[:k]); n-=k
        except Exception: pass
        c.close()
    def loop():
        while True:
            c,_=s.accept(); threading.Thread(target=sv,args=(c,),daemon=True).start()
    threading.Thread(target=loop,daemon=True).start(); return s.getsockname()[1]
def run(b, port):
    d=tempfile.mkdtemp(prefix="rss-")
    p=subprocess.Popen([b,"testnet","--dir",d,"--socks-port","0"],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
    try:
        env=os.path.join(d,"testnet.env")
        while not os.path.exists(env): time.sleep(0.1)
        time.sleep(0.3)
        v=dict(l.strip().split("=",1) for l in open(env) if "=" in l); sk=f"{v['SOCKS_HOST']}:{v['SOCKS_PORT']}"
        subprocess.run(["curl","-s","-o","/dev/null","--socks5-hostname",sk,f"http://127.0.0.1:{port}/big","--max-time","60"])
        ps=[subprocess.Popen(["curl","-s","-o","/dev/null","--proxy",f"socks5h://u{i}:p@{sk}",f"http://127.0.0.1:{port}/x","--max-time","60"]) for i in range(8)]
        for q in ps: q.wait()
        out={}
        for pid in os.listdir("/proc"):
            if not pid.isdigit(): continue
            try:
                st=open(f"/proc/{pid}/stat").read().rsplit(")",1)[1].split()
                if int(st[1])!=p.pid: continue
                cmd=open(f"/proc/{pid}/cmdline").read().split("\0")
                name=[c for c in cmd if d in c][0].replace(d,"").split("/")[1]
                rss=[l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1]
                out[name]=int(rss)/1024
            except Exception: pass
        return out
    finally:
        p.send_signal(signal.SIGINT)
        try: p.wait(10)
        except Exception: p.kill()
        shutil.rmtree(d,ignore_errors=True)
port=server(); rounds=int(sys.argv[1]); res={b:[] for b in sys.argv[2:]}
for r in range(rounds):
    for b in sys.argv[2:]:
        o=run(b,port); rel=sorted(v for k,v in o.items() if k.startswith(("relay","exit")))
        res[b].append(statistics.median(rel) if rel else 0)
        print(os.path.basename(b), " ".join(f"{k}={v:.1f}" for k,v in sorted(o.items()) if k.startswith(("relay","exit","client"))), flush=True)
for b,v in res.items(): print(os.path.basename(b), "relay median RSS per round:", ", ".join(f"{x:.1f}" for x in v))
