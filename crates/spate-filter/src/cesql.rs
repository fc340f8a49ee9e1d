//! CloudEvents SQL (CESQL) v1.0: our own lexer, parser, static typing and
//! evaluator. Every evaluation returns a value plus the errors it met
//! (spec §3.3); a filter matches only on `true` with no error.

use std::fmt;

use spate_core::{CloudEvent, ExtValue};

/// A CESQL value (spec §3.1). Timestamps and URIs are strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Int(i32),
    Bool(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Str,
    Int,
    Bool,
    /// An attribute: the type is known only at evaluation.
    Any,
}

impl Type {
    fn zero(self) -> Value {
        match self {
            Type::Str => Value::Str(String::new()),
            Type::Int => Value::Int(0),
            Type::Bool | Type::Any => Value::Bool(false),
        }
    }
}

impl Value {
    fn ty(&self) -> Type {
        match self {
            Value::Str(_) => Type::Str,
            Value::Int(_) => Type::Int,
            Value::Bool(_) => Type::Bool,
        }
    }
}

/// Error kinds of spec §3.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Parse,
    Math,
    Cast,
    MissingAttribute,
    MissingFunction,
    FunctionEvaluation,
    Generic,
    /// Spate's bound, not the spec's: the evaluation needed more than
    /// [`MAX_COST`] units of work on this event (the filter fails for it).
    Budget,
}

/// The work one evaluation may do, in units of about one byte touched: each
/// operand costs one plus the length of the string it yields, and LIKE costs
/// the length of its subject (times the 64-character words of its longest
/// `_` piece). About 16 MB of string work, a few milliseconds: far above
/// any filter over ordinary events, far below a stalled router.
pub const MAX_COST: u64 = 16 * 1024 * 1024;

/// The deepest expression tree admitted. A chain `a AND b AND c` is a
/// left-deep tree, so each operator of a chain counts as one level, as do
/// parentheses, `NOT`, negation and function calls. Parsing, typing and
/// evaluation recurse at most this deep (far below a 2 MiB thread stack).
pub const MAX_DEPTH: usize = 128;
/// The largest expression admitted, in tokens (a term, operator, parenthesis or comma each count).
pub const MAX_TOKENS: usize = 4096;
/// The longest expression text admitted, in bytes.
pub const MAX_SOURCE_BYTES: usize = 64 * 1024;
/// The longest string a function may build (CONCAT of a large attribute, repeated): an error beyond.
pub const MAX_STRING_BYTES: usize = 1024 * 1024;

/// A parse error with the byte position in the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub position: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at position {}: {}", self.position + 1, self.message)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    And,
    Or,
    Xor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Length,
    Concat,
    ConcatWs,
    Lower,
    Upper,
    Trim,
    Left,
    Right,
    Substring,
    Abs,
    Int,
    Bool,
    String,
}

