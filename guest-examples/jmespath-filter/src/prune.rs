//! Which parts of a payload a batch of expressions can see, and a parser
//! that builds only those.
//!
//! Parsing a 14 KB GitHub payload into JMESPath values is most of a filter
//! call's work (about half of it in WebAssembly): every key and string is
//! allocated, every object is a `BTreeMap`, every value an `Rc`. A typical
//! filter reads three or four fields. So the expressions of a call are
//! analysed first ([`Needs`]), and the payload is parsed keeping only the
//! object members they can reach; the rest is checked as JSON but never
//! built.
//!
//! The analysis is conservative. It follows plain navigation (fields,
//! sub-expressions, indexes, slices, flattens, projections, filters)
//! precisely, and wherever a value is *used* rather than navigated into (a
//! comparison, a function argument, a truth test, `*` over an object, a
//! multi-select, the final result) it keeps that value whole. Object members
//! are the only thing ever left out: arrays keep every element (their
//! elements share one set of needs), and every value keeps its type. So a
//! navigation gives the same value, or the same `null`, on the pruned data
//! as on the whole payload, and every value that is looked at as a whole is
//! whole. The compliance suite and the GitHub payloads check this by
//! evaluating every expression both ways (`tests/it/prune.rs`).
//!
//! One difference remains, and the host rules it out: JSON that is valid
//! syntax but cannot be built (a number too large for a double, such as
//! `1e400`) is an error when it is built and is not noticed when it is left
//! out. The host parses every payload with `serde_json` before it stores
//! it, and refuses such payloads, so a filter never receives one.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use jmespath::ast::Ast;
use jmespath::{Rcvar, Variable};
use serde::Deserialize as _;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

/// One position in the payload: an object member path from the root, where
/// arrays are transparent (an array's elements share their array's node).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Node {
    /// Everything below this position is needed.
    whole: bool,
    /// The members needed below this position, by key.
    fields: HashMap<String, usize>,
}

/// The parts of a payload that a set of expressions can see: a tree of
/// object member names, some of whose nodes are needed whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    nodes: Vec<Node>,
}

/// The root node's index.
const ROOT: usize = 0;

impl Default for Needs {
    fn default() -> Self {
        Self::new()
    }
}

impl Needs {
    /// Nothing needed (yet).
    pub fn new() -> Self {
        Self { nodes: vec![Node::default()] }
    }

    /// The whole payload.
    pub fn everything() -> Self {
        let mut needs = Self::new();
        needs.nodes[ROOT].whole = true;
        needs
    }

    /// Adds what `ast`, evaluated against the payload, can see. Its result
    /// is used as a whole (it is reduced to a truth value).
    pub fn add(&mut self, ast: &Ast) {
        self.use_whole(ast, &[ROOT]);
    }

    /// Whether the whole payload is needed.
    pub fn is_everything(&self) -> bool {
        self.nodes[ROOT].whole
    }

