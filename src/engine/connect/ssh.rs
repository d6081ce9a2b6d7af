//! Reaching an engine over ssh the way the Docker CLI does: run the user's
//! own `ssh` binary, so that `~/.ssh/config`, known hosts, ProxyJump and
//! the agent all apply, and speak HTTP over it.
//!
//! - `ssh://[user@]host[:port]` (Docker's form): every connection is an
//!   `ssh … docker system dial-stdio` child whose stdin/stdout carry the
//!   HTTP bytes ([`DialStdio`]), as `docker -H ssh://…` does.
//! - `ssh://[user@]host[:port]/path/engine.sock` (Podman's form, e.g.
//!   `CONTAINER_HOST`; Podman has no dial-stdio): one `ssh -N -L
//!   LOCAL.sock:/path/engine.sock` child forwards a socket in a private temp
//!   folder to the remote one ([`Tunnel`]). It needs neither a `docker` nor
//!   a `podman` CLI on the remote, only an sshd that allows it
//!   (`AllowStreamLocalForwarding`, on by default since OpenSSH 6.7).
//!
//! ssh runs with `BatchMode=yes`: tplbuild draws progress on the terminal
//! and may open several connections, so it never lets ssh prompt; keys come
//! from the agent or the ssh config. Each child is in a process group of
//! its own (Ctrl-C in the terminal must not cut the connection tplbuild
//! needs to remove its containers), is killed when its connection is
//! dropped, and gets SIGTERM if tplbuild dies. When ssh fails, its exit
//! status and stderr ("Permission denied (publickey)", "Connection
//! refused", "docker: command not found") are the error the user sees.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::oneshot;

use super::endpoint::SshTarget;

/// ssh's own limit for reaching the host, as the Docker CLI sets it.
const CONNECT_TIMEOUT_SECS: u32 = 30;
/// How much of ssh's stderr is kept for an error message.
const STDERR_KEEP: usize = 4096;

/// ssh failed: how it was run, how it ended and what it said.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{command}` {how}{}", said(stderr))]
pub struct SshFailed {
    pub command: String,
    pub how: String,
    pub stderr: String,
}

fn said(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

/// `ssh [options] [-l user] [-p port] -- host`, with `remote` after it.
fn command(target: &SshTarget, options: &[&str], remote: &[String]) -> (Command, String) {
    let mut args: Vec<String> = [
        "-o",
        &format!("ConnectTimeout={CONNECT_TIMEOUT_SECS}"),
        "-o",
        "BatchMode=yes",
        "-T",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(options.iter().map(|s| s.to_string()));
    if let Some(u) = &target.user {
        args.extend(["-l".into(), u.clone()]);
    }
    if let Some(p) = target.port {
        args.extend(["-p".into(), p.to_string()]);
    }
    args.extend(["--".into(), target.host.clone()]);
    args.extend(remote.iter().cloned());
    let shown = format!("ssh {}", args.join(" "));
    let mut cmd = Command::new("ssh");
    cmd.args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let parent = std::process::id();
    // The death signal fires when the thread that forked exits: connections
    // are made on the runtime's worker threads, which live as long as
    // tplbuild does (kill_on_drop covers the orderly ends).
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes two async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))?;
            // The parent may have died before the line above took effect.
            if rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32) != Some(parent) {
                return Err(io::Error::other("tplbuild exited"));
            }
            Ok(())
        });
    }
    (cmd, shown)
}

/// Keep the last [`STDERR_KEEP`] bytes of `stderr` in `sink` as they come.
fn collect_stderr(
    mut stderr: tokio::process::ChildStderr,
    sink: Arc<Mutex<String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let mut s = sink.lock().unwrap();
            s.push_str(&String::from_utf8_lossy(&buf[..n]));
            if s.len() > STDERR_KEEP {
                let cut = s.len() - STDERR_KEEP;
                let cut = (cut..s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(0);
                s.drain(..cut);
            }
        }
    })
}

fn how(status: ExitStatus) -> String {
    match status.code() {
        Some(c) => format!("exited with status {c}"),
        None => format!("ended: {status}"),
    }
}

/// The remote command: the remote `docker` CLI relays stdin/stdout to its
/// engine (the one its own DOCKER_HOST or context names).
const DIAL_STDIO: [&str; 3] = ["docker", "system", "dial-stdio"];

