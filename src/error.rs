//! Error helpers: every failure of an op is a `TchError` in Rust and a Python exception.
use tch::TchError;

/// An invalid-argument error with a message meant for the user.
pub fn invalid(msg: impl Into<String>) -> TchError {
    TchError::Torch(msg.into())
}

/// The message of an error without tch's variant prefix.
pub fn message(e: &TchError) -> String {
    match e {
        TchError::Torch(m) => m.clone(),
        other => other.to_string(),
    }
}