    /// The needed paths, dotted, with `*` after a node needed whole; sorted.
    /// For tests and diagnostics.
    pub fn paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect(ROOT, String::new(), &mut out);
        out.sort();
        out
    }

    fn collect(&self, node: usize, prefix: String, out: &mut Vec<String>) {
        let n = &self.nodes[node];
        if n.whole {
            out.push(if prefix.is_empty() { "*".to_owned() } else { format!("{prefix}.*") });
            return;
        }
        if n.fields.is_empty() && !prefix.is_empty() {
            out.push(prefix.clone());
        }
        for (name, &child) in &n.fields {
            let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
            self.collect(child, path, out);
        }
    }

    fn child(&mut self, node: usize, name: &str) -> usize {
        if let Some(&child) = self.nodes[node].fields.get(name) {
            return child;
        }
        let child = self.nodes.len();
        self.nodes.push(Node::default());
        self.nodes[node].fields.insert(name.to_owned(), child);
        child
    }

    /// Evaluates `ast` at `current` and keeps its result whole.
    fn use_whole(&mut self, ast: &Ast, current: &[usize]) {
        for node in self.navigate(ast, current) {
            self.nodes[node].whole = true;
        }
    }

    /// What `ast` reads when evaluated at the positions `current`, and the
    /// positions its result may come from (empty when the result is not
    /// part of the payload, or is a part already kept whole).
    fn navigate(&mut self, ast: &Ast, current: &[usize]) -> Vec<usize> {
        match ast {
            Ast::Identity { .. } => current.to_vec(),
            // An index or slice of an array is made of its elements, which
            // share the array's node; on anything else it is null.
            Ast::Index { .. } | Ast::Slice { .. } => current.to_vec(),
            Ast::Field { name, .. } => current.iter().map(|&node| self.child(node, name)).collect(),
            // The elements of a flattened array are the array's elements or
            // their elements, all at the same node.
            Ast::Flatten { node, .. } => self.navigate(node, current),
            Ast::Subexpr { lhs, rhs, .. } | Ast::Projection { lhs, rhs, .. } => {
                let left = self.navigate(lhs, current);
                self.navigate(rhs, &left)
            }
            Ast::Condition { predicate, then, .. } => {
                self.use_whole(predicate, current);
                self.navigate(then, current)
            }
            // `a || b` is `a` or `b`, chosen by truth: both are kept whole
            // (the truth of an object depends on every member).
            Ast::And { lhs, rhs, .. } | Ast::Or { lhs, rhs, .. } | Ast::Comparison { lhs, rhs, .. } => {
                self.use_whole(lhs, current);
                self.use_whole(rhs, current);
                Vec::new()
            }
            // `*` over an object lists every member's value.
            Ast::Not { node, .. } | Ast::ObjectValues { node, .. } => {
                self.use_whole(node, current);
                Vec::new()
            }
            Ast::MultiList { elements, .. } => {
                for element in elements {
                    self.use_whole(element, current);
                }
                Vec::new()
            }
            Ast::MultiHash { elements, .. } => {
                for pair in elements {
                    self.use_whole(&pair.value, current);
                }
                Vec::new()
            }
            // Every argument is kept whole. An expression reference (`&b` in
            // `sort_by(a, &b)`) is applied by the function to the elements
            // of its other arguments, which are whole, so it needs nothing
            // of its own.
            Ast::Function { args, .. } => {
                for arg in args {
                    self.use_whole(arg, current);
                }
                Vec::new()
            }
            Ast::Expref { .. } | Ast::Literal { .. } => Vec::new(),
        }
    }

    /// Parses JSON text into a JMESPath value, building only what these
    /// needs reach; the rest is checked as JSON syntax and skipped.
    pub fn parse(&self, json: &str) -> Result<Rcvar, serde_json::Error> {
        let mut deserializer = serde_json::Deserializer::from_str(json);
        let value = if self.is_everything() {
            Rcvar::new(de::Deserialize::deserialize(&mut deserializer)?)
        } else {
            Pruned { needs: self, node: ROOT }.deserialize(&mut deserializer)?
        };
        deserializer.end()?;
        Ok(value)
    }
}

/// Deserializes the value at one node of [`Needs`].
#[derive(Clone, Copy)]
struct Pruned<'n> {
    needs: &'n Needs,
    node: usize,
}

impl<'de> DeserializeSeed<'de> for Pruned<'_> {
    type Value = Rcvar;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Rcvar, D::Error> {
        if self.needs.nodes[self.node].whole {
            return Rcvar::deserialize(deserializer);
        }
        deserializer.deserialize_any(self).map(Rcvar::new)
    }
}