impl Func {
    fn lookup(name: &str, arity: usize) -> Option<Func> {
        let f = match name.to_ascii_uppercase().as_str() {
            "LENGTH" if arity == 1 => Func::Length,
            "CONCAT" => Func::Concat,
            "CONCAT_WS" if arity >= 1 => Func::ConcatWs,
            "LOWER" if arity == 1 => Func::Lower,
            "UPPER" if arity == 1 => Func::Upper,
            "TRIM" if arity == 1 => Func::Trim,
            "LEFT" if arity == 2 => Func::Left,
            "RIGHT" if arity == 2 => Func::Right,
            "SUBSTRING" if arity == 2 || arity == 3 => Func::Substring,
            "ABS" if arity == 1 => Func::Abs,
            "INT" if arity == 1 => Func::Int,
            "BOOL" if arity == 1 => Func::Bool,
            "STRING" if arity == 1 => Func::String,
            _ => return None,
        };
        Some(f)
    }
    fn ret(self) -> Type {
        match self {
            Func::Length | Func::Abs | Func::Int => Type::Int,
            Func::Bool => Type::Bool,
            _ => Type::Str,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LikePart {
    /// `%`
    Any,
    /// `_`
    One,
    Char(char),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    Lit(Value),
    Attr(String),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    Like { expr: Box<Expr>, pattern: Vec<LikePart>, negated: bool },
    Exists(String),
    In { expr: Box<Expr>, set: Vec<Expr>, negated: bool },
    Call { func: Option<Func>, name: String, args: Vec<Expr> },
}

impl Expr {
    fn ty(&self) -> Type {
        match self {
            Expr::Lit(v) => v.ty(),
            Expr::Attr(_) => Type::Any,
            Expr::Neg(_) => Type::Int,
            Expr::Bin(op, ..) => match op {
                BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod => Type::Int,
                _ => Type::Bool,
            },
            Expr::Call { func: Some(f), .. } => f.ret(),
            Expr::Not(_) | Expr::Like { .. } | Expr::Exists(_) | Expr::In { .. } | Expr::Call { func: None, .. } => {
                Type::Bool
            }
        }
    }
}

/// A compiled CESQL expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    root: Expr,
    source: String,
}

// ---------------------------------------------------------------- lexer

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Int(u64),
    Str(String),
    Ident(String),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
    End,
}

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let b = src.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    let err = |position: usize, message: String| ParseError { position, message };
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => (out.push((Tok::LParen, start)), i += 1).1,
            b')' => (out.push((Tok::RParen, start)), i += 1).1,
            b',' => (out.push((Tok::Comma, start)), i += 1).1,
            b'0'..=b'9' => {
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i < b.len() && (b[i].is_ascii_alphabetic() || b[i] == b'_') {
                    return Err(err(start, format!("'{}' is not a number or an identifier", &src[start..=i])));
                }
                let n: u64 = src[start..i].parse().map_err(|_| err(start, "integer literal out of range".into()))?;
                out.push((Tok::Int(n), start));
            }
            b'\'' | b'"' => {
                let q = c as char;
                let mut s = String::new();
                let mut chars = src[i + 1..].char_indices();
                let mut closed = None;
                while let Some((k, ch)) = chars.next() {
                    if ch == '\\' {
                        match chars.next() {
                            Some((_, n)) if n == q => s.push(q),
                            Some((_, n)) => {
                                s.push('\\');
                                s.push(n);
                            }
                            None => s.push('\\'),
                        }
                    } else if ch == q {
                        closed = Some(i + 1 + k + 1);
                        break;
                    } else {
                        s.push(ch);
                    }
                }
                let Some(end) = closed else { return Err(err(start, "unterminated string literal".into())) };
                out.push((Tok::Str(s), start));
                i = end;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push((Tok::Ident(src[start..i].to_string()), start));
            }
            _ => {
                let two = src.get(i..i + 2).unwrap_or("");
                let op: &'static str = match two {
                    "!=" => "!=",
                    "<>" => "<>",
                    "<=" => "<=",
                    ">=" => ">=",
                    _ => match c {
                        b'=' => "=",
                        b'<' => "<",
                        b'>' => ">",
                        b'+' => "+",
                        b'-' => "-",
                        b'*' => "*",
                        b'/' => "/",
                        b'%' => "%",
                        _ => {
                            let ch = src[i..].chars().next().unwrap_or('?');
                            return Err(err(start, format!("unexpected character '{ch}'")));
                        }
                    },
                };
                i += op.len();
                out.push((Tok::Op(op), start));
            }
        }
    }
    out.push((Tok::End, src.len()));
    Ok(out)
}

// ---------------------------------------------------------------- parser

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    /// Current nesting (tree depth) while parsing; refused beyond [`MAX_DEPTH`].
    depth: usize,
}

fn keyword(t: &Tok, kw: &str) -> bool {
    matches!(t, Tok::Ident(s) if s.eq_ignore_ascii_case(kw))
}

