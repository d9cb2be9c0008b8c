//! Stable descriptions of the types that cross the boundary.
//!
//! On the stable call path, arguments and outputs cross encoded, so what must agree between a
//! host and a plugin built by different compilers is each type's *serde shape*: struct and
//! field names in order, enum variants and their contents, element types. [`shape_of`] finds
//! it by running the type's `Deserialize` implementation against a probing deserializer (no
//! value is needed) and renders it as canonical text, which both sides compare as a string.
//!
//! The text is the root's shape, then every named container once, sorted by name:
//! `s1 (u64,str) | enum Mode{Fast,Slow(u64)} | struct Job{name:str,mode:Mode}`. The leading
//! `s1` names this rendering; a side that renders differently compares names only.
//!
//! Some types cannot be traced: those whose `Deserialize` asks the format what comes next
//! (`serde_json::Value`, untagged enums, flattened fields), rejects the placeholder values the
//! probe feeds it, or contains itself through a struct. Their shape is `"name:"` followed by
//! the type's path, so for them the check falls back to comparing names, and decoding still
//! checks every value.
//!
//! The probe is written here rather than taken from `serde-reflection`: that crate's general
//! registry cost every plugin library about 100 kB of code, and only the canonical text is
//! needed.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

/// Prefix of every shape this module renders (see the module docs).
pub const SHAPE_FORMAT: &str = "s1";

/// Whole passes over the type at most: each pass explores one more variant of every enum
/// that still has unexplored ones.
const MAX_PASSES: usize = 256;

/// Containers nested deeper than this make the type untraceable.
const MAX_DEPTH: usize = 64;

/// The canonical serde shape of `T` (see the module docs).
pub fn shape_of<T: DeserializeOwned>() -> String {
    // The generic part is only the call of `T`'s `Deserialize`: the passes, the rendering and
    // the fallback are shared by every type (a plugin probes each of its argument and output
    // types).
    trace(std::any::type_name::<T>(), &mut |probe| {
        T::deserialize(probe).map(drop)
    })
}

/// Whether two shapes were rendered by the same version of this module (otherwise only the
/// type names can be compared).
pub fn same_format(a: &str, b: &str) -> bool {
    let format = |shape: &str| shape.split(' ').next().unwrap_or("").to_owned();
    format(a) == format(b)
}

