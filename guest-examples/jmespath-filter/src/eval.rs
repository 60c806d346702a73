//! Filter-expression evaluation: JMESPath plus the custom functions of the
//! reference automation service, with Python truthiness on the final result.
//!
//! Nothing here touches the component bindings, so the whole module runs
//! natively in unit tests; `lib.rs` only converts types at the boundary.
//!
//! The custom functions, all of which take strings only (any other type,
//! `null` included, is an evaluation error, as in Python's `jmespath`):
//!
//! | function | result |
//! | --- | --- |
//! | `glob(s, pattern)` | Python `fnmatch.fnmatchcase` (see [`crate::fnmatch`]) |
//! | `icontains(s, sub)` | case-insensitive substring test |
//! | `regex(s, pattern)` | unanchored search (Python `re.search`, see [`crate::pyre`]); an invalid pattern is `false` |
//! | `lower(s)`, `upper(s)` | the string in lower or upper case |
//!
//! `starts_with` and `ends_with` are JMESPath built-ins with the same
//! meaning as the reference's functions, so they are not redefined.
//!
//! Where Python's JMESPath library departs from the specification in ways
//! filters rely on (ordering strings, unquoted literals), the reference's
//! behaviour is kept; `compat.rs` has the details.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;
use std::sync::{LazyLock, Mutex, PoisonError};

use jmespath::functions::{ArgumentType, CustomFunction, Function, Signature};
use jmespath::{Context, Expression, JmespathError, Rcvar, Runtime, Variable};

use crate::compat::{self, PythonOrdering, legacy_literals};
use crate::fnmatch::fnmatch;
use crate::prune::Needs;
use crate::pyre::PyRegex;

/// Why an expression could not be compiled or evaluated. The text is shown to
/// the user as is, so it quotes the parser's or interpreter's message,
/// position included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError(String);

impl EvalError {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EvalError {}

impl From<JmespathError> for EvalError {
    fn from(err: JmespathError) -> Self {
        Self(err.to_string())
    }
}

/// How many compiled regular expressions the `regex()` function keeps. The
/// host keeps instances for many calls, so this is a working set: it was
/// 256, fewer than the distinct patterns of a few thousand filters, and
/// emptying it recompiled them all on every call.
const REGEX_CACHE_LIMIT: usize = 2048;

/// The most operators, brackets and dots (outside quotes) an expression may
/// have.
///
/// The parser and the interpreter recurse once per nesting level, and a
/// WebAssembly stack overflow is a trap, which the host would report as an
/// internal error rather than as a bad expression. With Wasmtime's default
/// 512 KiB stack the cheapest overflow found takes about 1,500 of these
/// characters (`[[...a]]` or `length(length(...))` 1,500 levels deep); real
/// filters use a few dozen.
pub const MAX_STRUCTURE: usize = 512;

/// A JMESPath runtime with the built-in and the custom functions registered.
pub struct Engine {
    runtime: Runtime,
}

static GLOBAL: LazyLock<Engine> = LazyLock::new(Engine::new);

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    /// Builds a runtime with the JMESPath built-ins and the custom functions.
    pub fn new() -> Self {
        let mut runtime = Runtime::new();
        runtime.register_builtin_functions();
        register_string_fn(&mut runtime, "glob", 2, |a| Variable::Bool(fnmatch(a[0], a[1])));
        register_string_fn(&mut runtime, "icontains", 2, |a| Variable::Bool(icontains(a[0], a[1])));
        register_string_fn(&mut runtime, "lower", 1, |a| Variable::String(a[0].to_lowercase()));
        register_string_fn(&mut runtime, "upper", 1, |a| Variable::String(a[0].to_uppercase()));
        runtime.register_function("regex", Box::new(RegexFunction::default()));
        for (name, function) in PythonOrdering::all() {
            runtime.register_function(name, Box::new(function));
        }
        // The crate's `avg` divides by zero on an empty array and fails with
        // an error; JMESPath (and Python's implementation) return null.
        runtime.register_function(
            "avg",
            Box::new(CustomFunction::new(
                Signature::new(vec![ArgumentType::TypedArray(Box::new(ArgumentType::Number))], None),
                Box::new(|args: &[Rcvar], _: &mut Context<'_>| Ok(Rcvar::new(average(&args[0])))),
            )),
        );
        Self { runtime }
    }

    /// The process-wide engine (built on first use), so a component instance
    /// registers the functions once however many calls it serves.
    pub fn global() -> &'static Engine {
        &GLOBAL
    }

