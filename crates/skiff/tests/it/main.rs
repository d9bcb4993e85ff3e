//! End-to-end tests: the real skiff binary driven by the real kubectl and kube-rs.
//! One test binary (modules below) so the suite links once.

mod apply;
mod badinput;
mod crash;
mod deployments;
mod dns;
mod endpoints;
mod etcd;
mod explain;
mod gc;
#[allow(dead_code)] // not every test uses every helper
mod harness;
mod jobs;
mod kubectl;
mod leases;
mod netns;
mod nodes;
mod pods;
mod python;
mod scheduler;
mod services;
mod sim;
mod twonode;
mod verbs;
mod watcher;
mod workloads;
