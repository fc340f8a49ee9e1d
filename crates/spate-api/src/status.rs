//! Knative status conditions, shared by every room's reconciler.

/// A Knative condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub kind: &'static str,
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

impl Condition {
    pub fn ok(kind: &'static str) -> Self {
        Condition { kind, ok: true, reason: String::new(), message: String::new() }
    }
    pub fn fail(kind: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Condition { kind, ok: false, reason: reason.into(), message: message.into() }
    }

    /// `Ready` (false with the first failure's reason, if any) followed by `parts`.
    pub fn ready_first(mut parts: Vec<Condition>) -> Vec<Condition> {
        let ready = match parts.iter().find(|c| !c.ok) {
            None => Condition::ok("Ready"),
            Some(c) => Condition::fail("Ready", &c.reason, c.message.clone()),
        };
        parts.insert(0, ready);
        parts
    }
}
