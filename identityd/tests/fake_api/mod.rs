//! A scripted Kubernetes API server behind kube's mock service (tower-test): per path, a queue
//! of list responses and a queue of watch bodies (newline-delimited events). A list queue
//! repeats its last response; an exhausted watch queue leaves the request open (as a quiet
//! watch would be). PATCHes can be echoed back. Every request is recorded.

// Reason: each test binary uses a different subset of the helpers.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::client::Body;

/// One request as the API server saw it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) content_type: Option<String>,
    pub(crate) body: serde_json::Value,
}

#[derive(Debug, Default)]
struct Script {
    lists: VecDeque<String>,
    watches: VecDeque<String>,
    /// A fixed response (status, body) for any request to the path.
    fixed: Option<(u16, String)>,
}

#[derive(Debug, Default)]
struct State {
    scripts: BTreeMap<String, Script>,
    seen: Vec<Seen>,
    echo_patches: bool,
}

/// The fake API server; clone-able handle to its state.
#[derive(Clone)]
pub(crate) struct FakeApi {
    state: Arc<Mutex<State>>,
    client: kube::Client,
}

impl std::fmt::Debug for FakeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApi").finish_non_exhaustive()
    }
}

/// The URL path of a fixture's kind (its plural).
pub(crate) fn path_of(plural: &str) -> String {
    match plural {
        "namespaces" | "pods" | "services" | "nodes" => format!("/api/v1/{plural}"),
        "secrets" => "/api/v1/namespaces/shop/secrets".to_owned(),
        "ingresses" | "networkpolicies" => format!("/apis/networking.k8s.io/v1/{plural}"),
        "gateways" | "httproutes" | "grpcroutes" => {
            format!("/apis/gateway.networking.k8s.io/v1/{plural}")
        }
        _ => format!("/apis/identityd.io/v1alpha1/{plural}"),
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> String {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    })
    .to_string()
}

impl FakeApi {
    /// Starts the server task on the current runtime.
    pub(crate) fn start() -> Self {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let state = Arc::new(Mutex::new(State::default()));
        let st = Arc::clone(&state);
        tokio::spawn(async move {
            let mut parked = Vec::new();
            while let Some((req, send)) = handle.next_request().await {
                let (parts, body) = req.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let path = parts.uri.path().to_owned();
                let query = parts.uri.query().unwrap_or_default().to_owned();
                let seen = Seen {
                    method: parts.method.to_string(),
                    path: path.clone(),
                    query: query.clone(),
                    content_type: parts
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                    body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
                };
                let answer = {
                    let mut s = st.lock().unwrap();
                    s.seen.push(seen.clone());
                    let echo = s.echo_patches;
                    let script = s.scripts.entry(path.clone()).or_default();
                    if let Some((code, body)) = &script.fixed {
                        Some((*code, body.clone()))
                    } else if seen.method == "PATCH" && echo {
                        let mut obj = seen.body.clone();
                        obj["metadata"]["resourceVersion"] = "1".into();
                        Some((200, obj.to_string()))
                    } else if query.contains("watch=true") {
                        script.watches.pop_front().map(|b| (200, b))
                    } else if script.lists.len() > 1 {
                        script.lists.pop_front().map(|b| (200, b))
                    } else if let Some(last) = script.lists.front() {
                        Some((200, last.clone()))
                    } else {
                        Some((
                            404,
                            status_body(404, "NotFound", &format!("{path} not found")),
                        ))
                    }
                };
                match answer {
                    Some((code, body)) => send.send_response(
                        Response::builder()
                            .status(StatusCode::from_u16(code).unwrap())
                            .header(http::header::CONTENT_TYPE, "application/json")
                            .body(Body::from(body.into_bytes()))
                            .unwrap(),
                    ),
                    // A watch with nothing more to say stays open.
                    None => parked.push(send),
                }
            }
        });
        let client = kube::Client::new(service, "default");
        Self { state, client }
    }

    /// A client talking to this server.
    pub(crate) fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Scripts `tests/fixtures/kube/<plural>.json`: `{"lists": [List…], "watches": [[event…]…]}`.
    pub(crate) fn script_fixture(&self, plural: &str) {
        let file = format!(
            "{}/tests/fixtures/kube/{plural}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut s = self.state.lock().unwrap();
        let script = s.scripts.entry(path_of(plural)).or_default();
        for l in v["lists"].as_array().unwrap() {
            script.lists.push_back(l.to_string());
        }
        for w in v["watches"].as_array().unwrap() {
            let body: String = w
                .as_array()
                .unwrap()
                .iter()
                .map(|e| format!("{e}\n"))
                .collect();
            script.watches.push_back(body);
        }
    }

    /// Scripts `path` with list responses and watch bodies (each a list of events).
    pub(crate) fn script(
        &self,
        path: &str,
        lists: &[serde_json::Value],
        watches: &[Vec<serde_json::Value>],
    ) {
        let mut s = self.state.lock().unwrap();
        let script = s.scripts.entry(path.to_owned()).or_default();
        script.lists.extend(lists.iter().map(ToString::to_string));
        script.watches.extend(
            watches
                .iter()
                .map(|evs| evs.iter().map(|e| format!("{e}\n")).collect::<String>()),
        );
    }

    /// Every request to `path` gets `404 NotFound`.
    pub(crate) fn not_found(&self, path: &str) {
        self.state
            .lock()
            .unwrap()
            .scripts
            .entry(path.to_owned())
            .or_default()
            .fixed = Some((
            404,
            status_body(404, "NotFound", &format!("{path} not found")),
        ));
    }

    /// Every request to `path` gets `200` with `body`.
    pub(crate) fn get(&self, path: &str, body: &str) {
        self.state
            .lock()
            .unwrap()
            .scripts
            .entry(path.to_owned())
            .or_default()
            .fixed = Some((200, body.to_owned()));
    }

    /// Every request to `path` gets `code` with `body`.
    pub(crate) fn respond(&self, path: &str, code: u16, body: &str) {
        self.state
            .lock()
            .unwrap()
            .scripts
            .entry(path.to_owned())
            .or_default()
            .fixed = Some((code, body.to_owned()));
    }

    /// PATCH requests are answered with their own body (plus a resourceVersion).
    pub(crate) fn echo_patches(&self) {
        self.state.lock().unwrap().echo_patches = true;
    }

    /// The requests seen so far.
    pub(crate) fn requests(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Forgets the requests seen so far.
    pub(crate) fn clear_requests(&self) {
        self.state.lock().unwrap().seen.clear();
    }
}
