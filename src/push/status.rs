//! `status`: which nodes hold which images, asked of each agent's engine;
//! nothing is transferred.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;

use crate::config::NodeEntry;
use crate::net;
use crate::net::identity::Identity;
use crate::wire::{self, read_frame, write_frame, Message};

/// Longest wait for one node's answer, connection included.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// What one node said.
#[derive(Clone, Debug, Serialize)]
pub struct NodeImages {
    /// Node name.
    pub name: String,
    /// Its address.
    pub addr: SocketAddr,
    /// What the node said, or why it could not be asked.
    pub answer: Result<Answer, String>,
}

/// One node's answer.
#[derive(Clone, Debug, Serialize)]
pub struct Answer {
    /// Its engine: kind, version, store, platform.
    pub engine: String,
    /// Per asked reference, the image ID (config digest) in its engine
    /// (`None`: absent).
    pub ids: Vec<Option<String>>,
    /// Per asked reference, the manifest digest, where the store keeps one.
    pub digests: Vec<Option<String>>,
}

/// Why status could not start.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The pusher identity could not be loaded.
    #[error(transparent)]
    Identity(#[from] crate::net::identity::IdentityError),
    /// The QUIC endpoint could not be opened.
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
}

/// Asks every node, concurrently, which image each of `refs` names there.
pub async fn status(
    nodes: &[NodeEntry],
    cluster_dir: &Path,
    identity: &str,
    refs: &[String],
) -> Result<Vec<NodeImages>, StatusError> {
    let identity = Identity::load_from_dir(cluster_dir, identity)?;
    let endpoint = net::endpoint(&identity, crate::push::bind_addr(nodes))?;
    let query = Message::Query { refs: refs.to_vec() };
    let connect = net::Timeouts::default().connect;
    let answers = ask_each(&endpoint, nodes, &query, 1, connect, ANSWER_TIMEOUT).await;
    endpoint.close(quinn::VarInt::from_u32(wire::close::DONE), b"status done");
    let images = |(node, answer): (NodeEntry, Result<Message, AskError>)| NodeImages {
        name: node.name,
        addr: node.addr,
        answer: answer.map_err(|e| e.to_string()).and_then(status_answer),
    };
    Ok(answers.into_iter().map(images).collect())
}

fn status_answer(msg: Message) -> Result<Answer, String> {
    match msg {
        Message::Status { ids, engine, digests } => Ok(Answer { engine, ids, digests }),
        Message::Error { message, .. } => Err(message),
        other => Err(format!("protocol error: answered with {}", other.kind())),
    }
}

/// Why a node's answer did not come.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AskError {
    /// Its agent is older than the question: it speaks an older protocol
    /// version than the question needs (and was not asked), or it closed the
    /// connection as broken when asked (it could not decode the question).
    #[error("its agent (protocol version {version}) is too old for the question")]
    TooOld { version: u8 },
    /// It could not be reached, or did not answer, and why.
    #[error("{0}")]
    Failed(String),
}

/// Sends `question` to every node, concurrently, on a new stream each, and
/// returns each node's first answer (`TooOld`: its agent speaks a version
/// older than `since`, and was not asked; `Failed`: it could not be reached
/// within `connect`, or did not answer within `timeout`, connection
/// included), in `nodes`' order.
/// Shared by `status` and `push --dry-run`.
pub(crate) async fn ask_each(
    endpoint: &quinn::Endpoint,
    nodes: &[NodeEntry],
    question: &Message,
    since: u8,
    connect: Duration,
    timeout: Duration,
) -> Vec<(NodeEntry, Result<Message, AskError>)> {
    let mut asks = JoinSet::new();
    for (i, node) in nodes.iter().enumerate() {
        let (endpoint, node, question) = (endpoint.clone(), node.clone(), question.clone());
        asks.spawn(async move {
            let asked = ask(&endpoint, &node, (&question, since), connect);
            let answer = tokio::time::timeout(timeout, asked).await.unwrap_or_else(|_| {
                let why = format!("no answer within {}s", timeout.as_secs());
                Err(AskError::Failed(why))
            });
            (i, node, answer)
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = asks.join_next().await {
        answers.extend(answer.ok());
    }
    answers.sort_by_key(|(i, _, _)| *i);
    answers.into_iter().map(|(_, n, a)| (n, a)).collect()
}

async fn ask(
    endpoint: &quinn::Endpoint,
    node: &NodeEntry,
    (question, since): (&Message, u8),
    connect: Duration,
) -> Result<Message, AskError> {
    let (conn, _) = net::connect_within(endpoint, node.addr, Some(&node.name), connect)
        .await
        .map_err(|e| AskError::Failed(e.to_string()))?;
    let version = net::version(&conn);
    if version < since {
        return Err(AskError::TooOld { version });
    }
    ask_on(&conn, question)
        .await
        .map_err(|e| match closed_as_broken(&conn) {
            true => AskError::TooOld { version },
            false => AskError::Failed(e),
        })
}

/// Whether the node closed `conn` as a protocol violation ([`wire::close::PROTOCOL`]):
/// what an agent does with a first frame it cannot decode, a question newer
/// than itself (`PlanQuery` to an agent from before it).
fn closed_as_broken(conn: &quinn::Connection) -> bool {
    matches!(conn.close_reason(), Some(quinn::ConnectionError::ApplicationClosed(c))
        if c.error_code == quinn::VarInt::from_u32(wire::close::PROTOCOL))
}

/// Asks `question` on a new stream of `conn` and reads the first answer.
async fn ask_on(conn: &quinn::Connection, question: &Message) -> Result<Message, String> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| format!("connection lost: {e}"))?;
    write_frame(&mut send, question)
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    read_frame(&mut recv, wire::MAX_FRAME)
        .await
        .map_err(|e| e.to_string())
}
