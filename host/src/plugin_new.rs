//! `automation-host plugin new filter NAME [--lang rust|python|js]`: a
//! working filter plugin in a new directory, anywhere (it needs nothing from
//! this repository): its source, the host's WIT, a README from build to
//! upload, and a sample input for `plugin call`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// A language a plugin can be scaffolded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, built with cargo for wasm32-wasip2.
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-js.
    Js,
}

/// What to scaffold.
#[derive(Debug, Clone, clap::Args)]
pub struct NewArgs {
    /// The plugin kind. Only `filter` has templates so far.
    pub kind: String,
    /// The plugin's name (lowercase letters, digits and `-`); also the
    /// directory made, unless `--dir` says otherwise.
    pub name: String,
    /// The language.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    pub lang: Lang,
    /// Where to write it (default: `./NAME`). Must not exist, or be empty.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// The host's WIT package, as this binary was built against it.
const WIT: &[(&str, &str)] = &[
    ("world.wit", include_str!("../../wit/world.wit")),
    ("types.wit", include_str!("../../wit/types.wit")),
    ("filter.wit", include_str!("../../wit/filter.wit")),
    ("preset.wit", include_str!("../../wit/preset.wit")),
    ("executor.wit", include_str!("../../wit/executor.wit")),
    ("log.wit", include_str!("../../wit/log.wit")),
    ("clock.wit", include_str!("../../wit/clock.wit")),
    ("kv.wit", include_str!("../../wit/kv.wit")),
    ("sandbox.wit", include_str!("../../wit/sandbox.wit")),
];

const README: &str = include_str!("../templates/README.md");
const SAMPLE: &str = include_str!("../templates/sample-input.json");

/// The files of one language's template: (path, contents), before
/// `{{name}}` is filled in.
fn template(lang: Lang) -> Vec<(&'static str, &'static str)> {
    match lang {
        Lang::Rust => vec![
            ("Cargo.toml", include_str!("../templates/filter-rust/Cargo.toml")),
            ("src/lib.rs", include_str!("../templates/filter-rust/src/lib.rs")),
            (".gitignore", "/target\n"),
        ],
        Lang::Python => vec![
            ("app.py", include_str!("../templates/filter-python/app.py")),
            ("requirements.txt", include_str!("../templates/filter-python/requirements.txt")),
            (".gitignore", "/.deps\n__pycache__/\n*.wasm\n"),
        ],
        Lang::Js => vec![
            ("filter.js", include_str!("../templates/filter-js/filter.js")),
            ("package.json", include_str!("../templates/filter-js/package.json")),
            (".gitignore", "/node_modules\n*.wasm\n"),
        ],
    }
}

/// What the README says for one language: (language, source file, build
/// commands, the component it builds).
fn readme_parts(lang: Lang, name: &str) -> (&'static str, &'static str, String, String) {
    match lang {
        Lang::Rust => (
            "rust",
            "src/lib.rs",
            "You need Rust 1.95+ with the `wasm32-wasip2` target \
             (`rustup target add wasm32-wasip2`).\n\n```sh\ncargo build --release --target wasm32-wasip2\n```"
                .to_owned(),
            format!("target/wasm32-wasip2/release/{}.wasm", name.replace('-', "_")),
        ),
        Lang::Python => (
            "python",
            "app.py",
            "You need Python 3.10+ with pip.\n\n```sh\npython3 -m pip install --target .deps -r requirements.txt\n\
             PYTHONPATH=.deps .deps/bin/componentize-py -d wit -w filter-plugin componentize app -o NAME.wasm\n```"
                .replace("NAME", name),
            format!("{name}.wasm"),
        ),
        Lang::Js => (
            "js",
            "filter.js",
            "You need Node.js 20+ with npm.\n\n```sh\nnpm install\nnpm run build\n```".to_owned(),
            format!("{name}.wasm"),
        ),
    }
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !ok {
        bail!("the name {name:?} must start with a lowercase letter and have only lowercase letters, digits and `-`");
    }
    Ok(())
}

/// Writes the plugin; returns its directory.
pub fn new(args: &NewArgs) -> anyhow::Result<PathBuf> {
    if args.kind != "filter" {
        bail!(
            "`plugin new` has templates for filters only so far; for a {} start from guest-examples/ in the \
             automation-host repository (script-preset, local-sandbox, agent-server)",
            args.kind
        );
    }
    check_name(&args.name)?;
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() && std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} already exists and is not empty", dir.display());
    }
    let (lang, source, build, wasm) = readme_parts(args.lang, &args.name);
    let fill = |text: &str| {
        text.replace("{{name}}", &args.name)
            .replace("{{lang}}", lang)
            .replace("{{source}}", source)
            .replace("{{build}}", &build)
            .replace("{{wasm}}", &wasm)
    };
    let mut files: Vec<(String, String)> =
        template(args.lang).into_iter().map(|(path, text)| (path.to_owned(), fill(text))).collect();
    files.push(("README.md".to_owned(), fill(README)));
    files.push(("sample-input.json".to_owned(), SAMPLE.to_owned()));
    files.push((
        "plugin.toml".to_owned(),
        format!(
            "# The manifest the host loads beside the component (plugins directory).\nname = \"{}\"\nkind = \"filter\"\n\
             wit = \"{}\"\nversion = \"0.1.0\"\ndescription = \"\"\ncapabilities = []\n",
            args.name,
            crate::plugins::manifest::WIT_VERSION
        ),
    ));
    for (name, text) in WIT {
        files.push((format!("wit/{name}"), (*text).to_owned()));
    }
    for (path, text) in &files {
        write(&dir.join(path), text)?;
    }
    Ok(dir)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_gets_a_complete_directory_with_nothing_left_to_fill() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("my-filter");
            let args = NewArgs { kind: "filter".into(), name: "my-filter".into(), lang, dir: Some(dir.clone()) };
            new(&args).unwrap();
            for f in ["README.md", "sample-input.json", "plugin.toml", "wit/world.wit", "wit/filter.wit"] {
                assert!(dir.join(f).is_file(), "{lang:?}: {f} missing");
            }
            for entry in walk(&dir) {
                let text = std::fs::read_to_string(&entry).unwrap();
                assert!(!text.contains("{{"), "{lang:?}: {} has an unfilled placeholder", entry.display());
            }
            let input: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("sample-input.json")).unwrap()).unwrap();
            assert_eq!(input["expressions"].as_array().unwrap().len(), 3);
            // Never over something that is there.
            assert!(new(&args).unwrap_err().to_string().contains("not empty"));
        }
        let bad = NewArgs { kind: "filter".into(), name: "My_Filter".into(), lang: Lang::Rust, dir: None };
        assert!(new(&bad).unwrap_err().to_string().contains("lowercase"));
        let preset = NewArgs { kind: "preset".into(), name: "p".into(), lang: Lang::Rust, dir: None };
        assert!(new(&preset).unwrap_err().to_string().contains("filters only"));
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
        }
        out
    }
}