/// The scalars are built as `jmespath::Variable`'s own `Deserialize` builds
/// them; objects keep only the needed members, arrays every element.
impl<'de> Visitor<'de> for Pruned<'_> {
    type Value = Variable;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Variable, E> {
        Ok(Variable::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Variable, E> {
        Ok(Variable::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Variable, E> {
        Ok(Variable::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Variable, E> {
        Ok(Number::from_f64(value).map_or(Variable::Null, Variable::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Variable, E> {
        Ok(Variable::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Variable, E> {
        Ok(Variable::String(value))
    }

    fn visit_none<E>(self) -> Result<Variable, E> {
        Ok(Variable::Null)
    }

    fn visit_unit<E>(self) -> Result<Variable, E> {
        Ok(Variable::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Variable, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Variable, A::Error> {
        let mut values = Vec::new();
        while let Some(value) = seq.next_element_seed(self)? {
            values.push(value);
        }
        Ok(Variable::Array(values))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Variable, A::Error> {
        let fields = &self.needs.nodes[self.node].fields;
        let mut values = BTreeMap::new();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match fields.get(key.as_str()) {
                Some(&child) => {
                    let value = map.next_value_seed(Pruned { needs: self.needs, node: child })?;
                    values.insert(key.into_owned(), value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Variable::Object(values))
    }
}

/// An object key, borrowed from the text when it has no escapes, so a key
/// that is skipped costs no allocation.
enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(s) => s,
            Key::Owned(s) => s,
        }
    }

    fn into_owned(self) -> String {
        match self {
            Key::Borrowed(s) => s.to_owned(),
            Key::Owned(s) => s,
        }
    }
}

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an object key")
            }

            fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::Borrowed(value))
            }

            fn visit_str<E>(self, value: &str) -> Result<Key<'de>, E> {
                Ok(Key::Owned(value.to_owned()))
            }

            fn visit_string<E>(self, value: String) -> Result<Key<'de>, E> {
                Ok(Key::Owned(value))
            }
        }

        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::Engine;

    fn needs(expressions: &[&str]) -> Vec<String> {
        let engine = Engine::new();
        let mut needs = Needs::new();
        for expression in expressions {
            needs.add(engine.compile(expression).unwrap().as_ast());
        }
        needs.paths()
    }

    #[test]
    fn navigation_is_followed_and_used_values_are_whole() {
        assert_eq!(needs(&["action == 'opened'"]), ["action.*"]);
        assert_eq!(needs(&["pull_request.user.login"]), ["pull_request.user.login.*"]);
        assert_eq!(needs(&["contains(issue.labels[].name, 'bug')"]), ["issue.labels.name.*"]);
        assert_eq!(needs(&["issue.labels[?name == 'bug'] | [0].id"]), ["issue.labels.id.*", "issue.labels.name.*"]);
        // The filter's result is the element itself: kept whole.
        assert_eq!(needs(&["issue.labels[?name == 'bug']"]), ["issue.labels.*"]);
        // A truth test looks at every member of an object.
        assert_eq!(needs(&["pull_request && action == 'opened'"]), ["action.*", "pull_request.*"]);
        // Ordering comparisons are rewritten into function calls.
        assert_eq!(needs(&["issue.comments > `3`"]), ["issue.comments.*"]);
        assert_eq!(
            needs(&["action == 'labeled'", "glob(repository.full_name, 'org/*')"]),
            ["action.*", "repository.full_name.*"]
        );
    }

    #[test]
    fn what_cannot_be_followed_is_kept_whole() {
        assert_eq!(needs(&["@"]), ["*"]);
        assert_eq!(needs(&["keys(@)"]), ["*"]);
        assert_eq!(needs(&["repository.*.login"]), ["repository.*"]);
        assert_eq!(needs(&["[action, sender]"]), ["action.*", "sender.*"]);
        assert_eq!(needs(&["sort_by(issues, &number)[0].title"]), ["issues.*"]);
        assert_eq!(needs(&["`{\"a\": 1}`.a"]), Vec::<String>::new());
    }

    #[test]
    fn the_pruned_parse_keeps_needed_members_and_every_element() {
        let engine = Engine::new();
        let mut needs = Needs::new();
        needs.add(engine.compile("a[].b == `1`").unwrap().as_ast());
        let parsed = needs.parse(r#"{"a": [{"b": 1, "c": 2}, [{"b": 3}], 4], "d": {"e": [1e300, "\u00e9"]}}"#).unwrap();
        let expected = Variable::from_json(r#"{"a": [{"b": 1}, [{"b": 3}], 4]}"#).unwrap();
        assert_eq!(*parsed, expected);
        // What is skipped is still checked as JSON.
        assert!(needs.parse(r#"{"d": [1, }"#).is_err());
        assert!(needs.parse(r#"{"a": []} x"#).is_err());
        assert_eq!(
            *Needs::everything().parse("[1, {\"x\": 2}]").unwrap(),
            Variable::from_json("[1, {\"x\": 2}]").unwrap()
        );
    }
}