    /// Parses an expression, adapts it to the reference's Python behaviour
    /// (see `compat.rs`) and checks that every function it calls
    /// exists.
    ///
    /// An empty (or all-whitespace) expression is refused. (In the reference
    /// service an empty filter means "no filter"; a host that keeps that
    /// meaning does not call the plugin for it.) So is one too deeply built
    /// to evaluate safely (see [`MAX_STRUCTURE`]).
    pub fn compile<'a>(&'a self, expression: &str) -> Result<Expression<'a>, EvalError> {
        if expression.trim().is_empty() {
            return Err(EvalError::new("the filter expression is empty"));
        }
        check_structure(expression)?;
        let source = legacy_literals(expression);
        let mut ast = jmespath::parse(&source)?;
        let known = |name: &str| self.runtime.get_function(name).is_some();
        compat::prepare(&source, &mut ast, &known)?;
        Ok(Expression::new(source, ast, &self.runtime))
    }

    /// Checks an expression's syntax (and function names) without
    /// evaluating it.
    pub fn validate(&self, expression: &str) -> Result<(), EvalError> {
        self.compile(expression).map(drop)
    }

    /// Evaluates a compiled expression against parsed data and returns the
    /// plain JMESPath result.
    pub fn evaluate(&self, expression: &Expression<'_>, data: &Rcvar) -> Result<Rcvar, EvalError> {
        // `Expression::search` would first serialise the data into a fresh
        // `Variable` (a deep copy of the payload per expression); the
        // interpreter takes the shared value directly.
        let mut ctx = Context::new(expression.as_str(), &self.runtime);
        Ok(jmespath::interpret(data, expression.as_ast(), &mut ctx)?)
    }

    /// Compiles and evaluates one expression, returning the plain JMESPath
    /// result (no truthiness applied).
    pub fn search(&self, expression: &str, data: &Rcvar) -> Result<Rcvar, EvalError> {
        let compiled = self.compile(expression)?;
        self.evaluate(&compiled, data)
    }

    /// Evaluates each expression against a JSON payload and reduces each
    /// result with Python truthiness.
    ///
    /// The payload is parsed once. If it is not valid JSON every result is
    /// that error. Each distinct expression is compiled and evaluated once:
    /// evaluation is pure, so a repeated expression reuses the result.
    pub fn matches<S: AsRef<str>>(&self, payload: &str, expressions: &[S]) -> Vec<Result<bool, EvalError>> {
        self.matches_cached(&ExpressionCache::new(), payload, expressions)
    }

    /// [`Engine::matches`], taking compiled expressions from `cache` and
    /// adding the ones it lacks, so an instance that serves many events
    /// compiles each filter once.
    pub fn matches_cached<'a, S: AsRef<str>>(
        &'a self,
        cache: &ExpressionCache<'a>,
        payload: &str,
        expressions: &[S],
    ) -> Vec<Result<bool, EvalError>> {
        let compiled: Vec<_> = expressions.iter().map(|expression| cache.compile(self, expression.as_ref())).collect();
        // Only what the batch's expressions can see is built (see `prune`).
        let needs = cache.needs(expressions, &compiled);
        let data = match parse_pruned(payload, &needs) {
            Ok(data) => data,
            Err(err) => return expressions.iter().map(|_| Err(err.clone())).collect(),
        };
        let mut seen: HashMap<&str, Result<bool, EvalError>> = HashMap::new();
        expressions
            .iter()
            .zip(&compiled)
            .map(|(expression, compiled)| {
                seen.entry(expression.as_ref())
                    .or_insert_with(|| match &**compiled {
                        Ok(compiled) => self.evaluate(compiled, &data).map(|result| python_truthy(&result)),
                        Err(err) => Err(err.clone()),
                    })
                    .clone()
            })
            .collect()
    }

    /// Compiles one expression and evaluates it against a JSON payload
    /// parsed as [`Engine::matches`] parses it (only the parts the
    /// expression can see), returning the plain JMESPath result.
    pub fn search_pruned(&self, expression: &str, payload: &str) -> Result<Rcvar, EvalError> {
        let compiled = self.compile(expression)?;
        let mut needs = Needs::new();
        needs.add(compiled.as_ast());
        self.evaluate(&compiled, &parse_pruned(payload, &needs)?)
    }
}

