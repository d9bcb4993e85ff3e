//! `skiff image import FILE...`: docker-archive or OCI-archive tarballs into this node's
//! containerd (the agent's), with a progress bar.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Load image tarballs into the node's containerd (its CRI namespace), so pods can use them
    /// without a registry. Tarballs left in DATA/images are imported at agent start instead.
    Import(ImportArgs),
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The tarballs.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The containerd socket (default: the embedded agent's under /var/lib/skiff).
    #[arg(long, default_value = "/var/lib/skiff/agent/containerd/containerd.sock")]
    pub address: PathBuf,
}

pub async fn run(cmd: ImageCommand) -> anyhow::Result<()> {
    let ImageCommand::Import(args) = cmd;
    anyhow::ensure!(args.address.exists(), "no containerd socket at {} (is the agent running? see --address)", args.address.display());
    let tty = std::io::stderr().is_terminal();
    for f in &args.files {
        let name = f.display().to_string();
        let mut last = 0u64;
        let out = skiff_kubelet::import::import_file(&args.address, f, |done, total| {
            // Redraw at most every 1% (and always at the end).
            if tty && (done == total || done.saturating_sub(last) * 100 >= total.max(1)) {
                last = done;
                eprint!("\r{name}: {}", skiff_kubelet::import::bar(done, total));
                let _ = std::io::stderr().flush();
            }
        })
        .await?;
        if tty {
            eprintln!();
        }
        for line in out.lines().filter(|l| !l.trim().is_empty()) {
            println!("{name}: {}", line.trim());
        }
    }
    Ok(())
}
