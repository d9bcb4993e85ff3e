//! Upstream's printer columns (pkg/printers/internalversion) for the resources users `get` most.

use jiff::Timestamp;
use serde_json::{Value, json};

use super::{Col, TableDef, age, col};

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_str).unwrap_or("")
}
fn i(v: &Value, path: &[&str]) -> i64 {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_i64).unwrap_or(0)
}
fn arr<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}
fn name(v: &Value) -> Value {
    json!(s(v, &["metadata", "name"]))
}
fn created(v: &Value, now: Timestamp) -> Value {
    json!(age(v.get("metadata").and_then(|m| m.get("creationTimestamp")).and_then(Value::as_str), now))
}
fn or_none(x: String) -> String {
    if x.is_empty() { "<none>".into() } else { x }
}
fn containers_images(v: &Value, spec: &[&str]) -> (Value, Value) {
    let cs = arr(v, spec);
    let names: Vec<&str> = cs.iter().map(|c| s(c, &["name"])).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(c, &["image"])).collect();
    (json!(names.join(",")), json!(images.join(",")))
}
fn selector_string(v: &Value, path: &[&str]) -> String {
    or_none(path.iter().try_fold(v, |v, k| v.get(k)).map(crate::selector::format_selector).unwrap_or_default())
}

pub const NAME_AGE_COLS: &[Col] = &[
    col("Name", "string", 0, "Name must be unique within a namespace."),
    col("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
];
pub fn name_age(v: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(v), created(v, now)]
}

pub const PODS: TableDef = TableDef {
    columns: &[
        col("Name", "string", 0, "Name must be unique within a namespace."),
        col("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
        col("Status", "string", 0, "The aggregate status of the containers in this pod."),
        col(
            "Restarts",
            "string",
            0,
            "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
        ),
        col("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
        col("IP", "string", 1, "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
        col("Node", "string", 1, "NodeName is a request to schedule this pod onto a specific node."),
        col("Nominated Node", "string", 1, "nominatedNodeName is set only when this pod preempts other pods on the node."),
        col("Readiness Gates", "string", 1, "If specified, all readiness gates will be evaluated for pod readiness."),
    ],
    cells: pod_cells,
};
fn pod_cells(v: &Value, now: Timestamp) -> Vec<Value> {
    let total = arr(v, &["spec", "containers"]).len();
    let statuses = arr(v, &["status", "containerStatuses"]);
    let ready = statuses.iter().filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true)).count();
    let restarts: i64 = statuses.iter().map(|c| i(c, &["restartCount"])).sum();
    let mut reason = s(v, &["status", "reason"]).to_string();
    if reason.is_empty() {
        reason = s(v, &["status", "phase"]).to_string();
    }
    for c in statuses {
        let waiting = s(c, &["state", "waiting", "reason"]);
        let term = s(c, &["state", "terminated", "reason"]);
        if !waiting.is_empty() {
            reason = waiting.into();
        } else if !term.is_empty() {
            reason = term.into();
        }
    }
    if v.get("metadata").and_then(|m| m.get("deletionTimestamp")).is_some() {
        reason = if s(v, &["status", "reason"]) == "NodeLost" { "Unknown".into() } else { "Terminating".into() };
    }
    let gates = arr(v, &["spec", "readinessGates"]);
    let gates_cell = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conds = arr(v, &["status", "conditions"]);
        let ok = gates
            .iter()
            .filter(|g| conds.iter().any(|c| s(c, &["type"]) == s(g, &["conditionType"]) && s(c, &["status"]) == "True"))
            .count();
        format!("{ok}/{}", gates.len())
    };
    vec![
        name(v),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts.to_string()),
        created(v, now),
        json!(or_none(s(v, &["status", "podIP"]).into())),
        json!(or_none(s(v, &["spec", "nodeName"]).into())),
        json!(or_none(s(v, &["status", "nominatedNodeName"]).into())),
        json!(gates_cell),
    ]
}