/// Most compiled expressions an [`ExpressionCache`] keeps; when it is full it
/// starts again empty. A deployment has one entry per distinct filter of
/// the plugin's automations, so this is only reached when filters churn.
/// It was 4,096: with 10,000 automations of one source every call overflowed
/// it, emptied it and compiled every expression again (113 ms a delivery in
/// the `scale` load scenario, against about 1 ms per 1,000 expressions warm).
pub const EXPRESSION_CACHE_LIMIT: usize = 16_384;

/// Compiled expressions (and compile errors, which are as deterministic) by
/// their text.
///
/// Compiling is most of a call's work: natively, 100 typical filters take
/// about 210 µs to compile and 40 µs to evaluate against a 14 KB payload.
/// The host may keep an instance for many calls (see `wit/filter.wit`), and
/// the component keeps one cache per instance.
pub struct ExpressionCache<'a> {
    compiled: RefCell<HashMap<String, Rc<Result<Expression<'a>, EvalError>>>>,
    /// What recent batches of expressions need of a payload, most recent
    /// first: the host sends one event key's candidates in the same order
    /// each time, so a few lists cover a deployment's traffic.
    needs: RefCell<Vec<(Vec<String>, Rc<Needs>)>>,
}

/// How many batches' [`Needs`] an [`ExpressionCache`] keeps.
const NEEDS_CACHE_LIMIT: usize = 8;

impl Default for ExpressionCache<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> ExpressionCache<'a> {
    /// An empty cache.
    pub fn new() -> Self {
        Self { compiled: RefCell::new(HashMap::new()), needs: RefCell::new(Vec::new()) }
    }

    /// The compiled form of `expression`, compiling it on a miss.
    pub fn compile(&self, engine: &'a Engine, expression: &str) -> Rc<Result<Expression<'a>, EvalError>> {
        if let Some(hit) = self.compiled.borrow().get(expression) {
            return hit.clone();
        }
        let compiled = Rc::new(engine.compile(expression));
        let mut map = self.compiled.borrow_mut();
        if map.len() >= EXPRESSION_CACHE_LIMIT {
            map.clear();
        }
        map.insert(expression.to_owned(), compiled.clone());
        compiled
    }

    /// What the batch `expressions` (compiled as `compiled`) needs of a
    /// payload, worked out on a miss. An expression that does not compile
    /// needs nothing: its answer is the compile error.
    fn needs<S: AsRef<str>>(&self, expressions: &[S], compiled: &[Rc<Result<Expression<'a>, EvalError>>]) -> Rc<Needs> {
        let same = |list: &[String]| {
            list.len() == expressions.len() && list.iter().zip(expressions).all(|(a, b)| a == b.as_ref())
        };
        let mut recent = self.needs.borrow_mut();
        if let Some(at) = recent.iter().position(|(list, _)| same(list)) {
            let hit = recent.remove(at);
            let needs = hit.1.clone();
            recent.insert(0, hit);
            return needs;
        }
        let mut needs = Needs::new();
        for expression in compiled.iter().filter_map(|c| c.as_ref().as_ref().ok()) {
            needs.add(expression.as_ast());
        }
        let needs = Rc::new(needs);
        recent.truncate(NEEDS_CACHE_LIMIT - 1);
        recent.insert(0, (expressions.iter().map(|e| e.as_ref().to_owned()).collect(), needs.clone()));
        needs
    }

    /// How many expressions are cached.
    pub fn len(&self) -> usize {
        self.compiled.borrow().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Refuses an expression with more than [`MAX_STRUCTURE`] nesting
/// characters, skipping quoted text (`'raw'`, `"identifier"`, `` `literal` ``)
/// where they nest nothing. Counting is cheaper and simpler than measuring
/// the depth, and every nesting level needs at least one such character.
fn check_structure(expression: &str) -> Result<(), EvalError> {
    let mut count = 0usize;
    let mut quote: Option<char> = None;
    let mut chars = expression.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(_) if c == '\\' => {
                chars.next();
            }
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '\'' | '"' | '`' => quote = Some(c),
                '(' | '[' | '{' | '!' | '.' | '|' | '&' => count += 1,
                _ => {}
            },
        }
    }
    if count > MAX_STRUCTURE {
        return Err(EvalError::new(format!(
            "the filter expression is too complex: it has {count} operators, brackets and dots \
             outside quotes, and the limit is {MAX_STRUCTURE}"
        )));
    }
    Ok(())
}

/// Parses an event payload (JSON text) into a JMESPath value.
pub fn parse_payload(payload: &str) -> Result<Rcvar, EvalError> {
    parse_pruned(payload, &Needs::everything())
}

