//! Provider role: the node a client talks to, which keeps its inbox.
pub mod inbox;
