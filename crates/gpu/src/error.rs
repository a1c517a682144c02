/// Why a GPU request cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// The request itself is malformed (`gpu="H100:0"`, an empty fallback list).
    #[error("{0}")]
    Invalid(String),
    /// No card of the host matches, or not enough of them: waiting would never help.
    #[error("this Ferry host cannot provide gpu={request}: it has {host}. Drop gpu= or ask for a GPU the host has{hint}")]
    Unsatisfiable { request: String, host: String, hint: String },
}
