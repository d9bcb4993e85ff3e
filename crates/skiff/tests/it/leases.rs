//! A server that shuts down cleanly releases the scheduler's and controller manager's Leases, so
//! the restarted server leads again at once instead of waiting out the 15 s lease.

use std::time::{Duration, Instant};

use crate::harness::{KUBECTL_133, Server, wait_for};

fn holder(s: &Server, name: &str) -> String {
    s.ok(KUBECTL_133, &["get", "lease", "-n", "kube-system", name, "-o", "jsonpath={.spec.holderIdentity}"])
}

#[test]
fn leases_are_released_on_shutdown_and_retaken_at_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let port = crate::harness::free_port();
    let mut s = Server::start_in(tmp.path(), port);
    let names = ["kube-controller-manager", "kube-scheduler"];
    let first: Vec<String> =
        names.iter().map(|n| wait_for("a leader", Duration::from_secs(20), || Some(holder(&s, n)).filter(|h| !h.is_empty()))).collect();
    s.stop();

    let mut s = Server::start_in(tmp.path(), port);
    let t = Instant::now();
    for (name, old) in names.iter().zip(&first) {
        let new = wait_for("the restarted server to lead", Duration::from_secs(20), || {
            Some(holder(&s, name)).filter(|h| !h.is_empty() && h != old)
        });
        assert_ne!(&new, old);
    }
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}: the old Leases were waited out, not released", t.elapsed());
    // The controllers work again right away: a new namespace gets its default ServiceAccount.
    s.ok(KUBECTL_133, &["create", "namespace", "after-restart"]);
    wait_for("default ServiceAccount", Duration::from_secs(10), || {
        s.kubectl(KUBECTL_133, &["get", "sa", "default", "-n", "after-restart"]).status.success().then_some(())
    });
    s.stop();
}
