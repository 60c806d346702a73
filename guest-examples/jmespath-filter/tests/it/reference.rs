//! The reference service's filter test list, case by case (the numbers are
//! the list's), plus the truthiness and batching behaviour around it.

use jmespath_filter::eval::Engine;

use crate::support::{check, check_error};

// 1. Equality on strings and numbers.
#[test]
fn simple_equality() {
    let event = r#"{"name": "test", "value": 42}"#;
    check(event, "name == 'test'", true);
    check(event, "value == `42`", true);
    check(event, "name == 'other'", false);
}

// 2. `contains` on an array of strings.
#[test]
fn contains_in_array() {
    let event = r#"{"labels": ["bug", "help-wanted", "good-first-issue"]}"#;
    check(event, "contains(labels, 'bug')", true);
    check(event, "contains(labels, 'feature')", false);
}

// 3. `contains` on a string.
#[test]
fn contains_in_string() {
    let event = r#"{"body": "Please fix this @openhands-resolver"}"#;
    check(event, "contains(body, '@openhands')", true);
    check(event, "contains(body, 'other-bot')", false);
}

// 4. Nested fields.
#[test]
fn nested_fields() {
    let event = r#"{"repository": {"full_name": "OpenHands/OpenHands"},
                    "comment": {"user": {"login": "testuser"}}}"#;
    check(event, "repository.full_name == 'OpenHands/OpenHands'", true);
    check(event, "comment.user.login == 'testuser'", true);
}

// 5. `&&` and `||`.
#[test]
fn and_or() {
    let event = r#"{"a": true, "b": true, "c": false}"#;
    check(event, "a && b", true);
    check(event, "a && c", false);
    let event = r#"{"a": true, "b": false, "c": false}"#;
    check(event, "a || b", true);
    check(event, "b || c", false);
}

// 6. `!`.
#[test]
fn not() {
    check(r#"{"draft": false}"#, "!draft", true);
    check(r#"{"draft": true}"#, "!draft", false);
}

// 7. `contains` over a projection.
#[test]
fn contains_over_projection() {
    let event = r#"{"labels": [{"name": "bug"}, {"name": "help-wanted"}]}"#;
    check(event, "contains(labels[].name, 'bug')", true);
    check(event, "contains(labels[].name, 'feature')", false);
}

// 8. `glob` with a literal pattern.
#[test]
fn glob_exact() {
    let event = r#"{"repo": "OpenHands/OpenHands"}"#;
    check(event, "glob(repo, 'OpenHands/OpenHands')", true);
    check(event, "glob(repo, 'other/repo')", false);
}

// 9. `glob` with `*`.
#[test]
fn glob_star() {
    let event = r#"{"repo": "OpenHands/automation"}"#;
    check(event, "glob(repo, 'OpenHands/*')", true);
    check(event, "glob(repo, '*/automation')", true);
    check(event, "glob(repo, 'Other/*')", false);
}

// 10. `glob` with `?`.
#[test]
fn glob_question_mark() {
    let event = r#"{"branch": "release-1"}"#;
    check(event, "glob(branch, 'release-?')", true);
    check(event, "glob(branch, 'release-??')", false);
}

// 11. `icontains`.
#[test]
fn icontains() {
    let event = r#"{"body": "Hey @OpenHands-Resolver please fix this!"}"#;
    check(event, "icontains(body, '@openhands-resolver')", true);
    check(event, "icontains(body, '@OPENHANDS-RESOLVER')", true);
    check(event, "icontains(body, 'other-bot')", false);
}

// 12. `regex`.
#[test]
fn regex() {
    let event = r#"{"ref": "refs/tags/v1.2.3"}"#;
    check(event, "regex(ref, '^refs/tags/v')", true);
    check(event, r"regex(ref, 'v[0-9]+\.[0-9]+\.[0-9]+')", true);
    check(event, "regex(ref, '^refs/heads/')", false);
}

// 13. An invalid regex is false, not an error.
#[test]
fn regex_invalid_pattern_is_false() {
    check(r#"{"text": "anything"}"#, "regex(text, '[invalid')", false);
}

// 14. `starts_with` and `ends_with`.
#[test]
fn starts_and_ends_with() {
    let event = r#"{"ref": "refs/heads/main"}"#;
    check(event, "starts_with(ref, 'refs/heads/')", true);
    check(event, "starts_with(ref, 'refs/tags/')", false);
    let event = r#"{"filename": "config.yaml"}"#;
    check(event, "ends_with(filename, '.yaml')", true);
    check(event, "ends_with(filename, '.json')", false);
}

// 15. `lower` and `upper`.
#[test]
fn lower_upper() {
    check(r#"{"login": "TestUser"}"#, "lower(login) == 'testuser'", true);
    check(r#"{"status": "pending"}"#, "upper(status) == 'PENDING'", true);
}

// 16. `glob` and `icontains` combined.
#[test]
fn combined_glob_icontains() {
    let expression = "glob(repository.full_name, 'OpenHands/*') \
                      && icontains(comment.body, '@openhands-resolver')";
    let event = r#"{"repository": {"full_name": "OpenHands/OpenHands"},
                    "comment": {"body": "Hey @OpenHands-Resolver, take a look"}}"#;
    check(event, expression, true);
    let event = r#"{"repository": {"full_name": "Other/repo"},
                    "comment": {"body": "Hey @OpenHands-Resolver, take a look"}}"#;
    check(event, expression, false);
}

// 17. A pull request on main labelled `bug`.
#[test]
fn pull_request_base_and_label() {
    let expression = "pull_request.base.ref == 'main' && contains(pull_request.labels[].name, 'bug')";
    let event = r#"{"pull_request": {"base": {"ref": "main"},
                    "labels": [{"name": "bug"}, {"name": "urgent"}]}}"#;
    check(event, expression, true);
    let event = r#"{"pull_request": {"base": {"ref": "develop"},
                    "labels": [{"name": "bug"}, {"name": "urgent"}]}}"#;
    check(event, expression, false);
}

