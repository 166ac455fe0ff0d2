//! Node.js scripts of `tests/browser/`, driven through their stdin and stdout.

use std::{ffi::OsStr, path::PathBuf, process::Stdio};

use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

use crate::within;

pub struct Script {
    pub child: Child,
    pub stdin: ChildStdin,
    pub stdout: Lines<BufReader<ChildStdout>>,
}

impl Script {
    /// Starts `node tests/browser/NAME ARGS...` with `envs` added; killed when dropped.
    pub fn spawn(name: &str, args: &[&OsStr], envs: &[(&str, &OsStr)]) -> Script {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("browser")
            .join(name);
        let mut child = Command::new("node")
            .arg(path)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node (is Node.js installed?)");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Script {
            child,
            stdin,
            stdout,
        }
    }

    /// The next line the script prints.
    pub async fn line(&mut self) -> String {
        within("a line from the script", self.stdout.next_line())
            .await
            .expect("read the script's output")
            .expect("the script ended early")
    }
}
