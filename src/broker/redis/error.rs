//! What goes wrong inside the Redis broker, with its cause. The node sees it only as
//! `Unavailable::Backend`: the broker boundary names no Redis type.

use std::sync::Arc;

use crate::broker::{BrokerError, Unavailable};

#[derive(Debug, thiserror::Error)]
pub enum RedisFailure {
    #[error("the redis broker needs a tokio runtime")]
    NoRuntime,
    /// A setting that can never work; names the key, never the value (URLs hold passwords).
    #[error("{key} is not usable ({kind:?})")]
    BadSetting {
        key: String,
        kind: ::redis::ErrorKind,
    },
    #[error("{key}: {requirement}")]
    Unsupported {
        key: String,
        requirement: &'static str,
    },
    #[error("cannot read redis.tls_ca_file")]
    TlsCaFile(#[source] std::io::Error),
    #[error("cannot build the redis pool")]
    PoolSetup(#[source] deadpool_redis::BuildError),
    #[error("redis connection pool")]
    Pool(#[source] deadpool_redis::PoolError),
    #[error("redis")]
    Redis(#[from] ::redis::RedisError),
    /// A cluster node's error reply to a subscription (an ACL, say).
    #[error("redis refused: {0}")]
    Refused(Arc<str>),
}

impl From<RedisFailure> for Unavailable {
    fn from(failure: RedisFailure) -> Self {
        Unavailable::Backend(Arc::new(failure))
    }
}

impl From<RedisFailure> for BrokerError {
    fn from(failure: RedisFailure) -> Self {
        BrokerError::Unavailable(failure.into())
    }
}