// 18. Release branches.
#[test]
fn release_branch_glob() {
    let expression = "glob(ref, 'refs/heads/release/*')";
    check(r#"{"ref": "refs/heads/release/1.0"}"#, expression, true);
    check(r#"{"ref": "refs/heads/main"}"#, expression, false);
}

// 19. A mention from a human, not a bot.
#[test]
fn mention_not_from_bot() {
    let expression = "icontains(comment.body, '@openhands-resolver') \
                      && !ends_with(sender.login, '[bot]')";
    let event = r#"{"comment": {"body": "@openhands-resolver fix it"},
                    "sender": {"login": "human-user"}}"#;
    check(event, expression, true);
    let event = r#"{"comment": {"body": "@openhands-resolver fix it"},
                    "sender": {"login": "dependabot[bot]"}}"#;
    check(event, expression, false);
}

// 20. Main, a release branch or a tag.
#[test]
fn main_release_or_tag() {
    let expression = "ref == 'refs/heads/main' || glob(ref, 'refs/heads/release/*') \
                      || starts_with(ref, 'refs/tags/')";
    for (reference, expected) in [
        ("refs/heads/main", true),
        ("refs/heads/release/2.0", true),
        ("refs/tags/v1.0.0", true),
        ("refs/heads/feature/test", false),
    ] {
        check(&format!(r#"{{"ref": "{reference}"}}"#), expression, expected);
    }
}

// 21. Validation: valid expressions pass, syntax errors and the empty
// expression fail with a message.
#[test]
fn validation() {
    let engine = Engine::global();
    assert_eq!(engine.validate("name == 'test'"), Ok(()));
    assert_eq!(engine.validate("glob(repo, 'org/*') && icontains(body, '@bot')"), Ok(()));

    let err = engine.validate("invalid(((").unwrap_err();
    // The parser's message, with the position and a caret under it.
    assert!(err.message().contains("Parse error"), "{err}");
    assert!(err.message().contains("column"), "{err}");
    assert!(err.message().contains('^'), "{err}");

    let err = engine.validate("").unwrap_err();
    assert!(err.message().contains("empty"), "{err}");
    assert!(engine.validate("   \n").is_err());
}

// 22. Missing fields are false; bad expressions and wrong argument types are
// evaluation errors.
#[test]
fn missing_field_and_errors() {
    check(r#"{"name": "test"}"#, "missing_field", false);
    check_error(r#"{"name": "test"}"#, "invalid(((");
    let err = check_error(r#"{"value": 42}"#, "glob(value, '*')");
    assert!(err.contains("string"), "{err}");
}

/// Every custom function refuses non-string arguments, `null` included.
#[test]
fn custom_functions_take_strings_only() {
    let event = r#"{"n": 1, "s": "x", "l": ["x"], "o": {"x": 1}}"#;
    for expression in [
        "glob(n, '*')",
        "glob(s, missing)",
        "glob(missing, '*')",
        "icontains(l, 'x')",
        "icontains(s, `1`)",
        "regex(o, 'x')",
        "regex(s, missing)",
        "lower(n)",
        "upper(missing)",
        "starts_with(n, 'x')",
        "ends_with(s, missing)",
    ] {
        check_error(event, expression);
    }
    // Wrong arity is an error too.
    check_error(event, "glob(s)");
    check_error(event, "lower(s, s)");
}

/// Number literals compare by value (`1 == 1.0`), and a final `0` is false
/// (Python truthiness) although JMESPath treats it as true inside the
/// expression.
#[test]
fn numbers_and_truthiness_quirk() {
    let event = r#"{"value": 0, "count": 3, "ratio": 1.0, "items": [], "obj": {}, "s": ""}"#;
    check(event, "value == `0`", true);
    check(event, "ratio == `1`", true);
    check(event, "count > `2`", true);
    // The final result 0 is false...
    check(event, "value", false);
    check(event, "count", true);
    // ...but inside the expression 0 is truthy (JMESPath rules).
    check(event, "!value", false);
    check(event, "value && `true`", true);
    check(event, "value || `\"fallback\"`", false);
    // Empty collections and strings are false everywhere.
    check(event, "items", false);
    check(event, "obj", false);
    check(event, "s", false);
    check(event, "!items", true);
    // A non-empty result of any type matches.
    check(event, "[value]", true);
    check(event, "{v: value}", true);
    check(event, "to_string(value)", true);
}

/// Results come back in order, one per expression, duplicates included, and
/// one bad expression does not spoil the others.
#[test]
fn batch_results_in_order() {
    let payload = r#"{"action": "opened", "number": 7}"#;
    let expressions =
        ["action == 'opened'", "invalid(((", "number == `8`", "action == 'opened'", "", "glob(number, '*')", "number"];
    let results = Engine::global().matches(payload, &expressions);
    assert_eq!(results.len(), expressions.len());
    assert_eq!(results[0], Ok(true));
    assert!(results[1].is_err());
    assert_eq!(results[2], Ok(false));
    assert_eq!(results[3], Ok(true));
    assert!(results[4].is_err());
    assert!(results[5].is_err());
    assert_eq!(results[6], Ok(true));
    assert!(Engine::global().matches(payload, &[] as &[&str]).is_empty());
}

/// A payload that is not JSON makes every result an error.
#[test]
fn invalid_payload_fails_every_expression() {
    let results = Engine::global().matches("{not json", &["a", "b", "`true`"]);
    assert_eq!(results.len(), 3);
    for result in results {
        let err = result.unwrap_err();
        assert!(err.message().contains("not valid JSON"), "{err}");
    }
}

/// Payloads that are not objects are still data.
#[test]
fn non_object_payloads() {
    check("[1, 2, 3]", "length(@) == `3`", true);
    check(r#""hello""#, "glob(@, 'h*')", true);
    check("null", "@", false);
    check("0", "@", false);
}

/// An unknown function is refused at validation (the reference would only
/// fail when evaluating it) and is an error at evaluation.
#[test]
fn unknown_function() {
    let err = Engine::global().validate("fnmatch(a, 'x')").unwrap_err();
    assert!(err.message().contains("fnmatch"), "{err}");
    check_error(r#"{"a": "x"}"#, "fnmatch(a, 'x')");
}

/// Regex searches are unanchored, like Python's `re.search`.
#[test]
fn regex_is_a_search() {
    let event = r#"{"title": "WIP: fix the parser", "multi": "a\nfoo\nb"}"#;
    check(event, "regex(title, 'fix')", true);
    check(event, "regex(title, '^fix')", false);
    check(event, "regex(title, '(?i)wip')", true);
    check(event, r"regex(title, '\bparser$')", true);
    check(event, "regex(multi, '(?m)^foo$')", true);
    check(event, "regex(multi, '^foo$')", false);
    check(event, "regex(title, '')", true);
}

/// Python's JMESPath orders strings as well as numbers (by code point), so
/// ISO dates compare; a string against a number is an error; anything else
/// is `null`.
#[test]
fn ordering_like_python() {
    let event = r#"{"created_at": "2024-03-01T10:00:00Z", "n": 5, "s": "b",
                    "t": true, "l": [1, 2, 3], "names": ["b", "a", "c"]}"#;
    check(event, "created_at > '2024-01-01'", true);
    check(event, "created_at < '2024-01-01'", false);
    check(event, "s >= 'b' && s <= 'b' && s > 'a' && s < 'c'", true);
    check(event, "'é' > 'z'", true);
    check(event, "n > `4` && n <= `5`", true);
    check(event, "n > `4.5`", true);
    check(event, "length(l[?@ >= `2`]) == `2`", true);
    check(event, "length(names[?@ < 'c']) == `2`", true);
    let err = check_error(event, "s < n");
    assert!(err.contains("string") && err.contains("number"), "{err}");
    check_error(event, "n >= s");
    // Other types compare to null: no match, and `!null` is true.
    check(event, "t < `1`", false);
    check(event, "l < l", false);
    check(event, "!(t < `1`)", true);
}

/// The deprecated unquoted literal `` `opened` `` is a string, as in
/// Python's JMESPath (AWS's documentation made the form common).
#[test]
fn unquoted_literals_like_python() {
    let event = r#"{"action": "opened", "state": "running"}"#;
    check(event, "action == `opened`", true);
    check(event, "action == `closed`", false);
    check(event, "[?state == `running`] || state == `running`", true);
    assert_eq!(Engine::global().validate("action == `opened`"), Ok(()));
    // JSON literals keep their meaning.
    check(event, "`1` == `1.0`", true);
    check(event, "action == `\"opened\"`", true);
}
