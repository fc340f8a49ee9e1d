//! Cost per event of each filter dialect, and of matching a broker's triggers
//! when N of them filter on an exact type (linear scan today; the index of
//! the filters issue must make this flat). Run: `cargo bench -p spate-filter`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use spate_core::{CloudEvent, ExtValue};
use spate_filter::Filter;
use spate_filter::index::FilterIndex;

fn event() -> CloudEvent {
    let mut e = CloudEvent::new("id-1", "/shop/eu", "com.example.order.created");
    e.datacontenttype = Some("application/json".into());
    e.data = Some(bytes::Bytes::from_static(
        br#"{"score": 0.93, "user": {"tier": "gold", "name": "ana"}, "items": [1, 2, 3]}"#,
    ));
    e.set_extension("priority", ExtValue::Integer(7));
    e.set_extension("region", ExtValue::String("eu-west".into()));
    e
}

fn dialects(c: &mut Criterion) {
    let ev = event();
    let cases = [
        ("exact", Filter::key_values("exact", [("type", "com.example.order.created")]).unwrap()),
        ("prefix", Filter::key_values("prefix", [("type", "com.example.")]).unwrap()),
        ("suffix", Filter::key_values("suffix", [("source", "/eu")]).unwrap()),
        (
            "legacy attributes (2 keys)",
            Filter::from_attributes([("type", "com.example.order.created"), ("region", "")]).unwrap(),
        ),
        (
            "all/any/not",
            Filter::All(vec![
                Filter::key_values("prefix", [("type", "com.")]).unwrap(),
                Filter::Not(Box::new(Filter::key_values("exact", [("region", "us")]).unwrap())),
            ]),
        ),
        ("cesql simple comparison", Filter::cesql("type = 'com.example.order.created'").unwrap()),
        ("cesql LIKE + integer", Filter::cesql("type LIKE 'com.example.%' AND priority > 5").unwrap()),
        (
            "cesql functions",
            Filter::cesql("LOWER(SUBSTRING(region, 1, 2)) IN ('eu', 'us') AND LENGTH(id) < 10").unwrap(),
        ),
        ("cel on attributes", Filter::cel("event.type.startsWith('com.example.') && event.priority > 5").unwrap()),
        ("cel on JSON data (parse included)", Filter::cel("data.score > 0.8 && data.user.tier == 'gold'").unwrap()),
    ];
    let mut g = c.benchmark_group("filter per event");
    for (name, f) in &cases {
        assert!(f.matches(&ev), "{name} must match the bench event");
        g.bench_function(*name, |b| b.iter(|| black_box(f).matches(black_box(&ev))));
    }
    // CEL with the variables already built (as for the 2nd..nth CEL trigger on one event).
    let cel = Filter::cel("event.type.startsWith('com.example.') && event.priority > 5").unwrap();
    let view = spate_filter::cel::EventView::new(&ev);
    assert!(cel.matches_view(&view));
    g.bench_function("cel on attributes, variables shared", |b| {
        b.iter(|| black_box(&cel).matches_view(black_box(&view)))
    });
    g.finish();
}

fn many_triggers(c: &mut Criterion) {
    let ev = event();
    let mut indexed = vec![];
    let mut g = c.benchmark_group("exact-type triggers, one matches (linear scan)");
    for n in [1usize, 100, 1_000, 10_000] {
        let filters: Vec<Filter> = (0..n)
            .map(|i| {
                let ty =
                    if i == n / 2 { "com.example.order.created".to_string() } else { format!("com.example.other.{i}") };
                Filter::key_values("exact", [("type", ty.as_str())]).unwrap()
            })
            .collect();
        g.bench_with_input(BenchmarkId::from_parameter(n), &filters, |b, fs| {
            b.iter(|| fs.iter().filter(|f| f.matches(black_box(&ev))).count())
        });
        let index = FilterIndex::new(filters.into_iter().enumerate());
        assert_eq!(index.matching(&ev).count(), 1);
        indexed.push((n, index));
    }
    g.finish();
    let mut g = c.benchmark_group("exact-type triggers, one matches (FilterIndex)");
    for (n, index) in &indexed {
        g.bench_with_input(BenchmarkId::from_parameter(n), index, |b, ix| {
            b.iter(|| ix.matching(black_box(&ev)).count())
        });
    }
    g.finish();
}

criterion_group!(benches, dialects, many_triggers);
criterion_main!(benches);
