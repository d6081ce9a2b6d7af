//! Finding the step containers of runs that died without cleaning up
//! (`kill -9`, a power cut).
//!
//! A container is a leftover when it carries `dev.tplbuild.step`, was made on
//! this host (`dev.tplbuild.host`), and the process in `dev.tplbuild.pid` is
//! gone, or is a newer process that reuses the pid (it started after the
//! container's `dev.tplbuild.started`). Another host's containers on a shared
//! remote engine are never touched: their pids mean nothing here.

use std::collections::HashMap;

use bollard::query_parameters::ListContainersOptions;

use super::{Container, Engine, EngineError, LABEL_HOST, LABEL_PID, LABEL_STARTED, LABEL_STEP};

/// /proc reports process start times in USER_HZ ticks, which Linux fixes
/// at 100 for user space on every architecture.
const USER_HZ: u64 = 100;

/// Start times are rounded to seconds on both sides of the comparison.
const CLOCK_SLACK_SECS: u64 = 2;

impl Engine {
    /// Remove tplbuild's step containers left by runs that no longer live
    /// (see the module doc for the rule). Returns how many were removed.
    pub async fn cleanup_leftovers(&self) -> Result<usize, EngineError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![LABEL_STEP.to_string()],
            )])),
            ..Default::default()
        };
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(EngineError::api("listing tplbuild's step containers"))?;
        let here = host_name();
        let mut removed = 0;
        for summary in list {
            let (Some(id), Some(labels)) = (summary.id, summary.labels) else {
                continue;
            };
            if !is_leftover(&labels, &here, process_start) {
                continue;
            }
            tracing::info!(
                container = id,
                pid = labels.get(LABEL_PID),
                "removing a leftover step container"
            );
            self.remove(&Container { id }).await?;
            removed += 1;
        }
        Ok(removed)
    }
}

/// This host's name, as the container label records it.
pub(super) fn host_name() -> String {
    fs_err::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `process_start(pid)`: `None` if no such process, else its start time in
/// unix seconds (`Some(0)` if unknown).
fn is_leftover(
    labels: &HashMap<String, String>,
    here: &str,
    process_start: impl Fn(u32) -> Option<u64>,
) -> bool {
    if labels.get(LABEL_STEP).is_none() {
        return false;
    }
    if labels.get(LABEL_HOST).is_some_and(|h| h != here) {
        return false;
    }
    // Every run writes a pid; a step container without one is broken.
    let Some(pid) = labels.get(LABEL_PID).and_then(|p| p.parse::<u32>().ok()) else {
        return true;
    };
    let started = labels
        .get(LABEL_STARTED)
        .and_then(|s| s.parse::<u64>().ok());
    match (process_start(pid), started) {
        (None, _) => true,
        (Some(proc_start), Some(started)) => proc_start > started + CLOCK_SLACK_SECS,
        (Some(_), None) => false,
    }
}

/// When process `pid` started, in unix seconds; `None` if it does not exist.
fn process_start(pid: u32) -> Option<u64> {
    let stat = fs_err::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(parse_start(&stat, &boot_time().unwrap_or(0)).unwrap_or(0))
}

fn boot_time() -> Option<u64> {
    let stat = fs_err::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Field 22 of /proc/PID/stat (start time in ticks after boot), counted
/// after the `(comm)` field, which may itself contain spaces and `)`.
fn parse_start(stat: &str, boot: &u64) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    Some(boot + ticks / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn ours(pid: &str, started: &str) -> HashMap<String, String> {
        labels(&[
            (LABEL_STEP, "1"),
            (LABEL_PID, pid),
            (LABEL_STARTED, started),
            (LABEL_HOST, "builder1"),
        ])
    }

    #[test]
    fn container_of_a_dead_pid_is_a_leftover() {
        assert!(is_leftover(&ours("4242", "1000"), "builder1", |_| None));
    }

    #[test]
    fn container_of_a_live_run_is_kept() {
        assert!(!is_leftover(&ours("4242", "1000"), "builder1", |_| Some(
            990
        )));
    }

    #[test]
    fn container_whose_pid_was_reused_by_a_newer_process_is_a_leftover() {
        assert!(is_leftover(&ours("4242", "1000"), "builder1", |_| Some(
            5000
        )));
    }

    #[test]
    fn another_hosts_container_on_a_shared_engine_is_never_touched() {
        assert!(!is_leftover(&ours("4242", "1000"), "builder2", |_| None));
    }

    #[test]
    fn container_without_tplbuild_step_label_is_never_touched() {
        let l = labels(&[(LABEL_PID, "4242")]);
        assert!(!is_leftover(&l, "builder1", |_| None));
    }

    #[test]
    fn stat_start_time_is_read_after_a_comm_with_spaces_and_parens() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime cutime cstime priority nice threads
        // itrealvalue starttime ...
        let stat = "77 (a) b) c) S 1 77 77 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 0 0";
        assert_eq!(parse_start(stat, &1_000), Some(1_000 + 123));
    }

    #[test]
    fn our_own_process_has_a_start_time_before_now() {
        let start = process_start(std::process::id()).expect("we exist");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            start > 1_600_000_000 && start <= now + 1,
            "{start} vs {now}"
        );
    }
}
