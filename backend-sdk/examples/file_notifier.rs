//! "When a file arrives, tell every open browser": watch a folder and publish a note to every
//! session of a hub for each new file. HL7 v2 messages are named by their message type and
//! control ID (MSH-9 and MSH-10); other files by their name.
//!
//! ```sh
//! cargo run -p switchboard-gateway -- --welcome-frame &
//! mkdir -p /tmp/inbox
//! cargo run -p switchboard-sdk --example file_notifier -- --dir /tmp/inbox --hub files &
//! # open http://127.0.0.1:8080/demo?hub=files, then:
//! cp tests/data/adt_a01.hl7 /tmp/inbox/
//! ```
//!
//! Every session of the hub gets one text message per file:
//!
//! ```json
//! {"type":"file","name":"adt_a01.hl7","bytes":365,"hl7":{"message_type":"ADT^A01","control_id":"MSG00001"}}
//! {"type":"file","name":"scan.pdf","bytes":48213}
//! {"type":"file","name":"malformed.hl7","bytes":35,"malformed":"MSH has 4 fields: the message type and control ID are fields 9 and 10"}
//! ```
//!
//! A file is HL7 when it starts with an `MSH` segment (or an `FHS`/`BHS` batch header before
//! one). One whose header cannot be read is logged at ERROR and still announced, with
//! `malformed` saying why; it never stops the program, and neither does a failed publish.
//!
//! **When a file has arrived.** Writers take their time, so a file is read once its writer has
//! closed it and nothing changed for `--settle` (250 ms); a file moved into the folder is
//! complete at once (write `.name.tmp`, then rename it: names starting with `.` are ignored).
//! A file still being written after `--max-wait` (30 s) is announced as it is then, with a
//! warning. Files already there at start, folders, and later changes to an announced file are
//! not announced. (Where the platform reports no close of a written file, as on macOS, the
//! quiet period alone decides.)
//!
//! Prints `file_notifier: watching DIR hub=HUB` once the watch is in place.

use std::{
    io::{IsTerminal, Read},
    path::Path,
    time::Duration,
};

use anyhow::Context;
use clap::Parser;
use notify::{RecursiveMode, Watcher};
use serde::Serialize;
use switchboard_sdk::{Client, Target};
use tokio::sync::mpsc;

use arrivals::Arrivals;

#[derive(Parser, Debug)]
#[command(about = "Watch a folder and tell every session of a hub about each new file")]
struct Args {
    /// A gateway's backend address; repeat for several nodes.
    #[arg(
        long = "gateway",
        default_value = "http://127.0.0.1:7070",
        env = "SWITCHBOARD_GATEWAY"
    )]
    gateways: Vec<String>,
    /// The backend token, if the gateway requires one.
    #[arg(
        long,
        env = "SWITCHBOARD_BACKEND_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    token: String,
    /// Find the gateway nodes in this Redis (`redis://...`); `--gateway` is then the fallback
    /// while Redis lists none.
    #[arg(long, env = "SWITCHBOARD_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// The key prefix of the gateways' Redis records.
    #[arg(long, env = "SWITCHBOARD_REDIS_PREFIX", default_value = "switchboard")]
    redis_prefix: String,
    /// The folder to watch (not its subfolders).
    #[arg(long, env = "FILE_NOTIFIER_DIR")]
    dir: std::path::PathBuf,
    /// The hub whose sessions are told.
    #[arg(long, env = "FILE_NOTIFIER_HUB", default_value = "files")]
    hub: String,
    /// How long a closed file must stay unchanged before it is read (`250ms`, `1s`).
    #[arg(long, env = "FILE_NOTIFIER_SETTLE", default_value = "250ms", value_parser = parse_duration)]
    settle: Duration,
    /// The longest wait for a writer to finish; the file is then read as it is.
    #[arg(long, env = "FILE_NOTIFIER_MAX_WAIT", default_value = "30s", value_parser = parse_duration)]
    max_wait: Duration,
}

