//! Running a rendering tool (kustomize, helm) in a sandbox: an empty environment with its own
//! `HOME`, `XDG_*` and `TMPDIR` directories, a `PATH` that holds nothing (no `git`, no shell
//! tools) and, offline, an HTTP(S) proxy that is not there; its own process group (killed with
//! whatever is left in it when the tool exits), a wall-clock limit (SIGTERM, then SIGKILL after
//! a grace period) and a cap on what it may print. Its stderr, cut to a few KiB, is what a
//! failure reports.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most bytes of a tool's stderr kept for its error.
const MAX_STDERR: usize = 8 << 10;
/// How long a tool may take to exit after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(2);
/// How often a running tool is looked at.
const POLL: Duration = Duration::from_millis(10);

/// The limits of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sandbox {
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Most bytes the tool may write to stdout.
    pub max_output: u64,
    /// Send the tool's HTTP(S) through a proxy that is not there ([`NO_PROXY_ADDRESS`]): a
    /// fetch fails instead of reaching the network (Go's tools honour `HTTPS_PROXY`).
    pub offline: bool,
}

/// The proxy an offline tool is given: the discard port of loopback, where nothing listens.
pub const NO_PROXY_ADDRESS: &str = "http://127.0.0.1:9";

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox { timeout: Duration::from_secs(60), max_output: 64 << 20, offline: true }
    }
}

/// Why a run gave no output.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ToolError {
    #[error("cannot run {program}: {reason}")]
    Spawn { program: String, reason: String },
    #[error("{program} ran longer than {}s and was stopped", timeout.as_secs())]
    TimedOut { program: String, timeout: Duration },
    #[error("{program} wrote more than {limit} bytes, the limit on a revision's total size, and was stopped")]
    OutputTooLarge { program: String, limit: u64 },
    #[error("{program} failed ({status}): {stderr}")]
    Failed { program: String, status: String, stderr: String },
}

impl ToolError {
    /// The one-line cause of a failed `step` (`kustomize build`): what the tool printed to
    /// stderr when it failed, else why it did not finish.
    pub fn cause(&self, step: &str) -> String {
        match self {
            ToolError::Failed { stderr, .. } => format!("{step} failed: {stderr}"),
            other => other.to_string(),
        }
    }
}

/// Runs `program args` in `cwd` inside the sandbox and returns its stdout. In a failure's
/// stderr each `(path, name)` of `rename` is written as `name` (the sandbox's home as `$HOME`).
pub fn run(program: &Path, args: &[&OsStr], cwd: &Path, sandbox: Sandbox, rename: &[(&Path, &str)]) -> Result<Vec<u8>, ToolError> {
    let name = program.file_name().map_or_else(|| program.display().to_string(), |n| n.to_string_lossy().into_owned());
    let spawn_error = |e: std::io::Error| ToolError::Spawn { program: name.clone(), reason: e.to_string() };
    let home = tempfile::Builder::new().prefix("driftless-tool-").tempdir().map_err(spawn_error)?;
    let dirs = ["bin", "config", "cache", "data", "tmp"].map(|d| home.path().join(d));
    for d in &dirs {
        std::fs::create_dir(d).map_err(spawn_error)?;
    }
    let [bin, config, cache, data, tmp] = dirs;
    let mut command = Command::new(program);
    command.env_clear();
    if sandbox.offline {
        for key in ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy"] {
            command.env(key, NO_PROXY_ADDRESS);
        }
    }
    let mut child = command
        .args(args)
        .current_dir(cwd)
        .env("HOME", home.path())
        .env("PATH", &bin)
        .env("XDG_CONFIG_HOME", &config)
        .env("XDG_CACHE_HOME", &cache)
        .env("XDG_DATA_HOME", &data)
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(spawn_error)?;
    let overflow = Arc::new(AtomicBool::new(false));
    let stdout = child.stdout.take().map(|out| {
        let overflow = overflow.clone();
        std::thread::spawn(move || read_capped(out, sandbox.max_output, &overflow, false))
    });
    let stderr =
        child.stderr.take().map(|err| std::thread::spawn(move || read_capped(err, MAX_STDERR as u64, &AtomicBool::new(false), true)));

    // wait: until it exits, runs out of time or prints too much
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if overflow.load(Ordering::SeqCst) => {
                break Err(ToolError::OutputTooLarge { program: name.clone(), limit: sandbox.max_output })
            }
            Ok(None) if started.elapsed() >= sandbox.timeout => {
                break Err(ToolError::TimedOut { program: name.clone(), timeout: sandbox.timeout })
            }
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => break Err(spawn_error(e)),
        }
    };
    let status = match status {
        Ok(status) => status,
        Err(e) => {
            stop(&mut child);
            return Err(e);
        }
    };
    // whatever the tool left running in its group goes with it, so its pipes close
    signal_group(i32::try_from(child.id()).unwrap_or(0), libc::SIGKILL);
    let out = stdout.and_then(|t| t.join().ok()).unwrap_or_default();
    let err = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if overflow.load(Ordering::SeqCst) {
        return Err(ToolError::OutputTooLarge { program: name, limit: sandbox.max_output });
    }
    if !status.success() {
        return Err(ToolError::Failed { program: name, status: describe(status), stderr: one_paragraph(&err, home.path(), rename) });
    }
    Ok(out)
}

