//! Cost per event of each hot-path stage the core owns, so that a regression
//! shows where it came from: decoding what ingress receives (binary and
//! structured HTTP, a batch of 16), encoding for storage and back, and encoding the request a
//! delivery sends. 1 KiB JSON payload, a few extensions. Run: `cargo bench -p spate-core`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use spate_core::{CloudEvent, ExtValue, http_codec, storage};

fn event() -> CloudEvent {
    let mut e = CloudEvent::new("5c8e6a2e-0d3b-4c55-9d0f-3f9b4f1e2a77", "/shop/eu", "com.example.order.created");
    e.datacontenttype = Some("application/json".into());
    let mut data = br#"{"order": 1, "note": ""#.to_vec();
    data.resize(1000, b'x');
    data.extend_from_slice(br#""}"#);
    e.data = Some(Bytes::from(data));
    e.time = Some("2026-12-01T10:00:00.123456Z".into());
    e.set_extension("traceparent", ExtValue::String("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()));
    e.set_extension("knativearrivaltime", ExtValue::String("2026-12-01T10:00:00.2Z".into()));
    e.set_extension("priority", ExtValue::Integer(7));
    e
}

fn stages(c: &mut Criterion) {
    let ev = event();
    let mut g = c.benchmark_group("per event (1 KiB)");
    // What ingress receives.
    let mut binary_headers = HeaderMap::new();
    let binary_body = http_codec::encode_binary(&ev, &mut binary_headers);
    g.bench_function("ingress: decode binary HTTP", |b| {
        b.iter(|| http_codec::decode(black_box(&binary_headers), black_box(binary_body.clone())).unwrap())
    });
    let mut structured_headers = HeaderMap::new();
    let structured_body = http_codec::encode_structured(&ev, &mut structured_headers);
    g.bench_function("ingress: decode structured HTTP", |b| {
        b.iter(|| http_codec::decode(black_box(&structured_headers), black_box(structured_body.clone())).unwrap())
    });
    // A batch of 16 (application/cloudevents-batch+json), per batch.
    let mut batch_headers = HeaderMap::new();
    batch_headers.insert("content-type", http::HeaderValue::from_static("application/cloudevents-batch+json"));
    let batch_body = Bytes::from(spate_core::json::encode_batch(&vec![ev.clone(); 16]));
    g.bench_function("ingress: decode a batch of 16 (per batch)", |b| {
        b.iter(|| http_codec::decode(black_box(&batch_headers), black_box(batch_body.clone())).unwrap())
    });
    // The log's record, both ways.
    g.bench_function("storage: encode", |b| b.iter(|| storage::encode(black_box(&ev))));
    let stored = Bytes::from(storage::encode(&ev));
    g.bench_function("storage: decode", |b| b.iter(|| storage::decode(black_box(&stored)).unwrap()));
    // What a delivery sends (the dispatcher's request headers and body).
    g.bench_function("delivery: encode binary request", |b| {
        b.iter(|| {
            let mut h = HeaderMap::with_capacity(12);
            let body = http_codec::encode_binary(black_box(&ev), &mut h);
            black_box((h, body))
        })
    });
    g.bench_function("delivery: encode structured request", |b| {
        b.iter(|| {
            let mut h = HeaderMap::new();
            black_box(http_codec::encode_structured(black_box(&ev), &mut h))
        })
    });
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
