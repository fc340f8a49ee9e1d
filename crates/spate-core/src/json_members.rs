//! The members of a structured-mode event object, read in one pass and
//! borrowed from the body: the attributes the codec knows by name in a slot
//! each, every other member in a map by name. Like a map, the last of two
//! members with one name wins. Nothing is allocated for a member name
//! without escapes, and values stay raw JSON text until [`crate::json`]
//! interprets them for the event's spec version.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Member names with a slot: every context attribute of 1.0 and 0.3, and the data members.
const KNOWN: [&str; 12] = [
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "schemaurl",
    "subject",
    "time",
    "datacontentencoding",
    "data",
    "data_base64",
];

#[derive(Default)]
pub(crate) struct Members<'a> {
    slots: [Option<&'a RawValue>; KNOWN.len()],
    /// Every member without a slot, by name.
    pub rest: BTreeMap<Cow<'a, str>, &'a RawValue>,
}

impl<'a> Members<'a> {
    /// Takes the member `name` out (a name without a slot is looked up in `rest`).
    pub fn take(&mut self, name: &str) -> Option<&'a RawValue> {
        match KNOWN.iter().position(|k| *k == name) {
            Some(i) => self.slots[i].take(),
            None => self.rest.remove(name),
        }
    }

    /// Moves the members still in a slot into `rest`: what the spec version did
    /// not take by name is an extension (or a misnamed attribute) there.
    pub fn into_rest(mut self) -> BTreeMap<Cow<'a, str>, &'a RawValue> {
        for (name, slot) in KNOWN.iter().zip(self.slots) {
            if let Some(v) = slot {
                self.rest.insert(Cow::Borrowed(*name), v);
            }
        }
        self.rest
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(MembersVisitor)
    }
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Members<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
        let mut m = Members::default();
        while let Some(Name(name)) = map.next_key::<Name<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            match KNOWN.iter().position(|k| *k == name) {
                Some(i) => m.slots[i] = Some(value),
                None => {
                    m.rest.insert(name, value);
                }
            }
        }
        Ok(m)
    }
}

/// A batch: a JSON array of event objects, read in the same pass.
pub(crate) struct Batch<'a>(pub Vec<Members<'a>>);

impl<'de> Deserialize<'de> for Batch<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(BatchVisitor)
    }
}

struct BatchVisitor;

impl<'de> Visitor<'de> for BatchVisitor {
    type Value = Batch<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Batch<'de>, A::Error> {
        // The hint is the client's word: bounded, the vector grows with what arrives.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(m) = seq.next_element::<Members<'de>>()? {
            out.push(m);
        }
        Ok(Batch(out))
    }
}

/// A member name, borrowed from the body unless it holds escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(NameVisitor)
    }
}

struct NameVisitor;

impl<'de> Visitor<'de> for NameVisitor {
    type Value = Name<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Name<'de>, E> {
        Ok(Name(Cow::Borrowed(v)))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Name<'de>, E> {
        Ok(Name(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Name<'de>, E> {
        Ok(Name(Cow::Owned(v)))
    }
}
