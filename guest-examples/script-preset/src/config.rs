//! The `script` preset's configuration: its JSON Schema, its validation and
//! the bundle it renders.
//!
//! Nothing here touches the component bindings, so it runs natively in unit
//! tests; `lib.rs` only converts the result into WIT types.
//!
//! Validation is written out by hand rather than derived so that every
//! message names the field at fault, since the host shows it to the user as
//! is. The checks are exactly the ones [`config_schema`] states.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Value, json};

/// The largest `script` (and `setup`) accepted, in bytes of UTF-8.
pub const MAX_SCRIPT_BYTES: usize = 64 * 1024;

/// The fields a configuration may have.
const FIELDS: [&str; 4] = ["interpreter", "script", "env", "setup"];

/// Permission bits of the rendered scripts: executable, so that either
/// `./main.sh` or `bash main.sh` works.
pub const SCRIPT_MODE: u32 = 0o755;

/// The program that runs the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interpreter {
    /// GNU bash (the default).
    #[default]
    Bash,
    /// A POSIX shell.
    Sh,
    /// Python 3.
    Python3,
    /// Node.js.
    Node,
}

impl Interpreter {
    /// Every interpreter, in the order the schema lists them.
    pub const ALL: [Interpreter; 4] = [Interpreter::Bash, Interpreter::Sh, Interpreter::Python3, Interpreter::Node];

    /// The name used in the configuration and as the program in the
    /// entrypoint (looked up on the sandbox `PATH`).
    pub fn name(self) -> &'static str {
        match self {
            Interpreter::Bash => "bash",
            Interpreter::Sh => "sh",
            Interpreter::Python3 => "python3",
            Interpreter::Node => "node",
        }
    }

    /// The extension of the main script file.
    pub fn extension(self) -> &'static str {
        match self {
            Interpreter::Bash | Interpreter::Sh => "sh",
            Interpreter::Python3 => "py",
            Interpreter::Node => "js",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|i| i.name() == name)
    }
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptConfig {
    /// The program that runs `script`.
    pub interpreter: Interpreter,
    /// The script's source text.
    pub script: String,
    /// Extra environment variables for the run.
    pub env: BTreeMap<String, String>,
    /// A shell script the executor may run before the main script.
    pub setup: Option<String>,
}

/// A configuration that was refused; the message names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl ConfigError {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// One file of a rendered bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Path relative to the bundle root.
    pub path: String,
    /// Unix permission bits.
    pub mode: u32,
    /// The file's contents.
    pub contents: Vec<u8>,
}

/// What [`render`] produces: the parts of a bundle this preset fills in (it
/// never ships an archive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The files, main script first.
    pub files: Vec<RenderedFile>,
    /// The command that starts the run, e.g. `python3 main.py`.
    pub entrypoint: String,
    /// Environment variables, sorted by name.
    pub env: Vec<(String, String)>,
}

/// The JSON Schema (draft 2020-12) of the configuration, as JSON text.
pub fn config_schema() -> String {
    let interpreters: Vec<&str> = Interpreter::ALL.iter().map(|i| i.name()).collect();
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "script preset configuration",
        "type": "object",
        "properties": {
            "interpreter": {
                "description": "The program that runs the script.",
                "enum": interpreters,
                "default": Interpreter::default().name(),
            },
            "script": {
                "description": format!(
                    "The script's source text, 1 to {MAX_SCRIPT_BYTES} bytes of UTF-8."
                ),
                "type": "string",
                "minLength": 1,
                // maxLength counts characters; the byte limit is stricter and
                // is enforced by the preset.
                "maxLength": MAX_SCRIPT_BYTES,
            },
            "env": {
                "description": "Extra environment variables for the run.",
                "type": "object",
                "propertyNames": { "pattern": "^[A-Za-z_][A-Za-z0-9_]*$" },
                "additionalProperties": { "type": "string", "pattern": "^[^\\u0000]*$" },
            },
            "setup": {
                "description": format!(
                    "A shell script written to setup.sh, 1 to {MAX_SCRIPT_BYTES} bytes of UTF-8."
                ),
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_SCRIPT_BYTES,
            },
        },
        "required": ["script"],
        "additionalProperties": false,
    });
    schema.to_string()
}

/// Parses and validates a configuration (JSON text).
pub fn parse(config: &str) -> Result<ScriptConfig, ConfigError> {
    let value: Value = serde_json::from_str(config)
        .map_err(|err| ConfigError::new(format!("the configuration is not valid JSON: {err}")))?;
    from_value(&value)
}

