//! One way every tcpstall daemon takes its settings.
//!
//! A daemon defines two types: its settings (`Config`: serde, `Default`, every key of
//! its TOML file) and its flags (`Flags`: clap `Args`, one flag per key, the same names,
//! each documented; serde `Serialize` that writes only the flags given). Then
//! - [`load`] takes the defaults, then the file, then the flags given: a flag beats the
//!   file, the file beats the default;
//! - [`to_toml`] writes a commented TOML file of any settings, each key under its flag's
//!   own help, in the flags' order: the example file is this of the defaults, tested
//!   against the committed one, so neither the docs nor the example can drift.
//!
//! For `load` to see only the flags given, `Flags` skips what was not: `Option`s when
//! `None` (`skip_serializing_if = "Option::is_none"`, durations `with =
//! "tcpstall_common::duration::option_text"`), lists when empty, switches when off
//! (`skip_serializing_if = "std::ops::Not::not"`), and `--config` itself (`skip`).
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    /// A flag's value cannot be one of the settings (a bug of the daemon's types:
    /// the flags are parsed by clap first).
    #[error("flags: {0}")]
    Flags(String),
}

/// Reads a TOML file of settings; keys left out keep their defaults, unknown keys are
/// refused by name (the settings type denies unknown fields).
pub fn from_file<C: DeserializeOwned>(path: &Path) -> Result<C, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| SettingsError::Parse {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

/// The defaults, then `file`, then the flags given.
pub fn load<C, F>(file: Option<&Path>, flags: &F) -> Result<C, SettingsError>
where
    C: Serialize + DeserializeOwned + Default,
    F: Serialize,
{
    let settings: C = match file {
        Some(path) => from_file(path)?,
        None => C::default(),
    };
    let given = table(flags).map_err(SettingsError::Flags)?;
    if given.is_empty() {
        return Ok(settings);
    }
    let mut merged = table(&settings).map_err(SettingsError::Flags)?;
    merged.extend(given);
    toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| SettingsError::Flags(e.to_string()))
}

/// A value's keys as TOML writes them (unset options left out).
fn table<T: Serialize>(value: &T) -> Result<toml::Table, String> {
    match toml::Value::try_from(value) {
        Ok(toml::Value::Table(t)) => Ok(t),
        Ok(other) => Err(format!("not a table: {other}")),
        Err(e) => Err(e.to_string()),
    }
}

/// `settings` as a commented TOML file: `header` (comment lines), then every flag of `F`
/// but `--config` as its key under the flag's help; a key with no value (an unset
/// option) is written commented out with its `example`.
pub fn to_toml<C: Serialize, F: clap::Args>(
    settings: &C,
    header: &str,
    examples: &[(&str, &str)],
) -> String {
    let values = table(settings).unwrap_or_default();
    let command = F::augment_args(clap::Command::new("settings"));
    let mut out = String::new();
    for line in header.lines() {
        comment(&mut out, line);
    }
    for arg in command.get_arguments() {
        let key = arg.get_id().as_str();
        if key == "config" {
            continue;
        }
        out.push('\n');
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        for line in wrap(&help, 78) {
            comment(&mut out, &line);
        }
        match values.get(key) {
            Some(v) => {
                let _ = writeln!(out, "{key} = {v}");
            }
            None => {
                let example = examples
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map_or("\"\"", |(_, e)| e);
                let _ = writeln!(out, "# {key} = {example}");
            }
        }
    }
    out
}

fn comment(out: &mut String, line: &str) {
    if line.is_empty() {
        out.push_str("#\n");
    } else {
        let _ = writeln!(out, "# {line}");
    }
}

