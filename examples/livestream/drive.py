"""Drives the live-streaming scenario and reports on it.

* Load: bursty viewer interactions (comments, likes, gifts) produced into Kafka topic
  `live-interactions` as JSON records keyed by stream: idle, a burst, a lull, a second burst, idle.
* Results: reads `live-overlay` (what the KafkaSink wrote) and matches each result to the
  interaction it answers; end-to-end latency is the result record's Kafka timestamp minus the
  moment the interaction was produced.
* Instances: samples each Service's ready instances from Spate's admin API every 250 ms.
* Report: summary.json, report.png and report.html (matplotlib) in --out, a table on stdout.
"""
import argparse
import base64
import json
import random
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

from confluent_kafka import Consumer, Producer

SERVICES = ("moderation", "sentiment", "highlight")
POSITIVE = [
    "love this stream", "this is amazing, great play!", "you are the best streamer ever",
    "what a beautiful goal, so happy", "haha that was awesome", "great music, thanks for sharing",
]
NEGATIVE = [
    "this is boring", "terrible audio today, I hate it", "worst stream ever, so sad",
    "that was awful and stupid", "laggy and annoying, disappointed",
]
NEUTRAL = ["hello from Lisbon", "what game is this?", "first time here", "when is the next stream", "ok"]
PROFANE = ["this is shit", "what the fuck was that", "you are a dumbass", "sh1t happens", "damn that hurt, bitch"]


def text():
    r = random.random()
    pool = POSITIVE if r < 0.4 else NEGATIVE if r < 0.65 else NEUTRAL if r < 0.9 else PROFANE
    return random.choice(pool)


def rate_at(t, seconds, peak):
    """Offered interactions per second at time t: idle, burst, lull, burst, idle."""
    f = t / seconds
    if f < 0.1 or f >= 0.85:
        return 0.0
    if f < 0.35:
        return peak * min(1.0, (f - 0.1) / 0.05)  # ramps up over 5% of the run
    if f < 0.6:
        return peak * 0.02
    return peak * 0.8


class Run:
    def __init__(self, a):
        self.a = a
        self.run_id = f"r{int(time.time() * 1000)}"
        self.sent = {}  # interaction id -> (kind, produced at ms, needs results)
        self.results = defaultdict(set)  # interaction id -> result types
        self.latencies = []  # (result second, ms)
        self.offered = defaultdict(int)
        self.processed = defaultdict(int)
        self.instances = defaultdict(lambda: defaultdict(int))  # second -> service -> max ready
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.t0 = time.time()
        self.first_result_ms = None
        self.last_sent_ms = None
        self.samples = []  # (seconds since start, {service: ready instances})

    def sec(self, ms):
        return int(ms / 1000 - self.t0)

    def produce(self):
        a = self.a
        p = Producer({"bootstrap.servers": a.kafka, "linger.ms": 5, "acks": "all", "enable.idempotence": True})
        n, tick, start = 0, 0.05, time.time()
        carry = 0.0
        while True:
            t = time.time() - start
            if t >= a.seconds:
                break
            carry += rate_at(t, a.seconds, a.peak) * random.uniform(0.6, 1.4) * tick
            count, carry = int(carry), carry - int(carry)
            for _ in range(count):
                n += 1
                stream = f"stream-{random.randint(1, 8)}"
                r = random.random()
                now_ms = time.time() * 1000
                rec = {"id": f"{self.run_id}-{n}", "stream": stream, "user": f"viewer{random.randint(1, 5000)}",
                       "sent_at": now_ms}
                if r < 0.5:
                    rec.update(kind="comment", text=text())
                    need = {"live.result.moderation", "live.result.sentiment"}
                elif r < 0.9:
                    rec.update(kind="like")
                    need = set()
                else:
                    value = random.choice([1, 5, 10, 20, 50, 100, 200, 500, 1000])
                    rec.update(kind="gift", value=value)
                    need = {"live.result.highlight"} if value >= 100 else set()
                with self.lock:
                    self.sent[rec["id"]] = (rec["kind"], now_ms, need)
                    self.offered[self.sec(now_ms)] += 1
                    self.last_sent_ms = now_ms
                while True:
                    try:
                        p.produce("live-interactions", key=stream, value=json.dumps(rec).encode(),
                                  headers={"content-type": "application/json"})
                        break
                    except BufferError:
                        p.poll(0.01)
            p.poll(0)
            time.sleep(max(0.0, tick - ((time.time() - start) - t)))
        left = p.flush(30)
        if left:
            sys.exit(f"{left} interactions were not acknowledged by Kafka at {a.kafka}")

    def collect(self, consumer):
        while not self.done.is_set():
            m = consumer.poll(0.2)
            if m is None or m.error():
                continue
            headers = {k: v.decode() if v is not None else "" for k, v in (m.headers() or [])}
            kind = headers.get("ce_type", "")
            try:
                data = json.loads(m.value())
            except ValueError:
                continue
            rid = data.get("comment_id") or data.get("gift_id")
            with self.lock:
                if rid not in self.sent:
                    continue  # another run's
                self.results[rid].add(kind)
                ts = m.timestamp()[1]
                sent_ms = self.sent[rid][1]
                self.latencies.append((self.sec(ts), max(0.0, ts - sent_ms)))
                self.processed[self.sec(ts)] += 1
                if self.first_result_ms is None or ts < self.first_result_ms:
                    self.first_result_ms = ts
                    self.first_result_sent_ms = sent_ms

    def sample(self):
        url = f"{self.a.admin}/apis/serving.knative.dev/v1/namespaces/default/revisions"
        while not self.done.is_set():
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    items = json.load(r).get("items", [])
                counts = defaultdict(int)
                for it in items:
                    svc = it["metadata"].get("labels", {}).get("serving.knative.dev/service")
                    counts[svc] += int(it.get("status", {}).get("actualScale") or 0)
                now = time.time()
                s = self.sec(now * 1000)
                with self.lock:
                    self.samples.append((now - self.t0, {svc: counts.get(svc, 0) for svc in SERVICES}))
                    for svc in SERVICES:
                        self.instances[s][svc] = max(self.instances[s][svc], counts.get(svc, 0))
                    self.now_instances = {svc: counts.get(svc, 0) for svc in SERVICES}
            except OSError as e:
                print(f"admin API: {e}", file=sys.stderr)
            time.sleep(0.25)

    def missing(self):
        with self.lock:
            return sum(len(need - self.results.get(i, set())) for i, (_, _, need) in self.sent.items())


