//! Matching many filters against one event at a cost that tracks the filters
//! that can match: filters that require an exact `type` (directly, or as a
//! member of `all`) are looked up by the event's type; only the rest are
//! scanned. Results are the same as evaluating every filter.

use std::collections::HashMap;

use spate_core::CloudEvent;

use crate::Filter;
use crate::cel::EventView;

/// Filters keyed by an id (a trigger), indexed by required exact type.
pub struct FilterIndex<T> {
    by_type: HashMap<String, Vec<(T, Filter)>>,
    others: Vec<(T, Filter)>,
}

/// The exact `type` a filter requires, if any.
fn required_type(f: &Filter) -> Option<&str> {
    match f {
        Filter::Exact(kv) => kv.iter().find(|(k, _)| k == "type").map(|(_, v)| v.as_str()),
        Filter::All(fs) => fs.iter().find_map(required_type),
        _ => None,
    }
}

impl<T> FilterIndex<T> {
    pub fn new(items: impl IntoIterator<Item = (T, Filter)>) -> Self {
        let mut by_type: HashMap<String, Vec<(T, Filter)>> = HashMap::new();
        let mut others = vec![];
        for (id, f) in items {
            match required_type(&f).map(str::to_string) {
                Some(ty) => by_type.entry(ty).or_default().push((id, f)),
                None => others.push((id, f)),
            }
        }
        FilterIndex { by_type, others }
    }

    /// Ids of the filters that match `ev`: indexed candidates for its type
    /// (fully evaluated), then every non-indexed filter.
    /// One [`EventView`] serves every filter, so CEL payloads are parsed once.
    pub fn matching<'a>(&'a self, ev: &'a CloudEvent) -> impl Iterator<Item = &'a T> + 'a {
        let candidates = self.by_type.get(ev.ty.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let view = EventView::new(ev);
        candidates
            .iter()
            .chain(self.others.iter())
            .filter(move |(_, f)| crate::guarded(ev, || f.matches_view(&view)))
            .map(|(id, _)| id)
    }

    pub fn len(&self) -> usize {
        self.by_type.values().map(Vec::len).sum::<usize>() + self.others.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use spate_core::ExtValue;

    use super::*;

    fn exact(k: &str, v: &str) -> Filter {
        Filter::key_values("exact", [(k, v)]).unwrap()
    }

    /// The index returns exactly what a linear scan returns, over a grid of
    /// filter shapes and events.
    #[test]
    fn agrees_with_a_linear_scan() {
        let types = ["a", "b", "c"];
        let mut filters = vec![];
        for (i, t) in types.iter().enumerate() {
            filters.push(exact("type", t));
            filters.push(Filter::All(vec![exact("type", t), exact("source", "/s1")]));
            filters
                .push(Filter::All(vec![Filter::key_values("prefix", [("source", "/s")]).unwrap(), exact("type", t)]));
            filters.push(Filter::key_values("exact", [("type", *t), ("n", &i.to_string())]).unwrap());
        }
        filters.push(Filter::match_all());
        filters.push(Filter::Not(Box::new(exact("type", "a"))));
        filters.push(Filter::Any(vec![exact("type", "b"), exact("source", "/s2")]));
        filters.push(Filter::cesql("type = 'c' OR EXISTS n").unwrap());
        let index = FilterIndex::new(filters.iter().cloned().enumerate());
        assert_eq!(index.len(), filters.len());
        for t in ["a", "b", "c", "zzz"] {
            for s in ["/s1", "/s2", "/x"] {
                for n in [None, Some(0), Some(2)] {
                    let mut ev = CloudEvent::new("1", s, t);
                    if let Some(n) = n {
                        ev.set_extension("n", ExtValue::Integer(n));
                    }
                    let mut got: Vec<usize> = index.matching(&ev).copied().collect();
                    got.sort_unstable();
                    let want: Vec<usize> =
                        filters.iter().enumerate().filter(|(_, f)| f.matches(&ev)).map(|(i, _)| i).collect();
                    assert_eq!(got, want, "type {t}, source {s}, n {n:?}");
                }
            }
        }
    }
}