/// A connector: each connection is a fresh `ssh … docker system dial-stdio`.
#[derive(Clone)]
pub struct DialStdio {
    target: Arc<SshTarget>,
}

impl DialStdio {
    pub fn new(target: SshTarget) -> Self {
        DialStdio {
            target: Arc::new(target),
        }
    }

    pub fn connect(&self) -> io::Result<SshStream> {
        let remote: Vec<String> = DIAL_STDIO.iter().map(|s| s.to_string()).collect();
        let (mut cmd, shown) = command(&self.target, &[], &remote);
        let mut child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("running `{shown}`: {e}")))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (exit_tx, exit_rx) = oneshot::channel();
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        tokio::spawn(watch(child, stderr, shown, exit_tx, kill_rx));
        Ok(SshStream {
            stdin,
            stdout,
            exit: exit_rx,
            exited: None,
            _kill: kill_tx,
        })
    }
}

/// Wait for `child` to end (or be told to kill it) and report a failure
/// with its stderr.
async fn watch(
    mut child: Child,
    stderr: tokio::process::ChildStderr,
    shown: String,
    exit: oneshot::Sender<Option<SshFailed>>,
    kill: oneshot::Receiver<()>,
) {
    let text = Arc::new(Mutex::new(String::new()));
    let reader = collect_stderr(stderr, text.clone());
    let status = tokio::select! {
        s = child.wait() => s,
        _ = kill => {
            // The connection was dropped: nobody waits for a report.
            let _ = child.start_kill();
            let _ = child.wait().await;
            return;
        }
    };
    // ssh has exited; what it wrote is there once the pipe drains (a
    // ProxyCommand's children may hold it open: do not wait for them).
    let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
    let report = match status {
        Ok(s) if s.success() => None,
        Ok(s) => Some(SshFailed {
            command: shown,
            how: how(s),
            stderr: text.lock().unwrap().clone(),
        }),
        Err(e) => Some(SshFailed {
            command: shown,
            how: format!("could not be waited for: {e}"),
            stderr: String::new(),
        }),
    };
    let _ = exit.send(report);
}

/// The HTTP bytes over one ssh child's stdin and stdout. When the child
/// fails, reading (or writing) reports its exit and stderr instead of a
/// bare end of file or broken pipe.
pub struct SshStream {
    stdin: ChildStdin,
    stdout: ChildStdout,
    exit: oneshot::Receiver<Option<SshFailed>>,
    exited: Option<Option<SshFailed>>,
    /// Dropping the stream kills the child.
    _kill: oneshot::Sender<()>,
}

impl SshStream {
    fn poll_exit(&mut self, cx: &mut Context<'_>) -> Poll<Option<SshFailed>> {
        if let Some(r) = &self.exited {
            return Poll::Ready(r.clone());
        }
        let r = ready!(Pin::new(&mut self.exit).poll(cx)).unwrap_or(None);
        self.exited = Some(r.clone());
        Poll::Ready(r)
    }
}

use std::future::Future as _;

impl AsyncRead for SshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        match ready!(Pin::new(&mut this.stdout).poll_read(cx, buf)) {
            Ok(()) if room && buf.filled().len() == before => match ready!(this.poll_exit(cx)) {
                Some(failed) => Poll::Ready(Err(io::Error::other(failed))),
                None => Poll::Ready(Ok(())),
            },
            other => Poll::Ready(other),
        }
    }
}

impl AsyncWrite for SshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.stdin).poll_write(cx, buf)) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => match ready!(this.poll_exit(cx)) {
                Some(failed) => Poll::Ready(Err(io::Error::other(failed))),
                None => Poll::Ready(Err(e)),
            },
            other => Poll::Ready(other),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stdin).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stdin).poll_shutdown(cx)
    }
}

