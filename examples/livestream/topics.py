"""Creates the scenario's Kafka topics if absent (tansu does not create topics on first use)."""
import sys

from confluent_kafka.admin import AdminClient, NewTopic

admin = AdminClient({"bootstrap.servers": sys.argv[1]})
futures = admin.create_topics([NewTopic(t, num_partitions=4, replication_factor=1)
                               for t in ("live-interactions", "live-overlay")], request_timeout=15)
for topic, f in futures.items():
    try:
        f.result()
        print(f"created topic {topic}")
    except Exception as e:  # noqa: BLE001 - the library raises KafkaException with an error code
        if "TOPIC_ALREADY_EXISTS" not in str(e):
            sys.exit(f"cannot create topic {topic}: {e}")
