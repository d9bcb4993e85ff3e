//! `skiff sim`: simulated nodes (being built).

use clap::Args;

#[derive(Args, Debug)]
pub struct SimArgs {
    /// Number of simulated nodes.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
}

pub async fn run(_args: SimArgs) -> anyhow::Result<()> {
    anyhow::bail!("skiff sim is not built yet")
}
