//! JSON bodies and paths of the directory HTTP API (version 1).
//!
//! | method | path | body / answer |
//! |---|---|---|
//! | POST | `/v1/descriptors` | [`super::SignedDescriptor`] → [`RegisterResponse`] |
//! | GET | `/v1/descriptors/{epoch}` | [`DescriptorList`] (what this authority accepted) |
//! | GET | `/v1/topology/current` | [`super::SignedTopology`] |
//! | GET | `/v1/topology/{epoch}` | [`super::SignedTopology`] |
//! | GET | `/v1/signature/{epoch}` | [`super::AuthoritySignature`] (this authority's own) |
//! | GET | `/v1/epoch` | [`EpochInfo`] |
//! | GET | `/v1/liveness/current` | [`super::SignedLiveness`] (newest k-signed down list) |
//! | GET | `/v1/liveness/observation/{round}` | [`super::SignedObservation`] (this authority's own) |
//! | GET | `/v1/liveness/signature/{round}` | [`super::AuthoritySignature`] (this authority's, over its liveness document) |
//! | GET | `/metrics` | Prometheus text |
//!
//! Errors are `4xx/5xx` with an [`ErrorBody`].

use serde::{Deserialize, Serialize};

use crate::keys::NodeId;

use super::descriptor::SignedDescriptor;

pub const PATH_DESCRIPTORS: &str = "/v1/descriptors";
pub const PATH_TOPOLOGY_CURRENT: &str = "/v1/topology/current";
pub const PATH_EPOCH: &str = "/v1/epoch";
pub const PATH_LIVENESS_CURRENT: &str = "/v1/liveness/current";

pub fn path_liveness_observation(round: u64) -> String {
    format!("/v1/liveness/observation/{round}")
}

pub fn path_liveness_signature(round: u64) -> String {
    format!("/v1/liveness/signature/{round}")
}

pub fn path_topology(epoch: u64) -> String {
    format!("/v1/topology/{epoch}")
}

pub fn path_signature(epoch: u64) -> String {
    format!("/v1/signature/{epoch}")
}

pub fn path_descriptors(epoch: u64) -> String {
    format!("/v1/descriptors/{epoch}")
}

/// Body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `bad_signature`, `duplicate_address`.
    pub error: String,
    /// Human-readable sentence naming the problem.
    pub message: String,
}

/// Answer to a successful registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// `created`, `replaced` (a newer descriptor of the same identity) or
    /// `unchanged` (the identical descriptor again).
    pub status: String,
    pub epoch: u64,
    pub identity: NodeId,
}

/// The authority's view of time: which epoch it is and which epochs accept
/// registrations. Unsigned, for scheduling only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochInfo {
    /// The authority's clock, Unix seconds.
    pub now: u64,
    pub epoch: u64,
    pub epoch_start: u64,
    pub epoch_length_s: u64,
    /// Start of epoch 1.
    pub genesis: u64,
    /// Registration for epoch `e` closes this many seconds before `e` starts.
    pub registration_lead_s: u64,
    /// Epochs accepting registrations right now, ascending.
    pub open_epochs: Vec<u64>,
}

/// The descriptors one authority accepted for an epoch (authorities merge
/// each other's lists before building, so a registration that reached only
/// some of them still counts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorList {
    pub epoch: u64,
    pub descriptors: Vec<SignedDescriptor>,
}