/// Validates a configuration already parsed from JSON.
pub fn from_value(value: &Value) -> Result<ScriptConfig, ConfigError> {
    let Value::Object(fields) = value else {
        return Err(ConfigError::new(format!("the configuration must be a JSON object, not {}", type_name(value))));
    };
    if let Some(unknown) = fields.keys().find(|key| !FIELDS.contains(&key.as_str())) {
        return Err(ConfigError::new(format!(
            "unknown field `{unknown}`; the fields are {}",
            FIELDS.map(|f| format!("`{f}`")).join(", ")
        )));
    }

    let interpreter = match fields.get("interpreter") {
        None => Interpreter::default(),
        Some(Value::String(name)) => Interpreter::from_name(name).ok_or_else(|| {
            ConfigError::new(format!("`interpreter` must be one of {}, not \"{name}\"", interpreter_list()))
        })?,
        Some(other) => {
            return Err(ConfigError::new(format!(
                "`interpreter` must be one of {}, not {}",
                interpreter_list(),
                type_name(other)
            )));
        }
    };
    let script = match fields.get("script") {
        None => return Err(ConfigError::new("missing required field `script`")),
        Some(value) => script_text("script", value)?,
    };
    let setup = fields.get("setup").map(|value| script_text("setup", value)).transpose()?;
    let env = fields.get("env").map(parse_env).transpose()?.unwrap_or_default();

    Ok(ScriptConfig { interpreter, script, env, setup })
}

