//! The immutable data table queries read without a lock, and how it is built from the
//! current value of every source.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;
use rustc_hash::{FxBuildHasher, FxHashMap};
use serde_json::Value;

/// Byte equality inlined for short strings (keys and app names are short): libc's `memcmp`
/// call cost more than the rest of a lookup.
#[inline(always)]
fn short_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let len = a.len();
    let word = |bytes: &[u8], at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap());
    let half = |bytes: &[u8], at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
    match len {
        0 => true,
        1..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        4..=7 => half(a, 0) == half(b, 0) && half(a, len - 4) == half(b, len - 4),
        8..=16 => word(a, 0) == word(b, 0) && word(a, len - 8) == word(b, len - 8),
        _ => a == b,
    }
}

#[inline(always)]
fn hash_key(key: &str) -> u64 {
    FxBuildHasher.hash_one(key)
}

/// One source's current value for one declared key.
#[derive(Clone, Debug)]
pub(crate) struct Item {
    /// App name of the plugin providing it.
    pub(crate) source: Arc<str>,
    /// The key as declared (a wildcard keeps its `*`).
    pub(crate) key: Arc<str>,
    pub(crate) value: Arc<Value>,
    /// xxh3 of the canonical JSON text.
    pub(crate) hash: u64,
    /// Position of the source plugin in dispatch order.
    pub(crate) rank: u32,
}

/// A declared key with its items in plugin order.
pub(crate) type Declared = (Arc<str>, Box<[Item]>);

/// All data of one service.
#[derive(Default)]
pub(crate) struct ServiceData {
    /// Exact keys → items in plugin order (hashed with Fx, compared with `short_eq`).
    exact: HashTable<(Box<str>, Box<[Item]>)>,
    /// Wildcard prefixes (without `*`) with their items: longest prefix first, then plugin order.
    wildcards: Box<[(Box<str>, Item)]>,
    /// Declared keys, sorted, with items in plugin order.
    pub(crate) declared: Box<[Declared]>,
    /// Declared keys, sorted and unique.
    pub(crate) keys: Arc<[Arc<str>]>,
    /// Sources in plugin order, unique.
    pub(crate) sources: Arc<[Arc<str>]>,
    /// Every item, in plugin order then key order.
    pub(crate) items: Box<[Item]>,
    /// Content hash of the whole service.
    pub(crate) version: u64,
}

impl ServiceData {
    /// `source`'s value for `key`: its exact key, else its longest matching wildcard.
    #[inline]
    pub(crate) fn get_value(&self, source: &str, key: &str) -> Option<&Arc<Value>> {
        if let Some(items) = self.exact_items(key) {
            let source = source.as_bytes();
            if let Some(item) = items
                .iter()
                .find(|item| short_eq(item.source.as_bytes(), source))
            {
                return Some(&item.value);
            }
        }
        self.wildcards
            .iter()
            .find(|(prefix, item)| &*item.source == source && key.starts_with(&**prefix))
            .map(|(_, item)| &item.value)
    }

    /// Items under exactly `key`, in plugin order.
    #[inline(always)]
    fn exact_items(&self, key: &str) -> Option<&[Item]> {
        self.exact
            .find(hash_key(key), |(candidate, _)| {
                short_eq(candidate.as_bytes(), key.as_bytes())
            })
            .map(|(_, items)| &items[..])
    }

    /// Every source's value for `key` (exact key beats wildcard, longest prefix wins, per
    /// source), in plugin order.
    pub(crate) fn resolve(&self, key: &str) -> Vec<&Item> {
        let mut found: Vec<&Item> = self
            .exact_items(key)
            .map(|items| items.iter().collect())
            .unwrap_or_default();
        let exact_sources = found.len();
        for (prefix, item) in self.wildcards.iter() {
            if key.starts_with(&**prefix) && !found.iter().any(|other| other.source == item.source)
            {
                found.push(item);
            }
        }
        if found.len() != exact_sources {
            found.sort_by_key(|item| item.rank);
        }
        found
    }