/// Parses an event payload, building only what `needs` reaches.
fn parse_pruned(payload: &str, needs: &Needs) -> Result<Rcvar, EvalError> {
    needs.parse(payload).map_err(|err| EvalError::new(format!("the event payload is not valid JSON: {err}")))
}

/// Python's `bool()` of a JMESPath result, which is how the reference service
/// decides whether a filter matched.
///
/// It differs from JMESPath's own truthiness (used inside expressions, by
/// `&&`, `||`, `!` and filters) in one place: the number zero is false here
/// and true in JMESPath. So an expression whose final value is `0` does not
/// match, while `` !`0` `` is `false` (JMESPath's rule).
pub fn python_truthy(value: &Variable) -> bool {
    match value {
        Variable::Null => false,
        Variable::Bool(b) => *b,
        Variable::Number(n) => n.as_f64() != Some(0.0),
        Variable::String(s) => !s.is_empty(),
        Variable::Array(a) => !a.is_empty(),
        Variable::Object(o) => !o.is_empty(),
        // Python's expression-reference object has no `__bool__`: truthy.
        Variable::Expref(_) => true,
    }
}

/// The mean of an array of numbers, or null when it is empty (or anything
/// but such an array, which the signature check has already refused).
fn average(values: &Variable) -> Variable {
    let Some(values) = values.as_array().filter(|values| !values.is_empty()) else {
        return Variable::Null;
    };
    let sum: f64 = values.iter().filter_map(|value| value.as_number()).sum();
    serde_json::Number::from_f64(sum / values.len() as f64).map_or(Variable::Null, Variable::Number)
}

/// Case-insensitive substring test: `sub.lower() in s.lower()`.
fn icontains(haystack: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return true;
    }
    // The ASCII path avoids two allocations for the common case.
    if haystack.is_ascii() && needle.is_ascii() {
        let needle = needle.as_bytes();
        return haystack.as_bytes().windows(needle.len()).any(|window| window.eq_ignore_ascii_case(needle));
    }
    haystack.to_lowercase().contains(&needle.to_lowercase())
}

/// Registers a function of `arity` string arguments; the signature check
/// turns a non-string argument (`null` included) into an evaluation error.
fn register_string_fn(
    runtime: &mut Runtime,
    name: &str,
    arity: usize,
    f: impl Fn(&[&str]) -> Variable + Send + Sync + 'static,
) {
    let signature = Signature::new(vec![ArgumentType::String; arity], None);
    runtime.register_function(
        name,
        Box::new(CustomFunction::new(
            signature,
            Box::new(move |args: &[Rcvar], _: &mut Context<'_>| {
                let strings: Vec<&str> = args.iter().map(|arg| arg.as_string().map_or("", String::as_str)).collect();
                Ok(Rcvar::new(f(&strings)))
            }),
        )),
    );
}

/// `regex(s, pattern)`: Python `re.search(pattern, s) is not None`, as far
/// as the `regex` crate can express it (see [`crate::pyre`]).
///
/// Compiled patterns are cached because the same few patterns recur across
/// the expressions of one call. A pattern that does not compile is cached as
/// `None` and makes the function return `false` rather than fail, as the
/// reference does.
struct RegexFunction {
    signature: Signature,
    cache: Mutex<HashMap<String, Option<PyRegex>>>,
}

impl Default for RegexFunction {
    fn default() -> Self {
        Self { signature: Signature::new(vec![ArgumentType::String; 2], None), cache: Mutex::new(HashMap::new()) }
    }
}

