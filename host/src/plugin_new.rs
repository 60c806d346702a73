//! `automation-host plugin new KIND NAME [--lang rust|python|js]`: a working
//! plugin in a new directory, anywhere (it needs nothing from this
//! repository): its source, the host's WIT, a README from build to upload,
//! and a sample input for `plugin call`. Every kind has a Rust template,
//! written with the plugin SDK (vendored into `sdk/` until it is
//! published); filters also have Python and JavaScript ones.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::plugins::manifest::Kind;

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
    /// The plugin kind: filter, preset, executor or source.
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
    ("source.wit", include_str!("../../wit/source.wit")),
];

/// The plugin SDK's sources, as this binary was built with them; written
/// into a Rust plugin's `sdk/` with the WIT path made local.
const SDK: &[(&str, &str)] = &[
    ("src/lib.rs", include_str!("../../guest-examples/sdk/src/lib.rs")),
    ("src/convert.rs", include_str!("../../guest-examples/sdk/src/convert.rs")),
    ("src/filter.rs", include_str!("../../guest-examples/sdk/src/filter.rs")),
    ("src/preset.rs", include_str!("../../guest-examples/sdk/src/preset.rs")),
    ("src/executor.rs", include_str!("../../guest-examples/sdk/src/executor.rs")),
    ("src/source.rs", include_str!("../../guest-examples/sdk/src/source.rs")),
    ("README.md", include_str!("../../guest-examples/sdk/README.md")),
    ("Cargo.toml", include_str!("../templates/rust/sdk-Cargo.toml")),
];

/// The README and the sample input for `plugin call`, per kind.
fn readme_and_sample(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::Filter => {
            (include_str!("../templates/README-filter.md"), include_str!("../templates/sample-filter.json"))
        }
        Kind::Preset => {
            (include_str!("../templates/README-preset.md"), include_str!("../templates/sample-preset.json"))
        }
        Kind::Executor => {
            (include_str!("../templates/README-executor.md"), include_str!("../templates/sample-executor.json"))
        }
        Kind::Source => {
            (include_str!("../templates/README-source.md"), include_str!("../templates/sample-source.json"))
        }
    }
}

/// The files of one kind's template in one language: (path, contents),
/// before the placeholders are filled in; `None` when there is none.
fn template(kind: Kind, lang: Lang) -> Option<Vec<(&'static str, &'static str)>> {
    let rust = |lib: &'static str| {
        vec![
            ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
            ("src/lib.rs", lib),
            (".gitignore", "/target\n"),
        ]
    };
    Some(match (kind, lang) {
        (Kind::Filter, Lang::Rust) => rust(include_str!("../templates/rust/filter/lib.rs")),
        (Kind::Preset, Lang::Rust) => rust(include_str!("../templates/rust/preset/lib.rs")),
        (Kind::Executor, Lang::Rust) => rust(include_str!("../templates/rust/executor/lib.rs")),
        (Kind::Source, Lang::Rust) => rust(include_str!("../templates/rust/source/lib.rs")),
        (Kind::Filter, Lang::Python) => vec![
            ("app.py", include_str!("../templates/filter-python/app.py")),
            ("requirements.txt", include_str!("../templates/filter-python/requirements.txt")),
            (".gitignore", "/.deps\n__pycache__/\n*.wasm\n"),
        ],
        (Kind::Filter, Lang::Js) => vec![
            ("filter.js", include_str!("../templates/filter-js/filter.js")),
            ("package.json", include_str!("../templates/filter-js/package.json")),
            (".gitignore", "/node_modules\n*.wasm\n"),
        ],
        _ => return None,
    })
}