/// Watcher events waiting for the main loop. When it is full the watcher's thread waits and
/// the kernel queues the events; if the kernel's queue overflows too, the watcher says so and
/// we log that files may have been missed.
const EVENT_QUEUE: usize = 1024;

/// How much of a file is read: the MSH segment is at its start.
const HEAD_BYTES: u64 = 64 * 1024;

/// The message every session of the hub gets for one file.
#[derive(Serialize, Debug)]
struct Note<'a> {
    /// Always `file`, so a page can tell these from other messages of the hub.
    #[serde(rename = "type")]
    kind: &'static str,
    /// The file's name in the folder.
    name: &'a str,
    /// Its size when it was read.
    bytes: u64,
    /// For an HL7 v2 message: its type and control ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    hl7: Option<hl7::Header>,
    /// For a file that starts like HL7 but whose header cannot be read: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    malformed: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    let mut builder = Client::builder()
        .gateways(&args.gateways)
        .token(&args.token);
    if let Some(url) = &args.redis_url {
        builder = builder.redis_url(url).redis_prefix(&args.redis_prefix);
    }
    let client = builder.build().await.context("configuring the client")?;

    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("the folder {}", args.dir.display()))?;
    anyhow::ensure!(dir.is_dir(), "{} is not a folder", dir.display());
    let (tx, mut events) = mpsc::channel(EVENT_QUEUE);
    // notify calls this on its own thread (not the runtime's), where blocking is fine.
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = tx.blocking_send(event);
    })
    .context("starting the folder watcher")?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    println!("file_notifier: watching {} hub={}", dir.display(), args.hub);

    let mut arrivals = Arrivals::new(args.settle, args.max_wait);
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        let next = arrivals.next_due();
        tokio::select! {
            event = events.recv() => match event {
                Some(Ok(event)) => {
                    if event.need_rescan() {
                        tracing::warn!("file events were lost (the kernel's queue overflowed); some files may not be announced");
                    }
                    if event.kind.is_remove() && event.paths.contains(&dir) {
                        anyhow::bail!("the folder {} was removed", dir.display());
                    }
                    arrivals.observe(&event, std::time::Instant::now());
                }
                Some(Err(e)) => tracing::warn!(error = %e, "folder watcher error"),
                None => anyhow::bail!("the folder watcher stopped"),
            },
            // Announced one at a time, in the order the files arrived.
            () = tokio::time::sleep_until(next.unwrap_or_else(std::time::Instant::now).into()), if next.is_some() => {
                for arrival in arrivals.take_due(std::time::Instant::now()) {
                    if !arrival.settled {
                        tracing::warn!(file = %arrival.path.display(), "still being written after --max-wait; announced as it is now");
                    }
                    announce(&client, &args.hub, &arrival.path).await;
                }
            }
            _ = &mut shutdown => return Ok(()),
        }
    }
}

/// Reads the start of a new file and tells the hub about it. Problems are logged, never
/// returned: one bad file must not stop the announcements of the next.
async fn announce(client: &Client, hub: &str, path: &Path) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (bytes, head) = match read_head(path).await {
        Ok(Some(read)) => read,
        Ok(None) => {
            tracing::debug!(file = %name, "not a regular file; skipped");
            return;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(file = %name, "gone before it could be read; skipped");
            return;
        }
        Err(e) => {
            tracing::error!(file = %name, error = %e, "cannot read the file; skipped");
            return;
        }
    };
    let mut note = Note {
        kind: "file",
        name: &name,
        bytes,
        hl7: None,
        malformed: None,
    };
    match hl7::parse(&head) {
        Ok(Some(header)) => {
            tracing::info!(file = %name, message_type = %header.message_type, control_id = %header.control_id, "HL7 message arrived");
            note.hl7 = Some(header);
        }
        Ok(None) => tracing::info!(file = %name, bytes, "file arrived"),
        Err(e) => {
            tracing::error!(file = %name, error = %e, "malformed HL7 file; announced as malformed");
            note.malformed = Some(e.to_string());
        }
    }
    let text = serde_json::to_string(&note).expect("a note is always valid JSON");
    match client.publish(Target::hub(hub), text).await {
        Ok(d) => {
            tracing::info!(file = %name, sessions = d.queued, "announced");
            if d.refused > 0 || !d.unreachable_nodes.is_empty() {
                tracing::warn!(file = %name, refused = d.refused, unreachable = ?d.unreachable_nodes,
                    "some sessions were not told");
            }
        }
        Err(e) => tracing::error!(file = %name, error = %e, "could not announce the file"),
    }
}