const KEYWORDS: &[&str] = &["AND", "OR", "XOR", "NOT", "LIKE", "IN", "EXISTS", "TRUE", "FALSE"];

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].0
    }
    fn peek_at(&self, k: usize) -> &Tok {
        &self.toks[(self.pos + k).min(self.toks.len() - 1)].0
    }
    fn at(&self) -> usize {
        self.toks[self.pos].1
    }
    fn bump(&mut self) -> Tok {
        let t = self.toks[self.pos].0.clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }
    /// Enters one tree level; an error once the expression nests deeper than [`MAX_DEPTH`].
    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err(format!(
                "expression nests deeper than {MAX_DEPTH} levels (each parenthesis, NOT, function call and chained operator is one level)"
            ));
        }
        Ok(())
    }

    /// Builds a binary node of a left-deep chain: the chain's length counts as depth.
    fn chain(&mut self, levels: &mut usize, op: BinOp, left: Expr, right: Expr) -> Result<Expr, ParseError> {
        self.enter()?;
        *levels += 1;
        Ok(Expr::Bin(op, Box::new(left), Box::new(right)))
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError { position: self.at(), message: message.into() })
    }
    fn describe(t: &Tok) -> String {
        match t {
            Tok::Int(n) => format!("number {n}"),
            Tok::Str(s) => format!("string '{s}'"),
            Tok::Ident(s) => format!("'{s}'"),
            Tok::Op(o) => format!("'{o}'"),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::Comma => "','".into(),
            Tok::End => "the end of the expression".into(),
        }
    }

    fn logic(&mut self) -> Result<Expr, ParseError> {
        let mut levels = 0;
        let r = self.logic_chain(&mut levels);
        self.depth -= levels;
        r
    }

    fn logic_chain(&mut self, levels: &mut usize) -> Result<Expr, ParseError> {
        let mut left = self.cmp()?;
        loop {
            let op = match self.peek() {
                t if keyword(t, "AND") => BinOp::And,
                t if keyword(t, "OR") => BinOp::Or,
                t if keyword(t, "XOR") => BinOp::Xor,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.cmp()?;
            left = self.chain(levels, op, left, right)?;
        }
    }

    fn cmp(&mut self) -> Result<Expr, ParseError> {
        let mut levels = 0;
        let r = self.cmp_chain(&mut levels);
        self.depth -= levels;
        r
    }

    fn cmp_chain(&mut self, levels: &mut usize) -> Result<Expr, ParseError> {
        let mut left = self.add()?;
        loop {
            let op = match self.peek() {
                Tok::Op("=") => BinOp::Eq,
                Tok::Op("!=") | Tok::Op("<>") => BinOp::Ne,
                Tok::Op("<") => BinOp::Lt,
                Tok::Op("<=") => BinOp::Le,
                Tok::Op(">") => BinOp::Gt,
                Tok::Op(">=") => BinOp::Ge,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.add()?;
            left = self.chain(levels, op, left, right)?;
        }
    }

    fn add(&mut self) -> Result<Expr, ParseError> {
        let mut levels = 0;
        let r = self.add_chain(&mut levels);
        self.depth -= levels;
        r
    }

    fn add_chain(&mut self, levels: &mut usize) -> Result<Expr, ParseError> {
        let mut left = self.mul()?;
        loop {
            let op = match self.peek() {
                Tok::Op("+") => BinOp::Add,
                Tok::Op("-") => BinOp::Sub,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.mul()?;
            left = self.chain(levels, op, left, right)?;
        }
    }

    fn mul(&mut self) -> Result<Expr, ParseError> {
        let mut levels = 0;
        let r = self.mul_chain(&mut levels);
        self.depth -= levels;
        r
    }

    fn mul_chain(&mut self, levels: &mut usize) -> Result<Expr, ParseError> {
        let mut left = self.postfix()?;
        loop {
            let op = match self.peek() {
                Tok::Op("*") => BinOp::Mul,
                Tok::Op("/") => BinOp::Div,
                Tok::Op("%") => BinOp::Mod,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.postfix()?;
            left = self.chain(levels, op, left, right)?;
        }
    }

    /// `x [NOT] LIKE 'pattern'` and `x [NOT] IN (set)`.
    fn postfix(&mut self) -> Result<Expr, ParseError> {
        let mut levels = 0;
        let r = self.postfix_chain(&mut levels);
        self.depth -= levels;
        r
    }

    fn postfix_chain(&mut self, levels: &mut usize) -> Result<Expr, ParseError> {
        let mut e = self.unary()?;
        loop {
            if keyword(self.peek(), "LIKE") || keyword(self.peek(), "IN") || keyword(self.peek(), "NOT") {
                self.enter()?;
                *levels += 1;
            }
            let negated =
                keyword(self.peek(), "NOT") && (keyword(self.peek_at(1), "LIKE") || keyword(self.peek_at(1), "IN"));
            if negated {
                self.bump();
            }
            if keyword(self.peek(), "LIKE") {
                self.bump();
                let Tok::Str(p) = self.peek().clone() else {
                    return self
                        .err(format!("LIKE needs a string literal pattern, found {}", Self::describe(self.peek())));
                };
                self.bump();
                e = Expr::Like { expr: Box::new(e), pattern: like_pattern(&p), negated };
            } else if keyword(self.peek(), "IN") {
                self.bump();
                if self.peek() != &Tok::LParen {
                    return self.err(format!("IN needs a parenthesized list, found {}", Self::describe(self.peek())));
                }
                self.bump();
                let mut set = vec![self.logic()?];
                while self.peek() == &Tok::Comma {
                    self.bump();
                    set.push(self.logic()?);
                }
                self.expect_rparen()?;
                e = Expr::In { expr: Box::new(e), set, negated };
            } else {
                return Ok(e);
            }
        }
    }

    fn expect_rparen(&mut self) -> Result<(), ParseError> {
        if self.peek() == &Tok::RParen {
            self.bump();
            Ok(())
        } else {
            self.err(format!("expected ')', found {}", Self::describe(self.peek())))
        }
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        match self.peek().clone() {
            t if keyword(&t, "NOT") => {
                self.bump();
                self.enter()?;
                let inner = self.unary();
                self.depth -= 1;
                Ok(Expr::Not(Box::new(inner?)))
            }
            Tok::Op(sign @ ("-" | "+")) => {
                self.bump();
                if let Tok::Int(n) = *self.peek() {
                    // A signed integer literal; -2147483648 is valid only this way.
                    self.bump();
                    let v = if sign == "-" { -(n as i64) } else { n as i64 };
                    return i32::try_from(v)
                        .map(|v| Expr::Lit(Value::Int(v)))
                        .or_else(|_| self.err(format!("{v} does not fit a 32-bit integer")));
                }
                if sign == "+" {
                    return self.err("'+' is only allowed before an integer literal");
                }
                self.enter()?;
                let inner = self.unary();
                self.depth -= 1;
                Ok(Expr::Neg(Box::new(inner?)))
            }
            t if keyword(&t, "EXISTS") => {
                self.bump();
                match self.bump() {
                    Tok::Ident(name) if is_attr_name(&name) => Ok(Expr::Exists(name.to_ascii_lowercase())),
                    other => self.err(format!("EXISTS needs an attribute name, found {}", Self::describe(&other))),
                }
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let opens = matches!(self.peek(), Tok::LParen | Tok::Ident(_)) && matches!(self.peek_at(1), Tok::LParen)
            || matches!(self.peek(), Tok::LParen);
        if opens {
            self.enter()?;
        }
        let r = self.primary_inner();
        if opens {
            self.depth -= 1;
        }
        r
    }

    fn primary_inner(&mut self) -> Result<Expr, ParseError> {
        let at = self.at();
        match self.bump() {
            Tok::Int(n) => i32::try_from(n)
                .map(|v| Expr::Lit(Value::Int(v)))
                .map_err(|_| ParseError { position: at, message: format!("{n} does not fit a 32-bit integer") }),
            Tok::Str(s) => Ok(Expr::Lit(Value::Str(s))),
            Tok::LParen => {
                let e = self.logic()?;
                self.expect_rparen()?;
                Ok(e)
            }
            Tok::Ident(name) if name.eq_ignore_ascii_case("TRUE") => Ok(Expr::Lit(Value::Bool(true))),
            Tok::Ident(name) if name.eq_ignore_ascii_case("FALSE") => Ok(Expr::Lit(Value::Bool(false))),
            Tok::Ident(name) if self.peek() == &Tok::LParen => {
                self.bump();
                let mut args = vec![];
                if self.peek() != &Tok::RParen {
                    args.push(self.logic()?);
                    while self.peek() == &Tok::Comma {
                        self.bump();
                        args.push(self.logic()?);
                    }
                }
                self.expect_rparen()?;
                Ok(Expr::Call { func: Func::lookup(&name, args.len()), name, args })
            }
            Tok::Ident(name) if KEYWORDS.iter().any(|k| name.eq_ignore_ascii_case(k)) => {
                Err(ParseError { position: at, message: format!("unexpected keyword {}", name.to_ascii_uppercase()) })
            }
            Tok::Ident(name) if is_attr_name(&name) => Ok(Expr::Attr(name.to_ascii_lowercase())),
            Tok::Ident(name) => Err(ParseError {
                position: at,
                message: format!("'{name}' is not a valid attribute name (letters and digits only)"),
            }),
            other => {
                Err(ParseError { position: at, message: format!("expected a value, found {}", Self::describe(&other)) })
            }
        }
    }
}

/// Attribute identifiers: letters and digits. CloudEvents names are lowercase,
/// so identifiers are matched case-insensitively (the TCK's `EXISTS SOURCE`).
fn is_attr_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn like_pattern(p: &str) -> Vec<LikePart> {
    let mut out = vec![];
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        match c {
            // `\` escapes only `%` and `_`; before anything else it is a literal backslash.
            '\\' => match chars.clone().next() {
                Some(n @ ('%' | '_')) => {
                    chars.next();
                    out.push(LikePart::Char(n));
                }
                _ => out.push(LikePart::Char('\\')),
            },
            '%' => out.push(LikePart::Any),
            '_' => out.push(LikePart::One),
            c => out.push(LikePart::Char(c)),
        }
    }
    out
}

/// `s LIKE p` in time linear in `s` for every pattern whose `_`-holding
/// pieces are at most 64 characters (longer ones cost `len(s)` × their
/// 64-character words, charged to the budget). The pattern is split at `%`:
/// the first piece must match at the start, the last at the end, and each
/// piece between is taken at its leftmost occurrence after the previous one
/// (leftmost is always safe for `%`-only wildcards), so nothing backtracks.
/// Returns `None` when the work would exceed `left`, which is charged.
fn like_match(s: &[char], p: &[LikePart], left: &mut u64) -> Option<bool> {
    let pieces: Vec<&[LikePart]> = p.split(|x| *x == LikePart::Any).collect();
    // Literal pieces and the anchored first and last ones cost one step per
    // character; a searched piece holding `_` costs one per 64-character word.
    let searched = pieces.len().saturating_sub(1).max(1);
    let words = pieces[1..searched]
        .iter()
        .filter(|q| q.contains(&LikePart::One))
        .map(|q| q.len().div_ceil(64))
        .max()
        .unwrap_or(0) as u64;
    charge(left, (s.len() as u64).saturating_mul(words.max(1)).saturating_add(p.len() as u64))?;
    let [first, middle @ .., last] = pieces.as_slice() else {
        return Some(piece_eq(s, pieces[0]));
    };
    if s.len() < first.len() + last.len() {
        return Some(false);
    }
    if !piece_eq(&s[..first.len()], first) || !piece_eq(&s[s.len() - last.len()..], last) {
        return Some(false);
    }
    let (mut pos, end) = (first.len(), s.len() - last.len());
    for piece in middle.iter().filter(|q| !q.is_empty()) {
        match find_piece(&s[pos..end], piece) {
            Some(at) => pos += at + piece.len(),
            None => return Some(false),
        }
    }
    Some(true)
}

/// Takes `cost` from the budget; `None` (and nothing taken) when it does not fit.
fn charge(left: &mut u64, cost: u64) -> Option<()> {
    *left = left.checked_sub(cost)?;
    Some(())
}

/// A piece without `%` against text of the same length.
fn piece_eq(s: &[char], piece: &[LikePart]) -> bool {
    s.len() == piece.len()
        && s.iter().zip(piece).all(|(c, q)| match q {
            LikePart::Char(x) => x == c,
            _ => true,
        })
}

/// The leftmost position of `piece` (no `%`, not empty) in `s`: Knuth-Morris-Pratt
/// for literal pieces, shift-and over 64-bit words when it holds `_`.
fn find_piece(s: &[char], piece: &[LikePart]) -> Option<usize> {
    let literal: Option<Vec<char>> = piece
        .iter()
        .map(|q| match q {
            LikePart::Char(c) => Some(*c),
            _ => None,
        })
        .collect();
    match literal {
        Some(lit) => find_literal(s, &lit),
        None => find_wild(s, piece),
    }
}

fn find_literal(s: &[char], pat: &[char]) -> Option<usize> {
    // fail[i]: the length of the longest proper border of pat[..=i].
    let mut fail = vec![0usize; pat.len()];
    let mut k = 0;
    for i in 1..pat.len() {
        while k > 0 && pat[i] != pat[k] {
            k = fail[k - 1];
        }
        if pat[i] == pat[k] {
            k += 1;
        }
        fail[i] = k;
    }
    let mut k = 0;
    for (i, c) in s.iter().enumerate() {
        while k > 0 && *c != pat[k] {
            k = fail[k - 1];
        }
        if *c == pat[k] {
            k += 1;
        }
        if k == pat.len() {
            return Some(i + 1 - pat.len());
        }
    }
    None
}

fn find_wild(s: &[char], piece: &[LikePart]) -> Option<usize> {
    let words = piece.len().div_ceil(64);
    let mut any = vec![0u64; words];
    let mut by_char: std::collections::HashMap<char, Vec<u64>> = std::collections::HashMap::new();
    for (j, q) in piece.iter().enumerate() {
        let mask = match q {
            LikePart::Char(c) => by_char.entry(*c).or_insert_with(|| vec![0u64; words]),
            _ => &mut any,
        };
        mask[j / 64] |= 1 << (j % 64);
    }
    let (top_word, top_bit) = ((piece.len() - 1) / 64, (piece.len() - 1) % 64);
    let mut state = vec![0u64; words];
    for (i, c) in s.iter().enumerate() {
        let chars = by_char.get(c);
        let mut carry = 1u64;
        for w in 0..words {
            let next_carry = state[w] >> 63;
            let mask = any[w] | chars.map_or(0, |m| m[w]);
            state[w] = ((state[w] << 1) | carry) & mask;
            carry = next_carry;
        }
        if state[top_word] >> top_bit & 1 == 1 {
            return Some(i + 1 - piece.len());
        }
    }
    None
}

// ---------------------------------------------------------------- evaluation

/// The outcome of evaluating an expression: a value and the errors met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub value: Value,
    pub errors: Vec<ErrorKind>,
}

/// Marker: a subexpression failed (a missing attribute, or any error inside
/// it); the enclosing operation returns its zero value (spec §3.2–3.3).
struct Missing;

fn to_str(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => b.to_string(),
    }
}

/// Casts per spec §3.7. `explicit` is true for the cast functions, where
/// Integer → Boolean is allowed; the implicit cast of an Integer to Boolean is
/// a CastError (the TCK's `NOT 10`).
fn cast(v: Value, to: Type, explicit: bool, errs: &mut Vec<ErrorKind>) -> Value {
    match (v, to) {
        (v, Type::Any) => v,
        (Value::Str(s), Type::Str) => Value::Str(s),
        (Value::Int(i), Type::Int) => Value::Int(i),
        (Value::Bool(b), Type::Bool) => Value::Bool(b),
        (v @ (Value::Int(_) | Value::Bool(_)), Type::Str) => Value::Str(to_str(&v)),
        (Value::Bool(b), Type::Int) => Value::Int(i32::from(b)),
        (Value::Int(i), Type::Bool) if explicit => Value::Bool(i != 0),
        (Value::Int(_), Type::Bool) => {
            errs.push(ErrorKind::Cast);
            Value::Bool(false)
        }
        (Value::Str(s), Type::Int) => {
            let t = s.strip_prefix('+').unwrap_or(&s);
            match t.parse::<i32>() {
                Ok(i) if !t.starts_with('+') => Value::Int(i),
                _ => {
                    errs.push(ErrorKind::Cast);
                    Value::Int(0)
                }
            }
        }
        (Value::Str(s), Type::Bool) => match s.to_lowercase().as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => {
                errs.push(ErrorKind::Cast);
                Value::Bool(false)
            }
        },
    }
}

fn as_int(v: Value) -> i32 {
    match v {
        Value::Int(i) => i,
        _ => 0,
    }
}
fn as_bool(v: Value) -> bool {
    matches!(v, Value::Bool(true))
}
fn as_string(v: Value) -> String {
    match v {
        Value::Str(s) => s,
        _ => String::new(),
    }
}

fn attribute(ev: &CloudEvent, name: &str) -> Option<Value> {
    match ev.extension(name) {
        Some(ExtValue::Integer(i)) => Some(Value::Int(*i)),
        Some(ExtValue::Boolean(b)) => Some(Value::Bool(*b)),
        _ => ev.attribute(name).map(|s| Value::Str(s.into_owned())),
    }
}

impl Expr {
    /// Evaluates; `Err(Missing)` only from a bare attribute reference, which
    /// the enclosing operator turns into its zero value plus the error.
    fn eval(&self, ev: &CloudEvent, errs: &mut Vec<ErrorKind>, d: usize, left: &mut u64) -> Result<Value, Missing> {
        Ok(match self {
            Expr::Lit(v) => v.clone(),
            Expr::Attr(name) => {
                return attribute(ev, name).ok_or_else(|| {
                    errs.push(ErrorKind::MissingAttribute);
                    Missing
                });
            }
            Expr::Exists(name) => Value::Bool(ev.attribute(name).is_some()),
            Expr::Not(x) => {
                let v = operand(x, ev, errs, d, left)?;
                Value::Bool(!as_bool(cast(v, Type::Bool, false, errs)))
            }
            Expr::Neg(x) => {
                let v = operand(x, ev, errs, d, left)?;
                Value::Int(as_int(cast(v, Type::Int, false, errs)).wrapping_neg())
            }
            Expr::Bin(op, l, r) => return self.binary(*op, (l, r), ev, errs, d, left),
            Expr::Like { expr, pattern, negated } => {
                let v = operand(expr, ev, errs, d, left)?;
                let s: Vec<char> = as_string(cast(v, Type::Str, false, errs)).chars().collect();
                let Some(m) = like_match(&s, pattern, left) else {
                    errs.push(ErrorKind::Budget);
                    return Err(Missing);
                };
                Value::Bool(m != *negated)
            }
            Expr::In { expr, set, negated } => {
                let v = operand(expr, ev, errs, d, left)?;
                let target = v.ty();
                let mut found = false;
                for item in set {
                    let iv = operand(item, ev, errs, d, left)?;
                    if cast(iv, target, false, errs) == v {
                        found = true;
                        break;
                    }
                }
                Value::Bool(found != *negated)
            }
            Expr::Call { func, args, .. } => {
                let Some(f) = func else {
                    errs.push(ErrorKind::MissingFunction);
                    return Ok(Value::Bool(false));
                };
                let mut vals = Vec::with_capacity(args.len());
                for a in args {
                    vals.push(operand(a, ev, errs, d, left)?);
                }
                call(*f, vals, errs)
            }
        })
    }

    fn binary(
        &self,
        op: BinOp,
        (l, r): (&Expr, &Expr),
        ev: &CloudEvent,
        errs: &mut Vec<ErrorKind>,
        d: usize,
        left: &mut u64,
    ) -> Result<Value, Missing> {
        let lv = operand(l, ev, errs, d, left)?;
        match op {
            BinOp::And | BinOp::Or => {
                let lb = as_bool(cast(lv, Type::Bool, false, errs));
                // Short-circuit (spec §3.6): the right side is not evaluated at all.
                if (op == BinOp::And && !lb) || (op == BinOp::Or && lb) {
                    return Ok(Value::Bool(lb));
                }
                let rv = operand(r, ev, errs, d, left)?;
                return Ok(Value::Bool(as_bool(cast(rv, Type::Bool, false, errs))));
            }
            BinOp::Xor => {
                let rv = operand(r, ev, errs, d, left)?;
                let (a, b) = (as_bool(cast(lv, Type::Bool, false, errs)), as_bool(cast(rv, Type::Bool, false, errs)));
                return Ok(Value::Bool(a != b));
            }
            _ => {}
        }
        let rv = operand(r, ev, errs, d, left)?;
        Ok(match op {
            BinOp::Eq | BinOp::Ne => {
                // Ambiguous operator: the right operand's type decides (spec §3.7).
                let target = rv.ty();
                let lc = cast(lv, target, false, errs);
                Value::Bool((lc == rv) == (op == BinOp::Eq))
            }
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                let (a, b) = (as_int(cast(lv, Type::Int, false, errs)), as_int(cast(rv, Type::Int, false, errs)));
                Value::Bool(match op {
                    BinOp::Lt => a < b,
                    BinOp::Le => a <= b,
                    BinOp::Gt => a > b,
                    _ => a >= b,
                })
            }
            _ => {
                let (a, b) = (as_int(cast(lv, Type::Int, false, errs)), as_int(cast(rv, Type::Int, false, errs)));
                Value::Int(match op {
                    BinOp::Add => a.wrapping_add(b),
                    BinOp::Sub => a.wrapping_sub(b),
                    BinOp::Mul => a.wrapping_mul(b),
                    BinOp::Div | BinOp::Mod if b == 0 => {
                        errs.push(ErrorKind::Math);
                        0
                    }
                    BinOp::Div => a.wrapping_div(b),
                    _ => a.wrapping_rem(b),
                })
            }
        })
    }
}