def pct(values, q):
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, int(q * len(v)))], 1)


def burst_starts(run):
    """Seconds (since start) at which a burst begins: offered rate crosses half the peak."""
    above = [s for s in sorted(run.offered) if run.offered[s] >= 0.5 * run.a.peak]
    return [s for s in above if s - 1 not in above]


def scale_out_seconds(run, starts):
    """Per service, for each burst: seconds from its start until the service ran more than one instance."""
    out = {}
    for svc in SERVICES:
        out[svc] = []
        for b in starts:
            # The burst's rate was reached within its starting second; count from that second's start.
            t = next((t for t, c in run.samples if t >= b and c.get(svc, 0) > 1), None)
            out[svc].append(None if t is None else round(t - b, 2))
    return out


def summary(run, back_to_zero_s):
    with run.lock:
        comments = [i for i, (k, _, _) in run.sent.items() if k == "comment"]
        comment_results = sum(len(run.results.get(i, set()) & {"live.result.moderation", "live.result.sentiment"})
                              for i in comments)
        gifts = [i for i, (k, _, n) in run.sent.items() if k == "gift"]
        big = [i for i in gifts if run.sent[i][2]]
        lat = [ms for _, ms in run.latencies]
        busy = [ms for s, ms in run.latencies if run.offered.get(s, 0) >= 0.5 * run.a.peak]
        # Steady burst load: a burst's seconds after its first two (instances have followed it).
        steady = [ms for s, ms in run.latencies
                  if all(run.offered.get(x, 0) >= 0.5 * run.a.peak for x in (s, s - 1, s - 2))]
        starts = burst_starts(run)
        # The first result to reach Kafka, from its own interaction (every Service was at zero then).
        first = None
        if run.first_result_ms is not None:
            first = round(run.first_result_ms - run.first_result_sent_ms, 1)
        return {
            "run": run.run_id,
            "seconds": run.a.seconds,
            "peak_rate": run.a.peak,
            "interactions_in": len(run.sent),
            "comments_in": len(comments),
            "likes_in": sum(1 for k, _, _ in run.sent.values() if k == "like"),
            "gifts_in": len(gifts),
            "big_gifts_in": len(big),
            "results_out": comment_results,
            "highlights_out": sum(1 for i in big if "live.result.highlight" in run.results.get(i, set())),
            "first_event_from_zero_ms": first,
            "e2e_p50_ms": pct(lat, 0.5),
            "e2e_p99_ms": pct(lat, 0.99),
            "e2e_p99_ms_during_bursts": pct(busy, 0.99),
            "e2e_p50_ms_steady_burst": pct(steady, 0.5),
            "e2e_p99_ms_steady_burst": pct(steady, 0.99),
            "max_instances": {svc: max((v.get(svc, 0) for v in run.instances.values()), default=0)
                              for svc in SERVICES},
            "seconds_back_to_zero": back_to_zero_s,
            "bursts_at_seconds": starts,
            "seconds_to_scale_out_per_burst": scale_out_seconds(run, starts),
            "offered_peak_per_second": max(run.offered.values(), default=0),
            "processed_peak_per_second": max(run.processed.values(), default=0),
        }


