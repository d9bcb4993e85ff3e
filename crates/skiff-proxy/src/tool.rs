//! Running the host tools the proxy drives (`nft`, `conntrack`), optionally inside a named
//! network namespace (`ip netns exec`) as the tests and the benchmark do.

use std::path::Path;

pub(crate) fn command(bin: &Path, netns: Option<&str>) -> tokio::process::Command {
    match netns {
        Some(ns) => {
            let mut c = tokio::process::Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin);
            c
        }
        None => tokio::process::Command::new(bin),
    }
}
