//! Build progress for people and for CI: one line per step
//! (`[3/6] INSTALL openssh-server curl  MISS  5.2s`), the step's output
//! below it (the last lines on a TTY, all of it with `plain`), a summary
//! at the end; or one JSON event per line with `json`.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde_json::{json, Value};

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

    fn event(&self, v: Value) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }

    /// A free-form note (`using docker 20.10.24 (API 1.41)`).
    pub fn note(&self, kind: &str, msg: &str) {
        match self.mode {
            ProgressMode::Json => self.event(json!({"event": kind, "message": msg})),
            ProgressMode::Quiet => {}
            _ => eprintln!("{msg}"),
        }
    }

    pub fn warn(&self, msg: &str) {
        if self.is_json() {
            self.event(json!({"event": "warning", "message": msg}));
        } else {
            eprintln!("warning: {msg}");
        }
    }

    pub fn step_start(&mut self, n: usize, total: usize, text: &str, location: &str) {
        self.tail.clear();
        self.shown = 0;
        match self.mode {
            ProgressMode::Json => self.event(json!({"event": "step-start", "step": n, "total": total, "instruction": text, "location": location})),
            ProgressMode::Quiet => {}
            _ => eprintln!("[{n}/{total}] {text}"),
        }
    }

    /// One line of a running step's output. A line that redraws itself
    /// with carriage returns (dpkg's "Reading database ... 5%") shows as
    /// a terminal would leave it: its last part.
    pub fn output(&mut self, n: usize, line: &str) {
        let line = as_drawn(line);
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_string());
        match self.mode {
            ProgressMode::Json => self.event(json!({"event": "output", "step": n, "line": line})),
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
            self.event(json!({
                "event": "step-done", "step": n, "total": total, "instruction": text,
                "status": status, "seconds": elapsed.as_secs_f64(), "key": key,
                "layer": layer.map(|(d, s)| json!({"digest": d, "size": s})),
                "notes": detail,
            }));
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
            self.event(json!({
                "event": "step-diff", "step": n, "source": source,
                "read_bytes": read_bytes, "layer_uncompressed_bytes": layer_bytes,
            }));
        }
    }

    pub fn summary(&self, v: Value, text: &str) {
        match self.mode {
            ProgressMode::Json => {
                let mut v = v;
                v["event"] = json!("done");
                self.event(v);
            }
            ProgressMode::Quiet => {}
            _ => eprintln!("{text}"),
        }
    }
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
