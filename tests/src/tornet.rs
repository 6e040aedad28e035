//! A private Tor network on 127.0.0.1, from Debian's `tor`: 3 directory authorities and 5
//! relays (3 of them exits), plus a C-tor client with a SOCKS port, each in its own directory
//! under one temporary directory, on free ports. [`TorNet::arti_config`] is the Arti TOML that
//! points beam at it (through `BEAM_ARTI_CONFIG`). Every process is killed when the value is
//! dropped, also when a test fails.
//!
//! The torrc lines follow ../shared/notes/tor-testnet.md (measured on this kind of machine):
//! `TestingTorNetwork`, fast voting (20 s intervals), every relay voted Guard/Exit/HSDir, and
//! `AuthDirFastGuarantee` so that no exit loses the Fast flag (Arti builds exit circuits only
//! through Fast relays).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{TempDir, free_port};

/// Authorities in the network.
const AUTHORITIES: usize = 3;
/// Relays besides the authorities.
const RELAYS: usize = 5;
/// Of the relays, how many are exits.
const EXITS: usize = 3;

/// Whether `tor` and `tor-gencert` can be run. In CI (`CI=true`) their absence is a failure
/// (`.ci/run` installs them); elsewhere the caller skips with a message.
pub fn available() -> bool {
    let ok = ["tor", "tor-gencert"].iter().all(|c| {
        Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the Tor tests need `tor` and `tor-gencert` (Debian's `tor` package); .ci/run \
             installs it"
        );
        eprintln!("SKIPPED: the Tor tests need `tor` (apt-get install tor; they run in CI)");
    }
    ok
}

/// One directory authority.
struct Authority {
    name: String,
    or_port: u16,
    dir_port: u16,
    v3ident: String,
    rsa: String,
    ed: String,
}

/// The running network.
pub struct TorNet {
    /// Where everything lives (removed when dropped).
    pub dir: TempDir,
    /// The C-tor client's SOCKS port on 127.0.0.1 (extended SOCKS errors on: a refusal says
    /// why, e.g. 0xF4 for an onion service that needs client authorization).
    pub socks_port: u16,
    /// A second C-tor client, whose onion client keys are in [`TorNet::auth_dir`] (read when it
    /// starts and on [`TorNet::reload_auth_client`]).
    pub auth_socks_port: u16,
    /// The second client's `ClientOnionAuthDir`: `NAME.auth_private` files.
    pub auth_dir: PathBuf,
    /// The Arti configuration for this network.
    pub arti_config: PathBuf,
    procs: Vec<(String, Child)>,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The last word of the first line of `file` (tor's `fingerprint` files: "NICK FP").
fn fingerprint_file(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    text.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("{}: no fingerprint", file.display()))
        .to_string()
}

impl TorNet {
    /// Writes the keys and torrcs and starts every process. Returns at once; the network forms
    /// in the background ([`TorNet::wait_client`] waits for it).
    pub fn start() -> TorNet {
        let dir = TempDir::new("tornet");
        let root = dir.0.clone();
        let mut auths = vec![];
        for i in 0..AUTHORITIES {
            let name = format!("auth{i}");
            let d = root.join(&name);
            let keys = d.join("keys");
            std::fs::create_dir_all(&keys).expect("mkdir");
            let (or_port, dir_port) = (free_port(), free_port());
            let mut gencert = Command::new("tor-gencert");
            gencert
                .args(["--create-identity-key", "-m", "12", "-a"])
                .arg(format!("127.0.0.1:{dir_port}"))
                .arg("-i")
                .arg(keys.join("authority_identity_key"))
                .arg("-s")
                .arg(keys.join("authority_signing_key"))
                .arg("-c")
                .arg(keys.join("authority_certificate"))
                .arg("--passphrase-fd")
                .arg("0")
                .stdin(Stdio::null());
            run(&mut gencert);
            let cert = std::fs::read_to_string(keys.join("authority_certificate")).expect("cert");
            let v3ident = cert
                .lines()
                .find_map(|l| l.strip_prefix("fingerprint "))
                .expect("fingerprint line in authority_certificate")
                .trim()
                .to_string();
            run(Command::new("tor")
                .args(["--list-fingerprint", "--orport", "1", "--datadirectory"])
                .arg(&d)
                .args(["--log", "err stderr"]));
            auths.push(Authority {
                name,
                or_port,
                dir_port,
                v3ident,
                rsa: fingerprint_file(&d.join("fingerprint")),
                ed: fingerprint_file(&d.join("fingerprint-ed25519")),
            });
        }
        let mut common = String::from("TestingTorNetwork 1\nPathsNeededToBuildCircuits 0.67\n");
        for a in &auths {
            writeln!(
                common,
                "DirAuthority {} orport={} no-v2 v3ident={} 127.0.0.1:{} {}",
                a.name, a.or_port, a.v3ident, a.dir_port, a.rsa
            )
            .expect("write");
        }
        common.push_str("SafeLogging 0\nLog notice file notice.log\nRunAsDaemon 0\n");
        let relay = "SocksPort 0\nAddress 127.0.0.1\nAssumeReachable 1\nServerDNSResolvConfFile /dev/null\n\
                     ServerDNSDetectHijacking 0\nServerDNSTestAddresses\n\
                     ServerDNSAllowBrokenConfig 1\n";
        let middle = "ExitRelay 0\nExitPolicy reject *:*\n";
        let exit = "ExitRelay 1\nExitPolicyRejectPrivate 0\nExitPolicy accept 127.0.0.0/8:*\n\
                    ExitPolicy accept *:*\n";
        let authority = "AuthoritativeDirectory 1\nV3AuthoritativeDirectory 1\n\
                         TestingAuthDirTimeToLearnReachability 0\nV3AuthVotingInterval 20\n\
                         V3AuthVoteDelay 4\nV3AuthDistDelay 4\n\
                         TestingV3AuthInitialVotingInterval 20\nTestingV3AuthInitialVoteDelay 4\n\
                         TestingV3AuthInitialDistDelay 4\nTestingV3AuthVotingStartOffset 0\n\
                         V3AuthNIntervalsValid 3\nTestingDirAuthVoteExit *\n\
                         TestingDirAuthVoteGuard *\nTestingDirAuthVoteHSDir *\n\
                         TestingMinExitFlagThreshold 0\nAuthDirFastGuarantee 1 KBytes\n";
        let mut configs = vec![];
        for a in &auths {
            configs.push((
                a.name.clone(),
                format!(
                    "{common}{relay}{middle}{authority}Nickname {}\nORPort 127.0.0.1:{} IPv4Only\n\
                     DirPort 127.0.0.1:{}\nContactInfo beam-test\n",
                    a.name, a.or_port, a.dir_port
                ),
            ));
        }
        for i in 0..RELAYS {
            let name = format!("relay{i}");
            let role = if i < EXITS { exit } else { middle };
            configs.push((
                name.clone(),
                format!(
                    "{common}{relay}{role}Nickname {name}\nORPort 127.0.0.1:{} IPv4Only\n\
                     ContactInfo beam-test\n",
                    free_port()
                ),
            ));
        }
        let socks_port = free_port();
        configs.push((
            "client".into(),
            format!("{common}SocksPort 127.0.0.1:{socks_port} ExtendedErrors\nClientOnly 1\n"),
        ));
        let auth_socks_port = free_port();
        let auth_dir = root.join("client-auth").join("onion_auth");
        std::fs::create_dir_all(&auth_dir).expect("mkdir");
        set_private(&auth_dir);
        configs.push((
            "client-auth".into(),
            format!(
                "{common}SocksPort 127.0.0.1:{auth_socks_port} ExtendedErrors\nClientOnly 1\n\
                 ClientOnionAuthDir {}\n",
                auth_dir.display()
            ),
        ));
        let mut procs = vec![];
        for (name, torrc) in configs {
            let d = root.join(&name);
            std::fs::create_dir_all(&d).expect("mkdir");
            set_private(&d);
            std::fs::write(d.join("torrc"), torrc).expect("write torrc");
            let out = std::fs::File::create(d.join("stdout.log")).expect("create stdout.log");
            let err = out.try_clone().expect("dup");
            let child = Command::new("tor")
                .arg("-f")
                .arg(d.join("torrc"))
                .arg("--DataDirectory")
                .arg(&d)
                .current_dir(&d)
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("start tor ({name}): {e}"));
            procs.push((name, child));
        }
        let arti_config = root.join("arti.toml");
        std::fs::write(&arti_config, arti_toml(&auths)).expect("write arti.toml");
        TorNet {
            dir,
            socks_port,
            auth_socks_port,
            auth_dir,
            arti_config,
            procs,
        }
    }

    /// Makes the second client read [`TorNet::auth_dir`] again (SIGHUP: tor reloads its
    /// configuration, client keys included).
    pub fn reload_auth_client(&self) {
        let (_, child) = self
            .procs
            .iter()
            .find(|(name, _)| name == "client-auth")
            .expect("the client-auth process");
        run(Command::new("kill").args(["-HUP", &child.id().to_string()]));
    }

    /// Waits until the C-tor client has bootstrapped (the network has a consensus and the client
    /// built circuits); panics with every node's log tail after `timeout`.
    pub fn wait_client(&mut self, timeout: Duration) -> Duration {
        let start = Instant::now();
        let log = self.dir.0.join("client").join("notice.log");
        loop {
            if std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Bootstrapped 100%")) {
                return start.elapsed();
            }
            let exited = self.procs.iter_mut().find_map(|(name, child)| {
                child
                    .try_wait()
                    .ok()
                    .flatten()
                    .map(|status| format!("tor ({name}) exited: {status}"))
            });
            if let Some(what) = exited {
                panic!("{what}\n{}", self.logs());
            }
            assert!(
                start.elapsed() < timeout,
                "the private Tor network did not form within {} s\n{}",
                timeout.as_secs(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The last lines of every node's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (name, _) in &self.procs {
            let log = std::fs::read_to_string(self.dir.0.join(name).join("notice.log"))
                .ok()
                .filter(|l| !l.is_empty())
                .or_else(|| std::fs::read_to_string(self.dir.0.join(name).join("stdout.log")).ok())
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(8)..];
            writeln!(out, "--- {name}\n{}", tail.join("\n")).expect("write");
        }
        out
    }
}

impl Drop for TorNet {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An Arti configuration for a Tor network that is not there: three authorities (made-up
/// identities) on loopback ports nobody listens on. A client using it can never bootstrap.
pub fn unreachable_arti_toml() -> String {
    let auths: Vec<Authority> = (0..AUTHORITIES)
        .map(|i| Authority {
            name: format!("nowhere{i}"),
            or_port: free_port(),
            dir_port: free_port(),
            v3ident: format!("{:040X}", i + 1),
            rsa: format!("{:040X}", i + 101),
            ed: "A".repeat(43),
        })
        .collect();
    arti_toml(&auths)
}

/// Tor refuses data directories others can read.
fn set_private(d: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).expect("chmod 700");
}

/// Arti's configuration for the network: its authorities, the authorities again as fallback
/// caches (required with custom authorities), path rules that allow all-loopback paths, and
/// the net parameters a TestingTorNetwork needs (see the notes).
fn arti_toml(auths: &[Authority]) -> String {
    let quoted = |v: Vec<String>| v.join(", ");
    let v3: Vec<String> = auths.iter().map(|a| format!("\"{}\"", a.v3ident)).collect();
    let dirs: Vec<String> = auths
        .iter()
        .map(|a| format!("[\"127.0.0.1:{}\"]", a.dir_port))
        .collect();
    let mut s = String::new();
    s.push_str("[tor_network]\nfallback_caches = [\n");
    for a in auths {
        writeln!(
            s,
            "  {{ rsa_identity = \"{}\", ed_identity = \"{}\", orports = [\"127.0.0.1:{}\"] }},",
            a.rsa, a.ed, a.or_port
        )
        .expect("write");
    }
    s.push_str("]\n\n[tor_network.authorities]\n");
    writeln!(s, "v3idents = [{}]", quoted(v3)).expect("write");
    writeln!(s, "uploads = [{}]", quoted(dirs.clone())).expect("write");
    writeln!(s, "downloads = [{}]", quoted(dirs.clone())).expect("write");
    writeln!(s, "votes = [{}]", quoted(dirs)).expect("write");
    s.push_str(
        "\n[path_rules]\nipv4_subnet_family_prefix = 33\nipv6_subnet_family_prefix = 129\n\n\
         [address_filter]\nallow_local_addrs = true\n\n\
         [override_net_params]\nhsdir_interval = 8\nguard-min-filtered-sample-size = 3\n\
         guard-max-sample-size = 8\n",
    );
    s
}
