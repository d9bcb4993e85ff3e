//! The DNS request handler: cluster names from the current zone index, everything else through
//! the forwarder. hickory-server does the wire work (UDP, TCP, truncation to the client's
//! payload size); this decides only what the answer is.

use std::sync::{Arc, RwLock};

use hickory_proto::op::{Edns, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::forward::Forwarder;
use crate::index::{Index, Outcome};

/// Largest UDP answer offered through EDNS (the DNS flag day's recommendation).
const MAX_PAYLOAD: u16 = 1232;

pub struct Handler {
    pub index: Arc<RwLock<Arc<Index>>>,
    pub forwarder: Forwarder,
}

fn failed(request: &Request) -> ResponseInfo {
    let mut m = Metadata::response_from_request(&request.metadata);
    m.response_code = ResponseCode::ServFail;
    hickory_proto::op::Header { metadata: m, counts: Default::default() }.into()
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().clamp(512, MAX_PAYLOAD));
            e
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.recursion_available = true;
        if request.metadata.op_code != OpCode::Query {
            meta.response_code = ResponseCode::NotImp;
            return response.send_response(builder.build_no_records(meta)).await.unwrap_or_else(|_| failed(request));
        }
        let Ok(info) = request.request_info() else {
            meta.response_code = ResponseCode::FormErr;
            return response.send_response(builder.build_no_records(meta)).await.unwrap_or_else(|_| failed(request));
        };
        let name = info.query.original().name().clone();
        let qtype = info.query.query_type();
        let index = self.index.read().map(|g| g.clone()).unwrap_or_else(|p| p.into_inner().clone());
        let (answers, authorities, additionals): (Vec<Record>, Vec<Record>, Vec<Record>) = match index.answer(&name, qtype) {
            Outcome::Answer { rcode, answers, additionals, soa } => {
                meta.authoritative = true;
                meta.response_code = rcode;
                (answers, if soa { vec![index.soa().clone()] } else { vec![] }, additionals)
            }
            Outcome::NotOurs => {
                let f = self.forwarder.forward(&name, qtype).await;
                meta.response_code = f.rcode;
                (f.answers, f.authorities, vec![])
            }
        };
        let msg = builder.build(meta, answers.iter(), authorities.iter(), std::iter::empty(), additionals.iter());
        match response.send_response(msg).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "DNS reply not sent");
                failed(request)
            }
        }
    }
}