/// Runs `pass` until every variant of every enum was explored; the shape, or `"name:"` and
/// `name` when the type cannot be traced.
fn trace(name: &str, pass: &mut dyn FnMut(Probe<'_>) -> Result<(), Untraceable>) -> String {
    let mut tracer = Tracer::default();
    let mut root = String::new();
    for _ in 0..MAX_PASSES {
        root.clear();
        tracer.depth = 0;
        tracer.explored_this_pass = false;
        let traced = pass(Probe {
            tracer: &mut tracer,
            out: &mut root,
        });
        if traced.is_err() {
            break;
        }
        if !tracer.explored_this_pass && tracer.complete() {
            return tracer.render(&root);
        }
    }
    format!("name:{name}")
}

/// Why a type cannot be traced (never shown: the shape falls back to the type's name).
#[derive(Debug)]
struct Untraceable(String);

impl fmt::Display for Untraceable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Untraceable {}

impl de::Error for Untraceable {
    fn custom<M: fmt::Display>(message: M) -> Self {
        Untraceable(message.to_string())
    }
}

/// One enum's variants: the shape of each explored one.
#[derive(Default)]
struct EnumShape {
    variants: Vec<Option<String>>,
    /// Variants being traced now (an enum met inside one of its own variants takes another).
    open: Vec<bool>,
}

/// What the passes found so far.
#[derive(Default)]
struct Tracer {
    /// Structs, tuple structs, newtypes and unit structs by name: their rendered shape.
    containers: BTreeMap<&'static str, String>,
    /// Enums by name.
    enums: BTreeMap<&'static str, EnumShape>,
    /// Names of the containers being traced (a struct met inside itself is untraceable).
    open: Vec<&'static str>,
    depth: usize,
    /// Whether this pass explored a variant not seen before.
    explored_this_pass: bool,
}

impl Tracer {
    fn complete(&self) -> bool {
        self.enums
            .values()
            .all(|shape| shape.variants.iter().all(Option::is_some))
    }

    fn render(&self, root: &str) -> String {
        let mut text = format!("{SHAPE_FORMAT} {root}");
        // Both maps are sorted by name; a name used for an enum and a struct is rendered twice.
        let mut all: BTreeMap<&str, String> = BTreeMap::new();
        for (name, shape) in &self.containers {
            all.insert(name, shape.clone());
        }
        for (name, shape) in &self.enums {
            let mut rendered = format!("enum {name}{{");
            for (index, variant) in shape.variants.iter().enumerate() {
                if index > 0 {
                    rendered.push('|');
                }
                rendered.push_str(variant.as_deref().unwrap_or("?"));
            }
            rendered.push('}');
            all.entry(name)
                .and_modify(|text| {
                    text.push_str(" & ");
                    text.push_str(&rendered);
                })
                .or_insert(rendered);
        }
        for shape in all.values() {
            text.push_str(" | ");
            text.push_str(shape);
        }
        text
    }

    fn enter(&mut self, name: &'static str) -> Result<(), Untraceable> {
        if self.open.contains(&name) {
            return Err(Untraceable(format!("{name} contains itself")));
        }
        self.open.push(name);
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Untraceable("nested too deeply".into()));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.open.pop();
        self.depth -= 1;
    }

    /// Enters the container `name`: the start of its shape text.
    fn open(&mut self, name: &'static str, kind: &str) -> Result<String, Untraceable> {
        self.enter(name)?;
        Ok(format!("{kind} {name}"))
    }

    /// Leaves the container `name`; when traced, records `shape` and refers to it in `out`.
    fn close(&mut self, name: &'static str, shape: String, out: &mut String, traced: bool) {
        self.leave();
        if traced {
            self.containers.insert(name, shape);
            out.push_str(name);
        }
    }

    /// Enters the enum `name`: the index of the variant to visit in this pass.
    fn open_enum(
        &mut self,
        name: &'static str,
        variants: &'static [&'static str],
    ) -> Result<usize, Untraceable> {
        if variants.is_empty() {
            return Err(Untraceable(format!("{name} has no variants")));
        }
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Untraceable("nested too deeply".into()));
        }
        self.pick_variant(name, variants.len())
    }

    /// Leaves the enum `name` entered by [`Tracer::open_enum`].
    fn close_enum(
        &mut self,
        name: &'static str,
        index: usize,
        shape: String,
        out: &mut String,
        traced: bool,
    ) {
        self.depth -= 1;
        self.close_variant(name, index, traced.then_some(shape));
        if traced {
            out.push_str(name);
        }
    }

    /// The variant of enum `name` to visit now: the first unexplored one not being traced,
    /// else the first explored one not being traced.
    fn pick_variant(&mut self, name: &'static str, count: usize) -> Result<usize, Untraceable> {
        let shape = self.enums.entry(name).or_default();
        if shape.variants.len() != count {
            shape.variants = vec![None; count];
            shape.open = vec![false; count];
        }
        let free = |explored: bool| {
            (0..count).find(|&i| !shape.open[i] && shape.variants[i].is_some() == explored)
        };
        let index = free(false)
            .or_else(|| free(true))
            .ok_or_else(|| Untraceable(format!("every variant of {name} contains {name}")))?;
        shape.open[index] = true;
        Ok(index)
    }

    /// Closes the variant `pick_variant` opened, recording its shape when traced.
    fn close_variant(&mut self, name: &'static str, index: usize, shape: Option<String>) {
        let Some(entry) = self.enums.get_mut(name) else {
            return;
        };
        entry.open[index] = false;
        if let (Some(shape), None) = (shape, &entry.variants[index]) {
            self.explored_this_pass = true;
            entry.variants[index] = Some(shape);
        }
    }
}