def series(run):
    with run.lock:
        last = max([*run.offered, *run.processed, *run.instances, 0])
        per_sec = defaultdict(list)
        for s, ms in run.latencies:
            per_sec[s].append(ms)
        rows = []
        for s in range(0, last + 1):
            lat = per_sec.get(s, [])
            rows.append({
                "second": s,
                "offered": run.offered.get(s, 0),
                "processed": run.processed.get(s, 0),
                "p50_ms": pct(lat, 0.5),
                "p99_ms": pct(lat, 0.99),
                **{f"instances_{svc}": run.instances.get(s, {}).get(svc, 0) for svc in SERVICES},
            })
        return rows


def plot(rows, out, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["second"] for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, sharex=True, figsize=(10, 8))
    ax1.plot(x, [r["offered"] for r in rows], label="offered (interactions/s into Kafka)")
    ax1.plot(x, [r["processed"] for r in rows], label="processed (results/s into Kafka)")
    ax1.set_ylabel("events/s")
    ax1.legend(loc="upper right")
    ax1.set_title(title)
    lx = [r["second"] for r in rows if r["p50_ms"] is not None]
    ax2.plot(lx, [r["p50_ms"] for r in rows if r["p50_ms"] is not None], label="end-to-end p50")
    ax2.plot(lx, [r["p99_ms"] for r in rows if r["p99_ms"] is not None], label="end-to-end p99")
    ax2.set_yscale("log")
    ax2.set_ylabel("ms (Kafka in to result in Kafka)")
    ax2.legend(loc="upper right")
    for svc in SERVICES:
        ax3.step(x, [r[f"instances_{svc}"] for r in rows], where="post", label=svc)
    ax3.set_ylabel("instances")
    ax3.set_xlabel("seconds since start")
    ax3.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out / "report.png", dpi=100)


def html(summary_, rows, out):
    png = base64.b64encode((out / "report.png").read_bytes()).decode()
    cells = "".join(f"<tr><th>{k}</th><td>{json.dumps(v)}</td></tr>" for k, v in summary_.items())
    head = "".join(f"<th>{k}</th>" for k in rows[0]) if rows else ""
    body = "".join("<tr>" + "".join(f"<td>{'' if v is None else v}</td>" for v in r.values()) + "</tr>" for r in rows)
    (out / "report.html").write_text(
        "<!doctype html><meta charset=utf-8><title>Spate live-streaming scenario</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}</style>"
        f"<h1>Spate live-streaming scenario</h1><img alt='report' src='data:image/png;base64,{png}'>"
        f"<h2>Summary</h2><table>{cells}</table><h2>Per second</h2><table><tr>{head}</tr>{body}</table>")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kafka", default="127.0.0.1:19092")
    ap.add_argument("--admin", default="http://127.0.0.1:8081")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--peak", type=float, default=2000, help="interactions per second at the top of a burst")
    ap.add_argument("--drain-timeout", type=float, default=120)
    ap.add_argument("--zero-timeout", type=float, default=120)
    ap.add_argument("--out", default="livestream-report")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Run(a)
    run.now_instances = {}
    consumer = Consumer({"bootstrap.servers": a.kafka, "group.id": f"livestream-report-{run.run_id}",
                         "auto.offset.reset": "latest", "enable.auto.commit": False})
    consumer.subscribe(["live-overlay"])
    while not consumer.assignment():  # results are read from their end at this moment on
        consumer.poll(0.2)
    threads = [threading.Thread(target=run.collect, args=(consumer,), daemon=True),
               threading.Thread(target=run.sample, daemon=True)]
    for t in threads:
        t.start()
    print(f"producing bursts for {a.seconds:.0f} s (peak {a.peak:.0f}/s) into live-interactions", flush=True)
    run.produce()
    produced_until = time.time()
    last_event = (run.last_sent_ms or produced_until * 1000) / 1000
    deadline = produced_until + a.drain_timeout
    while run.missing() and time.time() < deadline:
        time.sleep(0.2)
    if run.missing():
        print(f"{run.missing()} results still missing after {a.drain_timeout:.0f} s", file=sys.stderr)
    back_to_zero = None
    deadline = time.time() + a.zero_timeout
    while time.time() < deadline:
        with run.lock:
            now = dict(run.now_instances)
        if now and all(v == 0 for v in now.values()):
            back_to_zero = round(time.time() - last_event, 1)  # since the last interaction
            break
        time.sleep(0.25)
    run.done.set()
    for t in threads:
        t.join(5)
    consumer.close()
    s = summary(run, back_to_zero)
    rows = series(run)
    (out / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
    (out / "series.json").write_text(json.dumps(rows) + "\n")
    plot(rows, out, f"Spate live-streaming scenario ({a.seconds:.0f} s, peak {a.peak:.0f}/s)")
    html(s, rows, out)
    width = max(len(k) for k in s)
    print()
    for k, v in s.items():
        print(f"  {k.ljust(width)}  {json.dumps(v)}")
    print(f"\nreport: {out / 'report.png'}, {out / 'report.html'}, {out / 'summary.json'}")


if __name__ == "__main__":
    main()
