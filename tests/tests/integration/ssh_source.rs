//! An SSH git source against a real sshd on loopback (Debian's openssh-server, started by the
//! test): a known host key syncs; a changed host key and an unknown host are refused with a
//! clear error, and nothing in the cluster changes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use driftless::config::Source;
use driftless::report::{Reason, State};
use driftless::source::Auth;
use driftless_tests::agent::{configmap, configmaps, Agent};
use driftless_tests::{wait_for, GitFixture, TestNamespace};
use tempfile::TempDir;

/// sshd on a free loopback port, serving git over ssh to one client key; stopped on drop.
struct Sshd {
    child: Child,
    dir: TempDir,
    port: u16,
}

impl Sshd {
    fn start() -> Self {
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        for key in ["host_key", "client_key", "other_host_key"] {
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(key))
                .status()
                .expect("ssh-keygen runs (package openssh-client)");
            assert!(ok.success());
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        std::fs::create_dir_all("/run/sshd").ok(); // sshd's privilege separation directory
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
             StrictModes no\nUsePAM no\nPidFile {d}/sshd.pid\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("sshd.log")).unwrap())
            .spawn()
            .expect("sshd starts (package openssh-server)");
        let sshd = Sshd { child, dir, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return sshd;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sshd did not listen: {}", std::fs::read_to_string(sshd.dir.path().join("sshd.log")).unwrap_or_default());
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A known_hosts line for this server with the given public key file.
    fn known_hosts(&self, name: &str, public_key: &Path, host: &str) -> PathBuf {
        let key = std::fs::read_to_string(public_key).unwrap();
        let mut parts = key.split_whitespace();
        let line = format!("[{host}]:{} {} {}\n", self.port, parts.next().unwrap(), parts.next().unwrap());
        let file = self.path(name);
        std::fs::write(&file, line).unwrap();
        file
    }

    fn source(&self, repo: &GitFixture, ns: &str, known_hosts: PathBuf) -> Source {
        let user = std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "root".into());
        let url = format!("ssh://{user}@127.0.0.1:{}{}", self.port, repo.path().display());
        let mut source = driftless_tests::agent::source("ssh", &url, ns);
        source.spec.auth = Auth::Ssh { key_file: self.path("client_key"), known_hosts_file: Some(known_hosts), passphrase_file: None };
        source
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_known_host_key_syncs_and_a_changed_or_unknown_one_is_refused() {
    let sshd = Sshd::start();
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "ssh").await;
    let repo = GitFixture::new();
    repo.write("app.yaml", configmap("over-ssh", "1"));
    repo.commit("over ssh");

    // given the server's real host key in known_hosts, the source syncs
    let good = sshd.known_hosts("known_hosts", &sshd.path("host_key.pub"), "127.0.0.1");
    let source = sshd.source(&repo, ns.name(), good);
    let report = agent.sync(&source).await;
    assert_eq!(report.state, State::Synced, "{:?}: {}", report.reason, report.message);
    wait_for("the ConfigMap", Duration::from_secs(5), || async {
        configmaps(&agent.client, ns.name()).await.contains_key("over-ssh").then_some(())
    })
    .await;
    let before = configmaps(&agent.client, ns.name()).await;

    // the host key changed (another key recorded for the host): refused, nothing changes
    repo.write("more.yaml", configmap("more", "1"));
    repo.commit("more");
    let changed = sshd.known_hosts("known_hosts_changed", &sshd.path("other_host_key.pub"), "127.0.0.1");
    let mut mitm = sshd.source(&repo, ns.name(), changed);
    mitm.name = source.name.clone();
    let report = agent.sync(&mitm).await;
    assert_eq!(report.state, State::Failed);
    assert_eq!(report.reason, Some(Reason::FetchFailed));
    assert!(report.message.contains("does not match"), "{}", report.message);

    // the host is not in known_hosts at all: refused, nothing changes
    let unknown = sshd.known_hosts("known_hosts_other", &sshd.path("host_key.pub"), "git.example.com");
    let mut stranger = sshd.source(&repo, ns.name(), unknown);
    stranger.name = source.name.clone();
    let report = agent.sync(&stranger).await;
    assert_eq!(report.state, State::Failed);
    assert_eq!(report.reason, Some(Reason::FetchFailed));
    assert!(report.message.contains("not in known_hosts"), "{}", report.message);
    assert_eq!(configmaps(&agent.client, ns.name()).await, before, "nothing changed");
    ns.cleanup().await;
}
