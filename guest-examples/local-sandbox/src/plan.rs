//! What the executor decides, without WebAssembly: configuration, the
//! command line and the run's environment.

/// How long one `poll` waits for the process before answering `running`.
pub const POLL_WAIT_MS: u64 = 250;

/// Where the trigger payload is written, relative to the workspace.
pub const PAYLOAD_FILE: &str = ".automation/event.json";
/// The progress file, relative to the workspace (the host's
/// `sandbox::PROGRESS_FILE`: the host reads it there).
pub const PROGRESS_FILE: &str = ".automation-progress";

/// Payloads up to this size are also passed in `AUTOMATION_EVENT_PAYLOAD`
/// (the kernel refuses a single variable over 128 KiB).
pub const PAYLOAD_ENV_MAX: usize = 64 << 10;

/// JSON Schema of the executor configuration.
pub const CONFIG_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "keep_workspace": {"type": "boolean", "default": false, "description": "Keep the run's workspace after it ends (for debugging)."},
    "env": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Extra environment variables for every run."},
    "network": {"enum": ["none", "host"], "description": "The run's network, where the host lets automations choose (AUTOMATION_SANDBOX_NETWORK_PER_AUTOMATION); default: the host's AUTOMATION_SANDBOX_NETWORK."}
  }
}"#;

/// The executor configuration.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Config {
    /// Keep the workspace after the run.
    pub keep_workspace: bool,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// The network asked for (`none` or `host`); the host decides.
    pub network: Option<String>,
}

impl Config {
    /// Parses the configuration JSON, refusing unknown fields.
    pub fn parse(json: &str) -> Result<Config, String> {
        let value: serde_json::Value = serde_json::from_str(if json.trim().is_empty() { "{}" } else { json })
            .map_err(|e| format!("executor config is not JSON: {e}"))?;
        let obj = value.as_object().ok_or("executor config must be a JSON object")?;
        let mut config = Config::default();
        for (k, v) in obj {
            match k.as_str() {
                "keep_workspace" => {
                    config.keep_workspace = v.as_bool().ok_or("keep_workspace must be true or false")?
                }
                "env" => {
                    let env = v.as_object().ok_or("env must be an object of strings")?;
                    for (name, value) in env {
                        let value = value.as_str().ok_or_else(|| format!("env.{name} must be a string"))?;
                        config.env.push((name.clone(), value.to_owned()));
                    }
                }
                "network" => match v.as_str() {
                    Some(n @ ("none" | "host")) => config.network = Some(n.to_owned()),
                    _ => return Err("network must be \"none\" or \"host\"".to_owned()),
                },
                other => {
                    return Err(format!(
                        "unknown executor config field {other:?} (known: keep_workspace, env, network)"
                    ));
                }
            }
        }
        Ok(config)
    }
}

/// Splits an entrypoint into words. No shell syntax is interpreted: the words
/// become arguments as they are.
pub fn entrypoint_words(entrypoint: &str) -> Result<Vec<String>, String> {
    let words: Vec<String> = entrypoint.split_whitespace().map(str::to_owned).collect();
    if words.is_empty() {
        return Err("the bundle has no entrypoint".to_owned());
    }
    Ok(words)
}

/// The process to start: `sh -c` runs `setup.sh` if the bundle has one, then
/// replaces itself with the entrypoint, whose words arrive as `"$@"` so the
/// shell never parses them.
pub fn command(words: &[String]) -> (String, Vec<String>) {
    let script = "if [ -f ./setup.sh ]; then sh ./setup.sh || { echo \"setup.sh failed with exit code $?\" >&2; exit 97; }; fi; exec \"$@\"";
    let mut args = vec!["-c".to_owned(), script.to_owned(), "automation-run".to_owned()];
    args.extend(words.iter().cloned());
    ("sh".to_owned(), args)
}

/// The run's identity, handed to the process as environment variables.
pub struct RunVars<'a> {
    /// Run id.
    pub run_id: &'a str,
    /// Automation id.
    pub automation_id: &'a str,
    /// Automation name.
    pub automation_name: &'a str,
    /// Attempt number.
    pub attempt: u32,
    /// `cron`, `event` or `manual`.
    pub trigger_kind: &'a str,
    /// Trigger payload JSON.
    pub trigger_payload: &'a str,
    /// Where the payload file is, as the process sees it.
    pub payload_file: &'a str,
    /// Where the run writes its progress (a line such as `40% building`),
    /// as the process sees it; the host reads it from the workspace.
    pub progress_file: &'a str,
    /// Event key, for events.
    pub event_key: Option<&'a str>,
    /// Completion callback URL.
    pub callback_url: &'a str,
    /// Completion callback token.
    pub callback_token: &'a str,
}

