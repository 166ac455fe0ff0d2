//! The configuration file against the real binary: `--config`, `--check-config`,
//! `--print-default-config`, the checked-in `deploy/switchboard.toml`, and output into a
//! reader that has gone away.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use switchboard_tests::gateway::{gateway_bin, Gateway};

/// A config file in a fresh temporary directory (removed when the guard drops).
fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("switchboard.toml");
    std::fs::write(&path, text).expect("write config file");
    (dir, path)
}

/// Runs the gateway binary to completion, without any SWITCHBOARD_* variable of the
/// environment the tests run in.
fn run(args: &[&str]) -> Output {
    gateway()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run gateway")
}

fn gateway() -> Command {
    let mut cmd = Command::new(gateway_bin());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SWITCHBOARD_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary path")
}

#[test]
fn check_config_prints_the_files_values_with_their_sources_and_secrets_redacted() {
    let (_dir, path) = config_file(
        "backend-token = \"hunter2\"\n\
         redis-url = \"redis://:sw0rdfish@127.0.0.1:6379\"\n\
         lease-ttl = \"20s\"\n\
         allowed-origin = [\"https://a.example\", \"chat=https://b.example\"]\n",
    );
    let out = run(&[
        "--config",
        path_str(&path),
        "--check-config",
        "--max-connections",
        "5",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let from_file = format!("# file {}", path.display());
    for line in [
        format!("lease-ttl = \"20s\"  {from_file}"),
        format!("backend-token = \"<redacted>\"  {from_file}"),
        format!("redis-url = \"redis://<redacted>@127.0.0.1:6379\"  {from_file}"),
        format!(
            "allowed-origin = [\"https://a.example\", \"chat=https://b.example\"]  {from_file}"
        ),
        "max-connections = 5  # flag --max-connections".to_owned(),
        "lease-refresh = \"3s\"  # default".to_owned(),
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no {line:?} in\n{stdout}"
        );
    }
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(!stdout.contains("sw0rdfish"), "{stdout}");
}

#[test]
fn the_environment_overrides_the_file_and_is_named_as_the_source() {
    let (_dir, path) = config_file("lease-ttl = \"20s\"\n");
    let out = gateway()
        .args(["--config", path_str(&path), "--check-config"])
        .env("SWITCHBOARD_LEASE_TTL", "30s")
        .output()
        .expect("run gateway");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("lease-ttl = \"30s\"  # env SWITCHBOARD_LEASE_TTL"),
        "{stdout}"
    );
}

#[test]
fn a_bad_file_exits_64_with_one_line_naming_the_key_and_the_reason() {
    for (text, expected) in [
        (
            "lease-ttl = \"ten\"\n",
            "lease-ttl = \"ten\": 'ten' is not a duration",
        ),
        (
            "leese-ttl = \"10s\"\n",
            "unknown key `leese-ttl` (did you mean `lease-ttl`?)",
        ),
        // Parsed, but refused by the same validation as flags.
        (
            "lease-ttl = \"4s\"\nlease-refresh = \"3s\"\n",
            "--lease-refresh must be at most half",
        ),
    ] {
        let (_dir, path) = config_file(text);
        for action in [&["--check-config"][..], &[]] {
            let mut args = vec!["--config", path_str(&path)];
            args.extend_from_slice(action);
            let out = run(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{text}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(stderr.starts_with("switchboard-gateway: "), "{stderr}");
            assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
            assert!(out.stdout.is_empty());
        }
    }
}

#[test]
fn the_checked_in_default_file_is_what_print_default_config_prints() {
    let out = run(&["--print-default-config"]);
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).expect("UTF-8");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/switchboard.toml");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        printed == checked_in,
        "deploy/switchboard.toml differs from --print-default-config; regenerate it with: \
         cargo run -p switchboard-gateway -- --print-default-config > deploy/switchboard.toml"
    );
    // And it is a valid configuration.
    let check = run(&["--config", path_str(&path), "--check-config"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    for args in [
        &["--check-config"][..],
        &["--print-default-config"],
        &["--help"],
        &["--version"],
    ] {
        // A pipe whose reader is gone before the gateway writes: every write fails (EPIPE),
        // as in `switchboard-gateway --check-config | head -1` once head has exited.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = gateway()
            .args(args)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run gateway");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
        assert!(out.status.success(), "{args:?}: {:?}", out.status);
    }
}

#[tokio::test]
async fn the_gateway_runs_with_the_files_settings() {
    let (_dir, path) = config_file(
        "welcome-frame = true\n\
         # Overridden by the harness's --listen flag.\n\
         listen = \"127.0.0.1:1\"\n",
    );
    let gw = Gateway::start(&["--config", path_str(&path)]).await;
    let mut c = gw.connect("h").await;
    let welcome: serde_json::Value = serde_json::from_str(&c.text().await).unwrap();
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["session"], c.id.as_str());
}
