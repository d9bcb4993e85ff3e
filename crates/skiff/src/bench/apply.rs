//! `skiff bench apply`: the real kubectl applying a large manifest (client-side and server-side)
//! against `kubectl create` of the same file in the same run, and the server's per-request cost
//! of an apply patch against a JSON merge patch making the same change.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Args;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use super::server::Server;

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// Objects in the manifest (a third each ConfigMaps, Services, Deployments).
    #[arg(long, default_value_t = 1000)]
    pub objects: usize,
    /// Sequential patches per patch type in the per-request phase.
    #[arg(long, default_value_t = 2000)]
    pub patches: usize,
    /// The kubectl binary.
    #[arg(long, default_value = "/usr/bin/kubectl")]
    pub kubectl: String,
    /// Directory for the server's data and the manifest.
    #[arg(long, default_value = "/var/tmp")]
    pub work_dir: std::path::PathBuf,
}

fn manifest(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        let doc = match i % 3 {
            0 => format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}\n  labels: {{app: bench}}\ndata:\n  a: \"{i}\"\n  b: value\n"
            ),
            1 => format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  labels: {{app: bench}}\nspec:\n  selector: {{app: d-{i}}}\n  ports:\n  - {{port: 80, targetPort: 8080}}\n"
            ),
            _ => format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d-{i}\n  labels: {{app: bench}}\nspec:\n  replicas: 0\n  selector:\n    matchLabels: {{app: d-{i}}}\n  template:\n    metadata:\n      labels: {{app: d-{i}}}\n    spec:\n      containers:\n      - name: web\n        image: registry.local/web:1\n        ports: [{{containerPort: 8080}}]\n        env: [{{name: A, value: \"1\"}}]\n"
            ),
        };
        out.push_str("---\n");
        out.push_str(&doc);
    }
    out
}

fn kubectl(bin: &str, kubeconfig: &Path, args: &[&str]) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = Command::new(bin).arg("--kubeconfig").arg(kubeconfig).args(args).output()?;
    let took = start.elapsed();
    anyhow::ensure!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(took)
}

pub async fn run(args: ApplyArgs) -> anyhow::Result<()> {
    let dir = args.work_dir.join(format!("skiff-bench-apply-{}", std::process::id()));
    let server = Server::start(dir.join("server"), &["--disable-scheduler"])?;
    let kc = server.dir.join("kubeconfig.yaml");
    let file = dir.join("manifest.yaml");
    std::fs::write(&file, manifest(args.objects))?;
    let f = file.to_string_lossy().into_owned();
    let k = args.kubectl.as_str();
    for ns in ["b-create", "b-apply", "b-ssa"] {
        kubectl(k, &kc, &["create", "namespace", ns])?;
    }
    println!("kubectl: {k}; manifest: {} objects (ConfigMaps, Services, Deployments)", args.objects);
    let create = kubectl(k, &kc, &["-n", "b-create", "create", "-f", &f])?;
    let apply = kubectl(k, &kc, &["-n", "b-apply", "apply", "-f", &f])?;
    let reapply = kubectl(k, &kc, &["-n", "b-apply", "apply", "-f", &f])?;
    let ssa = kubectl(k, &kc, &["-n", "b-ssa", "apply", "--server-side", "-f", &f])?;
    let ssa_again = kubectl(k, &kc, &["-n", "b-ssa", "apply", "--server-side", "-f", &f])?;
    let secs = |d: Duration| d.as_secs_f64();
    println!("kubectl create -f (reference)        {:>7.2} s", secs(create));
    println!("kubectl apply -f (creates)           {:>7.2} s  ({:.2}x create)", secs(apply), secs(apply) / secs(create));
    println!("kubectl apply -f (unchanged)         {:>7.2} s  ({:.2}x create)", secs(reapply), secs(reapply) / secs(create));
    println!("kubectl apply --server-side (creates){:>7.2} s  ({:.2}x create)", secs(ssa), secs(ssa) / secs(create));
    println!("kubectl apply --server-side (again)  {:>7.2} s  ({:.2}x create)", secs(ssa_again), secs(ssa_again) / secs(create));

    // Per request: the same change as an apply patch and as a merge patch, one client.
    let client = crate::cmd::scheduler::client_from_kubeconfig(&kc).await?;
    let deploys: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client, "default");
    let base = |name: &str, v: usize| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {"app": "p"}},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "p"}}, "template": {"metadata": {"labels": {"app": "p"}},
            "spec": {"containers": [{"name": "web", "image": format!("registry.local/web:{v}"), "env": [{"name": "A", "value": "1"}]}]}}}})
    };
    deploys.create(&PostParams::default(), &serde_json::from_value(base("merge", 0))?).await?;
    let ssa_pp = PatchParams::apply("bench");
    let mp = PatchParams::default();
    let mut timings = Vec::new();
    for (label, name) in [("merge patch", "merge"), ("apply patch", "apply")] {
        let start = Instant::now();
        for v in 1..=args.patches {
            match name {
                "apply" => deploys.patch(name, &ssa_pp, &Patch::Apply(base(name, v))).await?,
                _ => {
                    let p = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": format!("registry.local/web:{v}"), "env": [{"name": "A", "value": "1"}]}]}}}});
                    deploys.patch(name, &mp, &Patch::Merge(p)).await?
                }
            };
        }
        let per = start.elapsed().as_secs_f64() * 1e6 / args.patches as f64;
        timings.push(per);
        println!("{label:<12} {per:>8.0} µs/request (sequential, {} changing writes)", args.patches);
    }
    println!("apply patch costs {:.2}x a merge patch making the same change", timings[1] / timings[0]);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
