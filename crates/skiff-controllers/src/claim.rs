//! Upstream's ControllerRefManager for the DaemonSet and StatefulSet controllers: which pods and
//! ControllerRevisions an owner controls, adopting matching orphans and releasing owned objects
//! that stopped matching. Adoption and release are strategic merge patches on
//! `metadata.ownerReferences` (merged by uid) that carry the object's uid, so they fail instead of
//! touching an object that was replaced under the same name meanwhile.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::podutil::{self, PodSelector, controller_ref};

/// The owner doing the claiming.
pub struct Claimer<'a> {
    pub uid: &'a str,
    pub namespace: &'a str,
    /// The controller reference it puts on what it adopts.
    pub owner_ref: OwnerReference,
    pub selector: &'a PodSelector,
    /// An owner being deleted neither adopts nor releases (upstream: it would race the GC).
    pub deleting: bool,
}

impl Claimer<'_> {
    /// The objects of `candidates` this owner controls after adopting and releasing. `member`
    /// narrows what may be claimed beyond the selector (the StatefulSet's name rule).
    pub async fn claim<K>(
        &self,
        api: &Api<K>,
        candidates: impl IntoIterator<Item = Arc<K>>,
        member: impl Fn(&K) -> bool,
    ) -> Result<Vec<Arc<K>>, kube::Error>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let mut out = Vec::new();
        for obj in candidates {
            if obj.meta().namespace.as_deref() != Some(self.namespace) {
                continue;
            }
            let matches = self.selector.matches(podutil::labels(obj.meta())) && member(&obj);
            match controller_ref(obj.meta()) {
                Some(r) if r.uid == self.uid => {
                    if matches {
                        out.push(obj);
                    } else if !self.deleting {
                        release(api, obj.as_ref(), self.uid).await?;
                    }
                }
                Some(_) => {}
                None if matches
                    && !self.deleting
                    && obj.meta().deletion_timestamp.is_none()
                    && adopt(api, obj.as_ref(), &self.owner_ref).await? =>
                {
                    out.push(obj)
                }
                None => {}
            }
        }
        Ok(out)
    }
}

/// Takes an orphan; false when it is gone or changed owner meanwhile.
async fn adopt<K>(api: &Api<K>, obj: &K, oref: &OwnerReference) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({ "metadata": { "ownerReferences": [oref], "uid": obj.meta().uid } });
    match api.patch(&obj.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => Ok(false),
        Err(e) => Err(e),
    }
}

async fn release<K>(api: &Api<K>, obj: &K, owner_uid: &str) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({ "metadata": { "ownerReferences": [{ "$patch": "delete", "uid": owner_uid }], "uid": obj.meta().uid } });
    match api.patch(&obj.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The message of an API error, as upstream's events quote it.
pub fn api_error_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}