/// Evaluates an operand. If it failed — a missing attribute, or any error
/// raised inside it — the *enclosing* operation returns its zero value and
/// keeps the errors (spec §3.2–3.3; the TCK's `true AND (1 != 1 / 0)` is
/// false). An operator's own cast or math error keeps its computed value
/// (`NOT 10` is true with a CastError).
///
/// Every operand costs one unit plus the length of the value it produced
/// (an attribute's copy, a function's result), taken from the evaluation's
/// budget ([`MAX_COST`]); LIKE charges its scan. Out of budget, the
/// evaluation fails with [`ErrorKind::Budget`].
fn operand(x: &Expr, ev: &CloudEvent, errs: &mut Vec<ErrorKind>, d: usize, left: &mut u64) -> Result<Value, Missing> {
    // Defence in depth: parsing already bounds the tree to MAX_DEPTH; a deeper
    // evaluation is an error (no match), never a stack overflow.
    if d > MAX_DEPTH + 8 {
        errs.push(ErrorKind::Generic);
        return Err(Missing);
    }
    if errs.contains(&ErrorKind::Budget) || charge(left, 1).is_none() {
        errs.push(ErrorKind::Budget);
        return Err(Missing);
    }
    let before = errs.len();
    match x.eval(ev, errs, d + 1, left) {
        Ok(v) if errs.len() == before => {
            let size = match &v {
                Value::Str(s) => s.len() as u64,
                _ => 0,
            };
            if charge(left, size).is_none() {
                errs.push(ErrorKind::Budget);
                return Err(Missing);
            }
            Ok(v)
        }
        _ => Err(Missing),
    }
}

