//! Hostile expressions: deep nesting and huge chains are refused at compile
//! time (never a stack overflow), the largest admitted ones evaluate on a
//! tokio-sized (2 MiB) stack, and a deterministic mutation run feeds random
//! expressions and events to both dialects without a panic.

use bytes::Bytes;
use spate_core::{CloudEvent, ExtValue};
use spate_filter::{Filter, FilterError, cel, cesql};

/// Runs `f` on a thread with the stack of a tokio worker (2 MiB), as the
/// router and the built-in filter function do; a stack overflow aborts the test.
fn on_worker_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new().stack_size(2 * 1024 * 1024).spawn(f).expect("spawn").join().expect("no panic")
}

fn event() -> CloudEvent {
    let mut e = CloudEvent::new("1", "/s", "x");
    e.set_extension("n", ExtValue::Integer(7));
    e.data = Some(Bytes::from_static(br#"{"a": {"b": [1, 2, 3]}, "s": "hello"}"#));
    e.datacontenttype = Some("application/json".into());
    e
}

fn first_message(r: Result<Filter, Vec<FilterError>>) -> String {
    match r {
        Ok(f) => panic!("expected a refusal, compiled {f:?}"),
        Err(errs) => errs[0].message.clone(),
    }
}

#[test]
fn cesql_nesting_3000_deep_is_refused() {
    let src = format!("{}true{}", "(".repeat(3000), ")".repeat(3000));
    let msg = on_worker_stack(move || first_message(Filter::cesql(&src)));
    assert!(msg.contains("nests deeper than"), "{msg}");
    let src = format!("{}true", "NOT ".repeat(3000));
    let msg = on_worker_stack(move || first_message(Filter::cesql(&src)));
    assert!(msg.contains("nests deeper than"), "{msg}");
    let src = format!("{}1", "-".repeat(3000));
    let msg = on_worker_stack(move || first_message(Filter::cesql(&src)));
    assert!(msg.contains("nests deeper than"), "{msg}");
}

#[test]
fn cesql_chain_of_8000_terms_is_refused() {
    let src = vec!["type = 'x'"; 8000].join(" AND ");
    let msg = on_worker_stack(move || first_message(Filter::cesql(&src)));
    assert!(msg.contains("more than") || msg.contains("nests deeper") || msg.contains("bytes long"), "{msg}");
    let src = vec!["true"; 5000].join(" AND ");
    let msg = on_worker_stack(move || first_message(Filter::cesql(&src)));
    assert!(msg.contains("more than") || msg.contains("nests deeper") || msg.contains("bytes long"), "{msg}");
}

#[test]
fn the_largest_admitted_cesql_evaluates_correctly_on_a_worker_stack() {
    let depth = cesql::MAX_DEPTH - 2;
    // Parentheses and a chain, each as deep as admission allows.
    let nested = format!("{}type = 'x'{}", "(".repeat(depth), ")".repeat(depth));
    let chain = vec!["n = 7"; depth].join(" AND ");
    let negs = format!("{}true", "NOT NOT ".repeat(depth / 2 - 1));
    for src in [nested, chain, negs] {
        let got = on_worker_stack(move || Filter::cesql(&src).expect("admitted").matches(&event()));
        assert!(got);
    }
}

#[test]
fn cel_nesting_3000_deep_and_8000_terms_are_refused() {
    for src in [
        format!("{}true{}", "(".repeat(3000), ")".repeat(3000)),
        format!("{}1{}", "[".repeat(3000), "]".repeat(3000)),
        vec!["event.type == 'x'"; 8000].join(" && "),
        vec!["1"; 8000].join(" + "),
        format!("data{}", ".a".repeat(8000)),
        format!("{}true", "!".repeat(8000)),
    ] {
        let msg = on_worker_stack(move || first_message(Filter::cel(&src)));
        assert!(msg.contains("nests deeper than") || msg.contains("operators") || msg.contains("bytes long"), "{msg}");
    }
}

#[test]
fn the_largest_admitted_cel_evaluates_on_a_worker_stack() {
    let nested = format!("{}event.n == 7{}", "(".repeat(cel::MAX_NESTING), ")".repeat(cel::MAX_NESTING));
    let chain = vec!["event.n == 7"; cel::MAX_OPERATORS / 2].join(" && ");
    let sum = format!("{} == {}", vec!["1"; cel::MAX_OPERATORS - 1].join(" + "), cel::MAX_OPERATORS - 1);
    for src in [nested, chain, sum] {
        // Either the engine refuses it (its own recursion limit) or it evaluates to true.
        let got = on_worker_stack(move || Filter::cel(&src).map(|f| f.matches(&event())));
        assert!(got.clone().unwrap_or(true), "{got:?}");
    }
}

/// xorshift64*: deterministic, dependency-free randomness for the mutation run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

const CESQL_ATOMS: &[&str] = &[
    "type",
    "source",
    "n",
    "id",
    "subject",
    "'x'",
    "\"a%b_\"",
    "1",
    "-2147483648",
    "2147483647",
    "0",
    "TRUE",
    "false",
    "EXISTS n",
    "LENGTH(type)",
    "CONCAT(type, 'y')",
    "SUBSTRING(type, -1, 1)",
    "ABS(n)",
    "INT('12')",
    "BOOL('x')",
    "UPPER(type)",
    "missing",
];
const CESQL_OPS: &[&str] =
    &[" AND ", " OR ", " XOR ", " = ", " != ", " <> ", " < ", " <= ", " + ", " - ", " * ", " / ", " % "];
const CEL_ATOMS: &[&str] = &[
    "event.type",
    "event.n",
    "data",
    "data.a",
    "data.a.b",
    "data.s",
    "'x'",
    "\"y\"",
    "1",
    "2u",
    "1.5",
    "true",
    "null",
    "[1, 2]",
    "{'k': 1}",
    "has(event.subject)",
    "size(data.s)",
    "data.a.b.map(x, x * 2)",
    "int('3')",
    "b'ab'",
];
const CEL_OPS: &[&str] = &[" && ", " || ", " == ", " != ", " < ", " + ", " - ", " * ", " / ", " % ", " in "];

/// A grammatical expression (bounded depth) of the dialect, so most compile.
fn grammatical(rng: &mut Rng, cesql: bool, depth: u32) -> String {
    let (atoms, ops) = if cesql { (CESQL_ATOMS, CESQL_OPS) } else { (CEL_ATOMS, CEL_OPS) };
    if depth == 0 {
        return rng.pick(atoms).to_string();
    }
    let a = grammatical(rng, cesql, depth - 1);
    match rng.next() % 6 {
        0 => format!("({a})"),
        1 => format!("{}{a}", if cesql { "NOT " } else { "!" }),
        2 if cesql => format!("{a} LIKE '{}'", rng.pick(&["x%", "_", "%a\\%"])),
        2 => format!("{a} ? {} : {}", grammatical(rng, cesql, depth - 1), rng.pick(atoms)),
        3 if cesql => format!("{a} IN ({}, {})", rng.pick(atoms), rng.pick(atoms)),
        _ => format!("{a}{}{}", rng.pick(ops), grammatical(rng, cesql, depth - 1)),
    }
}

fn random_expr(rng: &mut Rng, cesql: bool) -> String {
    let depth = (rng.next() % 5) as u32;
    let s = grammatical(rng, cesql, depth);
    if !rng.next().is_multiple_of(3) {
        return s;
    }
    // Mutate a few bytes: insert, delete or replace at random positions.
    let mut b = s.into_bytes();
    for _ in 0..=(rng.next() % 3) {
        let at = (rng.next() as usize) % (b.len() + 1);
        match rng.next() % 3 {
            0 => b.insert(at, b"()'\"\\%_,.[]{}!=<>"[(rng.next() % 17) as usize]),
            1 if at < b.len() => {
                b.remove(at);
            }
            _ if at < b.len() => b[at] = (rng.next() % 128) as u8,
            _ => {}
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn random_event(rng: &mut Rng) -> CloudEvent {
    let mut e = CloudEvent::new(format!("id{}", rng.next() % 10), "/s", rng.pick(&["x", "y", "", "a%b_c"]));
    if rng.next().is_multiple_of(2) {
        e.set_extension("n", ExtValue::Integer((rng.next() % 5) as i32 - 2));
    } else if rng.next().is_multiple_of(2) {
        e.set_extension("n", ExtValue::String(rng.pick(&["7", "x", "true", ""]).to_string()));
    }
    let data: &[u8] = match rng.next() % 4 {
        0 => br#"{"a": {"b": [1, 2, 3]}, "s": "hello"}"#,
        1 => b"not json",
        2 => &[0xff, 0x00, 0x80],
        _ => b"",
    };
    e.data = Some(Bytes::copy_from_slice(data));
    e
}

#[test]
fn random_and_mutated_expressions_never_panic_and_are_deterministic() {
    let (compiled, evaluated) = on_worker_stack(|| {
        let mut rng = Rng(0x5EED_CAFE_F00D_D00D);
        let (mut compiled, mut evaluated) = (0usize, 0usize);
        for i in 0..4000 {
            let cesql = i % 2 == 0;
            let src = random_expr(&mut rng, cesql);
            let f = if cesql { Filter::cesql(&src) } else { Filter::cel(&src) };
            let Ok(f) = f else { continue };
            compiled += 1;
            for _ in 0..4 {
                let ev = random_event(&mut rng);
                // The same filter on the same event always gives the same answer.
                assert_eq!(f.matches(&ev), f.matches(&ev), "{src}");
                evaluated += 1;
            }
        }
        (compiled, evaluated)
    });
    println!("mutation run: {compiled} of 4000 expressions compiled, {evaluated} evaluations");
    assert!(compiled > 1000, "the generator should produce many valid expressions, got {compiled}");
}

#[test]
fn nested_cel_comprehensions_are_refused_and_single_ones_run() {
    // A 1 MiB payload can hold a list of ~500,000 numbers: one comprehension over it is
    // linear; one inside another would be quadratic in what a sender controls.
    let msg = first_message(Filter::cel("data.a.b.all(x, data.a.b.exists(y, x == y))"));
    assert!(msg.contains("nested comprehensions"), "{msg}");
    let msg = first_message(Filter::cel("data.a.b.map(x, [x].filter(y, y > 0)).size() > 0"));
    assert!(msg.contains("nested comprehensions"), "{msg}");
    let ok =
        Filter::cel("data.a.b.exists(x, x == 2) && data.a.b.all(y, y > 0)").expect("two comprehensions side by side");
    assert!(ok.matches(&event()));
    // A string that merely mentions a macro is not one.
    assert!(Filter::cel("data.s == '.map(x, x.all(y, y))'").is_ok());
}

#[test]
fn cesql_string_functions_cannot_build_unbounded_strings() {
    // 2,000 copies of a 1,000-character attribute would be 2 MB: an evaluation error, no match.
    let src = format!("LENGTH(CONCAT({})) > 0", vec!["big"; 2000].join(", "));
    let f = Filter::cesql(&src).expect("admitted");
    let mut ev = event();
    ev.set_extension("big", ExtValue::String("x".repeat(1000)));
    assert!(!f.matches(&ev));
    let e = cesql::Expression::parse(&src).unwrap().evaluate(&ev);
    assert!(e.errors.contains(&cesql::ErrorKind::FunctionEvaluation), "{:?}", e.errors);
    // Small results are unaffected.
    assert!(Filter::cesql("CONCAT_WS('-', 'a', 'b') = 'a-b'").unwrap().matches(&ev));
}
