//! The built-in resources skiff serves, as descriptors. Storage prefixes follow upstream's etcd
//! layout (`/registry/services/specs/`, `/registry/minions/`, `/registry/controllers/` ...), so an
//! etcd written by skiff looks familiar to `etcdctl get --prefix /registry`.

use k8s_openapi::api::{apps, batch, coordination, core, discovery, events, networking, policy, rbac, scheduling, storage};
use k8s_openapi::{ClusterResourceScope, ListableResource, NamespaceResourceScope, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{ALL_VERBS, Descriptor, Subresource};
use crate::codec::TypedCodec;
use crate::strategy::meta::NameRule;
use crate::strategy::namespace::{NamespaceStrategy, SecretStrategy};
use crate::strategy::pod::PodStrategy;
use crate::strategy::service::ServiceStrategy;
use crate::strategy::workload::*;
use crate::strategy::{Plain, Strategy};
use crate::table::{TableDef, columns};

/// Maps k8s-openapi's scope marker types to a flag.
pub trait Scope {
    const NAMESPACED: bool;
}
impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}
impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

fn res<K, S>(plural: &'static str, singular: &'static str, storage_prefix: &'static str, strategy: S) -> Descriptor
where
    K: Resource + ListableResource + DeserializeOwned + Serialize + Send + Sync + 'static,
    K::Scope: Scope,
    S: Strategy<K>,
{
    Descriptor {
        group: K::GROUP,
        version: K::VERSION,
        kind: K::KIND,
        list_kind: K::LIST_KIND,
        plural,
        singular,
        short_names: &[],
        categories: &[],
        namespaced: <K::Scope as Scope>::NAMESPACED,
        verbs: ALL_VERBS,
        subresources: &[],
        storage_prefix,
        generation: false,
        field_selectors: &[],
        name_rule: NameRule::Subdomain,
        table: TableDef::NAME_AGE,
        codec: Box::new(TypedCodec::<K, S>::new(strategy)),
    }
}

impl Descriptor {
    fn short(mut self, s: &'static [&'static str]) -> Self {
        self.short_names = s;
        self
    }
    fn all(mut self) -> Self {
        self.categories = &["all"];
        self
    }
    fn subs(mut self, s: &'static [Subresource]) -> Self {
        self.subresources = s;
        self
    }
    fn generation(mut self) -> Self {
        self.generation = true;
        self
    }
    fn fields(mut self, f: &'static [&'static str]) -> Self {
        self.field_selectors = f;
        self
    }
    fn verbs(mut self, v: &'static [&'static str]) -> Self {
        self.verbs = v;
        self
    }
    fn names(mut self, rule: NameRule) -> Self {
        self.name_rule = rule;
        self
    }
    fn table(mut self, t: TableDef) -> Self {
        self.table = t;
        self
    }
}

use Subresource::*;