/// Crates a Rust template needs besides the SDK.
fn rust_deps(kind: Kind) -> &'static str {
    match kind {
        Kind::Filter | Kind::Preset => "serde_json = \"1\"\n",
        Kind::Executor => "",
        Kind::Source => "serde_json = \"1\"\nsubtle = \"2\"\n",
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
    let kind = Kind::parse(&args.kind)
        .ok_or_else(|| anyhow::anyhow!("unknown plugin kind {:?}: filter, preset, executor or source", args.kind))?;
    let Some(template) = template(kind, args.lang) else {
        bail!(
            "there is no {lang:?} template for a {kind} plugin yet (filters have Rust, Python and JavaScript ones; \
             every kind has a Rust one: --lang rust)",
            lang = args.lang,
            kind = kind.as_str()
        );
    };
    check_name(&args.name)?;
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() && std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} already exists and is not empty", dir.display());
    }
    let (lang, source, build, wasm) = readme_parts(args.lang, &args.name);
    let fill = |text: &str| {
        text.replace("{{name}}", &args.name)
            .replace("{{kind}}", kind.as_str())
            .replace("{{deps}}", rust_deps(kind))
            .replace("{{lang}}", lang)
            .replace("{{source}}", source)
            .replace("{{build}}", &build)
            .replace("{{wasm}}", &wasm)
    };
    let (readme, sample) = readme_and_sample(kind);
    let mut files: Vec<(String, String)> =
        template.into_iter().map(|(path, text)| (path.to_owned(), fill(text))).collect();
    files.push(("README.md".to_owned(), fill(readme)));
    files.push(("sample-input.json".to_owned(), sample.to_owned()));
    files.push((
        "plugin.toml".to_owned(),
        format!(
            "# The manifest the host loads beside the component (plugins directory).\nname = \"{}\"\nkind = \"{}\"\n\
             wit = \"{}\"\nversion = \"0.1.0\"\ndescription = \"\"\ncapabilities = []\n",
            args.name,
            kind.as_str(),
            crate::plugins::manifest::WIT_VERSION
        ),
    ));
    for (name, text) in WIT {
        files.push((format!("wit/{name}"), (*text).to_owned()));
    }
    if args.lang == Lang::Rust {
        for (path, text) in SDK {
            // In the repository the SDK reads ../../wit; here, the plugin's wit/.
            files.push((format!("sdk/{path}"), text.replace("path: \"../../wit\"", "path: \"../wit\"")));
        }
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
    fn every_template_gets_a_complete_directory_with_nothing_left_to_fill() {
        let made = [
            (Kind::Filter, Lang::Rust),
            (Kind::Filter, Lang::Python),
            (Kind::Filter, Lang::Js),
            (Kind::Preset, Lang::Rust),
            (Kind::Executor, Lang::Rust),
            (Kind::Source, Lang::Rust),
        ];
        for (kind, lang) in made {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("my-plugin");
            let args = NewArgs { kind: kind.as_str().into(), name: "my-plugin".into(), lang, dir: Some(dir.clone()) };
            new(&args).unwrap();
            for f in ["README.md", "sample-input.json", "plugin.toml", "wit/world.wit", "wit/source.wit"] {
                assert!(dir.join(f).is_file(), "{kind:?} {lang:?}: {f} missing");
            }
            if lang == Lang::Rust {
                let sdk = std::fs::read_to_string(dir.join("sdk/src/lib.rs")).unwrap();
                assert!(
                    sdk.contains("path: \"../wit\"") && !sdk.contains("../../wit"),
                    "the SDK reads the plugin's wit/"
                );
            }
            for entry in walk(&dir) {
                let text = std::fs::read_to_string(&entry).unwrap();
                assert!(!text.contains("{{"), "{kind:?} {lang:?}: {} has an unfilled placeholder", entry.display());
            }
            let manifest = std::fs::read_to_string(dir.join("plugin.toml")).unwrap();
            assert!(manifest.contains(&format!("kind = \"{}\"", kind.as_str())), "{manifest}");
            serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(dir.join("sample-input.json")).unwrap())
                .unwrap();
            // Never over something that is there.
            assert!(new(&args).unwrap_err().to_string().contains("not empty"));
        }
        let bad = NewArgs { kind: "filter".into(), name: "My_Filter".into(), lang: Lang::Rust, dir: None };
        assert!(new(&bad).unwrap_err().to_string().contains("lowercase"));
        let py = NewArgs { kind: "preset".into(), name: "p".into(), lang: Lang::Python, dir: None };
        assert!(new(&py).unwrap_err().to_string().contains("--lang rust"));
        let odd = NewArgs { kind: "trigger".into(), name: "p".into(), lang: Lang::Rust, dir: None };
        assert!(new(&odd).unwrap_err().to_string().contains("unknown plugin kind"));
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
