//! Command-line flags (the same value parsers serve the `SWITCHBOARD_*` environment
//! variables): `Config::try_parse_from`, `Config::validate` and the redacting `Debug`
//! printout must never panic, and the printout never shows the backend token (it
//! differs from the printout without a token only by the redacted field).
//!
//! Input: arguments separated by NUL bytes, without the program name. An argument whose first
//! byte is 0x80 or more names one of the gateway's flags (by that byte, modulo their number)
//! and takes the rest as its value: `--flag=value` when bit 0x40 is set, else `--flag value`.
//! Other arguments are taken as they are (lossy UTF-8).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use switchboard_gateway::{fuzzing, Config};

static FLAGS: OnceLock<Vec<String>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let flags = FLAGS.get_or_init(fuzzing::config_flags);
    let mut args = Vec::new();
    for segment in data.split(|b| *b == 0) {
        match segment {
            [b, value @ ..] if *b >= 0x80 => {
                let flag = &flags[usize::from(*b) % flags.len()];
                let value = String::from_utf8_lossy(value);
                if b & 0x40 != 0 {
                    args.push(format!("{flag}={value}"));
                } else {
                    args.push(flag.clone());
                    args.push(value.into_owned());
                }
            }
            _ => args.push(String::from_utf8_lossy(segment).into_owned()),
        }
    }
    let Ok(shown) = fuzzing::config_args(&args) else {
        return;
    };
    let config: Config = fuzzing::parse_config(&args).expect("parsed once already");
    if config.backend_token.is_some() {
        // The printout is the one without a token but for the redacted field.
        let mut without = config.clone();
        without.backend_token = None;
        assert_eq!(
            shown.replace(
                r#"backend_token: Some("<redacted>")"#,
                "backend_token: None"
            ),
            format!("{without:?}"),
            "the token is not redacted"
        );
    }
});
