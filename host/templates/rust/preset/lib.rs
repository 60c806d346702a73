//! {{name}}: a preset plugin for automation-host.
//!
//! Turns `{"greeting": "hello", "who": "world"}` into a bundle: `main.sh`
//! that prints the greeting and the automation's name, run as `./main.sh`.
//! Change `render` to build the bundle you need.

use automation_plugin::preset::{Bundle, Preset};
use automation_plugin::{Error, Info, Value};

pub struct Greeting;

impl Preset for Greeting {
    fn describe() -> Info {
        Info::new("{{name}}", env!("CARGO_PKG_VERSION"), "Prints a greeting.").with_config_schema(
            r#"{"type": "object", "properties": {"greeting": {"type": "string"}, "who": {"type": "string"}},
                "required": ["greeting"], "additionalProperties": false}"#,
        )
    }

    fn render(config: &Value) -> Result<Bundle, Error> {
        let text = |field: &str| config.get(field).and_then(Value::as_str);
        let greeting = text("greeting").ok_or_else(|| Error::InvalidInput("`greeting` (a string) is required".into()))?;
        let who = text("who").unwrap_or("world");
        let script = "#!/bin/sh\necho \"$GREETING, $WHO (from $AUTOMATION_AUTOMATION_NAME)\"\n";
        Ok(Bundle::new("./main.sh").file("main.sh", 0o755, script).env("GREETING", greeting).env("WHO", who))
    }
}

automation_plugin::export_preset!(Greeting);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_refuses() {
        let b = Greeting::render(&serde_json::json!({"greeting": "hi"})).unwrap();
        assert_eq!(b.entrypoint, "./main.sh");
        assert!(b.env.contains(&("WHO".into(), "world".into())));
        assert!(Greeting::render(&serde_json::json!({})).is_err());
    }
}
