//! Build progress for people and for CI: one line per step
//! (`[3/6] INSTALL openssh-server curl  MISS  5.2s`), the step's output
//! below it (the last lines on a TTY, all of it with `plain`), a summary
//! at the end; or one JSON event per line with `json`.
//!
//! The JSON events are a contract with CI scripts, documented in
//! `docs/progress-json.md`: every event has `time` (RFC 3339, UTC) and
//! `event`; fields are typed (`step`, `status`, `duration_ms`, `bytes`,
//! `path`, `type`), never sentences to parse; and every run ends with
//! exactly one `result` event.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde_json::{json, Value};

use crate::engine::OutputStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// `tty` on a terminal, else `plain`.
    Auto,
    /// Every line of step output, no cursor tricks.
    Plain,
    /// One JSON object per line on stdout.
    Json,
    /// Step lines only; output folded to its last lines.
    Tty,
    /// Nothing but warnings and errors (`-q`).
    Quiet,
}

/// Lines of step output kept for an error report.
pub const TAIL_LINES: usize = 30;

pub struct Progress {
    mode: ProgressMode,
    tail: VecDeque<String>,
    shown: usize,
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Tty,
            ProgressMode::Auto => ProgressMode::Plain,
            m => m,
        };
        Progress {
            mode,
            tail: VecDeque::new(),
            shown: 0,
        }
    }

    /// Another reporter in the same mode, with its own output tail (for
    /// work whose lines are collected rather than shown).
    pub fn fork(&self) -> Progress {
        Progress {
            mode: self.mode,
            tail: VecDeque::new(),
            shown: 0,
        }
    }

    pub fn is_json(&self) -> bool {
        self.mode == ProgressMode::Json
    }

    /// One JSON event: `time` and `event` first, then `fields` (an object).
    fn event(&self, kind: &str, fields: Value) {
        let mut v = serde_json::Map::new();
        v.insert("time".into(), json!(now_rfc3339()));
        v.insert("event".into(), json!(kind));
        if let Value::Object(f) = fields {
            v.extend(f);
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", Value::Object(v));
        let _ = out.flush();
    }

    /// A free-form note (`using docker 20.10.24 (API 1.41)`).
    pub fn note(&self, kind: &str, msg: &str) {
        self.fact(kind, msg, json!({}));
    }

    /// Something that happened, for people as `msg` and for CI as typed
    /// `fields` (merged into the event next to `message`).
    pub fn fact(&self, kind: &str, msg: &str, fields: Value) {
        match self.mode {
            ProgressMode::Json => {
                let mut f = json!({ "message": msg });
                if let (Value::Object(a), Value::Object(b)) = (&mut f, fields) {
                    a.extend(b);
                }
                self.event(kind, f)
            }
            ProgressMode::Quiet => {}
            _ => eprintln!("{msg}"),
        }
    }

    pub fn warn(&self, msg: &str) {
        if self.is_json() {
            self.event("warning", json!({ "message": msg }));
        } else {
            eprintln!("warning: {msg}");
        }
    }

    /// A step begins. `runs` is false for a step taken from a cache: people
    /// then see only its one `[n/total] … HIT` line.
    pub fn step_start(&mut self, n: usize, total: usize, text: &str, location: &str, runs: bool) {
        self.tail.clear();
        self.shown = 0;
        match self.mode {
            ProgressMode::Json => self.event(
                "step-start",
                json!({"step": n, "total": total, "instruction": text, "location": location}),
            ),
            ProgressMode::Quiet => {}
            _ if runs => eprintln!("[{n}/{total}] {text}"),
            _ => {}
        }
    }

    /// One line of a running step's output. A line that redraws itself
    /// with carriage returns (dpkg's "Reading database ... 5%") shows as
    /// a terminal would leave it: its last part.
    pub fn output(&mut self, n: usize, stream: OutputStream, line: &str) {
        let line = as_drawn(line);
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_string());
        match self.mode {
            ProgressMode::Json => {
                self.event("output", json!({"step": n, "stream": stream, "line": line}))
            }
            ProgressMode::Plain => eprintln!("      {line}"),
            ProgressMode::Quiet => {}
            _ => {
                // Folded: show a line now and then so long apt runs look alive.
                self.shown += 1;
                if self.shown % 20 == 1 {
                    let short: String = line.chars().take(100).collect();
                    eprintln!("      {short}");
                }
            }
        }
    }

    /// The last lines of the current step's output.
    pub fn tail(&self) -> Vec<String> {
        self.tail.iter().cloned().collect()
    }

    #[allow(clippy::too_many_arguments)]
    pub fn step_done(
        &self,
        n: usize,
        total: usize,
        text: &str,
        status: &str,
        elapsed: Duration,
        key: &str,
        layer: Option<(&str, u64)>,
        detail: &[String],
    ) {
        if self.is_json() {
            self.event(
                "step-done",
                json!({
                    "step": n, "total": total, "instruction": text,
                    "status": status, "duration_ms": elapsed.as_millis() as u64, "key": key,
                    "layer": layer.map(|(d, s)| json!({"digest": d, "bytes": s})),
                    "notes": detail,
                }),
            );
        } else if self.mode == ProgressMode::Quiet {
        } else {
            eprintln!(
                "[{n}/{total}] {text}  {status}  {:.1}s",
                elapsed.as_secs_f64()
            );
            for d in detail {
                eprintln!("      {d}");
            }
        }
    }

    /// Where a step's diff came from and what reading it cost: for CI and
    /// the benchmarks (JSON only; the text output names the source once).
    pub fn step_diff(&self, n: usize, source: &str, read_bytes: u64, layer_bytes: u64) {
        if self.is_json() {
            self.event(
                "step-diff",
                json!({
                    "step": n, "source": source,
                    "read_bytes": read_bytes, "layer_uncompressed_bytes": layer_bytes,
                }),
            );
        }
    }

    /// A step's command failed: where, its exit code and its last lines.
    /// People saw every line already in `plain` mode, so they get the tail
    /// again only where output was folded.
    pub fn step_failed(&self, n: usize, location: &str, text: &str, code: i64, tail: &[String]) {
        match self.mode {
            ProgressMode::Json => self.event(
                "step-failed",
                json!({"step": n, "location": location, "instruction": text, "exit_code": code, "tail": tail}),
            ),
            ProgressMode::Plain => {}
            _ => {
                eprintln!("--- last {} lines of output ---", tail.len());
                for l in tail {
                    eprintln!("  {l}");
                }
                eprintln!("---");
            }
        }
    }

    pub fn summary(&self, v: Value, text: &str) {
        match self.mode {
            ProgressMode::Json => self.event("done", v),
            ProgressMode::Quiet => {}
            _ => eprintln!("{text}"),
        }
    }

    /// The last event of a run (JSON only): the exit code, and what came
    /// of it — `fields` holds the digest or the error.
    pub fn result(&self, exit_code: u8, fields: Value) {
        if self.is_json() {
            let mut f = json!({ "exit_code": exit_code });
            if let (Value::Object(a), Value::Object(b)) = (&mut f, fields) {
                a.extend(b);
            }
            self.event("result", f);
        }
    }
}

/// Now, as RFC 3339 in UTC with milliseconds: `2026-12-01T22:25:38.010Z`
/// (always three digits, so the lines sort and align).
fn now_rfc3339() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// What a terminal shows of a line redrawn with `\r`: its last non-empty part.
pub fn as_drawn(line: &str) -> &str {
    line.rsplit('\r')
        .find(|part| !part.is_empty())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_times_are_rfc3339_utc_with_milliseconds() {
        let t = now_rfc3339();
        assert_eq!(t.len(), "2026-12-01T22:25:38.010Z".len(), "{t}");
        assert!(
            time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).is_ok(),
            "{t}"
        );
    }

    #[test]
    fn a_redrawn_line_shows_its_last_part() {
        assert_eq!(
            as_drawn(
                "(Reading database ... \r(Reading database ... 5%\r(Reading database ... 100%"
            ),
            "(Reading database ... 100%"
        );
        assert_eq!(as_drawn("done\r"), "done");
        assert_eq!(as_drawn("plain line"), "plain line");
        assert_eq!(as_drawn("\r"), "");
    }
}
