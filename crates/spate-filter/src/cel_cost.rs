//! A static cost estimate for CEL filters, in the spirit of cel-go's (which
//! Knative's CEL limits use): computed once at admission as a polynomial in
//! the event's size `S` (bytes of data plus attributes), evaluated per event
//! before the expression runs. An event whose estimate exceeds
//! [`MAX_COST`] fails the filter for that event without running it.
//!
//! The estimate: every node costs 1 per time it runs; a node that does work
//! linear in its operands (`in`, `==`, `+`, `size`, string search, regex)
//! costs `S` when an operand reads `data` or `event` (or a comprehension's
//! growing accumulator). A comprehension whose range reads `data` or
//! `event` runs its body up to `S` times; one over a loop variable's value
//! does not multiply (summed over the outer loop, those values total `S`).
//! So `data.items.exists(i, i.kind == 'x')` is linear and
//! `data.a.exists(x, x in data.b)` quadratic.

use cel::common::ast::{EntryExpr, Expr, IdedExpr};

/// The work an evaluation may do, in units of about one element or byte
/// touched: 10^8, some tens of milliseconds at most. A quadratic filter
/// reaches it at about 10 KB of data; a linear one never does under the
/// codec's size limits.
pub const MAX_COST: u64 = 100_000_000;

/// Polynomial degrees above this are counted as this one (the estimate only
/// grows, so the bound still holds).
const MAX_DEGREE: usize = 6;

/// `coef[d]` multiplies `S^d`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CostModel {
    coef: [u64; MAX_DEGREE + 1],
}

impl CostModel {
    pub fn of(root: &IdedExpr) -> CostModel {
        let mut m = CostModel::default();
        walk(root, 0, &mut Vec::new(), &mut m);
        m
    }

    /// The estimate for an event of `size` bytes (saturating).
    pub fn estimate(&self, size: u64) -> u64 {
        let mut total = 0u64;
        let mut power = 1u64;
        for c in self.coef {
            total = total.saturating_add(c.saturating_mul(power));
            power = power.saturating_mul(size.max(1));
        }
        total
    }

    /// The highest power of the event's size in the estimate.
    pub fn degree(&self) -> usize {
        self.coef.iter().rposition(|c| *c > 0).unwrap_or(0)
    }

    fn add(&mut self, degree: usize) {
        let d = degree.min(MAX_DEGREE);
        self.coef[d] = self.coef[d].saturating_add(1);
    }
}

/// Calls whose work grows with their operands.
fn linear(func: &str) -> bool {
    matches!(
        func,
        "@in"
            | "_==_"
            | "_!=_"
            | "_+_"
            | "size"
            | "contains"
            | "startsWith"
            | "endsWith"
            | "matches"
            | "string"
            | "_<_"
            | "_<=_"
            | "_>_"
            | "_>=_"
            | "_[_]"
    )
}

/// Whether `e` reads a value as large as the event: `data`, `event`, or an
/// accumulator named in `large` (a `map`/`filter` result grows with its range).
fn reads_large(e: &IdedExpr, large: &[String]) -> bool {
    match &e.expr {
        Expr::Ident(name) => name == "data" || name == "event" || large.iter().any(|l| l == name),
        other => children(other).iter().any(|c| reads_large(c, large)),
    }
}

fn children(e: &Expr) -> Vec<&IdedExpr> {
    match e {
        Expr::Call(c) => c.target.iter().map(|t| &**t).chain(c.args.iter()).collect(),
        Expr::Comprehension(c) => vec![&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result],
        Expr::List(l) => l.elements.iter().collect(),
        Expr::Map(m) => entries(&m.entries),
        Expr::Struct(s) => entries(&s.entries),
        Expr::Select(s) => vec![&*s.operand],
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => vec![],
    }
}

fn entries(list: &[cel::common::ast::IdedEntryExpr]) -> Vec<&IdedExpr> {
    list.iter()
        .flat_map(|e| match &e.expr {
            EntryExpr::StructField(f) => vec![&f.value],
            EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
        })
        .collect()
}

fn walk(e: &IdedExpr, loops: usize, large: &mut Vec<String>, m: &mut CostModel) {
    match &e.expr {
        Expr::Comprehension(c) => {
            m.add(loops);
            walk(&c.iter_range, loops, large, m);
            walk(&c.accu_init, loops, large, m);
            let inner = if reads_large(&c.iter_range, large) { loops + 1 } else { loops };
            // A list accumulator (map, filter) grows with the range: treat it as large.
            let grows = matches!(c.accu_init.expr, Expr::List(_));
            if grows {
                large.push(c.accu_var.clone());
            }
            for part in [&c.loop_cond, &c.loop_step] {
                walk(part, inner, large, m);
            }
            walk(&c.result, loops, large, m);
            if grows {
                large.pop();
            }
        }
        Expr::Call(call) => {
            let heavy = linear(&call.func_name)
                && (call.target.iter().any(|t| reads_large(t, large))
                    || call.args.iter().any(|a| reads_large(a, large)));
            m.add(if heavy { loops + 1 } else { loops });
            for c in children(&e.expr) {
                walk(c, loops, large, m);
            }
        }
        other => {
            m.add(loops);
            for c in children(other) {
                walk(c, loops, large, m);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(src: &str) -> CostModel {
        CostModel::of(cel::Program::compile(src).unwrap().expression())
    }

    #[test]
    fn degrees_follow_the_loops_over_the_event() {
        for (src, degree) in [
            ("event.type == 'x'", 1),
            ("data.score > 0.8", 1),
            ("1 + 2 == 3", 0),
            ("data.items.exists(i, i.kind == 'x')", 1),
            ("data.a.exists(x, x in data.b)", 2),
            ("data.a.exists(x, data.b.exists(y, x == y))", 2),
            ("data.a.exists(x, data.b.exists(y, data.c.exists(z, x == y && y == z)))", 3),
            ("data.a.exists(x, x.exists(y, y == 1))", 1),
            ("size(data.a.map(x, x)) > 0", 2),
        ] {
            assert_eq!(model(src).degree(), degree, "{src}");
        }
    }

    #[test]
    fn the_estimate_grows_with_the_event_and_saturates() {
        let m = model("data.a.exists(x, x in data.b)");
        assert!(m.estimate(1_000) < MAX_COST);
        assert!(m.estimate(240_000) > MAX_COST);
        assert_eq!(model("data.a.exists(x, data.b.exists(y, data.c.exists(z, data.d.exists(w, data.e.exists(v, data.f.exists(u, data.g.exists(t, t == u)))))))").estimate(u64::MAX), u64::MAX);
    }
}