/// Keeps at most `limit` bytes; past that, sets `overflow` and either stops reading (stdout: the
/// tool is stopped) or reads on and drops the rest (`drain`, stderr: a tool that warns a lot
/// must not die of a closed pipe).
fn read_capped(mut from: impl Read, limit: u64, overflow: &AtomicBool, drain: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 64 << 10];
    loop {
        match from.read(&mut chunk) {
            Ok(0) | Err(_) => return out,
            Ok(n) => {
                let room = usize::try_from(limit.saturating_sub(out.len() as u64)).unwrap_or(usize::MAX);
                out.extend_from_slice(chunk.get(..n.min(room)).unwrap_or_default());
                if n > room {
                    overflow.store(true, Ordering::SeqCst);
                    if !drain {
                        return out;
                    }
                }
            }
        }
    }
}

/// SIGTERM to the tool's process group, then SIGKILL if it has not exited within [`GRACE`].
fn stop(child: &mut std::process::Child) {
    let group = i32::try_from(child.id()).unwrap_or(0);
    signal_group(group, libc::SIGTERM);
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(POLL);
    }
    signal_group(group, libc::SIGKILL);
    let _ = child.wait();
}

#[allow(unsafe_code)]
fn signal_group(group: i32, signal: i32) {
    if group > 0 {
        // SAFETY: kill(2) on the tool's own process group (created by `process_group(0)`, so its
        // id is the child's pid); it touches no memory of this process.
        unsafe {
            libc::kill(-group, signal);
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// The tool's stderr on one line, with the sandbox's private paths replaced by what they stand
/// for, so a message names repository files, not temporary directories.
fn one_paragraph(stderr: &[u8], home: &Path, rename: &[(&Path, &str)]) -> String {
    let mut text = String::from_utf8_lossy(stderr).into_owned().replace(&home.display().to_string(), "$HOME");
    for (path, name) in rename {
        text = text.replace(&path.display().to_string(), name);
    }
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines.join("; ")
}

/// What `program args` prints as its version (its first line), run in the sandbox with a short
/// limit; a tool that cannot run says why.
pub fn version(program: &Path, args: &[&str]) -> Result<String, ToolError> {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let sandbox = Sandbox { timeout: Duration::from_secs(10), max_output: 4096, offline: true };
    let out = run(program, &args, &std::env::temp_dir(), sandbox, &[])?;
    Ok(String::from_utf8_lossy(&out).lines().next().unwrap_or_default().trim().to_string())
}

/// `name`, looked up in the agent's own `PATH` when it has no slash (the tool's `PATH` is empty).
pub fn find_program(name: &str) -> PathBuf {
    if name.contains('/') {
        return PathBuf::from(name);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A script run as the tool.
    fn script(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("tool");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn quick() -> Sandbox {
        Sandbox { timeout: Duration::from_secs(5), max_output: 1 << 20, offline: true }
    }

    #[test]
    fn a_tool_sees_an_empty_environment_with_its_own_home_and_no_path() {
        let dir = tempfile::tempdir().unwrap();
        // `env` itself is not on the tool's PATH: the script names it by its absolute path
        let tool = script(dir.path(), "/usr/bin/env; command -v git || echo no-git");
        std::env::set_var("DRIFTLESS_SECRET_FOR_TEST", "leaked");
        let out = String::from_utf8(run(&tool, &[], dir.path(), quick(), &[(dir.path(), ".")]).unwrap()).unwrap();
        assert!(!out.contains("leaked") && !out.contains("KUBECONFIG"), "{out}");
        assert!(out.contains("no-git"), "{out}");
        let home = out.lines().find_map(|l| l.strip_prefix("HOME=")).unwrap();
        assert!(home.contains("driftless-tool-") && !Path::new(home).exists(), "a private home, removed after the run: {home}");
        for key in ["PATH=", "XDG_CONFIG_HOME=", "XDG_CACHE_HOME=", "TMPDIR="] {
            assert!(out.lines().any(|l| l.starts_with(key) && l.contains(home)), "{key} in {out}");
        }
        // offline: HTTP(S) goes to a proxy that is not there; online: no proxy at all
        assert!(out.lines().any(|l| l == format!("HTTPS_PROXY={NO_PROXY_ADDRESS}")), "{out}");
        let online = run(&tool, &[], dir.path(), Sandbox { offline: false, ..quick() }, &[]).unwrap();
        assert!(!String::from_utf8(online).unwrap().contains("PROXY"));
    }

    #[test]
    fn a_tool_that_runs_too_long_is_stopped_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("child-survived");
        // a child that would leave a mark after the tool was stopped
        let tool = script(dir.path(), &format!("(/bin/sleep 3; /usr/bin/touch {}) & /bin/sleep 30", mark.display()));
        let started = Instant::now();
        let err = run(&tool, &[], dir.path(), Sandbox { timeout: Duration::from_millis(300), ..quick() }, &[]).unwrap_err();
        assert_eq!(err, ToolError::TimedOut { program: "tool".into(), timeout: Duration::from_millis(300) });
        assert!(started.elapsed() < Duration::from_secs(3), "stopped in {:?}", started.elapsed());
        std::thread::sleep(Duration::from_secs(4));
        assert!(!mark.exists(), "the tool's process group was stopped");
    }

    #[test]
    fn a_tool_that_ignores_sigterm_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let tool = script(dir.path(), "trap '' TERM; while :; do /bin/sleep 1; done");
        let started = Instant::now();
        let err = run(&tool, &[], dir.path(), Sandbox { timeout: Duration::from_millis(200), ..quick() }, &[]).unwrap_err();
        assert!(matches!(err, ToolError::TimedOut { .. }), "{err}");
        let took = started.elapsed();
        assert!(took >= GRACE && took < GRACE + Duration::from_secs(3), "killed after the grace period: {took:?}");
    }

    #[test]
    fn output_over_the_cap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tool = script(dir.path(), "while :; do echo xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; done");
        let err = run(&tool, &[], dir.path(), Sandbox { max_output: 100_000, ..quick() }, &[]).unwrap_err();
        assert_eq!(err, ToolError::OutputTooLarge { program: "tool".into(), limit: 100_000 });
        let exact = script(dir.path(), "printf 12345");
        assert_eq!(run(&exact, &[], dir.path(), Sandbox { max_output: 5, ..quick() }, &[]).unwrap(), b"12345");
    }

    #[test]
    fn a_failure_reports_its_status_and_stderr_on_one_line_without_private_paths() {
        let dir = tempfile::tempdir().unwrap();
        let tool = script(dir.path(), "echo \"error: $HOME/x and $(/bin/pwd)/base/kustomization.yaml\" >&2; echo second >&2; exit 3");
        let err = run(&tool, &[], dir.path(), quick(), &[(dir.path(), ".")]).unwrap_err();
        assert_eq!(
            err,
            ToolError::Failed {
                program: "tool".into(),
                status: "exit status 3".into(),
                stderr: "error: $HOME/x and ./base/kustomization.yaml; second".into()
            }
        );
        let missing = run(&dir.path().join("nothing"), &[], dir.path(), quick(), &[]).unwrap_err();
        assert!(matches!(missing, ToolError::Spawn { .. }), "{missing}");
    }

    #[test]
    fn a_tool_that_floods_stderr_is_not_killed_by_a_closed_pipe() {
        let dir = tempfile::tempdir().unwrap();
        // 1 MiB of warnings, far past the 8 KiB kept, then its output
        let tool = script(dir.path(), "i=0; while [ $i -lt 16384 ]; do echo 'warning: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' >&2; i=$((i+1)); done; echo done");
        assert_eq!(run(&tool, &[], dir.path(), quick(), &[]).unwrap(), b"done\n");
    }

    #[test]
    fn what_a_tool_leaves_running_is_stopped_when_it_exits() {
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("daemon-survived");
        // a child holding stdout open would block the run until it exits
        let tool = script(dir.path(), &format!("(/bin/sleep 2; /usr/bin/touch {}) & echo started", mark.display()));
        let started = Instant::now();
        assert_eq!(run(&tool, &[], dir.path(), quick(), &[]).unwrap(), b"started\n");
        assert!(started.elapsed() < Duration::from_secs(2), "returned in {:?}", started.elapsed());
        std::thread::sleep(Duration::from_secs(3));
        assert!(!mark.exists(), "the tool's leftover child was stopped");
    }

    #[test]
    fn a_version_is_the_first_line_printed() {
        let dir = tempfile::tempdir().unwrap();
        let tool = script(dir.path(), "echo \" v1.2.3 \"; echo more");
        assert_eq!(version(&tool, &["version"]).unwrap(), "v1.2.3");
        assert!(matches!(version(&dir.path().join("nothing"), &[]), Err(ToolError::Spawn { .. })));
    }
}