/// A regular file's size and its first [`HEAD_BYTES`] bytes; `None` for anything else (a
/// folder, or a named pipe, which would block an open). Read on a blocking thread.
async fn read_head(path: &Path) -> std::io::Result<Option<(u64, Vec<u8>)>> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let meta = std::fs::metadata(&path)?;
        if !meta.is_file() {
            return Ok(None);
        }
        let mut head = Vec::with_capacity(meta.len().min(HEAD_BYTES) as usize);
        std::fs::File::open(&path)?
            .take(HEAD_BYTES)
            .read_to_end(&mut head)?;
        Ok(Some((meta.len(), head)))
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like 5s, 500ms or 2m");
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

/// Files seen arriving in the folder, until each is complete. Pure bookkeeping over watcher
/// events and instants, so it is tested without a file system or a clock.
mod arrivals {
    use std::{
        collections::HashMap,
        path::{Path, PathBuf},
        time::{Duration, Instant},
    };

    use notify::{
        event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode},
        Event, EventKind,
    };

    /// Whether the platform reports a written file being closed (inotify does). Elsewhere a
    /// file counts as complete once it stayed unchanged for the settle time.
    const CLOSE_EVENTS: bool = cfg!(any(target_os = "linux", target_os = "android"));

    /// Files being written at once, at most. Past that a new file is logged and not announced:
    /// the bookkeeping stays bounded whatever lands in the folder.
    const MAX_PENDING: usize = 10_000;

    /// A file that arrived and is not announced yet.
    #[derive(Debug)]
    struct Pending {
        first_seen: Instant,
        last_change: Instant,
        /// Its writer closed it (or it was moved in whole) and it has not changed since.
        closed: bool,
    }

    /// A file that is due to be announced.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Arrival {
        pub path: PathBuf,
        /// False when `--max-wait` ran out while it was still being written.
        pub settled: bool,
    }

    pub struct Arrivals {
        settle: Duration,
        max_wait: Duration,
        pending: HashMap<PathBuf, Pending>,
    }

    impl Arrivals {
        pub fn new(settle: Duration, max_wait: Duration) -> Self {
            Arrivals {
                settle,
                max_wait,
                pending: HashMap::new(),
            }
        }

        /// Takes one watcher event into account.
        pub fn observe(&mut self, event: &Event, now: Instant) {
            match &event.kind {
                EventKind::Create(CreateKind::Folder) => {}
                EventKind::Create(_) => {
                    for p in &event.paths {
                        self.start(p, now, !CLOSE_EVENTS);
                    }
                }
                // Moved in: whoever wrote it is done.
                EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                    for p in &event.paths {
                        self.start(p, now, true);
                    }
                }
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                    if let [from, to] = &event.paths[..] {
                        self.pending.remove(from);
                        self.start(to, now, true);
                    }
                }
                EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => {
                    for p in &event.paths {
                        self.pending.remove(p);
                    }
                }
                EventKind::Modify(ModifyKind::Name(_) | ModifyKind::Metadata(_)) => {}
                EventKind::Modify(_) => self.touch(&event.paths, now, !CLOSE_EVENTS),
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                    self.touch(&event.paths, now, true)
                }
                _ => {}
            }
        }

        /// When the next file is due, if any file is pending.
        pub fn next_due(&self) -> Option<Instant> {
            self.pending.values().map(|f| self.due(f)).min()
        }

        /// Removes and returns the files due at `now`, in the order they arrived.
        pub fn take_due(&mut self, now: Instant) -> Vec<Arrival> {
            let mut due: Vec<(Instant, PathBuf)> = self
                .pending
                .iter()
                .filter(|(_, f)| self.due(f) <= now)
                .map(|(p, f)| (f.first_seen, p.clone()))
                .collect();
            due.sort();
            due.into_iter()
                .map(|(_, path)| {
                    let f = self.pending.remove(&path).expect("listed above");
                    Arrival {
                        settled: f.closed && f.last_change + self.settle <= now,
                        path,
                    }
                })
                .collect()
        }

        fn due(&self, f: &Pending) -> Instant {
            let deadline = f.first_seen + self.max_wait;
            if f.closed {
                deadline.min(f.last_change + self.settle)
            } else {
                deadline
            }
        }

        fn start(&mut self, path: &Path, now: Instant, complete: bool) {
            let hidden = path
                .file_name()
                .is_none_or(|n| n.to_string_lossy().starts_with('.'));
            if hidden {
                return;
            }
            if self.pending.len() >= MAX_PENDING && !self.pending.contains_key(path) {
                tracing::warn!(file = %path.display(), "too many files arriving at once; not announced");
                return;
            }
            let f = self.pending.entry(path.to_owned()).or_insert(Pending {
                first_seen: now,
                last_change: now,
                closed: false,
            });
            f.last_change = now;
            f.closed = complete;
        }

        /// A change to pending files; changes to other files (already there, or announced)
        /// are not arrivals.
        fn touch(&mut self, paths: &[PathBuf], now: Instant, closed: bool) {
            for p in paths {
                if let Some(f) = self.pending.get_mut(p) {
                    f.last_change = now;
                    f.closed = closed;
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use notify::event::DataChange;

        use super::*;

        const SETTLE: Duration = Duration::from_millis(250);
        const MAX_WAIT: Duration = Duration::from_secs(30);

        fn ev(kind: EventKind, paths: &[&str]) -> Event {
            paths
                .iter()
                .fold(Event::new(kind), |e, p| e.add_path(PathBuf::from(p)))
        }
        fn created(p: &str) -> Event {
            ev(EventKind::Create(CreateKind::File), &[p])
        }
        fn written(p: &str) -> Event {
            ev(EventKind::Modify(ModifyKind::Data(DataChange::Any)), &[p])
        }
        fn closed(p: &str) -> Event {
            ev(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &[p],
            )
        }
        fn paths(a: Vec<Arrival>) -> Vec<String> {
            a.into_iter()
                .map(|a| a.path.display().to_string())
                .collect()
        }

        #[test]
        fn a_closed_file_is_due_once_it_stayed_unchanged_for_the_settle_time() {
            let t0 = Instant::now();
            let mut a = Arrivals::new(SETTLE, MAX_WAIT);
            a.observe(&created("/in/a.hl7"), t0);
            a.observe(&written("/in/a.hl7"), t0);
            a.observe(&closed("/in/a.hl7"), t0 + Duration::from_millis(10));
            assert_eq!(a.next_due(), Some(t0 + Duration::from_millis(260)));
            assert!(a.take_due(t0 + Duration::from_millis(259)).is_empty());
            let due = a.take_due(t0 + Duration::from_millis(260));
            assert_eq!(
                due,
                [Arrival {
                    path: "/in/a.hl7".into(),
                    settled: true
                }]
            );
            assert_eq!(a.next_due(), None, "announced once");
            a.observe(&written("/in/a.hl7"), t0 + Duration::from_secs(2));
            a.observe(&closed("/in/a.hl7"), t0 + Duration::from_secs(2));
            assert_eq!(
                a.next_due(),
                None,
                "a change to an announced file is no arrival"
            );
        }

        #[test]
        #[cfg(any(target_os = "linux", target_os = "android"))]
        fn a_file_reopened_and_written_again_waits_for_its_next_close() {
            let t0 = Instant::now();
            let ms = Duration::from_millis;
            let mut a = Arrivals::new(SETTLE, MAX_WAIT);
            a.observe(&created("/in/a.hl7"), t0);
            a.observe(&written("/in/a.hl7"), t0);
            assert!(a.take_due(t0 + ms(5000)).is_empty(), "still open: not due");
            a.observe(&closed("/in/a.hl7"), t0 + ms(5010));
            a.observe(&written("/in/a.hl7"), t0 + ms(5100));
            assert!(a.take_due(t0 + ms(5500)).is_empty(), "open again: not due");
            a.observe(&closed("/in/a.hl7"), t0 + ms(6000));
            assert_eq!(paths(a.take_due(t0 + ms(6250))), ["/in/a.hl7"]);
        }

        #[test]
        fn a_file_moved_in_is_complete_and_its_hidden_temporary_name_is_ignored() {
            let t0 = Instant::now();
            let mut a = Arrivals::new(SETTLE, MAX_WAIT);
            a.observe(&created("/in/.a.hl7.tmp"), t0);
            a.observe(&closed("/in/.a.hl7.tmp"), t0);
            assert_eq!(a.next_due(), None);
            let rename = |mode| ModifyKind::Name(mode);
            a.observe(
                &ev(
                    EventKind::Modify(rename(RenameMode::From)),
                    &["/in/.a.hl7.tmp"],
                ),
                t0,
            );
            a.observe(
                &ev(EventKind::Modify(rename(RenameMode::To)), &["/in/a.hl7"]),
                t0,
            );
            a.observe(
                &ev(
                    EventKind::Modify(rename(RenameMode::Both)),
                    &["/in/.a.hl7.tmp", "/in/a.hl7"],
                ),
                t0,
            );
            assert_eq!(paths(a.take_due(t0 + SETTLE)), ["/in/a.hl7"]);
        }

        #[test]
        fn a_file_still_written_at_max_wait_is_due_unsettled_and_files_come_in_arrival_order() {
            let t0 = Instant::now();
            let s = Duration::from_secs;
            let mut a = Arrivals::new(SETTLE, MAX_WAIT);
            a.observe(&created("/in/slow.log"), t0);
            a.observe(&created("/in/quick.hl7"), t0 + s(1));
            for i in 0..40 {
                a.observe(&written("/in/slow.log"), t0 + s(i));
                a.observe(&closed("/in/slow.log"), t0 + s(i));
            }
            a.observe(&closed("/in/quick.hl7"), t0 + s(1));
            assert_eq!(a.next_due(), Some(t0 + s(1) + SETTLE));
            assert_eq!(paths(a.take_due(t0 + s(2))), ["/in/quick.hl7"]);
            assert_eq!(a.next_due(), Some(t0 + MAX_WAIT));
            let due = a.take_due(t0 + MAX_WAIT);
            assert_eq!(
                due,
                [Arrival {
                    path: "/in/slow.log".into(),
                    settled: false
                }]
            );
        }

        #[test]
        fn a_removed_file_is_forgotten_and_folders_are_not_files() {
            let t0 = Instant::now();
            let mut a = Arrivals::new(SETTLE, MAX_WAIT);
            a.observe(&created("/in/gone.hl7"), t0);
            a.observe(
                &ev(
                    EventKind::Remove(notify::event::RemoveKind::File),
                    &["/in/gone.hl7"],
                ),
                t0,
            );
            a.observe(&ev(EventKind::Create(CreateKind::Folder), &["/in/sub"]), t0);
            assert_eq!(a.next_due(), None);
        }
    }
}

/// The little of HL7 v2 the notifications need: the message type and control ID in the MSH
/// (message header) segment.
mod hl7 {
    use serde::Serialize;

    /// What a notification says about an HL7 v2 message.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
    pub struct Header {
        /// MSH-9, its components joined by `^` whatever the message's own component
        /// separator, trailing empty ones dropped: `ADT^A01`, `ORU^R01^ORU_R01`.
        pub message_type: String,
        /// MSH-10, the message control ID, as written.
        pub control_id: String,
    }

    /// Why a file that starts like HL7 has no readable header.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum Malformed {
        #[error("MSH is not followed by a field separator")]
        NoFieldSeparator,
        #[error("MSH has {0} fields: the message type and control ID are fields 9 and 10")]
        TooFewFields(usize),
        #[error("MSH-2 (the encoding characters) is empty")]
        NoEncodingCharacters,
        #[error("MSH-9 (the message type) is empty")]
        NoMessageType,
        #[error("MSH-10 (the message control ID) is empty")]
        NoControlId,
        #[error("a batch header without an MSH segment")]
        NoMsh,
    }

    /// Reads the header of the HL7 v2 message at the start of `content` (a file's first
    /// bytes); `Ok(None)` when the content is not HL7 v2 at all.
    ///
    /// Segments end with `\r` (the standard), `\n` or `\r\n`. Tolerated before the first
    /// segment: a UTF-8 byte order mark, an MLLP start-of-block byte and blank lines; before
    /// the MSH segment, the `FHS` and `BHS` segments of a batch file. Bytes that are not UTF-8
    /// (many senders use Latin-1) are replaced, not refused. Escape sequences are not decoded.
    pub fn parse(content: &[u8]) -> Result<Option<Header>, Malformed> {
        let text = String::from_utf8_lossy(content);
        let text = text.trim_start_matches(['\u{feff}', '\u{0b}', ' ', '\t', '\r', '\n']);
        let mut segments = text.split(['\r', '\n']).filter(|s| !s.is_empty());
        let first = segments.next().unwrap_or("");
        let msh = if is_segment(first, "MSH") {
            first
        } else if is_segment(first, "FHS") || is_segment(first, "BHS") {
            segments
                .find(|s| is_segment(s, "MSH"))
                .ok_or(Malformed::NoMsh)?
        } else {
            return Ok(None);
        };
        // An MLLP end-of-block byte may trail the last segment.
        let msh = msh.trim_end_matches('\u{1c}');
        let separator = msh[3..].chars().next().ok_or(Malformed::NoFieldSeparator)?;
        // fields[0] is "MSH" and stands for MSH-1, the separator itself: MSH-n is fields[n - 1].
        let fields: Vec<&str> = msh.split(separator).collect();
        if fields.len() < 10 {
            return Err(Malformed::TooFewFields(fields.len()));
        }
        let component = fields[1]
            .chars()
            .next()
            .ok_or(Malformed::NoEncodingCharacters)?;
        let mut parts: Vec<&str> = fields[8].split(component).collect();
        while parts.last() == Some(&"") {
            parts.pop();
        }
        if parts.is_empty() {
            return Err(Malformed::NoMessageType);
        }
        let control_id = fields[9];
        if control_id.is_empty() {
            return Err(Malformed::NoControlId);
        }
        Ok(Some(Header {
            message_type: parts.join("^"),
            control_id: control_id.to_owned(),
        }))
    }

    /// Whether `segment` is a `name` segment: the name, then a separator or nothing. A
    /// separator is neither a letter, a digit nor white space, so text that merely starts
    /// with the letters (`MSHIP manifest`, `MSH is ...`) is not HL7.
    fn is_segment(segment: &str, name: &str) -> bool {
        segment.strip_prefix(name).is_some_and(|rest| {
            rest.chars()
                .next()
                .is_none_or(|c| !c.is_alphanumeric() && !c.is_whitespace())
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const ADT: &str = "MSH|^~\\&|ADT1|GOOD HEALTH HOSPITAL|GHH LAB|GOOD HEALTH HOSPITAL|20240101120000||ADT^A01|MSG00001|P|2.5\r\
                           EVN|A01|20240101120000\r\
                           PID|1||PATID1234^^^GHH^MR||EVERYWOMAN^EVE^E||19700101|F\r";

        fn header(message_type: &str, control_id: &str) -> Option<Header> {
            Some(Header {
                message_type: message_type.into(),
                control_id: control_id.into(),
            })
        }

        #[test]
        fn the_message_type_and_control_id_come_from_msh_9_and_10() {
            assert_eq!(parse(ADT.as_bytes()), Ok(header("ADT^A01", "MSG00001")));
        }

        #[test]
        fn segments_may_end_with_cr_lf_or_crlf() {
            for sep in ["\n", "\r\n", "\r"] {
                let text = ADT.replace('\r', sep);
                assert_eq!(
                    parse(text.as_bytes()),
                    Ok(header("ADT^A01", "MSG00001")),
                    "{sep:?}"
                );
            }
            let one_segment = "MSH|^~\\&|A|B|C|D|20240101||ORU^R01|X1";
            assert_eq!(parse(one_segment.as_bytes()), Ok(header("ORU^R01", "X1")));
        }

        #[test]
        fn the_separators_are_the_messages_own_and_components_are_joined_with_a_caret() {
            let odd = "MSH#$~\\&#A#B#C#D#20240101##ORU$R01$ORU_R01#CTRL-7#P#2.5\r";
            assert_eq!(
                parse(odd.as_bytes()),
                Ok(header("ORU^R01^ORU_R01", "CTRL-7"))
            );
            let trailing = "MSH|^~\\&|A|B|C|D|20240101||ADT^A04^^|42|P|2.3\r";
            assert_eq!(parse(trailing.as_bytes()), Ok(header("ADT^A04", "42")));
        }

        #[test]
        fn a_bom_mllp_framing_blank_lines_and_batch_headers_are_tolerated() {
            let framed = format!("\u{feff}\u{0b}\r\n{ADT}\u{1c}\r");
            assert_eq!(parse(framed.as_bytes()), Ok(header("ADT^A01", "MSG00001")));
            let batch = format!("FHS|^~\\&|ADT1\rBHS|^~\\&|ADT1\r{ADT}BTS|1\rFTS|1\r");
            assert_eq!(parse(batch.as_bytes()), Ok(header("ADT^A01", "MSG00001")));
            assert_eq!(
                parse(b"FHS|^~\\&|ADT1\rBHS|^~\\&|ADT1\rBTS|0\r"),
                Err(Malformed::NoMsh)
            );
        }

        #[test]
        fn bytes_that_are_not_utf8_do_not_hide_the_header() {
            let mut latin1 = ADT.as_bytes().to_vec();
            latin1.extend_from_slice(b"NTE|1||Stra\xdfe\r");
            assert_eq!(parse(&latin1), Ok(header("ADT^A01", "MSG00001")));
        }

        #[test]
        fn other_content_is_not_hl7() {
            for other in [
                &b""[..],
                b"\r\n",
                b"%PDF-1.7\n",
                b"hello",
                b"MSHIP manifest\n",
                b"MSH is a segment\n",
                b"\x89PNG\r\n",
            ] {
                assert_eq!(
                    parse(other),
                    Ok(None),
                    "{:?}",
                    String::from_utf8_lossy(other)
                );
            }
        }

        #[test]
        fn a_header_without_its_fields_is_malformed() {
            assert_eq!(parse(b"MSH\rPID|1\r"), Err(Malformed::NoFieldSeparator));
            assert_eq!(
                parse(b"MSH|^~\\&|LAB|HOSPITAL\rPID|1||12345\r"),
                Err(Malformed::TooFewFields(4))
            );
            assert_eq!(
                parse(b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01\r"),
                Err(Malformed::TooFewFields(9))
            );
            assert_eq!(
                parse(b"MSH|||A|B|C|D|20240101||ADT^A01|1\r"),
                Err(Malformed::NoEncodingCharacters)
            );
            assert_eq!(
                parse(b"MSH|^~\\&|A|B|C|D|20240101||^^|1\r"),
                Err(Malformed::NoMessageType)
            );
            assert_eq!(
                parse(b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01||P\r"),
                Err(Malformed::NoControlId)
            );
        }

        #[test]
        fn the_sample_files_parse_as_the_end_to_end_tests_expect() {
            assert_eq!(
                parse(include_bytes!("../../tests/data/adt_a01.hl7")),
                Ok(header("ADT^A01", "MSG00001"))
            );
            assert_eq!(
                parse(include_bytes!("../../tests/data/malformed.hl7")),
                Err(Malformed::TooFewFields(4))
            );
        }
    }
}
