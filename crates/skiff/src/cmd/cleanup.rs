//! `skiff cleanup`: removes the host networking skiff's agent sets up and leaves in place when it
//! stops (so connections survive a restart): the proxy's `ip skiff` table, the pod network's
//! `ip skiff-pods` table, skiff's routes (protocols 211 and 212, table 7460) and policy rule, and
//! the CNI bridge. For uninstalling or moving a node off skiff; stop skiff first (a running
//! agent puts everything back on its next sync). Pods still running lose their network.

pub async fn run() -> anyhow::Result<()> {
    skiff_proxy::nft::Nft::default().delete_table().await?;
    skiff_proxy::host::remove_all_routes().await?;
    skiff_kubelet::network::remove_all().await?;
    println!("removed skiff's nftables tables, routes, policy rule and CNI bridge from this host");
    Ok(())
}
