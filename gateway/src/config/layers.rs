//! The configuration file (`--config FILE`, TOML) and the layering of flags, environment,
//! file and defaults, plus the two printouts built on it: `--check-config` (the effective
//! values and where each came from) and `--print-default-config` (an annotated file with
//! every option at its default).
//!
//! Design: clap stays the only parser, and its argument list is the only list of options.
//! A file key is a long flag without its dashes; which keys exist, their help, defaults,
//! environment names, and whether they repeat are all read from clap's metadata, so an
//! option added to [`Config`] joins the file format, both printouts and the tests with no
//! code here. Loading is three steps:
//!
//! 1. The command line alone is parsed (environment and `requires` switched off: those
//!    depend on the other layers), which handles `--help`/`--version` and tells which
//!    options were given as flags (clap's `ValueSource::CommandLine`).
//! 2. For every other option, its `SWITCHBOARD_*` variable (looked up through an injected
//!    function, so tests never touch the process environment) or else its file key gives the
//!    raw value. Each value of the file (overridden or not) and each variable used is first
//!    checked alone by clap with that option's own parser, so a bad value is reported with
//!    its key, the value and the parser's reason.
//! 3. Those values are put in front of the real arguments as `--key=value` and the whole
//!    line is parsed once more by the full command (environment off): every value, whatever
//!    its layer, goes through the same parser into the one `Config`, and rules between
//!    options (`--tls-cert` requires `--tls-key`) hold across layers.
//!
//! `figment` (with `Serialized`, `Env`, `Toml`) was weighed and not used: it merges into a
//! serde type, so every parser clap already has (durations, ranges, enums, `HUB=TOKEN`)
//! would need a serde twin, its defaults and environment names a second declaration next to
//! clap's, and it would still need clap's value sources to know which flags were given; its
//! errors would be serde's rather than the parsers' own messages. `toml` only reads the file.

use std::{
    any::TypeId,
    collections::BTreeMap,
    ffi::{OsStr, OsString},
    fmt::Write as _,
    num::NonZeroUsize,
    path::{Path, PathBuf},
};

use clap::{
    builder::{OsStr as ClapOsStr, Resettable},
    error::{ContextKind, ContextValue, ErrorKind},
    parser::ValueSource,
    Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches, Id,
};

use super::{parse_scoped_token, redact_url, Config};

/// The option naming the file itself: it has an environment variable but no file key.
const CONFIG_ARG: &str = "config";

/// Clears an argument's environment variable (the layers look variables up themselves).
const NO_ENV: Resettable<ClapOsStr> = Resettable::Reset;

/// Clears an argument's `requires` (checked once every layer is in).
const NO_REQUIRES: Resettable<Id> = Resettable::Reset;

/// What a secret is shown as.
pub(crate) const REDACTED: &str = "<redacted>";

/// Lines of the generated file are wrapped to this width.
const WIDTH: usize = 96;

/// Looks up an environment variable; the binary passes `std::env::var_os`.
pub type EnvLookup<'a> = &'a dyn Fn(&OsStr) -> Option<OsString>;

/// Reads the configuration file; the binary passes `std::fs::read_to_string`.
pub type ReadFile<'a> = &'a dyn Fn(&Path) -> std::io::Result<String>;

/// What the command line asked for.
pub enum Startup {
    /// `--print-default-config`: print this text and exit; nothing else was read.
    PrintDefaultConfig(String),
    /// A configuration, parsed but not yet validated.
    Loaded(Box<Loaded>),
}

/// A parsed configuration and where each of its settings came from.
pub struct Loaded {
    pub config: Config,
    matches: ArgMatches,
    sources: BTreeMap<String, Source>,
    file: Option<PathBuf>,
}

/// Where a setting's effective value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Flag,
    Env(String),
    File,
    Default,
    Unset,
}

/// Why the configuration could not be loaded. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The command line itself, or `--help`/`--version`: printed as clap prints it.
    #[error("{0}")]
    Cli(clap::Error),
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config file {path}: unknown key `{key}`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    UnknownKey {
        path: PathBuf,
        key: String,
        suggestion: Option<String>,
    },
    #[error("config file {path}: `{key}` can only be given on the command line")]
    CommandLineOnly { path: PathBuf, key: String },
    #[error("{origin}: {key} = {value}: {why}")]
    BadValue {
        origin: String,
        key: String,
        value: String,
        why: String,
    },
    /// The layers together break a rule between options (`--tls-cert` without `--tls-key`).
    #[error("{0}")]
    Combined(String),
}

