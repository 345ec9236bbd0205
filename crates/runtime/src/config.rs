//! Configuration: a TOML file, then `UC_*` environment variables, then command-line flags, each
//! overriding the one before. Config types deny unknown fields and give every key a default,
//! so a typo is an error that names the file, key and line instead of a silently ignored
//! setting.
//!
//! Environment variables map to keys by dropping `UC_`, lowercasing and reading `__` as the
//! separator between tables: `UC_HTTP__MAX_BODY_BYTES=2048` sets `http.max_body_bytes`.
//! Values are read as TOML (`true`, `8080`, `["a","b"]`) and as plain strings otherwise.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};

/// The prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "UC_";

/// One key set from outside the file: an environment variable or a command-line flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Dotted key path, e.g. `node.bind`.
    pub key: String,
    /// The raw text given.
    pub value: String,
    /// Where it came from, for error messages: `UC_NODE__BIND` or `--bind`.
    pub origin: String,
}

impl Override {
    pub fn flag(key: &str, value: impl Into<String>, flag: &str) -> Self {
        Self {
            key: key.to_owned(),
            value: value.into(),
            origin: flag.to_owned(),
        }
    }

    /// All `UC_*` variables of this process's environment, in name order.
    pub fn from_env() -> Vec<Override> {
        Self::from_vars(std::env::vars())
    }

    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Vec<Override> {
        let mut found: Vec<Override> = vars
            .into_iter()
            .filter_map(|(name, value)| {
                let rest = name.strip_prefix(ENV_PREFIX)?;
                if rest.is_empty() {
                    return None;
                }
                let key = rest
                    .to_lowercase()
                    .split("__")
                    .collect::<Vec<_>>()
                    .join(".");
                Some(Override {
                    key,
                    value,
                    origin: name,
                })
            })
            .collect();
        found.sort_by(|a, b| a.origin.cmp(&b.origin));
        found
    }
}

/// A configuration error, naming where the bad value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file path, or the environment variable / flag that set the key.
    pub origin: String,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config error in {}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ", key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Loads `T` from an optional TOML file plus overrides (later ones win).
pub fn load<T: DeserializeOwned>(
    file: Option<&Path>,
    overrides: &[Override],
) -> Result<T, ConfigError> {
    let (text, file_origin) = match file {
        Some(path) => {
            let origin = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                origin: origin.clone(),
                line: None,
                key: None,
                message: format!("cannot read file: {e}"),
            })?;
            (text, origin)
        }
        None => (String::new(), "defaults".to_owned()),
    };
    load_str(&text, &file_origin, overrides)
}

/// Like [`load`], with the file's text given (`origin` names it in errors).
pub fn load_str<T: DeserializeOwned>(
    text: &str,
    origin: &str,
    overrides: &[Override],
) -> Result<T, ConfigError> {
    let mut root: toml::Table = toml::from_str(text).map_err(|e| ConfigError {
        origin: origin.to_owned(),
        line: e.span().map(|s| line_of(text, s.start)),
        key: None,
        message: e.message().trim().to_owned(),
    })?;

    let mut set_by: HashMap<String, &Override> = HashMap::new();
    let mut as_string: Vec<bool> = vec![false; overrides.len()];
    for (i, ov) in overrides.iter().enumerate() {
        insert(&mut root, ov, parse_value(&ov.value)).map_err(|message| ConfigError {
            origin: ov.origin.clone(),
            line: None,
            key: Some(ov.key.clone()),
            message,
        })?;
        set_by.insert(ov.key.clone(), ov);
        as_string[i] = matches!(parse_value(&ov.value), toml::Value::String(_));
    }

    loop {
        match serde_path_to_error::deserialize::<_, T>(toml::Value::Table(root.clone())) {
            Ok(value) => return Ok(value),
            Err(err) => {
                let message = err.inner().message().trim().to_owned();
                let key = failing_key(&err.path().to_string(), &message);
                if let Some(ov) = set_by.get(&key) {
                    // `UC_X=1234` for a string key: the TOML reading guessed wrong; retry
                    // with the raw text before reporting.
                    let idx = overrides.iter().rposition(|o| o.key == key).unwrap_or(0);
                    if !as_string[idx] && message.starts_with("invalid type") {
                        as_string[idx] = true;
                        insert(&mut root, ov, toml::Value::String(ov.value.clone())).map_err(
                            |message| ConfigError {
                                origin: ov.origin.clone(),
                                line: None,
                                key: Some(key.clone()),
                                message,
                            },
                        )?;
                        continue;
                    }
                    return Err(ConfigError {
                        origin: ov.origin.clone(),
                        line: None,
                        key: Some(key),
                        message,
                    });
                }
                return Err(ConfigError {
                    origin: origin.to_owned(),
                    line: find_key_line(text, &key),
                    key: (!key.is_empty()).then_some(key),
                    message,
                });
            }
        }
    }
}

/// The full dotted key an error is about. serde_path_to_error usually includes an unknown
/// field in the path already; when it stops at the parent, the name is in the message.
fn failing_key(path: &str, message: &str) -> String {
    let path = if path == "." { "" } else { path };
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next());
    match unknown {
        Some(field) if path.rsplit('.').next() != Some(field) => {
            if path.is_empty() {
                field.to_owned()
            } else {
                format!("{path}.{field}")
            }
        }
        _ => path.to_owned(),
    }
}

fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    toml::from_str::<toml::Table>(&doc)
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn insert(root: &mut toml::Table, ov: &Override, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = ov.key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("empty key segment".to_owned());
    }
    let (last, parents) = parts.split_last().expect("split yields at least one part");
    let mut table = root;
    for (depth, part) in parents.iter().enumerate() {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{}` is not a table", parts[..=depth].join(".")))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line where a dotted key (`a.b`, `peers[1].addr`) is written in the file, if it is.
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    if key.is_empty() {
        return None;
    }
    let doc = DeTable::parse(text).ok()?;
    let mut table: &DeTable<'_> = doc.get_ref();
    let mut span = None;
    let mut segments = key.split('.').peekable();
    while let Some(segment) = segments.next() {
        let (name, indices) = split_indices(segment);
        let (k, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name)?;
        span = Some(k.span());
        let mut value: &DeValue<'_> = v.get_ref();
        for index in indices {
            let item = value.as_array()?.get(index)?;
            span = Some(item.span());
            value = item.get_ref();
        }
        if segments.peek().is_some() {
            table = value.as_table()?;
        }
    }
    span.map(|s| line_of(text, s.start))
}

fn split_indices(segment: &str) -> (&str, Vec<usize>) {
    let name_end = segment.find('[').unwrap_or(segment.len());
    let indices = segment[name_end..]
        .split(['[', ']'])
        .filter_map(|s| s.parse().ok())
        .collect();
    (&segment[..name_end], indices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Example {
        name: String,
        http: Http,
        peers: Vec<Peer>,
    }

    impl Default for Example {
        fn default() -> Self {
            Self {
                name: "default".into(),
                http: Http::default(),
                peers: Vec::new(),
            }
        }
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Http {
        port: u16,
        token: String,
        verbose: bool,
    }

    impl Default for Http {
        fn default() -> Self {
            Self {
                port: 8080,
                token: String::new(),
                verbose: false,
            }
        }
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Peer {
        addr: String,
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<Override> {
        Override::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_then_file_then_env_then_flags() {
        let text = "name = \"file\"\n[http]\nport = 1\n";
        let c: Example = load_str(text, "f.toml", &[]).unwrap();
        assert_eq!((c.name.as_str(), c.http.port), ("file", 1));

        let mut ov = env(&[("UC_HTTP__PORT", "2"), ("UC_NAME", "env")]);
        let c: Example = load_str(text, "f.toml", &ov).unwrap();
        assert_eq!((c.name.as_str(), c.http.port), ("env", 2));

        ov.push(Override::flag("name", "flag", "--name"));
        let c: Example = load_str(text, "f.toml", &ov).unwrap();
        assert_eq!(c.name, "flag");
        assert!(!c.http.verbose);
    }

    #[test]
    fn numeric_looking_env_value_for_a_string_key_stays_a_string() {
        let c: Example = load_str("", "f", &env(&[("UC_HTTP__TOKEN", "12345")])).unwrap();
        assert_eq!(c.http.token, "12345");
        let c: Example = load_str("", "f", &env(&[("UC_HTTP__VERBOSE", "true")])).unwrap();
        assert!(c.http.verbose);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = "name = \"x\"\n\n[http]\nport = 1\nprot = 2\n";
        let e = load_str::<Example>(text, "/etc/uc.toml", &[]).unwrap_err();
        assert_eq!(e.origin, "/etc/uc.toml");
        assert_eq!(e.key.as_deref(), Some("http.prot"));
        assert_eq!(e.line, Some(5));
        assert!(e.message.contains("unknown field `prot`"), "{e}");
        assert!(e.to_string().contains("line 5, key `http.prot`"), "{e}");

        let e = load_str::<Example>("nmae = 1\n", "f", &[]).unwrap_err();
        assert_eq!((e.key.as_deref(), e.line), (Some("nmae"), Some(1)));
    }

    #[test]
    fn wrong_type_is_named_with_its_line() {
        let text = "[http]\nverbose = true\nport = \"eighty\"\n";
        let e = load_str::<Example>(text, "f.toml", &[]).unwrap_err();
        assert_eq!((e.key.as_deref(), e.line), (Some("http.port"), Some(3)));
        assert!(e.message.contains("invalid type"), "{e}");

        let text = "[[peers]]\naddr = \"a\"\n[[peers]]\naddr = 7\n";
        let e = load_str::<Example>(text, "f.toml", &[]).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("peers[1].addr"));
        assert_eq!(e.line, Some(4));

        let e = load_str::<Example>("[http]\nport = 70000\n", "f.toml", &[]).unwrap_err();
        assert_eq!((e.key.as_deref(), e.line), (Some("http.port"), Some(2)));
    }

    #[test]
    fn unparsable_file_reports_line() {
        let e = load_str::<Example>("name = \"x\"\nport = = 3\n", "f.toml", &[]).unwrap_err();
        assert_eq!(e.line, Some(2));
        assert_eq!(e.key, None);
    }

    #[test]
    fn bad_env_override_names_the_variable() {
        let e = load_str::<Example>("", "f", &env(&[("UC_HTTP__PORT", "many")])).unwrap_err();
        assert_eq!(e.origin, "UC_HTTP__PORT");
        assert_eq!(e.key.as_deref(), Some("http.port"));
        let e = load_str::<Example>("", "f", &env(&[("UC_HTTP__NOPE", "1")])).unwrap_err();
        assert_eq!(e.origin, "UC_HTTP__NOPE");
        assert_eq!(e.key.as_deref(), Some("http.nope"));
        let e = load_str::<Example>("name = \"a\"", "f", &env(&[("UC_NAME__X", "1")])).unwrap_err();
        assert!(e.message.contains("not a table"), "{e}");
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let e = load::<Example>(Some(Path::new("/nonexistent/uc.toml")), &[]).unwrap_err();
        assert_eq!(e.origin, "/nonexistent/uc.toml");
        assert!(e.message.contains("cannot read"));
    }
}
