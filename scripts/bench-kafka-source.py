#!/usr/bin/env python3
"""KafkaSource -> Broker -> Trigger -> sink throughput.

Usage: scripts/bench-kafka-source.py [ordered|unordered] [records]
Needs a Kafka-protocol broker on 127.0.0.1:19092 (tansu, as .ci/run starts it), the release
binary (cargo build --release -p spate) and kafka-python (pip install kafka-python) to produce.
The trigger's subscriber is Spate's built-in display (output discarded). Prints events/s from the
first event the source emits until the trigger has delivered every record.
"""
import json, os, shutil, subprocess, sys, tempfile, time, urllib.request

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

ordering = sys.argv[1] if len(sys.argv) > 1 else "unordered"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 50000
topic = f"bench-{os.getpid()}-{int(time.time())}"
KafkaAdminClient(bootstrap_servers="127.0.0.1:19092").create_topics([NewTopic(topic, 3, 1)])
producer = KafkaProducer(bootstrap_servers="127.0.0.1:19092", linger_ms=5)
for i in range(n):
    producer.send(topic, value=b'{"n":%d}' % i, key=b"k%d" % i, partition=i % 3)
producer.flush()
data_dir = tempfile.mkdtemp(prefix="spate-bench-kafka-")
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
srv = subprocess.Popen([os.path.join(root, "target/release/spate"), "serve", "--data-dir", data_dir, "--listen", "127.0.0.1:18180", "--admin-listen", "127.0.0.1:18181"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(1)
y = f"""apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: t}}
spec:
  broker: default
  filter: {{attributes: {{type: dev.knative.kafka.event}}}}
  subscriber: {{uri: "http://127.0.0.1:18180/_spate/display/x"}}
---
apiVersion: sources.knative.dev/v1
kind: KafkaSource
metadata: {{name: k}}
spec:
  bootstrapServers: [127.0.0.1:19092]
  topics: [{topic}]
  consumerGroup: g-{ordering}-{time.time()}
  initialOffset: earliest
  ordering: {ordering}
  sink: {{ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}}}
"""
t0 = time.time()
urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:18181/apply", data=y.encode(), method="POST", headers={"Content-Type": "application/yaml"})).read()
def emitted():
    s = json.load(urllib.request.urlopen("http://127.0.0.1:18181/apis/sources.knative.dev/v1/namespaces/default/kafkasources/k"))
    return s["status"]["spate"]["emitted"]
def delivered():
    m = urllib.request.urlopen("http://127.0.0.1:18181/metrics").read().decode()
    tot = 0
    for l in m.splitlines():
        if l.startswith("spate_events_delivered_total") and 'trigger/' in l:
            tot += float(l.split()[-1])
    return tot
first = None; te = None
while True:
    e = emitted()
    if e > 0 and first is None: first = (time.time(), e)
    if e >= n and te is None: te = time.time()
    d = delivered()
    if d >= n: td = time.time(); break
    if time.time() - t0 > 300: print("timeout", e, d); break
    time.sleep(0.1)
rss = int(open(f"/proc/{srv.pid}/status").read().split("VmRSS:")[1].split()[0]) // 1024
print(f"{ordering}: {n} records; source emitted all after {te-first[0]:.2f}s from first emit ({n/(te-first[0]):.0f} ev/s into the broker); trigger delivered all after {td-first[0]:.2f}s ({n/(td-first[0]):.0f} ev/s end to end); RSS {rss} MiB")
srv.terminate(); srv.wait()
shutil.rmtree(data_dir, ignore_errors=True)