/// The process environment: the bundle's variables, then the executor
/// config's, then the run's own `AUTOMATION_*` variables (which win).
pub fn environment(
    bundle: &[(String, String)],
    config: &[(String, String)],
    run: &RunVars<'_>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| {
        env.retain(|(name, _)| name != k);
        env.push((k.to_owned(), v.to_owned()));
    };
    for (k, v) in bundle.iter().chain(config) {
        set(k, v);
    }
    set("AUTOMATION_RUN_ID", run.run_id);
    set("AUTOMATION_AUTOMATION_ID", run.automation_id);
    set("AUTOMATION_AUTOMATION_NAME", run.automation_name);
    set("AUTOMATION_ATTEMPT", &run.attempt.to_string());
    set("AUTOMATION_TRIGGER", run.trigger_kind);
    set("AUTOMATION_EVENT_PAYLOAD_FILE", run.payload_file);
    set("AUTOMATION_PROGRESS_FILE", run.progress_file);
    if run.trigger_payload.len() <= PAYLOAD_ENV_MAX {
        set("AUTOMATION_EVENT_PAYLOAD", run.trigger_payload);
    }
    if let Some(key) = run.event_key {
        set("AUTOMATION_EVENT_KEY", key);
    }
    set("AUTOMATION_CALLBACK_URL", run.callback_url);
    set("AUTOMATION_CALLBACK_TOKEN", run.callback_token);
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_and_refuses_unknown_fields() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        let c = Config::parse(r#"{"keep_workspace": true, "env": {"A": "1"}}"#).unwrap();
        assert!(c.keep_workspace);
        assert_eq!(c.env, [("A".to_owned(), "1".to_owned())]);
        assert!(Config::parse(r#"{"shell": "zsh"}"#).unwrap_err().contains("shell"));
        assert_eq!(Config::parse(r#"{"network": "host"}"#).unwrap().network.as_deref(), Some("host"));
        assert!(Config::parse(r#"{"network": "internet"}"#).is_err());
        assert!(Config::parse(r#"{"env": {"A": 1}}"#).is_err());
        assert!(Config::parse("[]").is_err());
    }

    #[test]
    fn entrypoint_words_are_never_shell_parsed() {
        let words = entrypoint_words("python3  main.py --name x").unwrap();
        assert_eq!(words, ["python3", "main.py", "--name", "x"]);
        let (program, args) = command(&words);
        assert_eq!(program, "sh");
        assert_eq!(&args[3..], &words[..]);
        assert!(entrypoint_words("   ").is_err());
    }

    #[test]
    fn run_variables_win_over_bundle_and_config() {
        let vars = RunVars {
            run_id: "r",
            automation_id: "a",
            automation_name: "n",
            attempt: 2,
            trigger_kind: "event",
            trigger_payload: "{}",
            payload_file: "/workspace/.automation/event.json",
            progress_file: "/workspace/.automation-progress",
            event_key: Some("push"),
            callback_url: "http://cb",
            callback_token: "t",
        };
        let bundle = vec![("X".to_owned(), "b".to_owned()), ("AUTOMATION_RUN_ID".to_owned(), "spoof".to_owned())];
        let config = vec![("X".to_owned(), "c".to_owned())];
        let env = environment(&bundle, &config, &vars);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("X"), Some("c"));
        assert_eq!(get("AUTOMATION_RUN_ID"), Some("r"));
        assert_eq!(get("AUTOMATION_EVENT_KEY"), Some("push"));
        assert_eq!(get("AUTOMATION_ATTEMPT"), Some("2"));
        assert_eq!(env.iter().filter(|(n, _)| n == "AUTOMATION_RUN_ID").count(), 1);
        assert_eq!(get("AUTOMATION_EVENT_PAYLOAD"), Some("{}"));
        assert_eq!(get("AUTOMATION_EVENT_PAYLOAD_FILE"), Some("/workspace/.automation/event.json"));
    }

    #[test]
    fn a_large_payload_is_only_a_file() {
        let big = "x".repeat(PAYLOAD_ENV_MAX + 1);
        let vars = RunVars {
            run_id: "r",
            automation_id: "a",
            automation_name: "n",
            attempt: 1,
            trigger_kind: "event",
            trigger_payload: &big,
            payload_file: "/w/.automation/event.json",
            progress_file: "/w/.automation-progress",
            event_key: None,
            callback_url: "http://cb",
            callback_token: "t",
        };
        let env = environment(&[], &[], &vars);
        assert!(!env.iter().any(|(n, _)| n == "AUTOMATION_EVENT_PAYLOAD"));
        assert!(env.iter().any(|(n, v)| n == "AUTOMATION_EVENT_PAYLOAD_FILE" && v == "/w/.automation/event.json"));
    }
}