pub fn descriptors() -> Vec<Descriptor> {
    vec![
        // core/v1
        res::<core::v1::Namespace, _>("namespaces", "namespace", "/registry/namespaces/", NamespaceStrategy)
            .short(&["ns"])
            .names(NameRule::Label)
            .verbs(&["create", "delete", "get", "list", "patch", "update", "watch"])
            .subs(&[Status, Finalize])
            .fields(&["status.phase"])
            .table(columns::NAMESPACES),
        res::<core::v1::Pod, _>("pods", "pod", "/registry/pods/", PodStrategy)
            .short(&["po"])
            .all()
            .subs(&[Status, Binding, Eviction, Log, Exec, Attach, PortForward])
            .generation()
            .fields(&[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ])
            .table(columns::PODS),
        res::<core::v1::Node, _>("nodes", "node", "/registry/minions/", Plain)
            .short(&["no"])
            .subs(&[Status, Proxy])
            .fields(&["spec.unschedulable"])
            .table(columns::NODES),
        res::<core::v1::Service, _>("services", "service", "/registry/services/specs/", ServiceStrategy)
            .short(&["svc"])
            .names(NameRule::Dns1035)
            .all()
            .subs(&[Status])
            .table(columns::SERVICES),
        res::<core::v1::Endpoints, _>("endpoints", "endpoints", "/registry/services/endpoints/", Plain)
            .short(&["ep"])
            .table(columns::ENDPOINTS),
        res::<core::v1::ConfigMap, _>("configmaps", "configmap", "/registry/configmaps/", Plain).short(&["cm"]).table(columns::CONFIGMAPS),
        res::<core::v1::Secret, _>("secrets", "secret", "/registry/secrets/", SecretStrategy).fields(&["type"]).table(columns::SECRETS),
        res::<core::v1::ServiceAccount, _>("serviceaccounts", "serviceaccount", "/registry/serviceaccounts/", Plain)
            .short(&["sa"])
            .table(columns::SERVICEACCOUNTS),
        res::<core::v1::Event, _>("events", "event", "/registry/events/", Plain)
            .short(&["ev"])
            .fields(&[
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ])
            .table(columns::EVENTS),
        res::<core::v1::LimitRange, _>("limitranges", "limitrange", "/registry/limitranges/", Plain).short(&["limits"]),
        res::<core::v1::ResourceQuota, _>("resourcequotas", "resourcequota", "/registry/resourcequotas/", Plain)
            .short(&["quota"])
            .subs(&[Status]),
        res::<core::v1::PersistentVolume, _>("persistentvolumes", "persistentvolume", "/registry/persistentvolumes/", Plain)
            .short(&["pv"])
            .subs(&[Status]),
        res::<core::v1::PersistentVolumeClaim, _>(
            "persistentvolumeclaims",
            "persistentvolumeclaim",
            "/registry/persistentvolumeclaims/",
            Plain,
        )
        .short(&["pvc"])
        .subs(&[Status]),
        res::<core::v1::ReplicationController, _>(
            "replicationcontrollers",
            "replicationcontroller",
            "/registry/controllers/",
            ReplicationControllerStrategy,
        )
        .short(&["rc"])
        .all()
        .subs(&[Status, Scale])
        .generation()
        .fields(&["status.replicas"]),
        // apps/v1
        res::<apps::v1::Deployment, _>("deployments", "deployment", "/registry/deployments/", DeploymentStrategy)
            .short(&["deploy"])
            .all()
            .subs(&[Status, Scale])
            .generation()
            .table(columns::DEPLOYMENTS),
        res::<apps::v1::ReplicaSet, _>("replicasets", "replicaset", "/registry/replicasets/", ReplicaSetStrategy)
            .short(&["rs"])
            .all()
            .subs(&[Status, Scale])
            .generation()
            .fields(&["status.replicas"])
            .table(columns::REPLICASETS),
        res::<apps::v1::StatefulSet, _>("statefulsets", "statefulset", "/registry/statefulsets/", StatefulSetStrategy)
            .short(&["sts"])
            .all()
            .subs(&[Status, Scale])
            .generation()
            .table(columns::STATEFULSETS),
        res::<apps::v1::DaemonSet, _>("daemonsets", "daemonset", "/registry/daemonsets/", DaemonSetStrategy)
            .short(&["ds"])
            .all()
            .subs(&[Status])
            .generation()
            .table(columns::DAEMONSETS),
        res::<apps::v1::ControllerRevision, _>("controllerrevisions", "controllerrevision", "/registry/controllerrevisions/", Plain),
        // batch/v1
        res::<batch::v1::Job, _>("jobs", "job", "/registry/jobs/", JobStrategy)
            .all()
            .subs(&[Status])
            .generation()
            .fields(&["status.successful"])
            .table(columns::JOBS),
        res::<batch::v1::CronJob, _>("cronjobs", "cronjob", "/registry/cronjobs/", CronJobStrategy)
            .short(&["cj"])
            .all()
            .subs(&[Status])
            .generation()
            .table(columns::CRONJOBS),
        // coordination.k8s.io/v1
        res::<coordination::v1::Lease, _>("leases", "lease", "/registry/leases/", Plain).table(columns::LEASES),
        // discovery.k8s.io/v1
        res::<discovery::v1::EndpointSlice, _>("endpointslices", "endpointslice", "/registry/endpointslices/", Plain),
        // events.k8s.io/v1: stored apart from core events until the two representations are converted.
        res::<events::v1::Event, _>("events", "event", "/registry/events.k8s.io/events/", Plain).short(&["ev"]),
        // networking.k8s.io/v1
        res::<networking::v1::Ingress, _>("ingresses", "ingress", "/registry/ingress/", Plain).short(&["ing"]).subs(&[Status]).generation(),
        res::<networking::v1::IngressClass, _>("ingressclasses", "ingressclass", "/registry/ingressclasses/", Plain),
        res::<networking::v1::NetworkPolicy, _>("networkpolicies", "networkpolicy", "/registry/networkpolicies/", Plain)
            .short(&["netpol"])
            .generation(),
        // policy/v1
        res::<policy::v1::PodDisruptionBudget, _>("poddisruptionbudgets", "poddisruptionbudget", "/registry/poddisruptionbudgets/", Plain)
            .short(&["pdb"])
            .subs(&[Status])
            .generation(),
        // scheduling.k8s.io/v1
        res::<scheduling::v1::PriorityClass, _>("priorityclasses", "priorityclass", "/registry/priorityclasses/", Plain).short(&["pc"]),
        // storage.k8s.io/v1
        res::<storage::v1::StorageClass, _>("storageclasses", "storageclass", "/registry/storageclasses/", Plain).short(&["sc"]),
        // rbac.authorization.k8s.io/v1 (stored only; authorization comes later)
        res::<rbac::v1::Role, _>("roles", "role", "/registry/roles/", Plain).names(NameRule::PathSegment),
        res::<rbac::v1::RoleBinding, _>("rolebindings", "rolebinding", "/registry/rolebindings/", Plain).names(NameRule::PathSegment),
        res::<rbac::v1::ClusterRole, _>("clusterroles", "clusterrole", "/registry/clusterroles/", Plain).names(NameRule::PathSegment),
        res::<rbac::v1::ClusterRoleBinding, _>("clusterrolebindings", "clusterrolebinding", "/registry/clusterrolebindings/", Plain)
            .names(NameRule::PathSegment),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_prefixes_never_nest() {
        let all = descriptors();
        for a in &all {
            for b in &all {
                if !std::ptr::eq(a, b) {
                    assert!(!b.storage_prefix.starts_with(a.storage_prefix), "{} nests in {}", b.storage_prefix, a.storage_prefix);
                }
            }
        }
    }
}