impl Function for RegexFunction {
    fn evaluate(&self, args: &[Rcvar], ctx: &mut Context<'_>) -> jmespath::SearchResult {
        self.signature.validate(args, ctx)?;
        let (Some(text), Some(pattern)) = (args[0].as_string(), args[1].as_string()) else {
            unreachable!("the signature check admits strings only");
        };
        // A panic while holding the lock cannot leave the map half-updated in
        // a way that matters (entries are whole values), so poison is ignored.
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if !cache.contains_key(pattern) && cache.len() >= REGEX_CACHE_LIMIT {
            cache.clear();
        }
        let regex = cache.entry(pattern.clone()).or_insert_with(|| PyRegex::new(pattern));
        let found = regex.as_ref().is_some_and(|re| re.search(text));
        Ok(Rcvar::new(Variable::Bool(found)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_truthiness() {
        let cases = [
            ("null", false),
            ("false", false),
            ("true", true),
            ("0", false),
            ("0.0", false),
            ("-0.0", false),
            ("1", true),
            ("-1.5", true),
            (r#""""#, false),
            (r#"" ""#, true),
            ("[]", false),
            ("[0]", true),
            ("{}", false),
            (r#"{"a":null}"#, true),
        ];
        for (json, expected) in cases {
            let value = Variable::from_json(json).unwrap();
            assert_eq!(python_truthy(&value), expected, "{json}");
        }
    }

    #[test]
    fn icontains_folds_case() {
        assert!(icontains("Hey @OpenHands-Resolver", "@openhands-resolver"));
        assert!(icontains("abc", ""));
        assert!(icontains("", ""));
        assert!(!icontains("", "a"));
        assert!(icontains("ÉCOLE", "école"));
        assert!(!icontains("abc", "abcd"));
    }

    #[test]
    fn unknown_function_is_a_compile_error() {
        let engine = Engine::new();
        let err = engine.validate("a && nope(b)").unwrap_err();
        assert!(err.message().contains("nope"), "{err}");
        assert!(engine.validate("sort_by(a, &lower(b))").is_ok());
        assert!(engine.validate("sort_by(a, &bogus(b))").is_err());
        assert!(engine.validate("{x: bogus(a)}").is_err());
    }

    #[test]
    fn structure_limit() {
        let engine = Engine::new();
        let nested = |n: usize| format!("{}a{}", "!(".repeat(n), ")".repeat(n));
        // Unoptimised native frames are many times larger than release
        // WebAssembly ones, so the deepest accepted expression gets a roomy
        // stack here.
        let deepest = nested(MAX_STRUCTURE / 2);
        let parsed = std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(move || Engine::new().validate(&deepest))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(parsed, Ok(()));
        let err = engine.validate(&nested(MAX_STRUCTURE / 2 + 1)).unwrap_err();
        assert!(err.message().contains("too complex"), "{err}");
        assert!(engine.validate(&"!".repeat(100_000)).is_err());
        // Quoted text does not count, escaped quotes included.
        let dots = ".".repeat(MAX_STRUCTURE * 2);
        assert!(engine.validate(&format!("a == '{dots}\\'{dots}'")).is_ok());
        assert!(engine.validate(&format!("\"{dots}\" == `\"{dots}\\`\"`")).is_ok());
    }

    #[test]
    fn regex_cache_stays_bounded() {
        let engine = Engine::new();
        let data = parse_payload(r#"{"s":"x42"}"#).unwrap();
        for i in 0..(REGEX_CACHE_LIMIT * 2 + 3) {
            let expr = format!("regex(s, 'x{i}')");
            let hit = engine.search(&expr, &data).unwrap();
            let expected = "x42".contains(&format!("x{i}"));
            assert_eq!(hit.as_boolean(), Some(expected), "{expr}");
        }
    }

    #[test]
    fn a_cache_serves_many_payloads_with_the_same_answers() {
        let engine = Engine::new();
        let cache = ExpressionCache::new();
        let exprs = ["n > `1`", "name == 'a'", "bad ==", "regex(name, '^b')", "n > `1`"];
        for (payload, expected) in [
            (r#"{"n": 2, "name": "a"}"#, [Some(true), Some(true), None, Some(false), Some(true)]),
            (r#"{"n": 0, "name": "bob"}"#, [Some(false), Some(false), None, Some(true), Some(false)]),
        ] {
            let cached = engine.matches_cached(&cache, payload, &exprs);
            assert_eq!(cached, engine.matches(payload, &exprs), "{payload}");
            let got: Vec<Option<bool>> = cached.iter().map(|r| r.as_ref().ok().copied()).collect();
            assert_eq!(got, expected, "{payload}");
        }
        // Four distinct expressions, the broken one included.
        assert_eq!(cache.len(), 4);
        assert!(cache.compile(&engine, "bad ==").is_err());
    }

    #[test]
    fn a_full_cache_starts_again_empty() {
        let engine = Engine::new();
        let cache = ExpressionCache::new();
        for i in 0..EXPRESSION_CACHE_LIMIT {
            assert!(cache.compile(&engine, &format!("a == `{i}`")).is_ok());
        }
        assert_eq!(cache.len(), EXPRESSION_CACHE_LIMIT);
        assert!(cache.compile(&engine, "b").is_ok());
        assert_eq!(cache.len(), 1);
    }
}