    /// Content hash of one source's data, if it provides any.
    pub(crate) fn source_version(&self, source: &str) -> Option<u64> {
        let mut hasher = Vec::new();
        for item in self.items.iter().filter(|item| &*item.source == source) {
            push_item_hash(&mut hasher, item);
        }
        (!hasher.is_empty()).then(|| xxhash_rust::xxh3::xxh3_64(&hasher))
    }
}

fn push_item_hash(buffer: &mut Vec<u8>, item: &Item) {
    buffer.extend_from_slice(item.source.as_bytes());
    buffer.push(0);
    buffer.extend_from_slice(item.key.as_bytes());
    buffer.push(0);
    buffer.extend_from_slice(&item.hash.to_le_bytes());
}

/// Every service's data, indexed by service id.
#[derive(Default)]
pub(crate) struct DataTable {
    pub(crate) services: Vec<Option<Arc<ServiceData>>>,
}

impl DataTable {
    /// The data of a service, if any source provides some.
    #[inline]
    pub(crate) fn service(&self, id: u32) -> Option<&ServiceData> {
        self.services
            .get(id as usize)
            .and_then(|data| data.as_deref())
    }

    /// Items with exactly this declared key (no wildcard resolution), in plugin order.
    pub(crate) fn declared(&self, service: u32, key: &str) -> &[Item] {
        self.service(service)
            .and_then(|data| {
                data.declared
                    .binary_search_by(|(declared, _)| (**declared).cmp(key))
                    .ok()
                    .map(|index| &data.declared[index].1[..])
            })
            .unwrap_or(&[])
    }
}

/// Builds the table from `(service id, item)` pairs.
pub(crate) fn build(items: Vec<(u32, Item)>) -> DataTable {
    let mut by_service: BTreeMap<u32, Vec<Item>> = BTreeMap::new();
    for (service, item) in items {
        by_service.entry(service).or_default().push(item);
    }
    let mut table = DataTable::default();
    for (service, mut items) in by_service {
        items.sort_by(|a, b| (a.rank, &a.key).cmp(&(b.rank, &b.key)));
        let mut declared: BTreeMap<Arc<str>, Vec<Item>> = BTreeMap::new();
        let mut exact: FxHashMap<Box<str>, Vec<Item>> = FxHashMap::default();
        let mut wildcards: Vec<(Box<str>, Item)> = Vec::new();
        let mut sources: Vec<Arc<str>> = Vec::new();
        let mut hasher = Vec::new();
        for item in &items {
            declared
                .entry(item.key.clone())
                .or_default()
                .push(item.clone());
            match item.key.strip_suffix('*') {
                Some(prefix) => wildcards.push((prefix.into(), item.clone())),
                None => exact
                    .entry((*item.key).into())
                    .or_default()
                    .push(item.clone()),
            }
            if !sources.contains(&item.source) {
                sources.push(item.source.clone());
            }
            push_item_hash(&mut hasher, item);
        }
        wildcards.sort_by(|(a, x), (b, y)| b.len().cmp(&a.len()).then(x.rank.cmp(&y.rank)));
        let mut table_exact = HashTable::with_capacity(exact.len());
        for (key, items) in exact {
            table_exact.insert_unique(hash_key(&key), (key, items.into_boxed_slice()), |(k, _)| {
                hash_key(k)
            });
        }
        let data = ServiceData {
            exact: table_exact,
            wildcards: wildcards.into_boxed_slice(),
            keys: declared.keys().cloned().collect(),
            declared: declared
                .into_iter()
                .map(|(key, items)| (key, items.into_boxed_slice()))
                .collect(),
            sources: sources.into(),
            version: xxhash_rust::xxh3::xxh3_64(&hasher),
            items: items.into_boxed_slice(),
        };
        let index = service as usize;
        if table.services.len() <= index {
            table.services.resize_with(index + 1, || None);
        }
        table.services[index] = Some(Arc::new(data));
    }
    table
}
