"""The official Python client (python3-kubernetes) against skiff: create, patch, list and watch a
Deployment. Prints one JSON line per step for the Rust test to assert on."""
import json
import sys
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
ns = sys.argv[2]
apps = client.AppsV1Api()
core = client.CoreV1Api()


def out(step, **kw):
    print(json.dumps({"step": step, **kw}), flush=True)


core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))

# A watch from before the create sees the whole life of the object.
events = []
listed = apps.list_namespaced_deployment(ns)
w = watch.Watch()


def watch_it():
    for ev in w.stream(apps.list_namespaced_deployment, ns, resource_version=listed.metadata.resource_version, timeout_seconds=30):
        d = ev["object"]
        events.append((ev["type"], d.metadata.name, d.spec.replicas))
        if ev["type"] == "DELETED":
            w.stop()


t = threading.Thread(target=watch_it)
t.start()

body = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="web", labels={"app": "web"}),
    spec=client.V1DeploymentSpec(
        replicas=1,
        selector=client.V1LabelSelector(match_labels={"app": "web"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "web"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="registry.local/web:1")]),
        ),
    ),
)
created = apps.create_namespaced_deployment(ns, body)
out("created", uid=created.metadata.uid, rv=created.metadata.resource_version,
    strategy=created.spec.strategy.type, revision_history=created.spec.revision_history_limit)

# A list body goes as a JSON patch; a dict body as a strategic merge patch (the client's
# rest.py switches the content type), which merges containers by name.
patched = apps.patch_namespaced_deployment("web", ns, [{"op": "replace", "path": "/spec/replicas", "value": 3}])
out("patched", replicas=patched.spec.replicas, rv=patched.metadata.resource_version)
smp = apps.patch_namespaced_deployment("web", ns, {"spec": {"replicas": 4, "template": {"spec": {"containers": [
    {"name": "web", "env": [{"name": "MODE", "value": "fast"}]}]}}}})
c = smp.spec.template.spec.containers
out("strategic", replicas=smp.spec.replicas, containers=[x.name for x in c], image=c[0].image,
    env=[(e.name, e.value) for e in (c[0].env or [])])
try:
    apps.patch_namespaced_deployment("web", ns, [{"op": "replace", "path": "/spec/nope/x", "value": 1}])
    out("bad-patch", status=200)
except ApiException as e:
    out("bad-patch", status=e.status, reason=json.loads(e.body).get("reason"))

# Another writer's change reaches the client through list and read.
apps.patch_namespaced_deployment_scale("web", ns, [{"op": "replace", "path": "/spec/replicas", "value": 2}])
lst = apps.list_namespaced_deployment(ns, label_selector="app=web")
out("listed", names=[d.metadata.name for d in lst.items], replicas=[d.spec.replicas for d in lst.items],
    kind=lst.kind, rv=lst.metadata.resource_version)
try:
    apps.read_namespaced_deployment("missing", ns)
except ApiException as e:
    out("missing", status=e.status, reason=json.loads(e.body).get("reason"))

apps.delete_namespaced_deployment("web", ns)
t.join(timeout=30)
out("watched", events=events)
