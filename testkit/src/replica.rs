//! How every harness starts a replica process: the `run` flags written once,
//! so that the tests, the fault suite, the benchmarks and the demo cannot
//! drift apart in how they configure a replica (and all of them clear the
//! inherited `DORADO_*` environment, which would otherwise change the
//! configuration behind the flags' back).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The flags of one replica process (`<bin> <subcommand> --group ...`).
#[derive(Debug, Clone)]
pub struct ReplicaFlags {
    /// Group name.
    pub group: String,
    /// Namespace of the group.
    pub namespace: String,
    /// Replica id.
    pub replica: String,
    /// The guest module file.
    pub module: PathBuf,
    /// etcd client URLs.
    pub etcd: Vec<String>,
    /// Where the client API listens; also advertised to the other replicas.
    pub listen: SocketAddr,
    /// Lease TTL in seconds.
    pub lease_ttl: u64,
    /// Snapshot every this many entries (0 = never).
    pub snapshot_every: u64,
    /// Further flags, appended last.
    pub extra: Vec<String>,
}

impl ReplicaFlags {
    /// `program [prefix...] subcommand <flags>`, with `DORADO_*` cleared
    /// (except `DORADO_LOG`, set to `log`), stdin from /dev/null and `dir`
    /// as the working directory. `prefix` runs it through a wrapper, e.g.
    /// `ip netns exec NS`.
    pub fn command(
        &self,
        program: &Path,
        prefix: &[&str],
        subcommand: &str,
        dir: &Path,
        log: &str,
    ) -> Command {
        let mut cmd = match prefix.split_first() {
            Some((wrapper, rest)) => {
                let mut c = Command::new(wrapper);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        };
        let listen = self.listen.to_string();
        cmd.arg(subcommand)
            .args(["--group", &self.group, "--namespace", &self.namespace])
            .args(["--replica", &self.replica])
            .arg("--module")
            .arg(&self.module)
            .args(["--etcd", &self.etcd.join(",")])
            .args(["--listen", &listen, "--advertise", &listen])
            .args(["--lease-ttl", &self.lease_ttl.to_string()])
            .args(["--snapshot-every", &self.snapshot_every.to_string()])
            .args(&self.extra);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("DORADO_") {
                cmd.env_remove(key);
            }
        }
        cmd.env_remove("POD_NAME")
            .env_remove("POD_IP")
            .env("DORADO_LOG", log)
            .current_dir(dir)
            .stdin(Stdio::null());
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_carries_every_flag_and_no_inherited_configuration() {
        let flags = ReplicaFlags {
            group: "g".into(),
            namespace: "ns".into(),
            replica: "r1".into(),
            module: "/m.wasm".into(),
            etcd: vec!["http://a:1".into(), "http://b:2".into()],
            listen: "127.0.0.1:7070".parse().unwrap(),
            lease_ttl: 2,
            snapshot_every: 50,
            extra: vec!["--max-inflight".into(), "4".into()],
        };
        let cmd = flags.command(
            Path::new("/bin/dorado"),
            &["ip", "netns", "exec", "x"],
            "run",
            Path::new("/tmp"),
            "warn",
        );
        assert_eq!(cmd.get_program(), "ip");
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "netns exec x /bin/dorado run --group g --namespace ns --replica r1 --module /m.wasm \
             --etcd http://a:1,http://b:2 --listen 127.0.0.1:7070 --advertise 127.0.0.1:7070 \
             --lease-ttl 2 --snapshot-every 50 --max-inflight 4"
        );
        let env: Vec<_> = cmd
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        assert!(
            env.contains(&("DORADO_LOG".into(), Some("warn".into()))),
            "{env:?}"
        );
        assert!(env.contains(&("POD_NAME".into(), None)), "{env:?}");
    }
}