/// Words of `text` in lines of at most `width` characters (a longer word alone).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for para in text.split("\n\n") {
        if !lines.is_empty() {
            lines.push(String::new());
        }
        let mut line = String::new();
        for word in para.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        if !line.is_empty() {
            lines.push(line);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::Deserialize;
    use tcpstall_common::duration;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Config {
        name: String,
        #[serde(with = "duration::text")]
        every: Duration,
        #[serde(skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        words: Vec<String>,
        loud: bool,
    }

    impl Default for Config {
        fn default() -> Config {
            Config {
                name: "x".into(),
                every: Duration::from_secs(2),
                port: None,
                words: vec!["a".into()],
                loud: false,
            }
        }
    }

    #[derive(Debug, Default, clap::Args, Serialize)]
    struct Flags {
        /// The file.
        #[arg(long)]
        #[serde(skip)]
        config: Option<PathBuf>,
        /// Its name [default: x].
        #[arg(long)]
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// How often.
        #[arg(long, value_parser = duration::parse)]
        #[serde(
            with = "duration::option_text",
            skip_serializing_if = "Option::is_none"
        )]
        every: Option<Duration>,
        /// A port.
        #[arg(long)]
        #[serde(skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        /// A word; repeat for several.
        #[arg(long = "word")]
        #[serde(skip_serializing_if = "Vec::is_empty")]
        words: Vec<String>,
        /// Be loud.
        #[arg(long)]
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        loud: bool,
    }

    #[test]
    fn flags_given_beat_the_file_and_the_file_beats_defaults() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "name = \"file\"\nevery = \"5s\"\nloud = true\n").expect("write");
        let none = Flags::default();
        let c: Config = load(None, &none).expect("defaults");
        assert_eq!(c, Config::default());
        let c: Config = load(Some(&path), &none).expect("file");
        assert_eq!(
            (c.name.as_str(), c.every, c.loud),
            ("file", Duration::from_secs(5), true)
        );
        assert_eq!(
            c.words,
            ["a"],
            "a key the file leaves out keeps its default"
        );
        let given = Flags {
            every: Some(Duration::from_millis(500)),
            port: Some(7),
            words: vec!["b".into(), "c".into()],
            ..Flags::default()
        };
        let c: Config = load(Some(&path), &given).expect("flags");
        assert_eq!(c.name, "file", "a flag not given leaves the file's value");
        assert_eq!(c.every, Duration::from_millis(500));
        assert_eq!(c.port, Some(7));
        assert_eq!(c.words, ["b", "c"], "a list given replaces the file's");
        assert!(c.loud, "a switch not given does not turn the file's off");
    }

    #[test]
    fn a_bad_file_is_named_with_its_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "nmae = \"typo\"\n").expect("write");
        let err = load::<Config, _>(Some(&path), &Flags::default()).expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.contains("nmae") && msg.contains("s.toml"), "{msg}");
        let missing = dir.path().join("missing.toml");
        let err = load::<Config, _>(Some(&missing), &Flags::default()).expect_err("no file");
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }

    #[test]
    fn the_file_written_reads_back_with_every_key_under_its_help() {
        let c = Config {
            port: Some(9),
            ..Config::default()
        };
        let text = to_toml::<Config, Flags>(&c, "Head.", &[("port", "80")]);
        assert!(text.starts_with("# Head.\n"), "{text}");
        assert!(
            text.contains("# Its name [default: x]\nname = \"x\"\n"),
            "{text}"
        );
        assert!(
            text.contains("# A word; repeat for several\nwords = [\"a\"]\n"),
            "{text}"
        );
        assert!(!text.contains("config"), "--config is no key: {text}");
        let back: Config = toml::from_str(&text).expect("parses");
        assert_eq!(back, c);
        let unset = to_toml::<Config, Flags>(&Config::default(), "", &[("port", "80")]);
        assert!(unset.contains("# port = 80\n"), "{unset}");
        assert_eq!(
            toml::from_str::<Config>(&unset).expect("parses"),
            Config::default()
        );
    }

    #[test]
    fn long_help_wraps_at_word_boundaries() {
        let text = "aaa bbb ccc ddd\n\neee";
        assert_eq!(wrap(text, 7), ["aaa bbb", "ccc ddd", "", "eee"]);
        assert_eq!(
            wrap("averyveryverylongword x", 5),
            ["averyveryverylongword", "x"]
        );
    }
}