pub const NODES: TableDef = TableDef {
    columns: &[
        col("Name", "string", 0, "Name must be unique within a namespace."),
        col("Status", "string", 0, "The status of the node"),
        col("Roles", "string", 0, "The roles of the node"),
        col("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
        col("Version", "string", 0, "Kubelet Version reported by the node."),
        col("Internal-IP", "string", 1, "List of addresses reachable to the node."),
        col("External-IP", "string", 1, "List of addresses reachable to the node."),
        col("OS-Image", "string", 1, "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
        col("Kernel-Version", "string", 1, "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
        col(
            "Container-Runtime",
            "string",
            1,
            "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
        ),
    ],
    cells: node_cells,
};
fn node_cells(v: &Value, now: Timestamp) -> Vec<Value> {
    let conds = arr(v, &["status", "conditions"]);
    let mut status = match conds.iter().find(|c| s(c, &["type"]) == "Ready").map(|c| s(c, &["status"])) {
        Some("True") => "Ready".to_string(),
        _ => "NotReady".to_string(),
    };
    if v.get("spec").and_then(|s| s.get("unschedulable")).and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = v
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|l| {
            l.keys().filter_map(|k| k.strip_prefix("node-role.kubernetes.io/").map(str::to_string)).filter(|r| !r.is_empty()).collect()
        })
        .unwrap_or_default();
    roles.sort();
    let addr = |ty: &str| {
        arr(v, &["status", "addresses"])
            .iter()
            .find(|a| s(a, &["type"]) == ty)
            .map(|a| s(a, &["address"]).to_string())
            .unwrap_or_else(|| "<none>".into())
    };
    vec![
        name(v),
        json!(status),
        json!(or_none(roles.join(","))),
        created(v, now),
        json!(s(v, &["status", "nodeInfo", "kubeletVersion"])),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(s(v, &["status", "nodeInfo", "osImage"])),
        json!(s(v, &["status", "nodeInfo", "kernelVersion"])),
        json!(s(v, &["status", "nodeInfo", "containerRuntimeVersion"])),
    ]
}

pub const SERVICES: TableDef = TableDef {
    columns: &[
        col("Name", "string", 0, "Name must be unique within a namespace."),
        col("Type", "string", 0, "type determines how the Service is exposed."),
        col("Cluster-IP", "string", 0, "clusterIP is the IP address of the service and is usually assigned randomly."),
        col(
            "External-IP",
            "string",
            0,
            "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
        ),
        col("Port(s)", "string", 0, "The list of ports that are exposed by this service."),
        col("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
        col("Selector", "string", 1, "Route service traffic to pods with label keys and values matching this selector."),
    ],
    cells: service_cells,
};
fn service_cells(v: &Value, now: Timestamp) -> Vec<Value> {
    let ty = s(v, &["spec", "type"]);
    let mut external: Vec<String> = arr(v, &["spec", "externalIPs"]).iter().filter_map(Value::as_str).map(str::to_string).collect();
    let external = match ty {
        "ExternalName" => s(v, &["spec", "externalName"]).to_string(),
        "LoadBalancer" => {
            for ing in arr(v, &["status", "loadBalancer", "ingress"]) {
                let x = if s(ing, &["ip"]).is_empty() { s(ing, &["hostname"]) } else { s(ing, &["ip"]) };
                external.push(x.to_string());
            }
            if external.is_empty() { "<pending>".into() } else { external.join(",") }
        }
        _ => or_none(external.join(",")),
    };
    let ports: Vec<String> = arr(v, &["spec", "ports"])
        .iter()
        .map(|p| {
            let proto = s(p, &["protocol"]);
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) => format!("{}:{np}/{proto}", i(p, &["port"])),
                None => format!("{}/{proto}", i(p, &["port"])),
            }
        })
        .collect();
    let cluster_ip = s(v, &["spec", "clusterIP"]);
    vec![
        name(v),
        json!(ty),
        json!(if cluster_ip.is_empty() { "<none>" } else { cluster_ip }),
        json!(external),
        json!(or_none(ports.join(","))),
        created(v, now),
        json!(selector_string(v, &["spec", "selector"])),
    ]
}

const WORKLOAD_WIDE: [Col; 3] = [
    col("Containers", "string", 1, "Names of each container in the template."),
    col("Images", "string", 1, "Images referenced by each container in the template."),
    col(
        "Selector",
        "string",
        1,
        "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
    ),
];

pub const DEPLOYMENTS: TableDef = TableDef {
    columns: &[
        col("Name", "string", 0, "Name must be unique within a namespace."),
        col("Ready", "string", 0, "Number of the pod with ready state"),
        col(
            "Up-to-date",
            "string",
            0,
            "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
        ),
        col("Available", "string", 0, "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
        col("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
        WORKLOAD_WIDE[0],
        WORKLOAD_WIDE[1],
        WORKLOAD_WIDE[2],
    ],
    cells: deployment_cells,
};
fn deployment_cells(v: &Value, now: Timestamp) -> Vec<Value> {
    let (c, im) = containers_images(v, &["spec", "template", "spec", "containers"]);
    vec![
        name(v),
        json!(format!("{}/{}", i(v, &["status", "readyReplicas"]), i(v, &["spec", "replicas"]))),
        json!(i(v, &["status", "updatedReplicas"])),
        json!(i(v, &["status", "availableReplicas"])),
        created(v, now),
        c,
        im,
        json!(selector_string(v, &["spec", "selector"])),
    ]
}

pub const REPLICASETS: TableDef = TableDef {
    columns: &[
        col("Name", "string", 0, "Name must be unique within a namespace."),
        col("Desired", "integer", 0, "Replicas is the number of desired replicas."),
        col("Current", "integer", 0, "Replicas is the most recently observed number of replicas."),
        col("Ready", "integer", 0, "The number of ready replicas for this replica set."),
        col("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
        WORKLOAD_WIDE[0],
        WORKLOAD_WIDE[1],
        WORKLOAD_WIDE[2],
    ],
    cells: replicaset_cells,
};
fn replicaset_cells(v: &Value, now: Timestamp) -> Vec<Value> {
    let (c, im) = containers_images(v, &["spec", "template", "spec", "containers"]);
    vec![
        name(v),
        json!(i(v, &["spec", "replicas"])),
        json!(i(v, &["status", "replicas"])),
        json!(i(v, &["status", "readyReplicas"])),
        created(v, now),
        c,
        im,
        json!(selector_string(v, &["spec", "selector"])),
    ]
}

pub const STATEFULSETS: TableDef = TableDef {
    columns: &[
        col("Name", "string", 0, "Name must be unique within a namespace."),
        col("Ready", "string", 0, "Number of the pod with ready state"),
        col("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
        WORKLOAD_WIDE[0],
        WORKLOAD_WIDE[1],
    ],
    cells: statefulset_cells,
};
fn statefulset_cells(v: &Value, now: Timestamp) -> Vec<Value> {
    let (c, im) = containers_images(v, &["spec", "template", "spec", "containers"]);
    vec![name(v), json!(format!("{}/{}", i(v, &["status", "readyReplicas"]), i(v, &["spec", "replicas"]))), created(v, now), c, im]
}

pub const DAEMONSETS: TableDef = TableDef {
    columns: &[
        col("Name", "string", 0, "Name must be unique within a namespace."),
        col("Desired", "integer", 0, "The total number of nodes that should be running the daemon pod."),
        col("Current", "integer", 0, "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."),
        col(
            "Ready",
            "integer",
            0,
            "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
        ),
        col("Up-to-date", "integer", 0, "The total number of nodes that are running updated daemon pod"),
        col(
            "Available",
            "integer",
            0,
            "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
        ),
        col("Node Selector", "string", 0, "NodeSelector is a selector which must be true for the pod to fit on a node."),
        col("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
        WORKLOAD_WIDE[0],
        WORKLOAD_WIDE[1],
        WORKLOAD_WIDE[2],
    ],
    cells: daemonset_cells,
};
fn daemonset_cells(v: &Value, now: Timestamp) -> Vec<Value> {
    let (c, im) = containers_images(v, &["spec", "template", "spec", "containers"]);
    vec![
        name(v),
        json!(i(v, &["status", "desiredNumberScheduled"])),
        json!(i(v, &["status", "currentNumberScheduled"])),
        json!(i(v, &["status", "numberReady"])),
        json!(i(v, &["status", "updatedNumberScheduled"])),
        json!(i(v, &["status", "numberAvailable"])),
        json!(selector_string(v, &["spec", "template", "spec", "nodeSelector"])),
        created(v, now),
        c,
        im,
        json!(selector_string(v, &["spec", "selector"])),
    ]
}

pub const JOBS: TableDef = TableDef {
    columns: &[
        col("Name", "string", 0, "Name must be unique within a namespace."),
        col("Status", "string", 0, "Status of the job."),
        col("Completions", "string", 0, "The desired number of successfully finished pods the job should be run with."),
        col("Duration", "string", 0, "Time required to complete the job."),
        col("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
        WORKLOAD_WIDE[0],
        WORKLOAD_WIDE[1],
        WORKLOAD_WIDE[2],
    ],
    cells: job_cells,
};
fn job_cells(v: &Value, now: Timestamp) -> Vec<Value> {
    let (c, im) = containers_images(v, &["spec", "template", "spec", "containers"]);
    let completions = match v.get("spec").and_then(|s| s.get("completions")).and_then(Value::as_i64) {
        Some(n) => format!("{}/{n}", i(v, &["status", "succeeded"])),
        None => format!("{}/1 of {}", i(v, &["status", "succeeded"]), i(v, &["spec", "parallelism"])),
    };
    let conds = arr(v, &["status", "conditions"]);
    let has = |t: &str| conds.iter().any(|c| s(c, &["type"]) == t && s(c, &["status"]) == "True");
    let status = if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if has("Suspended") {
        "Suspended"
    } else {
        "Running"
    };
    let start = s(v, &["status", "startTime"]).parse::<Timestamp>().ok();
    let end = s(v, &["status", "completionTime"]).parse::<Timestamp>().ok().unwrap_or(now);
    let duration = start.map(|st| super::human_duration(end.as_second() - st.as_second())).unwrap_or_default();
    vec![
        name(v),
        json!(status),
        json!(completions),
        json!(duration),
        created(v, now),
        c,
        im,
        json!(selector_string(v, &["spec", "selector"])),
    ]
}

pub const CRONJOBS: TableDef = TableDef {
    columns: &[
        col("Name", "string", 0, "Name must be unique within a namespace."),
        col("Schedule", "string", 0, "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron."),
        col("Timezone", "string", 0, "The time zone name for the given schedule."),
        col("Suspend", "boolean", 0, "This flag tells the controller to suspend subsequent executions."),
        col("Active", "integer", 0, "A list of pointers to currently running jobs."),
        col("Last Schedule", "string", 0, "Information when was the last time the job was successfully scheduled."),
        col("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
        WORKLOAD_WIDE[0],
        WORKLOAD_WIDE[1],
        WORKLOAD_WIDE[2],
    ],
    cells: cronjob_cells,
};
fn cronjob_cells(v: &Value, now: Timestamp) -> Vec<Value> {
    let (c, im) = containers_images(v, &["spec", "jobTemplate", "spec", "template", "spec", "containers"]);
    let last = s(v, &["status", "lastScheduleTime"]);
    vec![
        name(v),
        json!(s(v, &["spec", "schedule"])),
        json!(or_none(s(v, &["spec", "timeZone"]).into())),
        json!(v.get("spec").and_then(|s| s.get("suspend")).and_then(Value::as_bool).unwrap_or(false)),
        json!(arr(v, &["status", "active"]).len()),
        json!(if last.is_empty() { "<none>".to_string() } else { age(Some(last), now) }),
        created(v, now),
        c,
        im,
        json!(selector_string(v, &["spec", "jobTemplate", "spec", "selector"])),
    ]
}

pub const NAMESPACES: TableDef = TableDef {
    columns: &[
        col("Name", "string", 0, "Name must be unique within a namespace."),
        col("Status", "string", 0, "The status of the namespace"),
        col("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
    ],
    cells: |v, now| vec![name(v), json!(s(v, &["status", "phase"])), created(v, now)],
};

pub const CONFIGMAPS: TableDef = TableDef {
    columns: &[
        col("Name", "string", 0, "Name must be unique within a namespace."),
        col("Data", "string", 0, "Data contains the configuration data."),
        col("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
    ],
    cells: |v, now| {
        let n = v.get("data").and_then(Value::as_object).map_or(0, |m| m.len())
            + v.get("binaryData").and_then(Value::as_object).map_or(0, |m| m.len());
        vec![name(v), json!(n), created(v, now)]
    },
};

pub const SECRETS: TableDef = TableDef {
    columns: &[
        col("Name", "string", 0, "Name must be unique within a namespace."),
        col("Type", "string", 0, "Used to facilitate programmatic handling of secret data."),
        col("Data", "string", 0, "Data contains the secret data."),
        col("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
    ],
    cells: |v, now| {
        vec![name(v), json!(s(v, &["type"])), json!(v.get("data").and_then(Value::as_object).map_or(0, |m| m.len())), created(v, now)]
    },
};

pub const ENDPOINTS: TableDef = TableDef {
    columns: &[
        col("Name", "string", 0, "Name must be unique within a namespace."),
        col("Endpoints", "string", 0, "Endpoints of the service"),
        col("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
    ],
    cells: |v, now| {
        let mut eps = Vec::new();
        for subset in arr(v, &["subsets"]) {
            let ports = arr(subset, &["ports"]);
            for a in arr(subset, &["addresses"]) {
                let ip = s(a, &["ip"]);
                if ports.is_empty() {
                    eps.push(ip.to_string());
                }
                for p in ports {
                    eps.push(format!("{ip}:{}", i(p, &["port"])));
                }
            }
        }
        let shown = if eps.len() > 3 { format!("{} + {} more...", eps[..3].join(","), eps.len() - 3) } else { or_none(eps.join(",")) };
        vec![name(v), json!(shown), created(v, now)]
    },
};

pub const EVENTS: TableDef = TableDef {
    columns: &[
        col("Last Seen", "string", 0, "Time when last occurrence of this event was recorded."),
        col("Type", "string", 0, "Type of this event (Normal, Warning), new types could be added in the future."),
        col(
            "Reason",
            "string",
            0,
            "This should be a short, machine understandable string that gives the reason for this event being generated.",
        ),
        col("Object", "string", 0, "The object that this event is about."),
        col("Subobject", "string", 1, "The subobject that this event is about."),
        col("Source", "string", 1, "The component reporting this event. Should be a short machine understandable string."),
        col("Message", "string", 0, "A human-readable description of the status of this operation."),
        col("First Seen", "string", 1, "The time at which the event was first recorded."),
        col("Count", "string", 1, "The number of times this event has occurred."),
        col("Name", "string", 1, "Name must be unique within a namespace."),
    ],
    cells: event_cells,
};
fn event_cells(v: &Value, now: Timestamp) -> Vec<Value> {
    let last =
        [s(v, &["lastTimestamp"]), s(v, &["eventTime"]), s(v, &["metadata", "creationTimestamp"])].into_iter().find(|t| !t.is_empty());
    let first = [s(v, &["firstTimestamp"]), s(v, &["eventTime"])].into_iter().find(|t| !t.is_empty());
    let kind = s(v, &["involvedObject", "kind"]).to_lowercase();
    let object = format!("{kind}/{}", s(v, &["involvedObject", "name"]));
    let mut source = s(v, &["source", "component"]).to_string();
    if source.is_empty() {
        source = s(v, &["reportingComponent"]).to_string();
    }
    let host = s(v, &["source", "host"]);
    if !host.is_empty() {
        source = format!("{source}, {host}");
    }
    vec![
        json!(age(last, now)),
        json!(s(v, &["type"])),
        json!(s(v, &["reason"])),
        json!(object),
        json!(s(v, &["involvedObject", "fieldPath"])),
        json!(source),
        json!(s(v, &["message"]).trim()),
        json!(first.map(|f| age(Some(f), now)).unwrap_or_default()),
        json!(i(v, &["count"]).max(1).to_string()),
        name(v),
    ]
}

pub const SERVICEACCOUNTS: TableDef = TableDef {
    columns: &[
        col("Name", "string", 0, "Name must be unique within a namespace."),
        col(
            "Secrets",
            "string",
            0,
            "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
        ),
        col("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
    ],
    cells: |v, now| vec![name(v), json!(arr(v, &["secrets"]).len()), created(v, now)],
};

pub const LEASES: TableDef = TableDef {
    columns: &[
        col("Name", "string", 0, "Name must be unique within a namespace."),
        col("Holder", "string", 0, "HolderIdentity contains the identity of the holder of a current lease."),
        col("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
    ],
    cells: |v, now| vec![name(v), json!(s(v, &["spec", "holderIdentity"])), created(v, now)],
};