fn call(f: Func, vals: Vec<Value>, errs: &mut Vec<ErrorKind>) -> Value {
    let mut vals = vals.into_iter();
    let mut s = |errs: &mut Vec<ErrorKind>| {
        as_string(cast(vals.next().unwrap_or(Value::Str(String::new())), Type::Str, false, errs))
    };
    match f {
        Func::Length => Value::Int(s(errs).chars().count() as i32),
        Func::Lower => Value::Str(s(errs).to_lowercase()),
        Func::Upper => Value::Str(s(errs).to_uppercase()),
        Func::Trim => Value::Str(s(errs).trim().to_string()),
        Func::Concat | Func::ConcatWs => {
            let delim = if f == Func::ConcatWs { s(errs) } else { String::new() };
            let mut out = String::new();
            for (i, v) in vals.enumerate() {
                if i > 0 {
                    out.push_str(&delim);
                }
                out.push_str(&as_string(cast(v, Type::Str, false, errs)));
                // Repeating a large attribute must not allocate without bound.
                if out.len() > MAX_STRING_BYTES {
                    errs.push(ErrorKind::FunctionEvaluation);
                    return Value::Str(String::new());
                }
            }
            Value::Str(out)
        }
        Func::Left | Func::Right => {
            let x = s(errs);
            let n = as_int(cast(vals.next().unwrap_or(Value::Int(0)), Type::Int, false, errs));
            if n < 0 {
                errs.push(ErrorKind::FunctionEvaluation);
                return Value::Str(x);
            }
            let chars: Vec<char> = x.chars().collect();
            let n = (n as usize).min(chars.len());
            Value::Str(if f == Func::Left {
                chars[..n].iter().collect()
            } else {
                chars[chars.len() - n..].iter().collect()
            })
        }
        Func::Substring => {
            let x = s(errs);
            let pos = as_int(cast(vals.next().unwrap_or(Value::Int(0)), Type::Int, false, errs));
            let len = vals.next().map(|v| as_int(cast(v, Type::Int, false, errs)));
            let chars: Vec<char> = x.chars().collect();
            let n = chars.len() as i64;
            let p = i64::from(pos);
            if p > n || p < -n || len.is_some_and(|l| l < 0) {
                errs.push(ErrorKind::FunctionEvaluation);
                return Value::Str(String::new());
            }
            if p == 0 {
                return Value::Str(String::new());
            }
            let start = if p > 0 { p - 1 } else { n + p } as usize;
            let end = match len {
                Some(l) => (start + l as usize).min(chars.len()),
                None => chars.len(),
            };
            Value::Str(chars[start..end].iter().collect())
        }
        Func::Abs => {
            let i = as_int(cast(vals.next().unwrap_or(Value::Int(0)), Type::Int, false, errs));
            if i == i32::MIN {
                errs.push(ErrorKind::Math);
                Value::Int(i32::MAX)
            } else {
                Value::Int(i.abs())
            }
        }
        Func::Int => cast(vals.next().unwrap_or(Value::Int(0)), Type::Int, true, errs),
        Func::Bool => cast(vals.next().unwrap_or(Value::Bool(false)), Type::Bool, true, errs),
        Func::String => cast(vals.next().unwrap_or(Value::Str(String::new())), Type::Str, true, errs),
    }
}

