//! The coordinator's error type, and its one mapping to gRPC status codes.

/// What can go wrong in the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// A request field is missing or malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No job has this id.
    #[error("no job with id {0:?}")]
    NotFound(String),
    /// No replication policy has this name.
    #[error("no replication policy named {0:?}")]
    NoPolicy(String),
    /// A VM of a submission is in no live agent's inventory.
    #[error("VM {0:?} is in the inventory of no live agent (see `hyperexport vms`)")]
    UnknownVm(String),
    /// No live agent can run a submission where it asks (region, labels).
    #[error("{0}")]
    NoAgent(String),
    /// The job is in a state that does not allow the operation.
    #[error("{0}")]
    Conflict(String),
    /// The gRPC server failed (e.g. the listener broke).
    #[error("serving the API: {0}")]
    Serve(String),
    /// The coordinator is stopping.
    #[error("the coordinator is stopping")]
    Stopping,
    /// The embedded store failed.
    #[error("store {op}: {detail}")]
    Store {
        /// What was being done.
        op: &'static str,
        /// The store's error.
        detail: String,
    },
}

impl From<CoordinatorError> for tonic::Status {
    fn from(e: CoordinatorError) -> Self {
        let message = e.to_string();
        match e {
            CoordinatorError::Invalid(_) => tonic::Status::invalid_argument(message),
            CoordinatorError::NotFound(_) | CoordinatorError::NoPolicy(_) | CoordinatorError::UnknownVm(_) => {
                tonic::Status::not_found(message)
            }
            CoordinatorError::NoAgent(_) => tonic::Status::failed_precondition(message),
            CoordinatorError::Conflict(_) => tonic::Status::failed_precondition(message),
            CoordinatorError::Stopping => tonic::Status::unavailable(message),
            CoordinatorError::Store { .. } | CoordinatorError::Serve(_) => tonic::Status::internal(message),
        }
    }
}

/// Result alias for the coordinator.
pub type Result<T, E = CoordinatorError> = std::result::Result<T, E>;