/// The probing deserializer: every request is written to `out` as shape text and answered
/// with a placeholder value.
struct Probe<'t> {
    tracer: &'t mut Tracer,
    out: &'t mut String,
}

impl<'t> Probe<'t> {
    fn reborrow<'s>(&'s mut self, out: &'s mut String) -> Probe<'s> {
        Probe {
            tracer: self.tracer,
            out,
        }
    }

    /// Traces the container `name` whose body `body` writes, and refers to it by name.
    fn container<V>(
        self,
        name: &'static str,
        kind: &str,
        body: impl FnOnce(Probe<'_>) -> Result<V, Untraceable>,
    ) -> Result<V, Untraceable> {
        let mut shape = self.tracer.open(name, kind)?;
        let value = body(Probe {
            tracer: self.tracer,
            out: &mut shape,
        });
        self.tracer.close(name, shape, self.out, value.is_ok());
        value
    }
}

/// Writes `open`, the shapes joined by commas, and `close` (not generic: shared by every
/// visitor).
fn write_items(out: &mut String, open: &str, items: &[String], close: &str) {
    out.push_str(open);
    out.push_str(&items.join(","));
    out.push_str(close);
}

macro_rules! primitive {
    ($($method:ident => $text:literal, $visit:ident($($value:expr)?);)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Untraceable> {
                self.out.push_str($text);
                visitor.$visit($($value)?)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = Untraceable;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Untraceable> {
        Err(Untraceable(
            "the type asks the format what comes next".into(),
        ))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Untraceable> {
        Err(Untraceable("the type ignores a value".into()))
    }

    primitive! {
        deserialize_bool => "bool", visit_bool(false);
        deserialize_i8 => "i8", visit_i8(0);
        deserialize_i16 => "i16", visit_i16(0);
        deserialize_i32 => "i32", visit_i32(0);
        deserialize_i64 => "i64", visit_i64(0);
        deserialize_i128 => "i128", visit_i128(0);
        deserialize_u8 => "u8", visit_u8(0);
        deserialize_u16 => "u16", visit_u16(0);
        deserialize_u32 => "u32", visit_u32(0);
        deserialize_u64 => "u64", visit_u64(0);
        deserialize_u128 => "u128", visit_u128(0);
        deserialize_f32 => "f32", visit_f32(0.0);
        deserialize_f64 => "f64", visit_f64(0.0);
        deserialize_char => "char", visit_char('\0');
        deserialize_str => "str", visit_borrowed_str("");
        deserialize_string => "str", visit_borrowed_str("");
        deserialize_bytes => "bytes", visit_borrowed_bytes(&[]);
        deserialize_byte_buf => "bytes", visit_borrowed_bytes(&[]);
        deserialize_unit => "()", visit_unit();
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Untraceable> {
        Err(Untraceable("an identifier outside a struct or enum".into()))
    }

    fn deserialize_option<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Untraceable> {
        let mut inner = String::new();
        let value = visitor.visit_some(self.reborrow(&mut inner))?;
        write_items(self.out, "option<", &[inner], ">");
        Ok(value)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Untraceable> {
        self.container(name, "unit", |_| visitor.visit_unit())
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Untraceable> {
        self.container(name, "newtype", |mut probe| {
            probe.out.push('(');
            let mut inner = String::new();
            let value = visitor.visit_newtype_struct(probe.reborrow(&mut inner))?;
            probe.out.push_str(&inner);
            probe.out.push(')');
            Ok(value)
        })
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Untraceable> {
        let mut items = Vec::new();
        let value = visitor.visit_seq(Elements {
            probe: self.tracer,
            remaining: 1,
            names: None,
            shapes: &mut items,
        })?;
        write_items(self.out, "seq<", &items, ">");
        Ok(value)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Untraceable> {
        let mut items = Vec::new();
        let value = visitor.visit_seq(Elements {
            probe: self.tracer,
            remaining: len,
            names: None,
            shapes: &mut items,
        })?;
        write_items(self.out, "(", &items, ")");
        Ok(value)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Untraceable> {
        self.container(name, "tuple", |probe| {
            let mut items = Vec::new();
            let value = visitor.visit_seq(Elements {
                probe: probe.tracer,
                remaining: len,
                names: None,
                shapes: &mut items,
            })?;
            write_items(probe.out, "(", &items, ")");
            Ok(value)
        })
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Untraceable> {
        let mut key = String::new();
        let mut value_shape = String::new();
        let value = visitor.visit_map(Entry {
            tracer: self.tracer,
            key: &mut key,
            value: &mut value_shape,
            state: 0,
        })?;
        write_items(self.out, "map<", &[key, value_shape], ">");
        Ok(value)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Untraceable> {
        self.container(name, "struct", |probe| {
            let mut items = Vec::new();
            let value = visitor.visit_seq(Elements {
                probe: probe.tracer,
                remaining: fields.len(),
                names: Some(fields),
                shapes: &mut items,
            })?;
            write_items(probe.out, "{", &items, "}");
            Ok(value)
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Untraceable> {
        let index = self.tracer.open_enum(name, variants)?;
        let mut shape = String::new();
        let value = visitor.visit_enum(Variant {
            tracer: self.tracer,
            name: variants[index],
            shape: &mut shape,
        });
        self.tracer
            .close_enum(name, index, shape, self.out, value.is_ok());
        value
    }
}

/// The elements of a sequence, tuple or struct: `remaining` of them, each traced in order.
struct Elements<'t> {
    probe: &'t mut Tracer,
    remaining: usize,
    /// Field names, for a struct.
    names: Option<&'static [&'static str]>,
    shapes: &'t mut Vec<String>,
}

impl Elements<'_> {
    /// The start of the next element's shape (its field name, in a struct), if any is left.
    fn next_shape(&mut self) -> Option<String> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let mut shape = String::new();
        if let Some(names) = self.names {
            shape.push_str(names[self.shapes.len()]);
            shape.push(':');
        }
        Some(shape)
    }
}

impl<'de> SeqAccess<'de> for Elements<'_> {
    type Error = Untraceable;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Untraceable> {
        let Some(mut shape) = self.next_shape() else {
            return Ok(None);
        };
        let value = seed.deserialize(Probe {
            tracer: self.probe,
            out: &mut shape,
        })?;
        self.shapes.push(shape);
        Ok(Some(value))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.remaining)
    }
}

/// A map with one entry whose key and value are traced.
struct Entry<'t> {
    tracer: &'t mut Tracer,
    key: &'t mut String,
    value: &'t mut String,
    state: u8,
}

impl<'de> MapAccess<'de> for Entry<'_> {
    type Error = Untraceable;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Untraceable> {
        if self.state != 0 {
            return Ok(None);
        }
        self.state = 1;
        seed.deserialize(Probe {
            tracer: self.tracer,
            out: self.key,
        })
        .map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, Untraceable> {
        self.state = 2;
        seed.deserialize(Probe {
            tracer: self.tracer,
            out: self.value,
        })
    }
}

/// The variant of an enum chosen for this pass.
struct Variant<'t> {
    tracer: &'t mut Tracer,
    name: &'static str,
    shape: &'t mut String,
}

impl<'de> EnumAccess<'de> for Variant<'_> {
    type Error = Untraceable;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self), Untraceable> {
        let name: de::value::StrDeserializer<'_, Untraceable> = self.name.into_deserializer();
        let value = seed.deserialize(name)?;
        self.shape.push_str(self.name);
        Ok((value, self))
    }
}

impl<'de> VariantAccess<'de> for Variant<'_> {
    type Error = Untraceable;

    fn unit_variant(self) -> Result<(), Untraceable> {
        Ok(())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, Untraceable> {
        let mut inner = String::new();
        let value = seed.deserialize(Probe {
            tracer: self.tracer,
            out: &mut inner,
        })?;
        write_items(self.shape, "(", &[inner], ")");
        Ok(value)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Untraceable> {
        let mut items = Vec::new();
        let value = visitor.visit_seq(Elements {
            probe: self.tracer,
            remaining: len,
            names: None,
            shapes: &mut items,
        })?;
        write_items(self.shape, "(", &items, ")");
        Ok(value)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Untraceable> {
        let mut items = Vec::new();
        let value = visitor.visit_seq(Elements {
            probe: self.tracer,
            remaining: fields.len(),
            names: Some(fields),
            shapes: &mut items,
        })?;
        write_items(self.shape, "{", &items, "}");
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde::Deserialize;

    use super::*;

    #[allow(dead_code)]
    mod before {
        use serde::Deserialize;

        #[derive(Deserialize)]
        pub struct Job {
            pub name: String,
            pub tries: u32,
        }
    }

    #[allow(dead_code)]
    mod added {
        use serde::Deserialize;

        #[derive(Deserialize)]
        pub struct Job {
            pub name: String,
            pub tries: u32,
            pub owner: Option<String>,
        }
    }

    #[allow(dead_code)]
    mod reordered {
        use serde::Deserialize;

        #[derive(Deserialize)]
        pub struct Job {
            pub tries: u32,
            pub name: String,
        }
    }

    #[allow(dead_code)]
    mod retyped {
        use serde::Deserialize;

        #[derive(Deserialize)]
        pub struct Job {
            pub name: String,
            pub tries: u64,
        }
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    enum Mode {
        Fast,
        Slow(u64),
        Named {
            name: String,
            inner: Option<Box<Mode>>,
        },
        Pair(u8, u8),
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    struct Outer {
        first: Mode,
        rest: Vec<Mode>,
        by_name: HashMap<String, (bool, f64)>,
        id: Id,
        unit: Marker,
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    struct Id(u64);

    #[allow(dead_code)]
    #[derive(Deserialize)]
    struct Marker;

    #[allow(dead_code)]
    #[derive(Deserialize)]
    enum Node {
        Branch(Vec<Node>),
        Leaf,
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    struct Tree {
        children: Vec<Tree>,
    }

    #[test]
    fn a_struct_renders_its_fields_in_order() {
        assert_eq!(
            shape_of::<before::Job>(),
            "s1 Job | struct Job{name:str,tries:u32}"
        );
        assert_eq!(shape_of::<(String, u64)>(), "s1 (str,u64)");
        assert_eq!(shape_of::<Vec<Option<u8>>>(), "s1 seq<option<u8>>");
    }

    #[test]
    fn a_field_added_removed_reordered_or_retyped_changes_the_shape() {
        let base = shape_of::<before::Job>();
        for other in [
            shape_of::<added::Job>(),
            shape_of::<reordered::Job>(),
            shape_of::<retyped::Job>(),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn every_variant_of_every_nested_enum_is_explored() {
        let shape = shape_of::<Outer>();
        assert!(
            shape.contains(
                "enum Mode{Fast|Slow(u64)|Named{name:str,inner:option<Mode>}|Pair(u8,u8)}"
            ),
            "{shape}"
        );
        assert!(shape.contains("newtype Id(u64)"), "{shape}");
        assert!(shape.contains("unit Marker"), "{shape}");
        assert!(shape.contains("by_name:map<str,(bool,f64)>"), "{shape}");
        assert!(shape.starts_with("s1 Outer | "), "{shape}");
    }

    #[test]
    fn an_enum_inside_its_own_variant_takes_another_variant() {
        assert_eq!(
            shape_of::<Node>(),
            "s1 Node | enum Node{Branch(seq<Node>)|Leaf}"
        );
    }

    #[test]
    fn untraceable_types_fall_back_to_their_name() {
        assert_eq!(
            shape_of::<serde_json::Value>(),
            "name:serde_json::value::Value"
        );
        assert!(shape_of::<Tree>().starts_with("name:"));
    }

    #[test]
    fn formats_are_told_apart() {
        assert!(same_format("s1 u64", "s1 str"));
        assert!(!same_format("s1 u64", "{\"U64\"}"));
    }
}