/// `ssh -N -L LOCAL:REMOTE`: a local socket in a private folder that
/// reaches the remote engine's socket. Dropping it ends ssh and removes the
/// folder.
pub struct Tunnel {
    socket: PathBuf,
    child: Mutex<Child>,
    shown: String,
    stderr: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Tunnel {
    /// Start ssh and wait until the local socket is there (ssh makes it
    /// once it has logged in), or ssh has failed, or `timeout` passed.
    pub async fn open(target: &SshTarget, timeout: Duration) -> Result<Tunnel, SshFailed> {
        let remote = target.path.clone().unwrap_or_default();
        let failed = |shown: &str, how: String, stderr: String| SshFailed {
            command: shown.to_string(),
            how,
            stderr,
        };
        let dir = tempfile::Builder::new()
            .prefix("tplbuild-ssh-")
            .tempdir()
            .map_err(|e| {
                failed(
                    "ssh",
                    format!("could not run: no temp folder: {e}"),
                    String::new(),
                )
            })?;
        let socket = dir.path().join("engine.sock");
        let forward = format!("{}:{remote}", socket.display());
        let (mut cmd, shown) = command(
            target,
            &[
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-o",
                "StreamLocalBindUnlink=yes",
                "-L",
                &forward,
            ],
            &[],
        );
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let mut child = cmd
            .spawn()
            .map_err(|e| failed(&shown, format!("could not run: {e}"), String::new()))?;
        let text = Arc::new(Mutex::new(String::new()));
        let reader = collect_stderr(child.stderr.take().expect("piped"), text.clone());
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if is_socket(&socket) {
                return Ok(Tunnel {
                    socket,
                    child: Mutex::new(child),
                    shown,
                    stderr: text,
                    _dir: dir,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
                let stderr = text.lock().unwrap().clone();
                return Err(failed(&shown, how(status), stderr));
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.start_kill();
                let stderr = text.lock().unwrap().clone();
                return Err(failed(
                    &shown,
                    format!("made no socket within {}s", timeout.as_secs()),
                    stderr,
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What is wrong with the tunnel, if anything: ssh ended, or it said
    /// something (a refused channel: "open failed: connect failed").
    pub fn diagnose(&self) -> Option<SshFailed> {
        let stderr = self.stderr.lock().unwrap().clone();
        let ended = self.child.lock().unwrap().try_wait().ok().flatten();
        match ended {
            Some(status) => Some(SshFailed {
                command: self.shown.clone(),
                how: how(status),
                stderr,
            }),
            None if !stderr.trim().is_empty() => Some(SshFailed {
                command: self.shown.clone(),
                how: "reported".into(),
                stderr,
            }),
            None => None,
        }
    }
}

fn is_socket(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    fs_err::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(user: Option<&str>, port: Option<u16>, path: Option<&str>) -> SshTarget {
        SshTarget {
            user: user.map(str::to_string),
            host: "build-1".into(),
            port,
            path: path.map(str::to_string),
        }
    }

    #[test]
    fn ssh_gets_user_and_port_as_options_and_the_host_after_double_dash() {
        let (_, shown) = command(
            &target(Some("builder"), Some(2222), None),
            &[],
            &["docker".into(), "system".into(), "dial-stdio".into()],
        );
        assert_eq!(
            shown,
            "ssh -o ConnectTimeout=30 -o BatchMode=yes -T -l builder -p 2222 -- build-1 docker system dial-stdio"
        );
        let (_, shown) = command(&target(None, None, None), &["-N"], &[]);
        assert_eq!(
            shown,
            "ssh -o ConnectTimeout=30 -o BatchMode=yes -T -N -- build-1"
        );
    }

    #[test]
    fn a_failure_shows_the_command_status_and_what_ssh_said() {
        let f = SshFailed {
            command: "ssh -- h docker system dial-stdio".into(),
            how: "exited with status 255".into(),
            stderr: "root@h: Permission denied (publickey).\r\n".into(),
        };
        assert_eq!(
            f.to_string(),
            "`ssh -- h docker system dial-stdio` exited with status 255: root@h: Permission denied (publickey)."
        );
    }

    #[tokio::test]
    async fn a_stream_whose_ssh_fails_reads_as_that_failure_not_as_eof() {
        // `sh` stands in for ssh: it writes to stderr and exits 255.
        let mut child = Command::new("sh")
            .args(["-c", "echo 'Permission denied (publickey).' >&2; exit 255"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (exit_tx, exit_rx) = oneshot::channel();
        let (kill_tx, kill_rx) = oneshot::channel();
        tokio::spawn(watch(child, stderr, "ssh x".into(), exit_tx, kill_rx));
        let mut s = SshStream {
            stdin,
            stdout,
            exit: exit_rx,
            exited: None,
            _kill: kill_tx,
        };
        let mut buf = Vec::new();
        let err = s.read_to_end(&mut buf).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("exited with status 255"), "{msg}");
        assert!(msg.contains("Permission denied (publickey)."), "{msg}");
    }
}
