//! Costly filters cannot stall a router: CESQL's LIKE runs in linear time and
//! every evaluation has a cost budget; CEL filters are estimated before they
//! run. An evaluation over budget fails that filter for that event (no
//! match, counted), never the caller.

use bytes::Bytes;
use proptest::prelude::*;
use spate_core::{CloudEvent, ExtValue};
use spate_filter::{Filter, cesql};

fn event_with_subject(subject: String) -> CloudEvent {
    let mut e = CloudEvent::new("1", "/s", "t");
    e.subject = Some(subject);
    e
}

/// The textbook dynamic-programming matcher, O(len(s) × len(p)): the reference.
fn like_reference(s: &str, p: &str) -> bool {
    #[derive(PartialEq)]
    enum P {
        Any,
        One,
        C(char),
    }
    let mut pat = vec![];
    let mut it = p.chars().peekable();
    while let Some(c) = it.next() {
        pat.push(match c {
            '\\' if matches!(it.peek(), Some('%' | '_')) => P::C(it.next().expect("peeked")),
            '%' => P::Any,
            '_' => P::One,
            c => P::C(c),
        });
    }
    let s: Vec<char> = s.chars().collect();
    // m[j]: pattern[..j] matches the text read so far.
    let mut m = vec![false; pat.len() + 1];
    m[0] = true;
    for j in 1..=pat.len() {
        m[j] = m[j - 1] && pat[j - 1] == P::Any;
    }
    for c in &s {
        let mut next = vec![false; pat.len() + 1];
        for j in 1..=pat.len() {
            next[j] = match &pat[j - 1] {
                P::Any => next[j - 1] || m[j],
                P::One => m[j - 1],
                P::C(x) => m[j - 1] && x == c,
            };
        }
        m = next;
    }
    m[pat.len()]
}

fn like(subject: &str, pattern: &str) -> cesql::Evaluation {
    let src = format!("subject LIKE '{}'", pattern.replace('\'', "''"));
    cesql::Expression::parse(&src).expect("parses").evaluate(&event_with_subject(subject.to_string()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]
    #[test]
    fn like_equals_the_reference_matcher(s in "[ab%_]{0,12}", p in "[ab%_\\\\]{0,10}") {
        // A final backslash would escape the literal's closing quote.
        let p = if p.ends_with('\\') { format!("{p}a") } else { p };
        let e = like(&s, &p);
        prop_assert!(e.errors.is_empty(), "{:?}", e.errors);
        prop_assert_eq!(e.value, cesql::Value::Bool(like_reference(&s, &p)), "{:?} LIKE {:?}", s, p);
    }

    #[test]
    fn long_wildcard_pieces_equal_the_reference(n in 60usize..140, hole in 0usize..60, tail in "[ab]{0,3}") {
        // Pieces past one 64-bit word exercise the multi-word shift-and.
        let text = format!("{}{}", "ab".repeat(n), tail);
        let mut piece: Vec<char> = "ab".repeat(40).chars().collect();
        piece[hole] = '_';
        let p = format!("%{}%", piece.iter().collect::<String>());
        let e = like(&text, &p);
        prop_assert_eq!(e.value, cesql::Value::Bool(like_reference(&text, &p)));
    }
}

#[test]
fn like_with_a_30000_character_pattern_on_a_1_mb_subject_is_linear() {
    // The probe's case: backtracking to the last `%` made this O(pattern × subject), 29.6 s.
    let subject = "a".repeat(1 << 20);
    let pattern = format!("{}b", "%a".repeat(15_000));
    let e = like(&subject, &pattern);
    assert!(e.errors.is_empty(), "{:?}", e.errors);
    assert_eq!(e.value, cesql::Value::Bool(false));
    let pattern = format!("{}%", "%a".repeat(15_000));
    assert_eq!(like(&subject, &pattern).value, cesql::Value::Bool(true));
    // One literal piece of 30,000 characters: found by Knuth-Morris-Pratt, not by retrying each start.
    let subject = format!("{}b", "a".repeat(1 << 20));
    let pattern = format!("%{}b", "a".repeat(30_000));
    assert_eq!(like(&subject, &pattern).value, cesql::Value::Bool(true));
}

#[test]
fn a_cesql_evaluation_over_its_budget_fails_that_filter_only() {
    // 500 comparisons of a 1 MB attribute touch 1 GB: over the budget, so no match.
    // (A balanced tree of ANDs: a flat chain would nest past the depth bound.)
    fn balanced(terms: &[&str]) -> String {
        match terms {
            [one] => one.to_string(),
            _ => {
                let (a, b) = terms.split_at(terms.len() / 2);
                format!("({} AND {})", balanced(a), balanced(b))
            }
        }
    }
    let src = balanced(&vec!["subject = subject"; 500]);
    let expr = cesql::Expression::parse(&src).expect("admitted");
    let big = event_with_subject("x".repeat(1 << 20));
    let e = expr.evaluate(&big);
    assert!(e.errors.contains(&cesql::ErrorKind::Budget), "{:?}", e.errors);
    assert!(!Filter::cesql(&src).unwrap().matches(&big));
    // The same filter on an ordinary event is within budget and matches.
    assert!(Filter::cesql(&src).unwrap().matches(&event_with_subject("hello".into())));
    // A wildcard piece longer than a word costs subject × words: a 1 MB subject
    // against a 60,000-character `_` piece is over budget, refused before it scans.
    let pattern = format!("%{}%", "a_".repeat(30_000));
    let e = like(&"a".repeat(1 << 20), &pattern);
    assert!(e.errors.contains(&cesql::ErrorKind::Budget), "{:?}", e.errors);
}

fn json_event(data: String) -> CloudEvent {
    let mut e = CloudEvent::new("1", "/s", "t");
    e.datacontenttype = Some("application/json".into());
    e.data = Some(Bytes::from(data));
    e.set_extension("n", ExtValue::Integer(1));
    e
}

#[test]
fn a_quadratic_cel_filter_fails_on_a_large_event_without_running() {
    let f = Filter::cel("data.a.exists(x, x in data.b)").expect("admitted: one comprehension");
    // Small: runs and matches.
    assert!(f.matches(&json_event(r#"{"a": [1, 2], "b": [2]}"#.into())));
    // 240 KB: 11.2 s when it ran; the estimate (S^2) refuses it at once.
    let list = |v: u32| (0..40_000).map(|_| v.to_string()).collect::<Vec<_>>().join(",");
    let big = json_event(format!(r#"{{"a": [{}], "b": [{},2]}}"#, list(1), list(3)));
    assert!(big.data.as_ref().unwrap().len() > 150_000);
    assert!(!f.matches(&big));
    // A linear filter over the same event still runs (and matches).
    let linear = Filter::cel("data.a.exists(x, x == 1)").unwrap();
    assert!(linear.matches(&big));
}
