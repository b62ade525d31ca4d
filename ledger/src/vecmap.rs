//! `VecMap`: a map from string ids to values, kept as one sorted vector.
//!
//! An account's maps (its leases, orders, usage records, invoices) are small and read far
//! more than written; a `BTreeMap` allocates a whole node (eleven slots) for its first entry,
//! which made a fresh account's state several times larger than its data. A sorted vector
//! has the same order (replays compare states byte for byte, I3), O(log n) lookups, and an
//! allocation the size of what it holds.

use std::borrow::Borrow;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

/// Below this many entries a vector grows one slot at a time: most accounts hold one or two
/// orders and a few leases, and the usual first allocation of four slots would double
/// their size. Above it, the usual doubling keeps inserts amortised O(1).
pub const SMALL: usize = 4;

/// Makes room for one more element, exactly, while the vector is small.
pub fn reserve_small<T>(items: &mut Vec<T>) {
    if items.len() < SMALL {
        items.reserve_exact(1);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VecMap<V> {
    entries: Vec<(String, V)>,
}

impl<V> Default for VecMap<V> {
    fn default() -> VecMap<V> {
        VecMap {
            entries: Vec::new(),
        }
    }
}

impl<V> VecMap<V> {
    fn find<Q: Borrow<str> + ?Sized>(&self, key: &Q) -> Result<usize, usize> {
        let key = key.borrow();
        self.entries
            .binary_search_by(|(stored, _)| stored.as_str().cmp(key))
    }

    pub fn get<Q: Borrow<str> + ?Sized>(&self, key: &Q) -> Option<&V> {
        self.find(key).ok().map(|index| &self.entries[index].1)
    }

    pub fn get_mut<Q: Borrow<str> + ?Sized>(&mut self, key: &Q) -> Option<&mut V> {
        match self.find(key) {
            Ok(index) => Some(&mut self.entries[index].1),
            Err(_) => None,
        }
    }

    pub fn contains_key<Q: Borrow<str> + ?Sized>(&self, key: &Q) -> bool {
        self.find(key).is_ok()
    }

    /// Inserts or replaces; answers the value replaced.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(index) => Some(std::mem::replace(&mut self.entries[index].1, value)),
            Err(index) => {
                reserve_small(&mut self.entries);
                self.entries.insert(index, (key, value));
                None
            }
        }
    }

    pub fn remove<Q: Borrow<str> + ?Sized>(&mut self, key: &Q) -> Option<V> {
        let index = self.find(key).ok()?;
        Some(self.entries.remove(index).1)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.entries.iter().map(|(key, value)| (key, value))
    }

    /// Entries whose key is strictly after `after` (all of them for `None`), in key order:
    /// a page of a listing.
    pub fn after(&self, after: Option<&str>) -> impl Iterator<Item = (&String, &V)> {
        let start = match after.map(|key| self.find(key)) {
            None => 0,
            Some(Ok(index)) => index + 1,
            Some(Err(index)) => index,
        };
        self.entries[start..]
            .iter()
            .map(|(key, value)| (key, value))
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.iter().map(|(key, _)| key)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, value)| value)
    }
}

impl<'a, V> IntoIterator for &'a VecMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, V)>,
        fn(&'a (String, V)) -> (&'a String, &'a V),
    >;

    fn into_iter(self) -> Self::IntoIter {
        fn pair<V>(entry: &(String, V)) -> (&String, &V) {
            (&entry.0, &entry.1)
        }
        self.entries
            .iter()
            .map(pair as fn(&'a (String, V)) -> (&'a String, &'a V))
    }
}

/// Serialised as a JSON object in key order, exactly as a `BTreeMap` would be.
impl<V: Serialize> Serialize for VecMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (key, value) in &self.entries {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn vecmap_behaves_like_a_btreemap() {
        let mut map = VecMap::default();
        let mut model = BTreeMap::new();
        for (step, key) in ["b", "a", "c", "a", "d", "b"].iter().enumerate() {
            assert_eq!(
                map.insert(key.to_string(), step),
                model.insert(key.to_string(), step)
            );
        }
        assert_eq!(map.remove("c"), model.remove("c"));
        assert_eq!(map.remove("zz"), model.remove("zz"));
        assert_eq!(map.get("a"), model.get("a"));
        assert_eq!(map.len(), model.len());
        let pairs: Vec<_> = map.iter().collect();
        let expected: Vec<_> = model.iter().collect();
        assert_eq!(pairs, expected);
        let after_a: Vec<_> = map.after(Some("a")).map(|(key, _)| key.as_str()).collect();
        assert_eq!(after_a, ["b", "d"]);
        let after_c: Vec<_> = map.after(Some("c")).map(|(key, _)| key.as_str()).collect();
        assert_eq!(after_c, ["d"]);
        assert_eq!(map.after(None).count(), 3);
        assert_eq!(
            serde_json::to_string(&map).ok(),
            serde_json::to_string(&model).ok(),
            "the same JSON as a BTreeMap"
        );
    }
}