impl Expression {
    /// Parses an expression; errors carry the position.
    pub fn parse(src: &str) -> Result<Expression, ParseError> {
        if src.len() > MAX_SOURCE_BYTES {
            return Err(ParseError {
                position: MAX_SOURCE_BYTES,
                message: format!("expression is {} bytes long; at most {MAX_SOURCE_BYTES} are allowed", src.len()),
            });
        }
        let toks = lex(src)?;
        let too_many = (toks.len() > MAX_TOKENS + 1).then(|| toks[MAX_TOKENS].1);
        let mut p = Parser { toks, pos: 0, depth: 0 };
        let root = p.logic()?;
        if p.peek() != &Tok::End {
            return p.err(format!("unexpected {} after a complete expression", Parser::describe(p.peek())));
        }
        // Depth is checked while parsing (the recursion bound); size after it.
        if let Some(position) = too_many {
            let message = format!("expression has more than {MAX_TOKENS} terms and operators");
            return Err(ParseError { position, message });
        }
        Ok(Expression { root, source: src.to_string() })
    }

    /// Problems found before any event is seen: calls to unknown functions or
    /// with the wrong number of arguments (spec §3.3 suggests compile-time checks).
    pub fn static_errors(&self) -> Vec<String> {
        fn walk(e: &Expr, out: &mut Vec<String>) {
            match e {
                Expr::Call { func: None, name, args } => {
                    out.push(format!("no function {}() taking {} argument(s)", name.to_ascii_uppercase(), args.len()));
                    args.iter().for_each(|a| walk(a, out));
                }
                Expr::Call { args, .. } => args.iter().for_each(|a| walk(a, out)),
                Expr::Not(x) | Expr::Neg(x) | Expr::Like { expr: x, .. } => walk(x, out),
                Expr::Bin(_, l, r) => {
                    walk(l, out);
                    walk(r, out);
                }
                Expr::In { expr, set, .. } => {
                    walk(expr, out);
                    set.iter().for_each(|a| walk(a, out));
                }
                Expr::Lit(_) | Expr::Attr(_) | Expr::Exists(_) => {}
            }
        }
        let mut out = vec![];
        walk(&self.root, &mut out);
        out
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates against an event: the value plus every error met.
    pub fn evaluate(&self, ev: &CloudEvent) -> Evaluation {
        let mut errors = vec![];
        let mut left = MAX_COST;
        let value = match self.root.eval(ev, &mut errors, 0, &mut left) {
            Ok(v) => v,
            Err(Missing) => self.root.ty().zero(),
        };
        Evaluation { value, errors }
    }

    /// Filter semantics (Knative): true with no error matches; anything else does not.
    pub fn matches(&self, ev: &CloudEvent) -> bool {
        let e = self.evaluate(ev);
        if e.errors.contains(&ErrorKind::Budget) {
            crate::over_budget("cesql", ev);
            return false;
        }
        if !e.errors.is_empty() {
            metrics::counter!("spate_cesql_evaluation_errors_total").increment(1);
            return false;
        }
        e.value == Value::Bool(true)
    }
}