/// Parses `args` (program name first) over the environment and the configuration file.
pub fn load<I, T>(args: I, env: EnvLookup<'_>, read: ReadFile<'_>) -> Result<Startup, LoadError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut documented = Config::command();
    documented.build();

    // Step 1: the command line alone.
    let mut bare = Config::command().mut_args(|a| a.env(NO_ENV).requires(NO_REQUIRES));
    let given = match bare.try_get_matches_from_mut(&args) {
        Ok(m) => m,
        Err(e) => {
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                // Help from the documented command, which names the environment variables.
                if let Err(help) = Config::command().try_get_matches_from(&args) {
                    return Err(LoadError::Cli(help));
                }
            }
            return Err(LoadError::Cli(e));
        }
    };
    if given.get_flag("print_default_config") {
        return Ok(Startup::PrintDefaultConfig(default_config_file()));
    }

    let config_arg = documented
        .get_arguments()
        .find(|a| a.get_id() == CONFIG_ARG);
    let file = if given.value_source(CONFIG_ARG) == Some(ValueSource::CommandLine) {
        given.get_one::<PathBuf>(CONFIG_ARG).cloned()
    } else {
        config_arg
            .and_then(Arg::get_env)
            .and_then(env)
            .map(PathBuf::from)
    };
    // Every value of the file is checked, even one a flag or variable overrides today: the
    // file must stay valid when that override goes.
    let mut from_file: BTreeMap<&str, Vec<OsString>> = BTreeMap::new();
    if let Some(path) = &file {
        let table = read_table(path, read)?;
        check_keys(&documented, &table, path)?;
        let origin = format!("config file {}", path.display());
        for arg in settings(&documented) {
            let Some(value) = table.get(long(arg)) else {
                continue;
            };
            let bad = |why| LoadError::BadValue {
                origin: origin.clone(),
                key: long(arg).to_owned(),
                value: shown_value(arg, &value.to_string()),
                why,
            };
            let values = file_values(arg, value).map_err(bad)?;
            check_values(arg, &values).map_err(|e| bad(reason(arg, &e)))?;
            from_file.insert(arg.get_id().as_str(), values);
        }
    }

    // Step 2: the environment, then the file, for what the command line left out.
    let mut layered: Vec<OsString> = Vec::new();
    let mut sources = BTreeMap::new();
    for arg in settings(&documented) {
        let id = arg.get_id().as_str();
        let source = if given.value_source(id) == Some(ValueSource::CommandLine) {
            Source::Flag
        } else if let Some((name, value)) = arg
            .get_env()
            .and_then(|name| Some((name.to_string_lossy().into_owned(), env(name)?)))
        {
            let values = vec![value];
            check_values(arg, &values).map_err(|e| LoadError::BadValue {
                origin: "environment".to_owned(),
                value: shown_value(
                    arg,
                    &toml::Value::String(values[0].to_string_lossy().into_owned()).to_string(),
                ),
                key: name.clone(),
                why: reason(arg, &e),
            })?;
            layered.extend(as_flags(arg, &values));
            Source::Env(name)
        } else if let Some(values) = from_file.get(id) {
            layered.extend(as_flags(arg, values));
            Source::File
        } else {
            continue;
        };
        sources.insert(id.to_owned(), source);
    }

    // Step 3: every layer through the full command at once.
    let mut argv = args;
    let rest = argv.split_off(argv.len().min(1));
    argv.extend(layered);
    argv.extend(rest);
    let matches = Config::command()
        .mut_args(|a| a.env(NO_ENV))
        .try_get_matches_from(argv)
        .map_err(|e| LoadError::Combined(one_line(&e)))?;
    let config =
        Config::from_arg_matches(&matches).map_err(|e| LoadError::Combined(one_line(&e)))?;
    for arg in settings(&documented) {
        let id = arg.get_id().as_str();
        if !sources.contains_key(id) {
            let source = match matches.value_source(id) {
                Some(ValueSource::DefaultValue) => Source::Default,
                _ => Source::Unset,
            };
            sources.insert(id.to_owned(), source);
        }
    }
    Ok(Startup::Loaded(Box::new(Loaded {
        config,
        matches,
        sources,
        file,
    })))
}

impl Loaded {
    /// Where a setting (by clap ID, e.g. `lease_ttl`) came from.
    #[cfg(test)]
    pub(crate) fn source(&self, id: &str) -> Option<&Source> {
        self.sources.get(id)
    }

