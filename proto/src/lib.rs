#![doc = include_str!("../README.md")]

/// The generated messages, client ([`v1::coordinator_client::CoordinatorClient`]) and server
/// ([`v1::coordinator_server::CoordinatorServer`]) of `capfilt.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("capfilt.v1");
}

pub mod security;

/// The version of the wire protocol this build speaks. A coordinator refuses requests of any other
/// version with `FAILED_PRECONDITION`. Bump it on every incompatible change of `capfilt.proto`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Checks the `protocol_version` field of a request against [`PROTOCOL_VERSION`].
///
/// Returns a `FAILED_PRECONDITION` status naming both versions when they differ, so that the
/// peer's log says which side to upgrade.
#[allow(clippy::result_large_err)] // tonic::Status is the error type of every RPC
pub fn check_protocol_version(peer_version: u32) -> Result<(), tonic::Status> {
    if peer_version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(tonic::Status::failed_precondition(format!(
            "protocol version mismatch: peer speaks capfilt protocol v{peer_version}, this coordinator speaks v{PROTOCOL_VERSION}; run workers and coordinator from the same capfilt release"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_version_is_accepted() {
        assert!(check_protocol_version(PROTOCOL_VERSION).is_ok());
    }

    #[test]
    fn other_versions_are_refused_with_failed_precondition() {
        for v in [0, PROTOCOL_VERSION + 1, u32::MAX] {
            let status = check_protocol_version(v).expect_err("mismatch must be refused");
            assert_eq!(status.code(), tonic::Code::FailedPrecondition);
            assert!(
                status.message().contains(&format!("v{v}")),
                "{}",
                status.message()
            );
        }
    }
}