/// Renders the bundle parts for a validated configuration.
pub fn render(config: &ScriptConfig) -> Rendered {
    let main = format!("main.{}", config.interpreter.extension());
    let mut files =
        vec![RenderedFile { path: main.clone(), mode: SCRIPT_MODE, contents: config.script.clone().into_bytes() }];
    if let Some(setup) = &config.setup {
        files.push(RenderedFile {
            path: "setup.sh".to_owned(),
            mode: SCRIPT_MODE,
            contents: setup.clone().into_bytes(),
        });
    }
    Rendered {
        files,
        entrypoint: format!("{} {main}", config.interpreter.name()),
        env: config.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// Checks a script-valued field: a non-empty string within the byte limit.
fn script_text(field: &str, value: &Value) -> Result<String, ConfigError> {
    let Value::String(text) = value else {
        return Err(ConfigError::new(format!("`{field}` must be a string, not {}", type_name(value))));
    };
    if text.is_empty() {
        return Err(ConfigError::new(format!("`{field}` must not be empty")));
    }
    if text.len() > MAX_SCRIPT_BYTES {
        return Err(ConfigError::new(format!("`{field}` is {} bytes; the limit is {MAX_SCRIPT_BYTES}", text.len())));
    }
    Ok(text.clone())
}

/// Checks `env`: an object of string values under portable variable names.
/// The name rule keeps out `=` and NUL, which no process environment can
/// hold, and names a shell could not expand; values may hold anything but NUL.
fn parse_env(value: &Value) -> Result<BTreeMap<String, String>, ConfigError> {
    let Value::Object(vars) = value else {
        return Err(ConfigError::new(format!("`env` must be an object of strings, not {}", type_name(value))));
    };
    let mut env = BTreeMap::new();
    for (name, value) in vars {
        if !is_env_name(name) {
            return Err(ConfigError::new(format!(
                "`env`: \"{name}\" is not a valid variable name (letters, digits and `_`, not starting with a digit)"
            )));
        }
        let Value::String(text) = value else {
            return Err(ConfigError::new(format!("`env.{name}` must be a string, not {}", type_name(value))));
        };
        if text.contains('\0') {
            return Err(ConfigError::new(format!("`env.{name}` must not contain a NUL character")));
        }
        env.insert(name.clone(), text.clone());
    }
    Ok(env)
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn interpreter_list() -> String {
    Interpreter::ALL.map(|i| format!("\"{}\"", i.name())).join(", ")
}

/// The JSON type of a value, for messages.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(config: &str) -> String {
        parse(config).unwrap_err().message().to_owned()
    }

    #[test]
    fn minimal_config_defaults_to_bash() {
        let config = parse(r#"{"script": "echo hi"}"#).unwrap();
        assert_eq!(config.interpreter, Interpreter::Bash);
        assert!(config.env.is_empty());
        assert_eq!(config.setup, None);
        let rendered = render(&config);
        assert_eq!(rendered.entrypoint, "bash main.sh");
        assert_eq!(
            rendered.files,
            vec![RenderedFile { path: "main.sh".into(), mode: 0o755, contents: b"echo hi".to_vec() }]
        );
        assert!(rendered.env.is_empty());
    }

    #[test]
    fn each_interpreter_picks_its_extension() {
        for (name, entrypoint) in
            [("bash", "bash main.sh"), ("sh", "sh main.sh"), ("python3", "python3 main.py"), ("node", "node main.js")]
        {
            let config = parse(&format!(r#"{{"interpreter": "{name}", "script": "x"}}"#)).unwrap();
            let rendered = render(&config);
            assert_eq!(rendered.entrypoint, entrypoint);
            assert_eq!(rendered.files[0].path, entrypoint.split(' ').nth(1).unwrap());
        }
    }

    #[test]
    fn full_config_renders_setup_and_sorted_env() {
        let config = parse(
            r#"{"interpreter": "python3", "script": "print(1)",
                "env": {"ZED": "z", "ALPHA": "a b", "_x1": ""},
                "setup": "pip install requests"}"#,
        )
        .unwrap();
        let rendered = render(&config);
        assert_eq!(rendered.entrypoint, "python3 main.py");
        assert_eq!(rendered.files.len(), 2);
        assert_eq!(rendered.files[1].path, "setup.sh");
        assert_eq!(rendered.files[1].mode, 0o755);
        assert_eq!(rendered.files[1].contents, b"pip install requests");
        assert_eq!(
            rendered.env,
            vec![("ALPHA".into(), "a b".into()), ("ZED".into(), "z".into()), ("_x1".into(), String::new()),]
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let message = err(r#"{"script": "x", "scirpt": "y"}"#);
        assert!(message.contains("unknown field `scirpt`"), "{message}");
    }

    #[test]
    fn missing_or_bad_script_is_named() {
        assert!(err("{}").contains("`script`"));
        assert!(err(r#"{"interpreter": "sh"}"#).contains("missing required field `script`"));
        assert!(err(r#"{"script": ""}"#).contains("`script` must not be empty"));
        assert!(err(r#"{"script": 42}"#).contains("`script` must be a string, not a number"));
        assert!(err(r#"{"script": null}"#).contains("`script` must be a string, not null"));
    }

    #[test]
    fn wrong_interpreter_is_named() {
        let message = err(r#"{"interpreter": "ruby", "script": "x"}"#);
        assert!(message.contains("`interpreter`"), "{message}");
        assert!(message.contains("\"ruby\""), "{message}");
        assert!(message.contains("\"python3\""), "{message}");
        assert!(err(r#"{"interpreter": 3, "script": "x"}"#).contains("`interpreter`"));
        // Names are exact: no case folding, no aliases.
        assert!(err(r#"{"interpreter": "Bash", "script": "x"}"#).contains("`interpreter`"));
        assert!(err(r#"{"interpreter": "python", "script": "x"}"#).contains("`interpreter`"));
    }

    #[test]
    fn size_limit_is_in_bytes() {
        let at_limit = "a".repeat(MAX_SCRIPT_BYTES);
        let config = serde_json::json!({ "script": at_limit }).to_string();
        assert!(parse(&config).is_ok());

        let over = "a".repeat(MAX_SCRIPT_BYTES + 1);
        let message = err(&serde_json::json!({ "script": over }).to_string());
        assert!(message.contains("`script` is 65537 bytes"), "{message}");

        // 32,769 two-byte characters: under the limit in characters, over it in bytes.
        let wide = "é".repeat(MAX_SCRIPT_BYTES / 2 + 1);
        assert!(err(&serde_json::json!({ "script": wide }).to_string()).contains("`script`"));

        let big_setup = serde_json::json!({ "script": "x", "setup": over }).to_string();
        assert!(err(&big_setup).contains("`setup` is 65537 bytes"));
    }

    #[test]
    fn bad_env_is_named() {
        assert!(err(r#"{"script": "x", "env": []}"#).contains("`env` must be an object"));
        assert!(err(r#"{"script": "x", "env": {"A": 1}}"#).contains("`env.A` must be a string"));
        assert!(err(r#"{"script": "x", "env": {"A=B": "1"}}"#).contains("\"A=B\""));
        assert!(err(r#"{"script": "x", "env": {"1A": "1"}}"#).contains("\"1A\""));
        assert!(err(r#"{"script": "x", "env": {"": "1"}}"#).contains("`env`"));
        assert!(err(r#"{"script": "x", "env": {"A": "a\u0000b"}}"#).contains("NUL"));
    }

    #[test]
    fn bad_setup_is_named() {
        assert!(err(r#"{"script": "x", "setup": ""}"#).contains("`setup` must not be empty"));
        assert!(err(r#"{"script": "x", "setup": ["a"]}"#).contains("`setup` must be a string"));
    }

    #[test]
    fn not_an_object() {
        assert!(err("[]").contains("must be a JSON object, not an array"));
        assert!(err("not json").contains("not valid JSON"));
        assert!(err("").contains("not valid JSON"));
    }

    #[test]
    fn schema_matches_the_checks() {
        let schema: Value = serde_json::from_str(&config_schema()).unwrap();
        assert_eq!(schema["additionalProperties"], Value::Bool(false));
        assert_eq!(schema["required"], json!(["script"]));
        let properties = schema["properties"].as_object().unwrap();
        let mut names: Vec<&str> = properties.keys().map(String::as_str).collect();
        names.sort_unstable();
        let mut fields = FIELDS.to_vec();
        fields.sort_unstable();
        assert_eq!(names, fields);
        assert_eq!(schema["properties"]["interpreter"]["enum"], json!(["bash", "sh", "python3", "node"]));
        assert_eq!(schema["properties"]["interpreter"]["default"], "bash");
        assert_eq!(schema["properties"]["script"]["maxLength"], MAX_SCRIPT_BYTES);
        assert_eq!(schema["properties"]["script"]["minLength"], 1);
    }
}