    /// The effective configuration as TOML, secrets redacted, each value followed by where it
    /// came from: what `--check-config` prints. It is itself a valid configuration file.
    pub fn effective_toml(&self) -> String {
        let mut documented = Config::command();
        documented.build();
        let mut out = String::from(
            "# Effective configuration of switchboard-gateway, secrets redacted; after each value,\n\
             # where it came from (flag, environment variable, config file or default).\n",
        );
        for arg in settings(&documented) {
            let id = arg.get_id().as_str();
            let key = long(arg);
            let raw: Vec<String> = self
                .matches
                .get_raw(id)
                .map(|vals| vals.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let source = self.sources.get(id).unwrap_or(&Source::Unset);
            let from = match source {
                Source::Flag => format!("flag --{key}"),
                Source::Env(name) => format!("env {name}"),
                Source::File => match &self.file {
                    Some(path) => format!("file {}", path.display()),
                    None => "file".to_owned(),
                },
                Source::Default => "default".to_owned(),
                Source::Unset => {
                    let _ = writeln!(out, "# {key}: not set");
                    continue;
                }
            };
            let shown: Vec<String> = raw.iter().map(|v| redact(arg, v)).collect();
            let _ = writeln!(out, "{key} = {}  # {from}", toml_value(arg, &shown));
        }
        out
    }
}

/// The options that can be set in the file and the environment: every argument with an
/// environment variable except `--config` itself. `--check-config`, `--help` and the like
/// have none: they are actions, not settings.
fn settings(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments()
        .filter(|a| a.get_env().is_some() && a.get_id() != CONFIG_ARG && a.get_long().is_some())
}

/// The file key of a setting: its long flag.
fn long(arg: &Arg) -> &str {
    arg.get_long().unwrap_or_default()
}

/// A flag (`--welcome-frame`) takes no value on the command line; in the file and the
/// environment it is `true` or `false`.
fn is_flag(arg: &Arg) -> bool {
    !arg.get_action().takes_values()
}

fn is_repeatable(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

fn read_table(path: &Path, read: ReadFile<'_>) -> Result<toml::Table, LoadError> {
    let text = read(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str::<toml::Table>(&text).map_err(|e| {
        let at = e.span().map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: ")
        });
        LoadError::Syntax {
            path: path.to_owned(),
            message: format!("{}{}", at.unwrap_or_default(), e.message().trim()),
        }
    })
}

/// Every key must be a setting; a misspelt one would otherwise be ignored silently.
fn check_keys(cmd: &Command, table: &toml::Table, path: &Path) -> Result<(), LoadError> {
    let keys: Vec<&str> = settings(cmd).map(long).collect();
    for key in table.keys() {
        if keys.contains(&key.as_str()) {
            continue;
        }
        if cmd
            .get_arguments()
            .any(|a| a.get_long() == Some(key.as_str()))
        {
            return Err(LoadError::CommandLineOnly {
                path: path.to_owned(),
                key: key.clone(),
            });
        }
        return Err(LoadError::UnknownKey {
            path: path.to_owned(),
            key: key.clone(),
            suggestion: closest(key, &keys).map(str::to_owned),
        });
    }
    Ok(())
}

/// The known key nearest to a misspelt one, if it is near enough to be a likely typo.
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let dashed = key.replace('_', "-");
    if let Some(k) = known.iter().find(|k| **k == dashed) {
        return Some(k);
    }
    known
        .iter()
        .map(|k| (edit_distance(&dashed, k), *k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// A file value as the raw strings the command line would carry.
fn file_values(arg: &Arg, value: &toml::Value) -> Result<Vec<OsString>, String> {
    if is_flag(arg) {
        return match value {
            toml::Value::Boolean(b) => Ok(vec![b.to_string().into()]),
            _ => Err(format!(
                "expected true or false, found {}",
                value.type_str()
            )),
        };
    }
    match value {
        toml::Value::Array(items) if is_repeatable(arg) => items.iter().map(scalar).collect(),
        toml::Value::Array(_) => Err("expected one value, found an array".to_owned()),
        other => Ok(vec![scalar(other)?]),
    }
}

fn scalar(value: &toml::Value) -> Result<OsString, String> {
    match value {
        toml::Value::String(s) => Ok(s.into()),
        toml::Value::Integer(i) => Ok(i.to_string().into()),
        toml::Value::Float(f) => Ok(f.to_string().into()),
        toml::Value::Boolean(b) => Ok(b.to_string().into()),
        other => Err(format!(
            "expected a string or a number, found {}",
            other.type_str()
        )),
    }
}

/// Checks raw values with the option's own parser, alone, so a bad one is reported against
/// its key instead of as a flag the user never typed.
fn check_values(arg: &Arg, values: &[OsString]) -> Result<(), clap::Error> {
    let mut probe = arg
        .clone()
        .env(NO_ENV)
        .requires(NO_REQUIRES)
        .required(false);
    if is_flag(arg) {
        // The same (boolean) parser, taking the value a flag cannot take on the command line.
        probe = probe.action(ArgAction::Set).num_args(1);
    }
    Command::new("switchboard-gateway")
        .no_binary_name(true)
        .arg(probe)
        .try_get_matches_from(values.iter().map(|v| flag_with(long(arg), v)))
        .map(|_| ())
}

fn flag_with(key: &str, value: &OsStr) -> OsString {
    let mut s = OsString::from(format!("--{key}="));
    s.push(value);
    s
}

/// Checked raw values as command-line arguments; a flag's `false` is its absence.
fn as_flags(arg: &Arg, values: &[OsString]) -> Vec<OsString> {
    let key = long(arg);
    if is_flag(arg) {
        return if values.iter().any(|v| v == "true") {
            vec![format!("--{key}").into()]
        } else {
            Vec::new()
        };
    }
    values.iter().map(|v| flag_with(key, v)).collect()
}

/// Why clap refused a value, without its usage text: the parser's own message when there
/// is one, else the values it would take. clap's full message quotes the value, which a
/// secret's must not.
fn reason(arg: &Arg, e: &clap::Error) -> String {
    if let Some(source) = std::error::Error::source(e) {
        return source.to_string();
    }
    if let Some(ContextValue::Strings(valid)) = e.get(ContextKind::ValidValue) {
        return format!("expected one of {}", valid.join(", "));
    }
    if arg.is_hide_env_values_set() {
        return "invalid value".to_owned();
    }
    one_line(e)
}

/// A clap error as one line: its message and details, without usage and help hints.
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .collect();
    let joined = lines.join(" ");
    joined.strip_prefix("error: ").unwrap_or(&joined).to_owned()
}

/// A value for an error message: a secret's is not shown.
fn shown_value(arg: &Arg, value: &str) -> String {
    if arg.is_hide_env_values_set() {
        REDACTED.to_owned()
    } else {
        value.to_owned()
    }
}

/// A value as `--check-config` shows it. Secrets are the options whose environment value
/// `--help` hides; of those, what identifies them (a Redis URL's host, a scoped token's
/// hubs) stays. Any other URL loses its password, if it has one.
fn redact(arg: &Arg, raw: &str) -> String {
    if !arg.is_hide_env_values_set() {
        return redact_url(raw);
    }
    match arg.get_id().as_str() {
        "redis_url" => redact_url(raw),
        "scoped_backend_tokens" => parse_scoped_token(raw)
            .map(|t| super::redact_scoped(&t))
            .unwrap_or_else(|_| REDACTED.to_owned()),
        _ => REDACTED.to_owned(),
    }
}

/// Whether the option's values are integers, written without quotes.
fn is_integer(arg: &Arg) -> bool {
    let t = arg.get_value_parser().type_id();
    [
        TypeId::of::<u8>(),
        TypeId::of::<u16>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
        TypeId::of::<usize>(),
        TypeId::of::<i32>(),
        TypeId::of::<i64>(),
        TypeId::of::<NonZeroUsize>(),
    ]
    .iter()
    .any(|id| t == *id)
}

/// Raw values as a TOML value of the option's shape: a boolean for a flag or a boolean
/// option (`--x true|false`), an array for a repeatable option, an integer for a number, else
/// a string.
fn toml_value(arg: &Arg, raw: &[String]) -> String {
    let boolean = arg.get_value_parser().type_id() == TypeId::of::<bool>();
    let one = |v: &str| -> toml::Value {
        match (v.parse::<i64>(), v.parse::<bool>()) {
            (Ok(i), _) if is_integer(arg) && i.to_string() == v => toml::Value::Integer(i),
            (_, Ok(b)) if boolean => toml::Value::Boolean(b),
            _ => toml::Value::String(v.to_owned()),
        }
    };
    let value = if is_flag(arg) {
        toml::Value::Boolean(raw.iter().any(|v| v == "true"))
    } else if is_repeatable(arg) {
        toml::Value::Array(raw.iter().map(|v| one(v)).collect())
    } else {
        raw.first()
            .map_or(toml::Value::String(String::new()), |v| one(v))
    };
    value.to_string()
}

/// The annotated file `--print-default-config` prints (checked in as
/// `deploy/switchboard.toml`): every setting with its help, its environment variable, and
/// its default, commented out where it has none. Generated from clap's metadata, so it
/// cannot drift from the flags.
pub(crate) fn default_config_file() -> String {
    let mut cmd = Config::command();
    cmd.build();
    let mut out = String::from(
        "# Configuration file of switchboard-gateway: `switchboard-gateway --config FILE` (or\n\
         # SWITCHBOARD_CONFIG=FILE). Each key is a long flag without its dashes. Flags override\n\
         # SWITCHBOARD_* environment variables, which override this file, which overrides the\n\
         # defaults. `switchboard-gateway --check-config --config FILE` validates a file and\n\
         # prints the effective values.\n\
         #\n\
         # Every option is listed with its default; those without one are commented out.\n\
         # Generated by `switchboard-gateway --print-default-config`.\n",
    );
    for arg in settings(&cmd) {
        let key = long(arg);
        out.push('\n');
        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(ToString::to_string)
            .unwrap_or_default();
        // clap drops a doc comment's final period; a comment block reads better with it.
        let help = if help.ends_with(['.', '!', '?', ':']) || help.is_empty() {
            help
        } else {
            help + "."
        };
        let mut notes = vec![help];
        let possible: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|p| !p.is_hide_set())
            .map(|p| p.get_name().to_owned())
            .collect();
        if !is_flag(arg) && !possible.is_empty() {
            notes.push(format!("One of: {}.", possible.join(", ")));
        }
        if is_repeatable(arg) {
            notes.push("An array; the flag is repeatable.".to_owned());
        }
        if let Some(env) = arg.get_env() {
            notes.push(format!(
                "Flag --{key}, environment {}.",
                env.to_string_lossy()
            ));
        }
        for note in notes {
            wrap_comment(&mut out, &note);
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if defaults.is_empty() {
            let name = arg
                .get_value_names()
                .and_then(|n| n.first())
                .map_or_else(|| "VALUE".to_owned(), ToString::to_string);
            let example = if is_repeatable(arg) {
                format!("[\"{name}\"]")
            } else {
                format!("\"{name}\"")
            };
            let _ = writeln!(out, "# {key} = {example}");
        } else {
            let _ = writeln!(out, "{key} = {}", toml_value(arg, &defaults));
        }
    }
    out
}

/// Appends `text` as `# ` comment lines of at most [`WIDTH`] columns.
fn wrap_comment(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() > 1 && line.len() + 1 + word.len() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    if line.len() > 1 {
        out.push_str(&line);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Duration};

    use super::*;
    use crate::config::{AdminListen, HubSwitch, ScopedToken};

    /// A process environment and file system made of maps, for `load`.
    struct World {
        env: Vec<(&'static str, &'static str)>,
        files: Vec<(&'static str, String)>,
    }

    impl World {
        fn new() -> Self {
            World {
                env: Vec::new(),
                files: Vec::new(),
            }
        }

        fn env(mut self, name: &'static str, value: &'static str) -> Self {
            self.env.push((name, value));
            self
        }

        fn file(mut self, path: &'static str, text: impl Into<String>) -> Self {
            self.files.push((path, text.into()));
            self
        }

        fn load(&self, args: &[&str]) -> Result<Loaded, LoadError> {
            let env = |name: &OsStr| {
                self.env
                    .iter()
                    .find(|(n, _)| OsStr::new(n) == name)
                    .map(|(_, v)| OsString::from(v))
            };
            let read = |path: &Path| {
                self.files
                    .iter()
                    .find(|(p, _)| Path::new(p) == path)
                    .map(|(_, text)| text.clone())
                    .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
            };
            let argv = std::iter::once("switchboard-gateway").chain(args.iter().copied());
            match load(argv, &env, &read)? {
                Startup::Loaded(loaded) => Ok(*loaded),
                Startup::PrintDefaultConfig(_) => panic!("asked to print the default file"),
            }
        }
    }

    fn from_file(text: &str) -> Result<Loaded, LoadError> {
        World::new()
            .file("/etc/sb.toml", text)
            .load(&["--config", "/etc/sb.toml"])
    }

    /// The settings of a configuration, without the file it was read from.
    fn settings_of(config: &Config) -> Config {
        Config {
            config: None,
            ..config.clone()
        }
    }

    fn documented() -> Command {
        let mut cmd = Config::command();
        cmd.build();
        cmd
    }

    /// Two valid values per value type, each different from every default of that type: the
    /// file that sets every option is generated from them.
    fn samples(arg: &Arg) -> Option<[String; 2]> {
        let t = arg.get_value_parser().type_id();
        let table: [(TypeId, [&str; 2]); 13] = [
            (
                TypeId::of::<SocketAddr>(),
                ["10.9.8.7:6543", "10.9.8.7:6544"],
            ),
            (TypeId::of::<Duration>(), ["7s", "1500ms"]),
            (TypeId::of::<NonZeroUsize>(), ["12345", "23456"]),
            // 65535 is inside every range a u32 option takes (backlog, HTTP/2 windows).
            (TypeId::of::<u32>(), ["65535", "65534"]),
            (TypeId::of::<u64>(), ["65535", "65534"]),
            // The compression level's range is 1 to 9.
            (TypeId::of::<u8>(), ["9", "8"]),
            (TypeId::of::<usize>(), ["65535", "65534"]),
            (TypeId::of::<bool>(), ["true", "true"]),
            (
                TypeId::of::<String>(),
                ["https://sample.example", "hub=https://other.example"],
            ),
            (
                TypeId::of::<PathBuf>(),
                ["/etc/switchboard/sample.pem", "/etc/other.pem"],
            ),
            (
                TypeId::of::<ScopedToken>(),
                ["chat,news=sample-token", "ops=other-token"],
            ),
            (TypeId::of::<AdminListen>(), ["10.9.8.7:9999", "off"]),
            (TypeId::of::<HubSwitch>(), ["chat=off", "news=on"]),
        ];
        if let (false, Some(default)) = (is_flag(arg), arg.get_default_values().first()) {
            // An enum, or a boolean option: a possible value that is not the default.
            let other = arg
                .get_possible_values()
                .into_iter()
                .map(|p| p.get_name().to_owned())
                .find(|p| OsStr::new(p) != default.as_os_str());
            if let Some(other) = other {
                return Some([other.clone(), other]);
            }
        }
        table
            .iter()
            .find(|(id, _)| t == *id)
            .map(|(_, [a, b])| [(*a).to_owned(), (*b).to_owned()])
    }

    /// The values the round trip sets for `arg`: two for a repeatable option.
    fn sample_values(arg: &Arg) -> Vec<String> {
        let Some(s) = samples(arg) else {
            panic!(
                "no sample value for --{} (values of type {:?}): add two to `samples` in \
                 gateway/src/config/layers.rs",
                long(arg),
                arg.get_value_parser().type_id()
            );
        };
        let n = if is_repeatable(arg) { 2 } else { 1 };
        s[..n].to_vec()
    }

    #[test]
    fn every_option_round_trips_through_the_file() {
        let cmd = documented();
        let mut file = String::new();
        let mut flags: Vec<String> = Vec::new();
        for arg in settings(&cmd) {
            let values = sample_values(arg);
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            assert_ne!(
                values,
                defaults,
                "the sample of --{} is its default",
                long(arg)
            );
            let _ = writeln!(file, "{} = {}", long(arg), toml_value(arg, &values));
            if is_flag(arg) {
                flags.push(format!("--{}", long(arg)));
            } else {
                flags.extend(values.iter().map(|v| format!("--{}={v}", long(arg))));
            }
        }
        let loaded = from_file(&file).unwrap_or_else(|e| panic!("{e}\n{file}"));
        for arg in settings(&cmd) {
            assert_eq!(
                loaded.source(arg.get_id().as_str()),
                Some(&Source::File),
                "--{} did not come from the file",
                long(arg)
            );
        }
        let argv: Vec<&str> = flags.iter().map(String::as_str).collect();
        let flagged = World::new().load(&argv).unwrap().config;
        assert!(
            settings_of(&loaded.config) == flagged,
            "the file gave\n{:?}\nthe flags gave\n{:?}\nfile:\n{file}",
            loaded.config,
            flagged
        );
        let defaults = World::new().load(&[]).unwrap().config;
        assert!(settings_of(&loaded.config) != defaults);
    }

    #[test]
    fn flags_override_the_environment_which_overrides_the_file() {
        let world = World::new().file("/sb.toml", "lease-ttl = \"20s\"\nlease-refresh = \"1s\"\n");
        let ttl = |world: &World, args: &[&str]| {
            let mut all = vec!["--config", "/sb.toml"];
            all.extend_from_slice(args);
            let loaded = world.load(&all).unwrap();
            (
                loaded.config.lease_ttl,
                loaded.source("lease_ttl").cloned().unwrap(),
            )
        };
        assert_eq!(ttl(&world, &[]), (Duration::from_secs(20), Source::File));
        let world = world.env("SWITCHBOARD_LEASE_TTL", "30s");
        assert_eq!(
            ttl(&world, &[]),
            (
                Duration::from_secs(30),
                Source::Env("SWITCHBOARD_LEASE_TTL".into())
            )
        );
        assert_eq!(
            ttl(&world, &["--lease-ttl", "40s"]),
            (Duration::from_secs(40), Source::Flag)
        );
        // Untouched keys keep their layer.
        let loaded = world.load(&["--config", "/sb.toml"]).unwrap();
        assert_eq!(loaded.config.lease_refresh, Duration::from_secs(1));
        assert_eq!(loaded.source("lease_refresh"), Some(&Source::File));
        assert_eq!(loaded.source("log"), Some(&Source::Default));
        assert_eq!(loaded.source("node_id"), Some(&Source::Unset));
    }

    #[test]
    fn the_file_is_named_by_the_environment_too() {
        let loaded = World::new()
            .file("/sb.toml", "welcome-frame = true")
            .env("SWITCHBOARD_CONFIG", "/sb.toml")
            .load(&[])
            .unwrap();
        assert!(loaded.config.welcome_frame);
        // A flag's `false` in the environment beats the file's `true`.
        let loaded = World::new()
            .file("/sb.toml", "welcome-frame = true")
            .env("SWITCHBOARD_WELCOME_FRAME", "false")
            .load(&["--config", "/sb.toml"])
            .unwrap();
        assert!(!loaded.config.welcome_frame);
    }

    #[test]
    fn repeatable_options_take_arrays_and_flags_replace_the_whole_list() {
        let text = "allowed-origin = [\"https://a.example\", \"chat=https://b.example\"]\n";
        let loaded = from_file(text).unwrap();
        assert_eq!(
            loaded.config.allowed_origins,
            ["https://a.example", "chat=https://b.example"]
        );
        let loaded = World::new()
            .file("/sb.toml", text)
            .load(&[
                "--config",
                "/sb.toml",
                "--allowed-origin",
                "https://c.example",
            ])
            .unwrap();
        assert_eq!(loaded.config.allowed_origins, ["https://c.example"]);
        let err = from_file("lease-ttl = [\"1s\", \"2s\"]").err().unwrap();
        assert!(err.to_string().contains("expected one value"), "{err}");
    }

    #[test]
    fn rules_between_options_hold_across_layers() {
        let world = World::new().file("/sb.toml", "tls-cert = \"/c.pem\"");
        let loaded = world
            .load(&["--config", "/sb.toml", "--tls-key", "/k.pem"])
            .unwrap();
        assert_eq!(loaded.config.tls_cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(loaded.config.tls_key, Some(PathBuf::from("/k.pem")));
        let err = world.load(&["--config", "/sb.toml"]).err().unwrap();
        assert!(matches!(err, LoadError::Combined(_)), "{err}");
        assert!(err.to_string().contains("--tls-key"), "{err}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }

    #[test]
    fn an_unknown_key_is_named_with_the_closest_one() {
        let err = from_file("leese-ttl = \"10s\"").err().unwrap();
        assert_eq!(
            err.to_string(),
            "config file /etc/sb.toml: unknown key `leese-ttl` (did you mean `lease-ttl`?)"
        );
        let err = from_file("lease_ttl = \"10s\"").err().unwrap();
        assert!(
            err.to_string().contains("did you mean `lease-ttl`"),
            "{err}"
        );
        let err = from_file("frobnicate = 1").err().unwrap();
        assert_eq!(
            err.to_string(),
            "config file /etc/sb.toml: unknown key `frobnicate`"
        );
        let err = from_file("check-config = true").err().unwrap();
        assert!(matches!(err, LoadError::CommandLineOnly { .. }), "{err}");
    }

    #[test]
    fn a_bad_value_names_key_value_and_reason() {
        let err = from_file("lease-ttl = \"ten\"").err().unwrap();
        assert_eq!(
            err.to_string(),
            "config file /etc/sb.toml: lease-ttl = \"ten\": 'ten' is not a duration \
             (examples: 250ms, 10s, 5m)"
        );
        let err = from_file("registry-outage = \"sometimes\"").err().unwrap();
        assert!(
            err.to_string()
                .ends_with("registry-outage = \"sometimes\": expected one of accept, refuse"),
            "{err}"
        );
        let err = from_file("listen-backlog = 70000").err().unwrap();
        assert!(
            err.to_string()
                .contains("listen-backlog = 70000: 70000 is not in 1..=65535"),
            "{err}"
        );
        let err = from_file("welcome-frame = \"yes\"").err().unwrap();
        assert!(
            err.to_string()
                .contains("expected true or false, found string"),
            "{err}"
        );
        // A secret's value is not echoed.
        let err = from_file("scoped-backend-token = [\"not a token\"]")
            .err()
            .unwrap();
        assert!(!err.to_string().contains("not a token"), "{err}");
        let err = World::new()
            .env("SWITCHBOARD_IDLE_TIMEOUT", "soon")
            .load(&[])
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("environment: SWITCHBOARD_IDLE_TIMEOUT = \"soon\""),
            "{err}"
        );
    }

    #[test]
    fn a_bad_file_value_is_refused_even_when_a_flag_overrides_it() {
        let err = World::new()
            .file("/sb.toml", "lease-ttl = \"ten\"")
            .load(&["--config", "/sb.toml", "--lease-ttl", "5s"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("lease-ttl = \"ten\""), "{err}");
    }

    #[test]
    fn a_broken_or_missing_file_is_reported_with_its_place() {
        let err = from_file("lease-ttl = \n").err().unwrap();
        assert!(
            err.to_string()
                .starts_with("config file /etc/sb.toml: line 1, column"),
            "{err}"
        );
        assert!(!err.to_string().contains('\n'), "{err}");
        let err = World::new()
            .load(&["--config", "/missing.toml"])
            .err()
            .unwrap();
        assert!(matches!(err, LoadError::Read { .. }), "{err}");
    }

    #[test]
    fn check_config_shows_values_and_sources_with_every_secret_redacted() {
        let cmd = documented();
        let mut file = String::new();
        let mut secrets = Vec::new();
        for arg in settings(&cmd).filter(|a| a.is_hide_env_values_set()) {
            let secret = format!("hunter2-{}", long(arg));
            let value = match arg.get_id().as_str() {
                "redis_url" => format!("redis://user:{secret}@127.0.0.1:6379"),
                "scoped_backend_tokens" => format!("chat={secret}"),
                _ => secret.clone(),
            };
            let value = if is_repeatable(arg) {
                toml::Value::Array(vec![toml::Value::String(value)])
            } else {
                toml::Value::String(value)
            };
            let _ = writeln!(file, "{} = {value}", long(arg));
            secrets.push(secret);
        }
        assert!(
            secrets.len() >= 4,
            "backend, scoped and JWT tokens, Redis password"
        );
        let loaded = World::new()
            .file("/sb.toml", file)
            .load(&["--config", "/sb.toml", "--max-connections", "5"])
            .unwrap();
        let shown = loaded.effective_toml();
        let debug = format!("{:?}", loaded.config);
        for secret in &secrets {
            assert!(!shown.contains(secret.as_str()), "{secret} in\n{shown}");
            assert!(!debug.contains(secret.as_str()), "{secret} in\n{debug}");
        }
        assert!(
            shown.contains("backend-token = \"<redacted>\"  # file /sb.toml"),
            "{shown}"
        );
        assert!(
            shown.contains("redis-url = \"redis://<redacted>@127.0.0.1:6379\""),
            "{shown}"
        );
        assert!(
            shown.contains("scoped-backend-token = [\"chat=<redacted>\"]"),
            "{shown}"
        );
        assert!(
            shown.contains("max-connections = 5  # flag --max-connections"),
            "{shown}"
        );
        assert!(shown.contains("lease-ttl = \"10s\"  # default"), "{shown}");
        assert!(shown.contains("# node-id: not set"), "{shown}");
    }

    #[test]
    fn the_check_config_printout_is_a_config_file_that_loads_the_same() {
        let loaded = World::new()
            .env("SWITCHBOARD_WELCOME_FRAME", "true")
            .load(&["--lease-ttl", "1m", "--allowed-origin", "https://a.example"])
            .unwrap();
        let again = from_file(&loaded.effective_toml()).unwrap();
        assert!(settings_of(&again.config) == loaded.config);
    }

    #[test]
    fn the_default_file_loads_as_the_defaults() {
        let text = default_config_file();
        let loaded = from_file(&text).unwrap_or_else(|e| panic!("{e}"));
        assert!(settings_of(&loaded.config) == World::new().load(&[]).unwrap().config);
        // Every setting is in it, commented out or not, with its environment variable.
        for arg in settings(&documented()) {
            let key = long(arg);
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{key} = "))
                    || l.starts_with(&format!("# {key} = "))),
                "{key} missing"
            );
            let env = arg.get_env().unwrap().to_string_lossy().into_owned();
            assert!(text.contains(&env), "{env} missing");
        }
        assert!(
            text.contains("\n# backend-token = \"BACKEND_TOKEN\"\n"),
            "{text}"
        );
        assert!(text.contains("\nlease-ttl = \"10s\"\n"), "{text}");
        assert!(text
            .lines()
            .all(|l| l.chars().count() <= WIDTH || !l.contains(' ')));
    }

    #[test]
    fn the_checked_in_default_file_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/switchboard.toml");
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == default_config_file(),
            "deploy/switchboard.toml is not what --print-default-config prints; regenerate it \
             with: cargo run -p switchboard-gateway -- --print-default-config > \
             deploy/switchboard.toml"
        );
    }

    #[test]
    fn print_default_config_reads_neither_file_nor_environment() {
        let env = |_: &OsStr| Some(OsString::from("garbage"));
        let read = |_: &Path| Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        let argv = [
            "switchboard-gateway",
            "--print-default-config",
            "--config",
            "/nope",
        ];
        assert!(matches!(
            load(argv, &env, &read),
            Ok(Startup::PrintDefaultConfig(_))
        ));
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("lease-ttl", "lease-ttl"), 0);
        assert_eq!(edit_distance("leese-ttl", "lease-ttl"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
